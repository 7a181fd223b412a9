//! Unit tests of the journal that specify it: the state table of `journal-format.md` checked
//! cell by cell (`state_table`), a model of the allowed transitions against the code under
//! random op sequences (`model`), and the group commit failing a whole group with the typed
//! cause (`group`).

mod group;
mod model;
mod reader;
mod state_table;

use std::path::PathBuf;

use crate::base::{MessageId, QueueKind};

use super::Op;

/// A temporary directory, removed on drop.
pub(super) struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        let id = MessageId::random().expect("random");
        let p = std::env::temp_dir().join(format!("drain-journal-{tag}-{id}"));
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn id(n: u64) -> MessageId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    MessageId(b)
}

pub(super) fn read_op(run: u64, n: u64, hash: u8) -> Op {
    Op::Read {
        run,
        id: id(n),
        queue: QueueKind::ALL[(n % 4) as usize],
        hash: crate::base::ContentHash([hash; 32]),
        size: 1000 + n,
    }
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}
