//! Queue kinds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The four queue kinds of an instance. Each is one directory of the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueKind {
    Queue,
    BounceLite,
    BounceFull,
    Submission,
}

impl QueueKind {
    pub const ALL: [QueueKind; 4] = [
        QueueKind::Queue,
        QueueKind::BounceLite,
        QueueKind::BounceFull,
        QueueKind::Submission,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Queue => "queue",
            QueueKind::BounceLite => "bounce-lite",
            QueueKind::BounceFull => "bounce-full",
            QueueKind::Submission => "submission",
        }
    }

    /// Position in [`QueueKind::ALL`], for per-queue arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        QueueKind::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| {
                format!("unknown queue kind {s:?} (expected queue, bounce-lite, bounce-full or submission)")
            })
    }
}
