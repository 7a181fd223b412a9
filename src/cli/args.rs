//! Command-line definitions. The help text is the operator's first manual: keep examples here.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use super::serve_args::ServeArgs;
use crate::base::Destination;

#[derive(Parser, Debug)]
#[command(
    name = "drain",
    version,
    about = "Retire a mail-server instance: move its queued messages to other instances over HTTPS, \
             with nothing lost and nothing delivered twice, even after SIGKILL.",
    subcommand_negates_reqs = true,
    after_help = "\
Examples:
  drain --data-dir /var/lib/mail 10.0.0.2 10.0.0.3:8443     drain this instance to two others
  drain --data-dir /var/lib/mail resume                     finish an interrupted drain
  drain --data-dir /var/lib/mail serve --tls-cert c.pem --tls-key k.pem --accept-drain-from 10.0.0.0/24
  drain --data-dir /var/lib/mail inspect                    audit what every drain did
  drain demo                                                try it all on loopback

Exit codes of `drain` and `drain resume`:
  0   drained: the queues are empty
  1   other error (see stderr), including a data directory in use
  10  --max-event-wait expired with events pending; nothing moved
  11  some files could not be read; all readable messages were drained
  12  some messages could not be distributed
  13  the rest was moved to --fallback-path
  40  delivered, but removing some local copies failed
  41  partly delivered, and removing some local copies failed
  42  stopped by SIGTERM/SIGINT after a clean shutdown
  After 40, 41, 42 or a SIGKILL, run `drain resume`."
)]
pub struct Cli {
    /// The instance's data directory (spool, journal).
    #[arg(long, env = "DRAIN_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Only warnings and errors on standard error (RUST_LOG overrides).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Destinations: IP or host name, optional port (default 443). `10.0.0.2`,
    /// `mx2.example.com:8443`, `[2001:db8::2]:443`.
    #[arg(value_name = "DESTINATION")]
    pub destinations: Vec<String>,

    /// Print the final report as JSON on standard output.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub drain: DrainArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

const DEFAULT_IN_FLIGHT: u64 = 64 << 20;

/// Options shared by `drain` and `drain resume`: global, so they may be written before or after
/// `resume` (`drain --ca-cert X resume`, `drain resume --ca-cert X`); written twice, the last
/// one wins. (`--json` is not among them: `inspect` and `spool ls` have their own.)
#[derive(Args, Debug, Clone)]
pub struct DrainArgs {
    /// Local address for outgoing HTTPS connections.
    #[arg(long, global = true)]
    pub bind_ip: Option<IpAddr>,
    /// Messages in flight (default: 2 x CPUs, clamped to 10..=64).
    #[arg(long, global = true)]
    pub concurrency: Option<usize>,
    /// Trust roots (PEM) for the destinations' certificates (default: the system's roots).
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate chain (PEM) for destinations that require mutual TLS
    /// (`drain serve --client-ca`); with --client-key.
    #[arg(long, value_name = "PEM", requires = "client_key", global = true)]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, value_name = "PEM", requires = "client_cert", global = true)]
    pub client_key: Option<PathBuf>,
    /// Bytes of message data held in memory at once.
    #[arg(long, default_value_t = DEFAULT_IN_FLIGHT, global = true)]
    pub max_in_flight_bytes: u64,
    /// Let messages in doubt with a destination that stays unreachable this long go to another
    /// one, each flagged in the journal as a possible duplicate (`90s`, `10m`). Default: wait.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", global = true)]
    pub reassign_after: Option<std::time::Duration>,
    /// Messages per request (default: concurrency / destinations).
    #[arg(long, hide = true, global = true)]
    pub batch_size: Option<usize>,
    /// A data directory to move the remaining messages into when the destinations have not
    /// taken everything within --automatic-fallback-after (exit 13); drain it later with
    /// `drain --data-dir DIR <DESTINATION>...`.
    #[arg(
        long,
        value_name = "DIR",
        requires = "automatic_fallback_after",
        global = true
    )]
    pub fallback_path: Option<PathBuf>,
    /// How long the destinations get before the rest goes to --fallback-path (`10m`).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", requires = "fallback_path", global = true)]
    pub automatic_fallback_after: Option<std::time::Duration>,
    /// When standard error is not a terminal, log a progress line this often.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", value_name = "DURATION", global = true)]
    pub progress_every: std::time::Duration,
    /// Do not wait for the instance's event queue to empty before draining.
    #[arg(long, global = true)]
    pub no_wait_on_events: bool,
    /// Give up with exit 10 if events are still pending after this long (`15s`, `2m`).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", global = true)]
    pub max_event_wait: Option<std::time::Duration>,
    /// When a run starts, finished runs that ended longer ago than this keep only their audit
    /// in the journal (`drain compact` does it at once).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30days", value_name = "DURATION", global = true)]
    pub journal_retention: std::time::Duration,
}

