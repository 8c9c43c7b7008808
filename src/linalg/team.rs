//! A fixed team of threads that wait for work by spinning, for loops that hand out
//! thousands of sub-millisecond parallel steps in a row (one per column of the
//! tridiagonal reduction), and the process-wide budget that sizes the teams.
//!
//! Why not rayon: waking a parked rayon worker costs tens of microseconds, as much as a
//! whole step on the small trailing matrices at the end of the reduction, and it is paid
//! once per column. Team members spin between steps, so a step starts within nanoseconds.
//!
//! Spinning members keep their cores busy for as long as the team lives, so two teams side
//! by side (two solves at once: parallel tests, a library user with threads) would fight
//! over the same cores. A [`TeamLease`] takes its extra members from one process-wide
//! budget of `threads - 1` (threads: faer's global parallelism); a second solve started
//! while the first holds the budget gets what is left, down to its own thread alone. The
//! work each step hands out is split into a fixed number of parts that does not depend on
//! the team's size (see `reduction.rs`), so a smaller team gives the same result, bit for
//! bit, only later.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Scope;

/// Team members (beyond each leader) alive in this process, across all teams.
static MEMBERS_IN_USE: AtomicUsize = AtomicUsize::new(0);

/// A claim on the process-wide budget of spinning team members, returned when dropped.
pub(crate) struct TeamLease {
    members: usize,
}

impl TeamLease {
    /// Claims a team of up to `wanted` threads (the caller included) from a process-wide
    /// budget of `threads - 1` members beside their leaders, `threads` being faer's global
    /// parallelism: as many as are free, none when the budget is spent.
    pub(crate) fn claim(wanted: usize) -> Self {
        let budget = faer::get_global_parallelism().degree().max(1) - 1;
        let wanted = wanted.max(1) - 1;
        let mut in_use = MEMBERS_IN_USE.load(Ordering::Relaxed);
        loop {
            let members = wanted.min(budget.saturating_sub(in_use));
            match MEMBERS_IN_USE.compare_exchange_weak(
                in_use,
                in_use + members,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return TeamLease { members },
                Err(now) => in_use = now,
            }
        }
    }

    /// Threads of the team: the leader and the claimed members.
    pub(crate) fn size(&self) -> usize {
        self.members + 1
    }
}

impl Drop for TeamLease {
    fn drop(&mut self) {
        MEMBERS_IN_USE.fetch_sub(self.members, Ordering::AcqRel);
    }
}

/// Spins before a waiting thread starts yielding its core between checks.
const SPINS_BEFORE_YIELD: u32 = 1 << 16;

type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped by the leader to post a job.
    epoch: AtomicUsize,
    /// Members that have finished the current job.
    finished: AtomicUsize,
    /// A member's job panicked.
    panicked: AtomicBool,
    quit: AtomicBool,
    /// The posted job. Written only by the leader, only while no member reads it (before
    /// it bumps `epoch`, after every member has counted itself in `finished`).
    job: UnsafeCell<Option<Job<'static>>>,
}

// SAFETY: `job` is accessed under the epoch protocol documented on the field.
unsafe impl Sync for Shared {}

/// The leader (the thread that creates the team) and `size - 1` spinning members, which
/// live in the thread scope `'scope` and stop when the team is dropped.
///
/// `run` takes `&mut self`: one job at a time, and a job cannot post another.
pub(crate) struct SpinTeam<'scope> {
    shared: Arc<Shared>,
    size: usize,
    scope: PhantomData<&'scope ()>,
}

impl<'scope> SpinTeam<'scope> {
    /// Starts `size - 1` members in `scope`; the caller is member 0.
    pub(crate) fn new(scope: &'scope Scope<'scope, '_>, size: usize) -> Self {
        let size = size.max(1);
        let team = SpinTeam {
            shared: Arc::new(Shared {
                epoch: AtomicUsize::new(0),
                finished: AtomicUsize::new(0),
                panicked: AtomicBool::new(false),
                quit: AtomicBool::new(false),
                job: UnsafeCell::new(None),
            }),
            size,
            scope: PhantomData,
        };
        // The team exists before its members: if a spawn fails, unwinding drops it, which
        // stops the members already started.
        for member in 1..size {
            let shared = Arc::clone(&team.shared);
            scope.spawn(move || member_loop(&shared, member));
        }
        team
    }

