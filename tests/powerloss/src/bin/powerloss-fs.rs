//! `powerloss-fs BACKING STORE MOUNTPOINT`: serves the power-loss file system in the
//! foreground until unmounted (`fusermount3 -u MOUNTPOINT`). Cut the power with
//! `echo cut > MOUNTPOINT/.powerloss-ctl`, make everything durable with `echo sync > ...`.

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
    match fuser::mount(fs, mountpoint, &drain_powerloss::config()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("powerloss-fs: serving {}: {e}", mountpoint.display());
            ExitCode::FAILURE
        }
    }
}
