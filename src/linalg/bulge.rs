//! The second stage of the two-stage reduction: a symmetric band matrix to tridiagonal form
//! by bulge chasing, `B = Q2 T Q2^T` (Schwarz's algorithm, as LAPACK's `dsytrd_sb2st`
//! runs it: one column per sweep, Householder reflectors of length b).
//!
//! Sweep j zeroes column j below its subdiagonal with a reflector on rows
//! `j+1..j+1+b`. Applied from both sides, it fills the block below the band with a bulge;
//! the next reflector, on the next b rows, zeroes the bulge's first column, and so on down
//! the matrix. What is left of each bulge is taken by the next sweeps, so between sweeps
//! the entries are nonzero at most 2b - 1 below the diagonal, and the working band keeps
//! 2b diagonals. Reflector i of sweep j acts on rows `j+1+ib..` (b of them, fewer at the
//! end); the reflectors of one sweep act on disjoint rows.
//!
//! Sweep j's reflectors cover rows j + 1..n exactly once, n - 1 - j values: they are kept
//! in the strict upper triangle of the reduced matrix, column n - 1 - j (rows 0..n-1-j),
//! which has exactly that many entries and which the first stage never uses. Each
//! reflector's leading one is implied and its tau is kept in its place.
//!
//! About 6 n^2 b flops, the sweeps pipelined over the threads (see [`chase_bulges`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use faer::Mat;

use super::band::Band;
use super::reduction::householder;
use super::team::{wait, SpinTeam};
use crate::progress::Progress;

/// Sweeps per job posted to the team: progress is reported between jobs.
const SWEEPS_PER_JOB: usize = 128;

/// T's diagonal (n) and subdiagonal (n - 1) from the band, Q2's reflectors written into the
/// strict upper triangle of `a` (n x n) as the module docs describe. Progress counts sweeps.
///
/// The team's members take sweeps in turn and run them as a pipeline. Step s of sweep j
/// touches rows and columns `j+1+(s-1)b..j+1+(s+2)b` only (and column j at step 0), so
/// step s of sweep j + 1 may run once sweep j has finished step s + 3, beside sweep j's
/// later steps. Every entry sees the same updates in the same order as in one thread, so the
/// result does not depend on the team's size. A sweep that panics stops the pipeline: every
/// waiting sweep then panics too, without touching the band, and the team raises the panic.
pub(crate) fn chase_bulges(
    band: &Band,
    a: &mut Mat<f64>,
    team: &mut SpinTeam,
    progress: &mut dyn Progress,
) -> (Vec<f64>, Vec<f64>) {
    let n = band.diagonals.ncols();
    let b = band.width;
    let sweeps = n.saturating_sub(1);
    assert_eq!(
        (a.nrows(), a.ncols()),
        (n, n),
        "the reduced matrix is n x n"
    );
    assert_eq!(a.row_stride(), 1, "column-major storage");
    let mut values = Working::values(band);
    let work = Working {
        n,
        ld: 2 * b,
        ptr: values.as_mut_ptr(),
    };
    let store = ReflectorStore {
        ptr: a.as_ptr_mut(),
        col_stride: a.col_stride() as usize,
    };
    let pipeline = Pipeline {
        done: (0..sweeps).map(|_| StepCount::default()).collect(),
        stopped: AtomicBool::new(false),
    };
    progress.start("bulge chasing", sweeps as u64);
    let size = team.size();
    let mut first = 0;
    while first < sweeps {
        let last = (first + SWEEPS_PER_JOB).min(sweeps);
        team.run(|member| {
            let mut scratch = vec![0.0; 2 * b];
            for j in (first + member..last).step_by(size) {
                let this = Sweep {
                    work: &work,
                    store: &store,
                    pipeline: &pipeline,
                    b,
                    j,
                };
                // SAFETY: the sweeps run as the pipeline described above.
                unsafe { this.run(&mut scratch) };
            }
        });
        progress.advance((last - first) as u64);
        first = last;
    }
    progress.finish();
    let get = |r: usize, c: usize| values[c * 2 * b + (r - c)];
    let diag = (0..n).map(|j| get(j, j)).collect();
    let offdiag = (0..sweeps).map(|j| get(j + 1, j)).collect();
    (diag, offdiag)
}

/// The sweeps' progress: the steps each has finished (usize::MAX once it is over), and
/// whether one of them panicked.
struct Pipeline {
    done: Vec<StepCount>,
    stopped: AtomicBool,
}

/// A sweep's finished steps, alone on its cache line: the next sweep polls it while this
/// one writes its neighbours' counts.
#[derive(Default)]
#[repr(align(64))]
struct StepCount(AtomicUsize);

