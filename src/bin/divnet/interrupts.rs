//! Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closed): the process removes the
//! temporary files of outputs being written ([`divnet::io::atomic::remove_staged_files`]),
//! then dies of the signal as it would have without divnet's help, so that a shell loop or
//! a parent process sees a process killed by the signal, not one that chose to exit (bash
//! stops a script on the first, and carries on after the second). Outputs that existed stay
//! as they were.
//!
//! The signals are blocked in every thread (set before any other thread exists, so that
//! rayon's and wgpu's inherit the mask) and taken by one thread that waits for them with
//! `sigwait`: the clean-up then runs as ordinary code, not in a signal handler, where
//! neither a lock nor an allocation is allowed.

/// The signals taken.
#[cfg(unix)]
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Starts the waiting thread. Call first thing in `main`, before any thread is spawned.
#[cfg(unix)]
pub fn remove_outputs_on_signal() {
    // SAFETY: plain libc calls on signal sets owned here; the mask is set in the only thread
    // that exists, and sigwait is the documented way to take blocked signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return; // signals keep their default action: no clean-up, but nothing worse
        }
        let spawned = std::thread::Builder::new()
            .name("divnet signals".into())
            .spawn(move || {
                let mut signal: libc::c_int = 0;
                if libc::sigwait(&set, &mut signal) != 0 {
                    return;
                }
                divnet::io::atomic::remove_staged_files();
                // Not eprintln!: with stderr a closed pipe (`divnet ... | tee log` and the
                // same Ctrl-C ending tee first) it would panic here, before the exit.
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    b"divnet: interrupted; outputs not yet in place were removed\n",
                );
                die_of(signal);
            });
        if spawned.is_err() {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

/// Ends the process by `signal` with its default action; exits with the shell's code for
/// it (128 + signal) should that not end it.
#[cfg(unix)]
fn die_of(signal: libc::c_int) -> ! {
    // SAFETY: restoring the default action and unblocking the signal in this thread, then
    // raising it, are plain libc calls; the default action of these signals ends the process.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}

/// Elsewhere the signals keep their default action.
#[cfg(not(unix))]
pub fn remove_outputs_on_signal() {}
