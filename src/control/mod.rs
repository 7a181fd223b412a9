//! The local control socket of `drain serve` (`<data-dir>/control.sock`), and what a drain does
//! with it before moving anything: stop the instance's intake (it answers 503, so senders try
//! their next destination) and everything else except event delivery, wait for the event queue
//! to empty, then stop `drain serve` and take the instance's exclusive lock.
//!
//! Protocol: one JSON request line, one JSON answer line.
//! `{"cmd":"status"}` -> `{"ok":true,"pid":..,"accepting":..,"endpoints":N,"draining_by":..}`;
//! `{"cmd":"begin-drain","by":"...","pid":N}` stops intake (refused while another drain that
//! is still running did); `{"cmd":"cancel-drain"}` re-enables intake; `{"cmd":"shutdown"}`
//! stops `drain serve`.
//!
//! A drain lasts as long as the connection that began it stays open: a drainer killed while it
//! waits (SIGKILL closes its sockets) gives intake back at once, and a drainer whose pid is gone
//! is replaced by the next one that asks. Every request a drain makes is bounded in time (by
//! `--max-event-wait` when given, else [`client::DEFAULT_TIMEOUT`]): a stopped or hung serve
//! never hangs a drain.
//!
//! Layout (imports flow down): `mod.rs` (the protocol's types), `server` ([`ServeControl`],
//! [`serve_socket`], run by `intake::serve`), `client` ([`request`], [`begin_drain`]),
//! `prepare` ([`prepare`], used by `engine::session` before a drain takes the instance).
//! Invariant: a drain owns the instance only through its exclusive lock, which the serve
//! releases on exit.

mod client;
mod prepare;
mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use client::{ControlError, DEFAULT_TIMEOUT, DrainHold, begin_drain, request, request_within};
pub use prepare::{EventWait, PrepareError, prepare};
pub use server::{ServeControl, serve_socket};

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Stops intake for as long as the connection carrying this request stays open.
    BeginDrain {
        by: String,
        /// The drainer's pid: a drainer whose process is gone no longer holds the instance.
        #[serde(default)]
        pid: Option<u32>,
    },
    CancelDrain,
    Shutdown,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub accepting: bool,
    #[serde(default)]
    pub endpoints: usize,
    #[serde(default)]
    pub draining_by: Option<String>,
}
