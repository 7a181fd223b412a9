//! What the caller asks of a run: the options of `drain` and `drain resume`, as plain values.
//!
//! Owns [`DrainOptions`], [`Mode`] and [`ProgressMode`]; the bottom of the engine's imports (it
//! uses no other engine module). Built by the CLI and the demo; read by `run` (the fixed
//! settings of a run) and `lifecycle` (the run record).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::base::Destination;
use crate::tls::ClientIdentity;

/// Which kind of run the caller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `drain <DESTINATION>...`: start a run, or continue an unfinished one.
    Fresh,
    /// `drain resume`: there must be an unfinished run to continue.
    Resume,
    /// `drain resume --settle-only`: settle in-doubt messages and end the run without draining
    /// the rest.
    SettleOnly,
}

impl Mode {
    /// True when the run must continue an unfinished one.
    pub fn requires_unfinished(self) -> bool {
        matches!(self, Mode::Resume | Mode::SettleOnly)
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live bar on standard error (a terminal).
    Bar,
    /// A structured log line (`progress`) at this interval.
    Log(Duration),
    Off,
}

impl ProgressMode {
    /// Progress on a terminal is a live bar; elsewhere a log line every `every`; `quiet`: none.
    pub fn for_stderr(quiet: bool, every: Duration) -> ProgressMode {
        if quiet {
            ProgressMode::Off
        } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressMode::Bar
        } else {
            ProgressMode::Log(every)
        }
    }
}

/// Everything a drain run needs.
#[derive(Clone, Debug)]
pub struct DrainOptions {
    pub data_dir: PathBuf,
    /// Destinations; empty means "those of the unfinished run" (resume).
    pub destinations: Vec<Destination>,
    pub concurrency: usize,
    pub bind_ip: Option<IpAddr>,
    pub ca_cert: Option<PathBuf>,
    /// The client certificate and key presented to destinations that ask for one.
    pub client_identity: Option<ClientIdentity>,
    /// Bytes of message data in memory at once (requests in flight count twice).
    pub max_in_flight_bytes: u64,
    /// Messages per request; default derived from `concurrency`.
    pub batch_size: Option<usize>,
    /// Fresh drain, resume, or settle only.
    pub mode: Mode,
    /// Let messages pinned to an unreachable destination go elsewhere after this long,
    /// flagged as possible duplicates. None: wait for it indefinitely.
    pub reassign_after: Option<Duration>,
    /// `--fallback-path` and `--automatic-fallback-after`.
    pub fallback: Option<(PathBuf, Duration)>,
    /// How progress is shown while the run goes on.
    pub progress: ProgressMode,
    /// Finished runs that ended longer ago are compacted when a run starts
    /// (`--journal-retention`).
    pub journal_retention: Duration,
}

/// Default `--journal-retention`.
pub const DEFAULT_JOURNAL_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Default `--concurrency`: 2 x CPUs, clamped to 10..=64.
pub fn default_concurrency() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cpus).clamp(10, 64)
}
