//! The file system's in-memory model: nodes, the live namespace, the durable namespace, open
//! handles, and the name operations (lookup, create, mkdir, unlink, rmdir, rename, readdir).
//!
//! Invariants:
//! - The backing directory mirrors the live namespace exactly: a node with `live = Some((p, n))`
//!   is at `path(p)/n` in the backing directory, and every directory's `live_children` lists
//!   exactly the backing directory's entries. Every change goes through this file system, so
//!   the model is authoritative and the backing directory is only its storage.
//! - `durable_children` of a directory is its namespace as of its last fsync (or the mount, or
//!   the last cut/sync). It may name nodes that are unlinked, renamed elsewhere, or that hold
//!   no durable data yet; [`crate::durability`] resolves them at a power cut.
//! - Inode numbers are never reused within a mount, so a kernel that still holds an old one
//!   gets `ENOENT` rather than another file.
//!
//! Called by [`crate::fs`] (request dispatch) and [`crate::durability`] (sync and cut).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fuser::Errno;

use crate::ranges::Dirty;

/// Inode number as the kernel sees it.
pub type Ino = u64;

/// The root directory's inode number (fixed by FUSE).
pub const ROOT: Ino = 1;
/// The control file's inode number (see [`crate::CONTROL_NAME`]).
pub const CONTROL: Ino = 2;
/// First inode number handed to a file or directory other than the root.
const FIRST_INO: Ino = 3;

/// Result of a request: an errno for the kernel on failure.
pub type OpResult<T> = Result<T, Errno>;

/// The two kinds of node this file system supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Metadata that becomes durable with an fsync of the node itself.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub mode: u32,
    pub mtime: SystemTime,
}

