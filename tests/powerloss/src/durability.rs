//! What is durable, and the power cut: the mount-time snapshot, fsync of a file, fsync of a
//! directory, sync of everything, and the cut that rebuilds the live tree from the durable state.
//!
//! The durable state is: for each directory, its `durable_children`; for each file, its copy in
//! the store (`<store>/<ino>`, absent meaning empty) and its `durable_meta`. A cut walks the
//! durable namespace from the root and materialises it into the (emptied) backing directory.
//! The store itself is never fsynced: it only has to outlive simulated power cuts, not real ones.
//! Called by [`crate::fs`] and at mount by [`crate::mount`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::state::{Ino, Kind, Meta, Node, OpResult, ROOT, State, empty_dir};

/// Chunk size when copying dirty ranges into the store.
const COPY_CHUNK: u64 = 1 << 20;

impl State {
    fn store_path(&self, ino: Ino) -> PathBuf {
        self.store.join(ino.to_string())
    }

    /// Takes everything in the backing directory as durable: the state at mount is what a
    /// disk would hold after a clean shutdown.
    pub fn snapshot_backing(&mut self) -> io::Result<()> {
        let backing = self.backing.clone();
        self.snapshot_dir(ROOT, &backing)
    }

    fn snapshot_dir(&mut self, dir: Ino, path: &Path) -> io::Result<()> {
        let mut children = BTreeMap::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            // Symlinks, devices and the like are not supported and stay invisible.
            let kind = match (ft.is_file(), ft.is_dir()) {
                (true, _) => Kind::File,
                (_, true) => Kind::Dir,
                _ => continue,
            };
            let meta = Meta::of(&entry.metadata()?);
            let ino = self.alloc_ino();
            let name = entry.file_name();
            self.nodes
                .insert(ino, Node::new(kind, Some((dir, name.clone())), meta));
            children.insert(name, ino);
            match kind {
                Kind::File => {
                    fs::copy(entry.path(), self.store_path(ino))?;
                }
                Kind::Dir => self.snapshot_dir(ino, &entry.path())?,
            }
        }
        if let Some(node) = self.nodes.get_mut(&dir) {
            node.durable_children = children.clone();
            node.live_children = children;
        }
        Ok(())
    }

    /// fsync/fdatasync of a file: its dirty ranges and length go to the store; fsync also
    /// records mode and mtime. Names are not touched (that is the directory's fsync).
    pub fn sync_file(&mut self, ino: Ino, fh: Option<u64>, datasync: bool) -> OpResult<()> {
        let src = self.open_for_sync(ino, fh)?;
        let md = src.metadata()?;
        let store = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.store_path(ino))?;
        let len = md.len();
        store.set_len(len)?;
        let node = self.node_mut(ino)?;
        for &(start, end) in node.dirty.ranges() {
            copy_range(&src, &store, start, end.min(len))?;
        }
        node.dirty.clear();
        if !datasync {
            node.durable_meta = Meta::of(&md);
        }
        Ok(())
    }

    /// fsync of a directory: its current entries become its durable entries, and its own
    /// mode and mtime become durable.
    pub fn sync_dir(&mut self, ino: Ino) -> OpResult<()> {
        let meta = self.metadata(ino, None).map(|md| Meta::of(&md));
        let node = self.node_mut(ino)?;
        node.durable_children = node.live_children.clone();
        if let Ok(meta) = meta {
            node.durable_meta = meta;
        }
        Ok(())
    }

    /// sync(2) of the whole mount: every reachable or open file and every directory.
    pub fn sync_all(&mut self) -> OpResult<()> {
        let mut files: Vec<Ino> = Vec::new();
        let mut dirs: Vec<Ino> = Vec::new();
        for (ino, node) in &self.nodes {
            match node.kind {
                Kind::Dir if node.live.is_some() || *ino == ROOT => dirs.push(*ino),
                Kind::File if node.live.is_some() => files.push(*ino),
                Kind::File if self.handles.values().any(|h| h.ino == *ino) => files.push(*ino),
                _ => {}
            }
        }
        for ino in files {
            self.sync_file(ino, None, false)?;
        }
        for ino in dirs {
            self.sync_dir(ino)?;
        }
        Ok(())
    }

    /// The power cut: open handles die, the backing directory is emptied and rebuilt from the
    /// durable state, and every node that is not durably reachable is forgotten.
    pub fn cut(&mut self) -> io::Result<()> {
        self.handles.clear();
        empty_dir(&self.backing)?;
        let mut old = std::mem::take(&mut self.nodes);
        let mut root = old
            .remove(&ROOT)
            .ok_or_else(|| io::Error::other("the root node is missing"))?;
        root.live = None;
        let mut rebuild = Rebuild {
            old,
            seen: HashSet::from([ROOT]),
        };
        let root_children = std::mem::take(&mut root.durable_children);
        let backing = self.backing.clone();
        root.live_children = self.materialise_dir(&mut rebuild, ROOT, &backing, root_children)?;
        root.durable_children = root.live_children.clone();
        set_meta(&backing, root.durable_meta)?;
        self.nodes.insert(ROOT, root);
        // Durable copies of forgotten nodes are garbage now.
        for ino in rebuild.old.keys() {
            match fs::remove_file(self.store_path(*ino)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Recreates the durable entries of directory `dir` (at `path`) and returns its new entries.
    fn materialise_dir(
        &mut self,
        rebuild: &mut Rebuild,
        dir: Ino,
        path: &Path,
        durable: BTreeMap<OsString, Ino>,
    ) -> io::Result<BTreeMap<OsString, Ino>> {
        let mut children = BTreeMap::new();
        for (name, child) in durable {
            let child_path = path.join(&name);
            let Some(mut node) = self.take_for_rebuild(rebuild, child)? else {
                continue;
            };
            let ino = if rebuild.seen.insert(child) {
                child
            } else {
                self.clone_ino(child)?
            };
            node.live = Some((dir, name.clone()));
            node.dirty.clear();
            match node.kind {
                Kind::File => {
                    self.materialise_file(ino, &child_path)?;
                }
                Kind::Dir => {
                    fs::create_dir(&child_path)?;
                    let durable = std::mem::take(&mut node.durable_children);
                    node.live_children =
                        self.materialise_dir(rebuild, ino, &child_path, durable)?;
                    node.durable_children = node.live_children.clone();
                }
            }
            set_meta(&child_path, node.durable_meta)?;
            self.nodes.insert(ino, node);
            children.insert(name, ino);
        }
        Ok(children)
    }

    /// The node to place for a durable entry naming `ino`. A file named twice (a rename made
    /// durable in its new directory only) becomes a second, independent file; a directory
    /// named twice or in a loop (same cause) is placed once.
    fn take_for_rebuild(&mut self, rebuild: &mut Rebuild, ino: Ino) -> io::Result<Option<Node>> {
        if let Some(node) = rebuild.old.remove(&ino) {
            return Ok(Some(node));
        }
        match self.nodes.get(&ino) {
            Some(placed) if placed.kind == Kind::File => {
                Ok(Some(Node::new(Kind::File, None, placed.durable_meta)))
            }
            _ => Ok(None),
        }
    }

    /// A new inode whose durable content is a copy of `ino`'s.
    fn clone_ino(&mut self, ino: Ino) -> io::Result<Ino> {
        let new = self.alloc_ino();
        match fs::copy(self.store_path(ino), self.store_path(new)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(new)
    }

    fn materialise_file(&self, ino: Ino, path: &Path) -> io::Result<()> {
        match fs::copy(self.store_path(ino), path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => File::create(path).map(drop),
            other => other.map(drop),
        }
    }
}

/// Nodes not placed yet, and inode numbers already placed.
struct Rebuild {
    old: HashMap<Ino, Node>,
    seen: HashSet<Ino>,
}

fn copy_range(src: &File, dst: &File, start: u64, end: u64) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut pos = start;
    while pos < end {
        let n = (end - pos).min(COPY_CHUNK);
        buf.resize(n as usize, 0);
        src.read_exact_at(&mut buf, pos)?;
        dst.write_all_at(&buf, pos)?;
        pos += n;
    }
    Ok(())
}

fn set_meta(path: &Path, meta: Meta) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))?;
    let file = File::open(path)?;
    file.set_times(fs::FileTimes::new().set_modified(meta.mtime))
}