    /// How many threads run each job.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Runs `job(member)` for every member `0..size` at once, the caller taking member 0,
    /// and returns when all are done. A panic in any member is raised here.
    pub(crate) fn run(&mut self, job: impl Fn(usize) + Sync) {
        if self.size == 1 {
            job(0);
            return;
        }
        let job: Job<'_> = &job;
        // SAFETY: the lifetime is erased only for the members' reads, and they all
        // finish (counted in `finished` below) before this function returns and `job` is
        // dropped; no member reads `job` between epochs.
        unsafe {
            *self.shared.job.get() = Some(std::mem::transmute::<Job<'_>, Job<'static>>(job));
        }
        self.shared.finished.store(0, Ordering::Relaxed);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        let own = catch_unwind(AssertUnwindSafe(|| job(0)));
        let mut spins = 0u32;
        while self.shared.finished.load(Ordering::Acquire) < self.size - 1 {
            wait(&mut spins);
        }
        // SAFETY: every member has finished with the job.
        unsafe {
            *self.shared.job.get() = None;
        }
        let member_panicked = self.shared.panicked.swap(false, Ordering::Relaxed);
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        if member_panicked {
            panic!("a spin-team member panicked");
        }
    }
}

impl Drop for SpinTeam<'_> {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::Release);
    }
}

fn member_loop(shared: &Shared, member: usize) {
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        let epoch = loop {
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                break epoch;
            }
            if shared.quit.load(Ordering::Acquire) {
                return;
            }
            wait(&mut spins);
        };
        seen = epoch;
        // Counted as finished however the job ends, so the leader never waits forever.
        let _finished = Finished(&shared.finished);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: the leader wrote the job before bumping the epoch (Release, paired
            // with the Acquire above) and does not touch it until this member is counted.
            let job = unsafe { (*shared.job.get()).expect("a posted job") };
            job(member);
        }));
        if outcome.is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
    }
}

/// Counts its member in `finished` when dropped.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

pub(super) fn wait(spins: &mut u32) {
    if *spins < SPINS_BEFORE_YIELD {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_runs_each_job_once() {
        for size in [1, 2, 3] {
            let hits: Vec<AtomicUsize> = (0..size).map(|_| AtomicUsize::new(0)).collect();
            std::thread::scope(|scope| {
                let mut team = SpinTeam::new(scope, size);
                for _ in 0..1000 {
                    team.run(|member| {
                        hits[member].fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), 1000, "size {size}");
            }
        }
    }

    /// A second claim while the first holds the budget gets only what is left; the budget
    /// comes back when a lease is dropped. (Other tests in this binary claim teams too, so
    /// the checks are relative to what is free when each claim is made.)
    #[test]
    fn leases_share_one_budget() {
        let threads = faer::get_global_parallelism().degree().max(1);
        let first = TeamLease::claim(usize::MAX);
        assert!(first.size() >= 1 && first.size() <= threads);
        let second = TeamLease::claim(usize::MAX);
        let members = (first.size() - 1, second.size() - 1);
        assert!(
            members.0 + members.1 < threads,
            "{} + {} members from a budget of {}",
            members.0,
            members.1,
            threads - 1
        );
        assert_eq!(TeamLease::claim(1).size(), 1);
        drop(first);
        drop(second);
    }

    #[test]
    fn a_member_panic_reaches_the_leader() {
        let caught = std::panic::catch_unwind(|| {
            std::thread::scope(|scope| {
                let mut team = SpinTeam::new(scope, 2);
                team.run(|member| assert!(member == 0, "member {member} fails"));
            })
        });
        assert!(caught.is_err());
    }
}