impl Pipeline {
    /// Waits until sweep j has finished `steps` steps; panics, without waiting further,
    /// once a sweep has panicked.
    fn wait_for(&self, j: usize, steps: usize) {
        let mut spins = 0u32;
        loop {
            let done = self.done[j].0.load(Ordering::Acquire);
            // Read after `done`: a panicking sweep stops the pipeline before it marks
            // itself over.
            if self.stopped.load(Ordering::Acquire) {
                panic!("bulge chasing stopped: another sweep panicked");
            }
            if done >= steps {
                return;
            }
            wait(&mut spins);
        }
    }
}

/// Marks its sweep over when dropped, and stops the pipeline first if the sweep is
/// unwinding from a panic.
struct SweepOver<'a> {
    pipeline: &'a Pipeline,
    j: usize,
}

impl Drop for SweepOver<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.pipeline.stopped.store(true, Ordering::Release);
        }
        self.pipeline.done[self.j]
            .0
            .store(usize::MAX, Ordering::Release);
    }
}

/// Where sweep j's reflectors go: column n - 1 - j of the reduced matrix, rows 0..n-1-j.
struct ReflectorStore {
    ptr: *mut f64,
    col_stride: usize,
}

// SAFETY: each sweep writes its own column only.
unsafe impl Sync for ReflectorStore {}

/// Sweep j of the band `work` (half-width b), its reflectors into `store`, its progress in
/// `pipeline`.
struct Sweep<'a> {
    work: &'a Working,
    store: &'a ReflectorStore,
    pipeline: &'a Pipeline,
    b: usize,
    j: usize,
}

impl Sweep<'_> {
    /// The sweep's reflectors, one step per position, each step waiting until the previous
    /// sweep has finished the step three positions further on; `scratch` holds 2b values.
    /// The loops are short (b values), so on x86-64 a copy compiled for AVX2 runs when the
    /// CPU has it; it performs the same operations (no fused multiply-adds), so both copies
    /// give the same bits.
    ///
    /// # Safety
    /// No other thread runs this sweep, the sweeps before it run (or ran) with the same
    /// waits, and no later sweep has started a step that this sweep's steps must precede.
    unsafe fn run(&self, scratch: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2; the caller upholds the rest.
            return unsafe { self.run_avx2(scratch) };
        }
        // SAFETY: upheld by the caller.
        unsafe { self.run_portable(scratch) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, scratch: &mut [f64]) {
        // SAFETY: upheld by the caller.
        unsafe { self.run_portable(scratch) }
    }

    #[inline(always)]
    unsafe fn run_portable(&self, scratch: &mut [f64]) {
        let Sweep {
            work,
            store,
            pipeline,
            b,
            j,
        } = *self;
        let n = work.n;
        let _over = SweepOver { pipeline, j };
        let (v, scratch) = scratch.split_at_mut(b);
        // SAFETY: column n - 1 - j has n rows; this sweep alone writes its first n - 1 - j.
        let stored = unsafe {
            std::slice::from_raw_parts_mut(store.ptr.add((n - 1 - j) * store.col_stride), n - 1 - j)
        };
        // Step s: the reflector on rows r..r + len that zeroes column c below row r (column
        // j at step 0, then the first column of the previous step's rows, c..c + before),
        // applied from the left to the rest of those columns, to the diagonal block from
        // both sides, and from the right to the rows below, which makes the next bulge.
        let (mut c, mut before) = (j, 1);
        let (mut r, mut len) = (j + 1, b.min(n - 1 - j));
        let mut step = 0;
        loop {
            if j > 0 {
                pipeline.wait_for(j - 1, step + 4);
            }
            let tau = unsafe { work.reflect(r, c, len, v) };
            let at = r - (j + 1);
            stored[at] = tau;
            stored[at + 1..at + len].copy_from_slice(&v[1..len]);
            if tau != 0.0 {
                unsafe { work.left(r, len, c + 1, c + before, &v[..len], tau) };
                unsafe { work.two_sided(r, len, &v[..len], tau, scratch) };
            }
            let below = r + len;
            if below >= n {
                break;
            }
            let m = b.min(n - below);
            if tau != 0.0 {
                unsafe { work.right(below, m, r, len, &v[..len], tau, scratch) };
            }
            (c, before) = (r, len);
            (r, len) = (below, m);
            step += 1;
            pipeline.done[j].0.store(step, Ordering::Release);
        }
    }
}

/// The band during the sweeps: `B[r, c]` at `ptr[c * ld + (r - c)]` for 0 <= r - c < 2b,
/// so each column's entries are contiguous, and so are a block's columns below the
/// diagonal. The storage is [`Working::values`], owned by [`chase_bulges`]; the sweeps'
/// threads share this view of it, each touching only its current step's rows and columns.
///
/// Every method below is `unsafe` for that reason: the caller is a sweep's step that the
/// pipeline lets run, and it touches only that step's entries (see [`chase_bulges`]).
struct Working {
    n: usize,
    ld: usize,
    ptr: *mut f64,
}

