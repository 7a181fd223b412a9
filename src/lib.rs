//! `drain`: retire a mail-server instance by moving its queued messages to other instances
//! over HTTPS, with nothing lost and nothing delivered twice, even after SIGKILL.
//!
//! A message's path through the modules, in order:
//! - [`base`]: the shared vocabulary at the bottom (ids, content hashes, times, queue kinds,
//!   destinations, durable writes); it imports nothing else of the crate;
//! - [`spool`]: where it is read from (and, on the receiver, written to); its file format;
//! - [`journal`]: where its state is recorded durably (`read -> sent -> acked -> deleted`);
//! - [`wire`]: how it travels (protocol v1);
//! - [`engine`]: who sends it, to which destination, and removes the local copy after the ack;
//! - [`intake`]: who receives it (`drain serve`) and makes it durable before acknowledging;
//! - [`inspect`]: how it is audited afterwards (`drain inspect`, reading the journal);
//! - [`cli`]: the command line on top of all of it.
//!
//! Supporting modules: [`instance`] (the data directory and its lock), [`control`] (stopping a
//! running instance before a drain), [`events`] (the event queue and its processor),
//! [`groupcommit`] (shared commits and atomic creation for redb files), [`tls`]
//! (certificates), [`signal`] (SIGTERM/SIGINT), [`demo`] (`drain demo`).
//!
//! Imports flow one way, downwards (no module imports one above it):
//! `cli` -> `demo` -> `engine`, `intake`, `inspect` -> `control` -> `events`, `instance` ->
//! `journal`, `spool`, `wire`, `tls`, `signal` -> `groupcommit` -> `base`.

pub mod base;
pub mod cli;
pub mod control;
pub mod demo;
pub mod engine;
pub mod events;
pub mod groupcommit;
pub mod inspect;
pub mod instance;
pub mod intake;
pub mod journal;
pub mod signal;
pub mod spool;
pub mod tls;
pub mod wire;
