//! A run killed half-way (SIGKILL, so no clean-up code runs) leaves the previous output
//! byte for byte intact.
//!
//! What `divnet::io::atomic` promises: the new output is written to `.NAME.PID.tmp` in the
//! output's folder and renamed over `NAME` only once complete; on an error the temporary file
//! is removed. A SIGKILL during the write cannot run that clean-up, so the one thing a killed
//! run may leave is that hidden `.NAME.<pid of the killed run>.tmp`: never a file under the
//! output's own name, never a partial output. These tests check exactly that.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use divnet::io::npy::write_npy;

const BIN: &str = env!("CARGO_BIN_EXE_divnet");

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// After a killed run: the old output is unchanged and anything else in `dir` is the
/// documented temporary file of that run.
fn check_after_kill(dir: &Path, out: &Path, old: &[u8], pid: u32, inputs: &[&str]) {
    assert_eq!(
        std::fs::read(out).unwrap(),
        old,
        "the previous output changed"
    );
    let out_name = out.file_name().unwrap().to_string_lossy().into_owned();
    let temp_name = format!(".{out_name}.{pid}.tmp");
    for name in names(dir) {
        assert!(
            name == out_name || name == temp_name || inputs.contains(&name.as_str()),
            "unexpected file {name:?} after the killed run (allowed: {out_name}, {temp_name})"
        );
    }
}

fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn kernel_command(acts: &Path, out: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["kernel", "--backend", "cpu", "--activations"])
        .arg(acts)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Activations whose kernel (2000 x 2000 f64, 32 MB) takes long enough to write that the
/// kill can land inside the write.
fn wide_activations(dir: &Path) -> PathBuf {
    let (m, n) = (3usize, 2000usize);
    let a: Vec<f32> = (0..m * n).map(|i| ((i * 31) % 97) as f32 / 97.0).collect();
    let path = dir.join("acts.npy");
    write_npy(&path, &[m, n], &a).unwrap();
    path
}

/// The activations of [`wide_activations`] in `dir`, the kernel's output path there, and the
/// bytes of the previous output that an interrupted run must leave.
fn kernel_run(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let acts = wide_activations(dir);
    let out = dir.join("kernel.npy");
    (
        acts,
        out,
        b"the previous kernel, which must survive".to_vec(),
    )
}

/// Kills `divnet kernel` the moment its temporary output appears, i.e. during the write
/// itself: the old output must survive. Repeats a few times because the window is short;
/// at least one kill must land inside the write for the test to count.
#[test]
fn kill_during_the_write_keeps_the_previous_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (acts, out, old) = kernel_run(dir);
    let mut landed = 0;
    for _attempt in 0..6 {
        std::fs::write(&out, &old).unwrap();
        let child = kernel_command(&acts, &out).spawn().unwrap();
        let pid = child.id();
        let temp = dir.join(format!(".kernel.npy.{pid}.tmp"));
        let start = Instant::now();
        let mut seen = false;
        let mut child = Some(child);
        while start.elapsed() < Duration::from_secs(60) {
            if temp.exists() {
                seen = true;
                kill(child.take().unwrap());
                break;
            }
            if let Some(status) = child.as_mut().unwrap().try_wait().unwrap() {
                assert!(status.success(), "kernel failed: {status}");
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if let Some(c) = child {
            kill(c);
        }
        if seen {
            // The rename may have won the race against the kill; only a kill before it
            // tests anything, and then the old bytes must be there.
            let now = std::fs::read(&out).unwrap();
            if now == old {
                landed += 1;
                check_after_kill(dir, &out, &old, pid, &["acts.npy"]);
            } else {
                let full = divnet::io::npy::read_npy(&out).unwrap();
                assert_eq!(full.shape, vec![2000, 2000], "a partial output was renamed");
            }
        }
        // Leftover temporaries of killed runs do not disturb later runs.
        for name in names(dir) {
            if name.ends_with(".tmp") {
                std::fs::remove_file(dir.join(name)).unwrap();
            }
        }
    }
    eprintln!("{landed} of 6 kills landed inside the write");
    assert!(landed > 0, "no kill landed inside the write in 6 attempts");
}

/// Kills `divnet train` in the middle of its epochs: the previous model is untouched and no
/// temporary file exists yet (it is only created once training is done).
#[test]
fn kill_during_training_keeps_the_previous_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (m, d) = (256usize, 32usize);
    let x: Vec<f32> = (0..m * d).map(|i| ((i * 13) % 29) as f32 / 29.0).collect();
    let y: Vec<i64> = (0..m as i64).map(|i| i % 3).collect();
    write_npy(&dir.join("x.npy"), &[m, d], &x).unwrap();
    write_npy(&dir.join("y.npy"), &[m], &y).unwrap();
    let out = dir.join("model.safetensors");
    let old = b"the previous model, which must survive".to_vec();
    std::fs::write(&out, &old).unwrap();
    let child = Command::new(BIN)
        .args([
            "train",
            "--hidden",
            "64",
            "--epochs",
            "100000",
            "--batch-size",
            "8",
        ])
        .arg("--data")
        .arg(dir.join("x.npy"))
        .arg("--labels")
        .arg(dir.join("y.npy"))
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(800));
    kill(child);
    check_after_kill(dir, &out, &old, pid, &["x.npy", "y.npy"]);
    assert!(
        !dir.join(format!(".model.safetensors.{pid}.tmp")).exists(),
        "a temporary file exists before training finished"
    );
}