impl Meta {
    pub fn of(md: &fs::Metadata) -> Meta {
        Meta {
            mode: md.permissions().mode() & 0o7777,
            mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

/// One file or directory.
#[derive(Debug)]
pub struct Node {
    pub kind: Kind,
    /// Parent and name in the live namespace; `None` once unlinked or removed.
    pub live: Option<(Ino, OsString)>,
    /// Directories: current entries.
    pub live_children: BTreeMap<OsString, Ino>,
    /// Directories: entries as of the last fsync of this directory.
    pub durable_children: BTreeMap<OsString, Ino>,
    /// Mode and mtime as of the node's last fsync (or its creation).
    pub durable_meta: Meta,
    /// Files: ranges written since the last fsync.
    pub dirty: Dirty,
}

impl Node {
    pub fn new(kind: Kind, live: Option<(Ino, OsString)>, meta: Meta) -> Node {
        Node {
            kind,
            live,
            live_children: BTreeMap::new(),
            durable_children: BTreeMap::new(),
            durable_meta: meta,
            dirty: Dirty::default(),
        }
    }
}

/// An open file: the backing file's descriptor, kept even if the name goes away.
#[derive(Debug)]
pub struct Handle {
    pub ino: Ino,
    pub file: File,
    /// Opened with `O_SYNC`/`O_DSYNC`: every write is durable when it returns.
    pub sync_writes: bool,
}

/// Everything the file system knows; one lock guards it all.
#[derive(Debug)]
pub struct State {
    /// The live tree's storage.
    pub backing: PathBuf,
    /// Durable file contents, one file per inode number (absent: durably empty).
    pub store: PathBuf,
    pub nodes: HashMap<Ino, Node>,
    pub handles: HashMap<u64, Handle>,
    next_ino: Ino,
    next_fh: u64,
    /// Directories (backing paths) whose fsync fails with `EIO` ([`crate::Command`]).
    pub failing_dir_syncs: Vec<PathBuf>,
}

impl State {
    /// An empty model over `backing` and `store`; [`crate::durability`] fills it at mount.
    pub fn new(backing: PathBuf, store: PathBuf, root_meta: Meta) -> State {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new(Kind::Dir, None, root_meta));
        State {
            backing,
            store,
            nodes,
            handles: HashMap::new(),
            next_ino: FIRST_INO,
            next_fh: 1,
            failing_dir_syncs: Vec::new(),
        }
    }

    pub fn alloc_ino(&mut self) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    pub fn node(&self, ino: Ino) -> OpResult<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub fn node_mut(&mut self, ino: Ino) -> OpResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// Where the node is in the backing directory, if it is still linked.
    pub fn path(&self, ino: Ino) -> Option<PathBuf> {
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let (parent, name) = self.nodes.get(&cur)?.live.as_ref()?;
            names.push(name.as_os_str());
            cur = *parent;
        }
        let mut path = self.backing.clone();
        path.extend(names.iter().rev());
        Some(path)
    }

    pub fn path_or_enoent(&self, ino: Ino) -> OpResult<PathBuf> {
        self.path(ino).ok_or(Errno::ENOENT)
    }

    /// The path a new entry `name` in directory `parent` would have.
    fn child_path(&self, parent: Ino, name: &OsStr) -> OpResult<PathBuf> {
        let dir = self.node(parent)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.path_or_enoent(parent)?.join(name))
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> OpResult<Ino> {
        let dir = self.node(parent)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        dir.live_children.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn link_child(&mut self, parent: Ino, name: &OsStr, kind: Kind, meta: Meta) -> OpResult<Ino> {
        let ino = self.alloc_ino();
        let node = Node::new(kind, Some((parent, name.to_owned())), meta);
        self.nodes.insert(ino, node);
        self.node_mut(parent)?
            .live_children
            .insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Creates a regular file and opens it; returns the inode and the handle.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> OpResult<(Ino, u64)> {
        let path = self.child_path(parent, name)?;
        if self.lookup(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .custom_flags(flags & libc::O_NOFOLLOW)
            .open(&path)?;
        let meta = Meta::of(&file.metadata()?);
        let ino = self.link_child(parent, name, Kind::File, meta)?;
        Ok((ino, self.add_handle(ino, file, flags)))
    }

    pub fn mkdir(&mut self, parent: Ino, name: &OsStr, mode: u32) -> OpResult<Ino> {
        let path = self.child_path(parent, name)?;
        if self.lookup(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        fs::DirBuilder::new().mode(mode & 0o7777).create(&path)?;
        let meta = Meta::of(&fs::metadata(&path)?);
        self.link_child(parent, name, Kind::Dir, meta)
    }

    /// Removes a file's name; open handles keep its data reachable.
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> OpResult<()> {
        let ino = self.lookup(parent, name)?;
        if self.node(ino)?.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        fs::remove_file(self.child_path(parent, name)?)?;
        self.detach(parent, name, ino)
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> OpResult<()> {
        let ino = self.lookup(parent, name)?;
        let node = self.node(ino)?;
        if node.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if !node.live_children.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        fs::remove_dir(self.child_path(parent, name)?)?;
        self.detach(parent, name, ino)
    }

    fn detach(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> OpResult<()> {
        self.node_mut(parent)?.live_children.remove(name);
        self.node_mut(ino)?.live = None;
        Ok(())
    }

    /// Renames, replacing an existing target as rename(2) does; `noreplace` refuses to.
    pub fn rename(
        &mut self,
        (parent, name): (Ino, &OsStr),
        (newparent, newname): (Ino, &OsStr),
        noreplace: bool,
    ) -> OpResult<()> {
        let ino = self.lookup(parent, name)?;
        let replaced = self.lookup(newparent, newname).ok();
        if replaced == Some(ino) {
            return Ok(());
        }
        if noreplace && replaced.is_some() {
            return Err(Errno::EEXIST);
        }
        let from = self.child_path(parent, name)?;
        let to = self.child_path(newparent, newname)?;
        // The backing rename checks what rename(2) checks (directory into itself, kinds, empty).
        fs::rename(&from, &to)?;
        if let Some(old) = replaced {
            self.detach(newparent, newname, old)?;
        }
        self.node_mut(parent)?.live_children.remove(name);
        self.node_mut(newparent)?
            .live_children
            .insert(newname.to_owned(), ino);
        self.node_mut(ino)?.live = Some((newparent, newname.to_owned()));
        Ok(())
    }

    /// Entries of a directory for readdir: `.`, `..`, then the live children by name.
    pub fn entries(&self, ino: Ino) -> OpResult<Vec<(Ino, Kind, OsString)>> {
        let dir = self.node(ino)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let parent = dir.live.as_ref().map_or(ROOT, |(p, _)| *p);
        let mut out = vec![
            (ino, Kind::Dir, OsString::from(".")),
            (parent, Kind::Dir, OsString::from("..")),
        ];
        for (name, child) in &dir.live_children {
            out.push((*child, self.node(*child)?.kind, name.clone()));
        }
        Ok(out)
    }

    /// Registers an open descriptor; `flags` are the open(2) flags.
    pub fn add_handle(&mut self, ino: Ino, file: File, flags: i32) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        // O_SYNC includes the O_DSYNC bit on Linux.
        let sync_writes = flags & libc::O_DSYNC != 0;
        self.handles.insert(
            fh,
            Handle {
                ino,
                file,
                sync_writes,
            },
        );
        fh
    }

    /// The handle `fh`; a handle from before a power cut is gone, like the process that held it.
    pub fn handle(&self, fh: u64) -> OpResult<&Handle> {
        self.handles.get(&fh).ok_or(Errno::EIO)
    }

    /// Some descriptor of the node's live content: a given handle, its path, or any handle.
    pub fn open_for_sync(&self, ino: Ino, fh: Option<u64>) -> OpResult<File> {
        if let Some(h) = fh.and_then(|fh| self.handles.get(&fh)) {
            return Ok(h.file.try_clone()?);
        }
        if let Some(path) = self.path(ino) {
            return Ok(File::open(path)?);
        }
        match self.handles.values().find(|h| h.ino == ino) {
            Some(h) => Ok(h.file.try_clone()?),
            None => Err(Errno::ENOENT),
        }
    }

    /// Metadata of the node's live content (by handle when it has no name any more).
    pub fn metadata(&self, ino: Ino, fh: Option<u64>) -> OpResult<fs::Metadata> {
        if let Some(h) = fh.and_then(|fh| self.handles.get(&fh)) {
            return Ok(h.file.metadata()?);
        }
        if let Some(path) = self.path(ino) {
            return Ok(fs::symlink_metadata(path)?);
        }
        match self.handles.values().find(|h| h.ino == ino) {
            Some(h) => Ok(h.file.metadata()?),
            None => Err(Errno::ENOENT),
        }
    }
}

/// Removes everything inside `dir`, keeping `dir` itself.
pub fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