// SAFETY: the sweeps' threads touch disjoint entries at any one time (see `chase_bulges`).
unsafe impl Sync for Working {}

impl Working {
    /// The storage of the band's n columns, 2b values each.
    fn values(band: &Band) -> Vec<f64> {
        let n = band.diagonals.ncols();
        let ld = 2 * band.width;
        let mut values = vec![0.0; n * ld];
        for c in 0..n {
            for d in 0..=band.width.min(n - 1 - c) {
                values[c * ld + d] = band.diagonals[(d, c)];
            }
        }
        values
    }

    /// Rows `r..r + len` of column c (r >= c, r + len - c <= 2b).
    ///
    /// # Safety
    /// Only the calling step touches these entries now, and no other slice of them is alive.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn column(&self, r: usize, c: usize, len: usize) -> &mut [f64] {
        assert!(r >= c && r + len - c <= self.ld && r + len <= self.n);
        // SAFETY: in bounds (checked above, n * ld values); exclusive by the caller's
        // contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(c * self.ld + (r - c)), len) }
    }

    /// The reflector that zeroes rows `r + 1..r + len` of column c: applied to that
    /// column (leaving beta at row r), its v (leading one included) into `v[..len]`;
    /// returns tau.
    ///
    /// # Safety
    /// As for [`Working::column`].
    #[inline(always)]
    unsafe fn reflect(&self, r: usize, c: usize, len: usize, v: &mut [f64]) -> f64 {
        let x = unsafe { self.column(r, c, len) };
        let (beta, tau) = householder(x);
        v[0] = 1.0;
        v[1..len].copy_from_slice(&x[1..]);
        x[0] = beta;
        x[1..].fill(0.0);
        tau
    }

    /// `S <- H S H` for the diagonal block S on rows and columns `r0..r0 + len`, its lower
    /// triangle stored: `w = tau S v`, `w -= (tau / 2)(w^T v) v`, `S -= v w^T + w v^T`.
    ///
    /// # Safety
    /// As for [`Working::column`]; `scratch` holds at least len values.
    #[inline(always)]
    unsafe fn two_sided(&self, r0: usize, len: usize, v: &[f64], tau: f64, scratch: &mut [f64]) {
        let w = &mut scratch[..len];
        w.fill(0.0);
        for jj in 0..len {
            let col = unsafe { self.column(r0 + jj, r0 + jj, len - jj) };
            let mut sum = col[0] * v[jj];
            for t in 1..len - jj {
                sum += col[t] * v[jj + t];
                w[jj + t] += col[t] * v[jj];
            }
            w[jj] += sum;
        }
        let mut wv = 0.0;
        for (wi, vi) in w.iter_mut().zip(v) {
            *wi *= tau;
            wv += *wi * vi;
        }
        let alpha = -0.5 * tau * wv;
        for (wi, vi) in w.iter_mut().zip(v) {
            *wi += alpha * vi;
        }
        for jj in 0..len {
            let (vj, wj) = (v[jj], w[jj]);
            let col = unsafe { self.column(r0 + jj, r0 + jj, len - jj) };
            for (t, x) in col.iter_mut().enumerate() {
                *x -= v[jj + t] * wj + w[jj + t] * vj;
            }
        }
    }

    /// `X <- X H` for the block X on rows `r1..r1 + m` and columns `r0..r0 + len`:
    /// `y = X v`, `X -= tau y v^T`.
    ///
    /// # Safety
    /// As for [`Working::column`]; `scratch` holds at least m values.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn right(
        &self,
        r1: usize,
        m: usize,
        r0: usize,
        len: usize,
        v: &[f64],
        tau: f64,
        scratch: &mut [f64],
    ) {
        let y = &mut scratch[..m];
        y.fill(0.0);
        for (jj, &vj) in v.iter().enumerate().take(len) {
            for (yi, x) in y.iter_mut().zip(unsafe { self.column(r1, r0 + jj, m) }) {
                *yi += *x * vj;
            }
        }
        for (jj, &vj) in v.iter().enumerate().take(len) {
            let scale = tau * vj;
            for (x, yi) in unsafe { self.column(r1, r0 + jj, m) }.iter_mut().zip(&*y) {
                *x -= scale * yi;
            }
        }
    }

    /// `X <- H X` for the block X on rows `r1..r1 + m` and columns `c0..c1`:
    /// each column `x -= tau (v^T x) v`.
    ///
    /// # Safety
    /// As for [`Working::column`].
    #[inline(always)]
    unsafe fn left(&self, r1: usize, m: usize, c0: usize, c1: usize, v: &[f64], tau: f64) {
        for c in c0..c1 {
            let col = unsafe { self.column(r1, c, m) };
            let s: f64 = col.iter().zip(v).map(|(x, vi)| x * vi).sum();
            let scale = tau * s;
            for (x, vi) in col.iter_mut().zip(v) {
                *x -= scale * vi;
            }
        }
    }
}