/// A run that completes replaces the output and leaves no temporary file.
#[test]
fn completed_run_replaces_the_output_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let acts = dir.join("a.npy");
    write_npy(&acts, &[4, 3], &[0.5f32; 12]).unwrap();
    let out = dir.join("k.npy");
    std::fs::write(&out, b"old").unwrap();
    let status = kernel_command(&acts, &out).status().unwrap();
    assert!(status.success());
    let k = divnet::io::npy::read_npy(&out).unwrap();
    assert_eq!(k.shape, vec![3, 3]);
    assert_eq!(names(dir), ["a.npy", "k.npy"]);
}

/// SIGINT (Ctrl-C), SIGTERM or SIGHUP the moment `divnet kernel`'s temporary output
/// appears: unlike a SIGKILL, these are caught, and the run removes its temporary file, says
/// so, and then dies of the signal (so that a shell loop stops, as it does for any program
/// killed by Ctrl-C); the old output survives. As above, only the signals that land before
/// the rename count, and at least one must.
#[cfg(unix)]
#[test]
fn interrupt_during_the_write_removes_the_temporary_file() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (acts, out, old) = kernel_run(dir);
    let mut landed = 0;
    let signals = [("-INT", 2), ("-TERM", 15), ("-HUP", 1)].repeat(2);
    for (attempt, (name, number)) in signals.iter().enumerate() {
        std::fs::write(&out, &old).unwrap();
        let mut child = kernel_command(&acts, &out)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let temp = dir.join(format!(".kernel.npy.{pid}.tmp"));
        let start = Instant::now();
        while !temp.exists() && child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < Duration::from_secs(60), "no write began");
            std::thread::sleep(Duration::from_micros(200));
        }
        let sent = Command::new("kill")
            .arg(name)
            .arg(pid.to_string())
            .status()
            .unwrap();
        let output = child.wait_with_output().unwrap();
        if !sent.success() || output.status.success() {
            continue; // the run finished first
        }
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.signal(),
            Some(*number),
            "attempt {attempt}: {err}"
        );
        assert!(err.contains("divnet: interrupted"), "{err}");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            old,
            "the previous output changed"
        );
        assert_eq!(names(dir), ["acts.npy", "kernel.npy"], "attempt {attempt}");
        landed += 1;
    }
    eprintln!(
        "{landed} of {} signals landed before the rename",
        signals.len()
    );
    assert!(landed > 0, "no signal landed before the rename");
}
