//! Ctrl-C (SIGINT) and SIGTERM: the process exits as a signal would end it, but first
//! removes the temporary files of outputs being written
//! ([`divnet::io::atomic::remove_staged_files`]); outputs that existed stay as they were.
//!
//! The signals are blocked in every thread (set before any other thread exists, so that
//! rayon's and wgpu's inherit the mask) and taken by one thread that waits for them with
//! `sigwait`: the clean-up then runs as ordinary code, not in a signal handler, where
//! neither a lock nor an allocation is allowed.

/// Starts the waiting thread. Call first thing in `main`, before any thread is spawned.
#[cfg(unix)]
pub fn remove_outputs_on_signal() {
    // SAFETY: plain libc calls on a signal set owned by this function; the mask is set in
    // the only thread that exists, and sigwait is the documented way to take blocked signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
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
                eprintln!(
                    "divnet: interrupted by {}; outputs not yet in place were removed",
                    if signal == libc::SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    }
                );
                // The shell's convention for a process ended by signal s.
                std::process::exit(128 + signal);
            });
        if spawned.is_err() {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

/// Elsewhere the signals keep their default action.
#[cfg(not(unix))]
pub fn remove_outputs_on_signal() {}