impl DrainArgs {
    /// `--client-cert` and `--client-key` (clap requires both or neither).
    pub fn client_identity(&self) -> Option<crate::tls::ClientIdentity> {
        self.client_cert
            .clone()
            .zip(self.client_key.clone())
            .map(|(cert, key)| crate::tls::ClientIdentity { cert, key })
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
            .unwrap_or_else(crate::engine::default_concurrency)
            .max(1)
    }

    /// The engine's options for these flags.
    pub fn options(
        &self,
        data_dir: PathBuf,
        destinations: Vec<Destination>,
        mode: crate::engine::Mode,
    ) -> crate::engine::DrainOptions {
        crate::engine::DrainOptions {
            data_dir,
            destinations,
            concurrency: self.concurrency(),
            bind_ip: self.bind_ip,
            ca_cert: self.ca_cert.clone(),
            client_identity: self.client_identity(),
            max_in_flight_bytes: self.max_in_flight_bytes,
            batch_size: self.batch_size,
            mode,
            reassign_after: self.reassign_after,
            fallback: self
                .fallback_path
                .clone()
                .zip(self.automatic_fallback_after),
            progress: crate::engine::ProgressMode::Off,
            journal_retention: self.journal_retention,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Finish an interrupted drain (after SIGKILL, a crash, exit 40/41/42).
    Resume(ResumeArgs),
    /// Settle an unfinished run whose journal was lost or damaged: ask the run's destinations
    /// about every message still in the spool and remove the copies they hold.
    #[command(
        after_help = "The run and its destinations come from <data-dir>/drain-run.json, written when a run \
starts and removed when it finishes. A damaged journal is kept as journal.redb.damaged-<time>.\n\n\
Example:\n  drain --data-dir /var/lib/mail --ca-cert /etc/drain/ca.pem recover\n  \
drain --data-dir /var/lib/mail --ca-cert /etc/drain/ca.pem 10.0.0.2 10.0.0.3   # then drain the rest"
    )]
    Recover(RecoverArgs),
    /// Audit the journal: runs, states, destinations, anomalies, one message's history.
    Inspect(InspectArgs),
    /// Keep only the audit of finished runs in the journal, dropping their message records.
    #[command(
        after_help = "`drain inspect` keeps showing every run; a compacted run's single messages can \
no longer be looked up (`inspect --message`). A drain does the same when it starts, for runs \
older than --journal-retention (default 30 days). Runs that are running or interrupted are \
never compacted.\n\nExamples:\n  drain --data-dir /var/lib/mail compact                    # every finished run\n  \
drain --data-dir /var/lib/mail compact --older-than 7d    # runs that ended over a week ago"
    )]
    Compact(CompactArgs),
    /// Run this instance: accept drains from other instances over HTTPS.
    Serve(Box<ServeArgs>),
    /// Put a message into this instance's spool; list it; print one back.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Start two destinations on 127.0.0.2 and 127.0.0.3, fill a spool, drain it, audit it.
    Demo(DemoArgs),
    /// Print shell completions (`drain completions bash > /etc/bash_completion.d/drain`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page in roff (`drain man > drain.1; man ./drain.1`).
    Man,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// Destinations for messages not yet in doubt (default: the run's).
    #[arg(value_name = "DESTINATION")]
    pub destinations: Vec<String>,
    /// Settle in-doubt messages and end the run, leaving the rest in the spool.
    #[arg(long)]
    pub settle_only: bool,
    /// Print the final report as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CompactArgs {
    /// Only runs that ended at least this long ago (`7d`, `12h`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s", value_name = "DURATION")]
    pub older_than: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// Print what was done as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_destinations(list: &[String]) -> anyhow::Result<Vec<Destination>> {
    let mut out: Vec<Destination> = Vec::new();
    for s in list {
        let d = Destination::parse(s).map_err(anyhow::Error::msg)?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  drain --data-dir /var/lib/mail inspect                      runs, the last run's detail, anomalies
  drain --data-dir /var/lib/mail inspect --run 3 --json       run #3 as one JSON document (schema 1)
  drain --data-dir /var/lib/mail inspect --message 5f2a...    one message's history in every run

Reads the journal read-only: safe while a drain runs. Exit 0, or 1 if the journal cannot be read.")]
pub struct InspectArgs {
    /// One JSON document on standard output (schema in README, `"schema": 1`).
    #[arg(long)]
    pub json: bool,
    /// The run to detail, by sequence number (default: the last run); with --message, look
    /// only in that run.
    #[arg(long, value_name = "SEQ")]
    pub run: Option<u64>,
    /// Show one message's whole history in every run where it appears (32 hex digits).
    #[arg(long, value_name = "ID")]
    pub message: Option<String>,
    /// Items listed per kind of anomaly in the text view (`--json` lists up to 10,000).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
}

impl InspectArgs {
    pub fn options(&self, data_dir: PathBuf) -> anyhow::Result<crate::inspect::InspectOptions> {
        let message = self
            .message
            .as_deref()
            .map(|s| s.trim().parse::<crate::base::MessageId>())
            .transpose()
            .map_err(|e| anyhow::anyhow!("--message: {e}"))?;
        Ok(crate::inspect::InspectOptions {
            data_dir,
            json: self.json,
            run: self.run,
            message,
            limit: self.limit,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum SpoolCommand {
    /// Store one message (body from FILE or standard input, bytes kept exactly); prints its id.
    #[command(
        after_help = "Examples:\n  drain spool add --queue queue --from a@example.com --to b@example.com --attempts 2 \\\n      --next-retry 2026-12-01T10:00:00Z message.eml\n  drain spool add message.eml --queue bounce-lite --from '' --to a@example.com --to c@example.net\n  cat message.eml | drain spool add --queue submission --from a@example.com --to b@example.com"
    )]
    Add(SpoolAddArgs),
    /// List the spool, one message per line (`--json`: one JSON object per line).
    Ls(SpoolLsArgs),
    /// Write one message's body to standard output, byte for byte.
    Cat {
        /// The message id (32 hex digits).
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct SpoolAddArgs {
    /// Queue kind: queue, bounce-lite, bounce-full or submission.
    #[arg(long)]
    pub queue: String,
    /// Envelope sender (`local@domain`; an empty string is the null sender of a bounce).
    #[arg(long, value_name = "ADDRESS")]
    pub from: String,
    /// One envelope recipient (`local@domain`); repeat the flag for more.
    #[arg(long, required = true, value_name = "ADDRESS", num_args = 1)]
    pub to: Vec<String>,
    /// Next retry time (RFC 3339); none: never attempted.
    #[arg(long)]
    pub next_retry: Option<String>,
    /// Delivery attempts made so far.
    #[arg(long, default_value_t = 0)]
    pub attempts: u32,
    /// A free-form property KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    /// The body; standard input when absent (which must then not be a terminal).
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SpoolLsArgs {
    /// One JSON object per line: id, queue, hash, size, next_retry_at, attempts, ...
    #[arg(long)]
    pub json: bool,
    /// Only messages due now (never attempted, or next retry time passed), in next-retry
    /// order: what a delivery process should pick up first.
    #[arg(long)]
    pub due: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many sample messages to drain.
    #[arg(long, default_value_t = 3000)]
    pub messages: usize,
    /// Keep the demo's temporary directory.
    #[arg(long)]
    pub keep: bool,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("drain").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn explicit_default_in_flight_bytes_after_resume_is_kept() {
        let default = DEFAULT_IN_FLIGHT.to_string();
        let cli = parse(&[
            "--max-in-flight-bytes",
            "1048576",
            "resume",
            "--max-in-flight-bytes",
            &default,
        ]);
        assert!(matches!(cli.command, Some(Command::Resume(_))));
        assert_eq!(cli.drain.max_in_flight_bytes, DEFAULT_IN_FLIGHT);
    }

    #[test]
    fn drain_options_before_or_after_resume() {
        let before = parse(&["--ca-cert", "/c.pem", "--concurrency", "7", "resume"]);
        let after = parse(&["resume", "--ca-cert", "/c.pem", "--concurrency", "7"]);
        for cli in [before, after] {
            assert_eq!(cli.drain.ca_cert, Some(PathBuf::from("/c.pem")));
            assert_eq!(cli.drain.concurrency, Some(7));
            assert_eq!(cli.drain.max_in_flight_bytes, DEFAULT_IN_FLIGHT);
            assert_eq!(cli.drain.progress_every, std::time::Duration::from_secs(5));
        }
        let cli = parse(&[
            "resume",
            "--progress-every",
            "5s",
            "--max-in-flight-bytes",
            "1024",
        ]);
        assert_eq!(cli.drain.max_in_flight_bytes, 1024);
        let cli = parse(&["--progress-every", "1s", "resume", "--progress-every", "5s"]);
        assert_eq!(cli.drain.progress_every, std::time::Duration::from_secs(5));
    }

    #[test]
    fn json_belongs_to_its_command() {
        let cli = parse(&["--json", "resume"]);
        assert!(cli.json);
        let cli = parse(&["resume", "--json", "--settle-only"]);
        let Some(Command::Resume(a)) = cli.command else {
            panic!("not resume");
        };
        assert!(a.json && a.settle_only && !cli.json);
        let cli = parse(&["inspect", "--json"]);
        assert!(matches!(
            cli.command,
            Some(Command::Inspect(InspectArgs { json: true, .. }))
        ));
    }

    #[test]
    fn fallback_flags_require_each_other_after_resume() {
        let ok = parse(&[
            "resume",
            "--fallback-path",
            "/fb",
            "--automatic-fallback-after",
            "10m",
        ]);
        assert_eq!(ok.drain.fallback_path, Some(PathBuf::from("/fb")));
        assert!(Cli::try_parse_from(["drain", "resume", "--fallback-path", "/fb"]).is_err());
        assert!(Cli::try_parse_from(["drain", "--fallback-path", "/fb", "10.0.0.2"]).is_err());
    }

    #[test]
    fn command_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
