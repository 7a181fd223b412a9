//! `powerloss-fs BACKING STORE MOUNTPOINT`: serves the power-loss file system until SIGINT or
//! SIGTERM (then unmounts) or until unmounted (`fusermount3 -u MOUNTPOINT`). Cut the power
//! with `echo cut > MOUNTPOINT/.powerloss-ctl`, make everything durable with `echo sync > ...`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [backing, store, mountpoint] = args.as_slice() else {
        eprintln!("usage: powerloss-fs BACKING STORE MOUNTPOINT");
        return ExitCode::from(2);
    };
    let fs = match drain_powerloss::prepare(backing, store) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("powerloss-fs: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Blocked before any thread starts, so only the waiting below receives them.
    let signals = block_termination_signals();
    let session = match fuser::spawn_mount(fs, mountpoint, &drain_powerloss::config()) {
        Ok(session) => session,
        Err(e) => {
            eprintln!("powerloss-fs: mounting at {}: {e}", mountpoint.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!("powerloss-fs: serving {}", mountpoint.display());
    // An unmount from outside ends the session thread; a signal asks us to unmount.
    let waiter = std::thread::spawn(move || wait_for(&signals));
    while !session.guard.is_finished() && !waiter.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ended = if session.guard.is_finished() {
        session.join()
    } else {
        session.umount_and_join()
    };
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("powerloss-fs: unmounting {}: {e}", mountpoint.display());
            ExitCode::FAILURE
        }
    }
}

fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local, zero-initialised set; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: &libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: `set` is a valid signal set and `sig` a writable int.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
}
