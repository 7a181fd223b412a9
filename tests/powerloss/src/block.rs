//! A real ext4 that loses power: a disk image on a power-loss mount, attached to a loop device
//! and mounted as ext4 ([`Ext4Disk`]).
//!
//! ext4 turns its journal commits, `fsync`, `fdatasync` and `syncfs(2)` into flushes of the
//! loop device; the loop device turns a flush into an `fsync` of the image file, which the
//! power-loss file system sees. So a cut leaves the image as a disk with a volatile write cache
//! would be after a power loss (every write since the last flush lost), and the next mount
//! replays ext4's journal. This reaches what the file-level model cannot: `syncfs(2)` (FUSE
//! does not pass it on, but ext4 over a loop device does), and ext4's own crash behaviour
//! (delayed allocation, one journal for all metadata).
//!
//! Needs root, `/dev/loop-control`, and `mkfs.ext4`, `losetup`, `mount`, `umount` (e2fsprogs,
//! util-linux). Kill every process using the ext4 mount before [`Ext4Disk::cut`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mount::{Mount, MountError};

/// Why the disk could not be set up or cut.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
}

/// ext4 on a loop device over an image on a power-loss mount. Unmounted and detached on drop.
#[derive(Debug)]
pub struct Ext4Disk {
    fuse: Mount,
    image: PathBuf,
    device: Option<String>,
    mountpoint: PathBuf,
}

const IMAGE: &str = "disk.img";

impl Ext4Disk {
    /// Whether this machine can build one (root, loop devices, the commands); says why not.
    pub fn available() -> Result<(), String> {
        if !Path::new("/dev/loop-control").exists() {
            return Err("/dev/loop-control is missing".into());
        }
        for tool in ["mkfs.ext4", "losetup", "mount", "umount"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                return Err(format!("{tool} is missing"));
            }
        }
        Ok(())
    }

    /// Makes a `size_mib` ext4 image in `root/disk.backing` (durable from the start), serves it
    /// through a power-loss mount at `root/disk.fuse`, and mounts it at `root/disk`.
    pub fn new(root: &Path, size_mib: u64) -> Result<Ext4Disk, DiskError> {
        let backing = root.join("disk.backing");
        let fuse_dir = root.join("disk.fuse");
        let mountpoint = root.join("disk");
        for d in [&backing, &fuse_dir, &mountpoint] {
            fs::create_dir_all(d)?;
        }
        let raw = backing.join(IMAGE);
        fs::File::create(&raw)?.set_len(size_mib << 20)?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&raw))?;
        let fuse = Mount::new(&backing, &root.join("disk.store"), &fuse_dir)?;
        let mut disk = Ext4Disk {
            image: fuse_dir.join(IMAGE),
            fuse,
            device: None,
            mountpoint,
        };
        disk.attach()?;
        Ok(disk)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The power cut: every write to the image since its last flush is lost; then the image
    /// is attached and mounted again (ext4 replays its journal).
    pub fn cut(&mut self) -> Result<(), DiskError> {
        self.fuse.cut()?;
        self.detach()?;
        self.attach()
    }

    fn attach(&mut self) -> Result<(), DiskError> {
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&self.image))?;
        let dev = dev.trim().to_string();
        self.device = Some(dev.clone());
        run(Command::new("mount")
            .args(["-t", "ext4", &dev])
            .arg(&self.mountpoint))?;
        Ok(())
    }

    /// Unmounts (writes after a cut fail with EIO and are lost) and frees the loop device.
    fn detach(&mut self) -> Result<(), DiskError> {
        if let Some(dev) = self.device.take() {
            if run(Command::new("umount").arg(&self.mountpoint)).is_err() {
                run(Command::new("umount").arg("-l").arg(&self.mountpoint))?;
            }
            run(Command::new("losetup").args(["-d", &dev]))?;
        }
        Ok(())
    }
}

impl Drop for Ext4Disk {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            eprintln!("ext4 disk at {}: {e}", self.mountpoint.display());
        }
    }
}

/// Runs a command; its standard output, or an error with both outputs.
fn run(cmd: &mut Command) -> Result<String, DiskError> {
    let o = cmd.output()?;
    if o.status.success() {
        return Ok(String::from_utf8_lossy(&o.stdout).into_owned());
    }
    Err(DiskError::Command {
        command: format!("{cmd:?}"),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    })
}
