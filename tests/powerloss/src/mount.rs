//! Mounting, commanding and unmounting the file system from Rust: [`Mount`] for an in-process
//! mount (tests), [`command`] for a mount served by another process (the `powerloss-fs` binary).
//! Commands go through the control file so that they are ordered after every request the
//! kernel queued before them (see [`crate::fs`]).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, Config, MountOption};

use crate::fs::{Command, PowerlossFs};
use crate::state::{Meta, State};

/// Why a mount could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("backing directory {0} is not a directory")]
    BackingNotDir(PathBuf),
    #[error("store directory {0} must be empty (it is owned by the file system)")]
    StoreNotEmpty(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MountError + 'a {
    move |source| MountError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Builds the file system over `backing` (whose contents count as durable) with durable copies
/// kept in `store` (created if missing; must be empty).
pub fn prepare(backing: &Path, store: &Path) -> Result<PowerlossFs, MountError> {
    let md = fs::metadata(backing).map_err(io_err("reading", backing))?;
    if !md.is_dir() {
        return Err(MountError::BackingNotDir(backing.to_owned()));
    }
    fs::create_dir_all(store).map_err(io_err("creating", store))?;
    let mut entries = fs::read_dir(store).map_err(io_err("reading", store))?;
    if entries.next().is_some() {
        return Err(MountError::StoreNotEmpty(store.to_owned()));
    }
    let mut state = State::new(backing.to_owned(), store.to_owned(), Meta::of(&md));
    state
        .snapshot_backing()
        .map_err(io_err("copying the initial state of", backing))?;
    Ok(PowerlossFs::new(state))
}

/// The FUSE mount configuration used by [`Mount`] and the binary.
pub fn config() -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("powerloss".to_owned()),
        MountOption::Subtype("powerloss".to_owned()),
    ];
    config
}

/// Sends `cmd` to the file system mounted at `mountpoint`; returns once it ran.
pub fn command(mountpoint: &Path, cmd: Command) -> io::Result<()> {
    let mut ctl = OpenOptions::new()
        .write(true)
        .open(mountpoint.join(crate::CONTROL_NAME))?;
    ctl.write_all(cmd.text().as_bytes())
}

/// A mount served by a thread of this process; unmounted on drop.
#[derive(Debug)]
pub struct Mount {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl Mount {
    /// Mounts the file system over `backing` at `mountpoint` (see [`prepare`]).
    pub fn new(backing: &Path, store: &Path, mountpoint: &Path) -> Result<Mount, MountError> {
        let fs = prepare(backing, store)?;
        let session = fuser::spawn_mount(fs, mountpoint, &config())
            .map_err(io_err("mounting at", mountpoint))?;
        Ok(Mount {
            session: Some(session),
            mountpoint: mountpoint.to_owned(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The power cut: everything not durable is lost. Kill the processes using the mount first.
    pub fn cut(&self) -> io::Result<()> {
        command(&self.mountpoint, Command::Cut)
    }

    /// Makes everything durable, like sync(2).
    pub fn sync(&self) -> io::Result<()> {
        command(&self.mountpoint, Command::Sync)
    }

    /// From now on, fsync of the directory `rel` (relative to the mount) fails with `EIO`.
    pub fn fail_dir_sync(&self, rel: &Path) -> io::Result<()> {
        command(&self.mountpoint, Command::FailDirSync(rel.to_path_buf()))
    }

    /// Directory fsyncs work again.
    pub fn heal(&self) -> io::Result<()> {
        command(&self.mountpoint, Command::Heal)
    }

    /// Unmounts and waits for the serving thread.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            eprintln!(
                "powerloss-fs: unmounting {}: {e}",
                self.mountpoint.display()
            );
        }
    }
}
