//! Command-line definitions. The help text is the operator's first manual: keep examples here.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::Destination;
use crate::intake::{Access, NetList, ServeOptions};

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
  drain demo                                                try it all on loopback

Exit codes of `drain` and `drain resume`:
  0  drained: the queues are empty        11  some files could not be read
  1  other error (see stderr)             12  some messages could not be distributed
  40 delivered, some local removals failed   41 partly delivered, removals failed
  42 stopped by SIGTERM/SIGINT after a clean shutdown
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

/// Options shared by `drain` and `drain resume`.
#[derive(Args, Debug, Clone)]
pub struct DrainArgs {
    /// Local address for outgoing HTTPS connections.
    #[arg(long)]
    pub bind_ip: Option<IpAddr>,
    /// Messages in flight (default: 2 x CPUs, clamped to 10..=64).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Trust roots (PEM) for the destinations' certificates (default: the system's roots).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Bytes of message data held in memory at once.
    #[arg(long, default_value_t = DEFAULT_IN_FLIGHT)]
    pub max_in_flight_bytes: u64,
    /// Let messages in doubt with a destination that stays unreachable this long go to another
    /// one, each flagged in the journal as a possible duplicate (`90s`, `10m`). Default: wait.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub reassign_after: Option<std::time::Duration>,
    /// Messages per request (default: concurrency / 4).
    #[arg(long, hide = true)]
    pub batch_size: Option<usize>,
    /// Print the final report as JSON on standard output.
    #[arg(long)]
    pub json: bool,
    /// A data directory to move the remaining messages into when the destinations have not
    /// taken everything within --automatic-fallback-after (exit 13); drain it later with
    /// `drain --data-dir DIR <DESTINATION>...`.
    #[arg(long, value_name = "DIR", requires = "automatic_fallback_after")]
    pub fallback_path: Option<PathBuf>,
    /// How long the destinations get before the rest goes to --fallback-path (`10m`).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", requires = "fallback_path")]
    pub automatic_fallback_after: Option<std::time::Duration>,
    /// When standard error is not a terminal, log a progress line this often.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", value_name = "DURATION")]
    pub progress_every: std::time::Duration,
    /// Do not wait for the instance's event queue to empty before draining.
    #[arg(long)]
    pub no_wait_on_events: bool,
    /// Give up with exit 10 if events are still pending after this long (`15s`, `2m`).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub max_event_wait: Option<std::time::Duration>,
}

impl DrainArgs {
    pub fn concurrency(&self) -> usize {
        self.concurrency
            .unwrap_or_else(crate::engine::default_concurrency)
            .max(1)
    }

    /// These flags, with any not given here taken from `outer` (the same flags written before
    /// the subcommand: `drain --ca-cert X resume`).
    pub fn or(&self, outer: &DrainArgs) -> DrainArgs {
        DrainArgs {
            bind_ip: self.bind_ip.or(outer.bind_ip),
            concurrency: self.concurrency.or(outer.concurrency),
            ca_cert: self.ca_cert.clone().or_else(|| outer.ca_cert.clone()),
            max_in_flight_bytes: if self.max_in_flight_bytes != DEFAULT_IN_FLIGHT {
                self.max_in_flight_bytes
            } else {
                outer.max_in_flight_bytes
            },
            reassign_after: self.reassign_after.or(outer.reassign_after),
            batch_size: self.batch_size.or(outer.batch_size),
            json: self.json || outer.json,
            no_wait_on_events: self.no_wait_on_events || outer.no_wait_on_events,
            progress_every: if self.progress_every != Duration::from_secs(5) {
                self.progress_every
            } else {
                outer.progress_every
            },
            fallback_path: self
                .fallback_path
                .clone()
                .or_else(|| outer.fallback_path.clone()),
            automatic_fallback_after: self
                .automatic_fallback_after
                .or(outer.automatic_fallback_after),
            max_event_wait: self.max_event_wait.or(outer.max_event_wait),
        }
    }

    /// The engine's options for these flags.
    pub fn options(
        &self,
        data_dir: PathBuf,
        destinations: Vec<Destination>,
        resume: bool,
        settle_only: bool,
    ) -> crate::engine::DrainOptions {
        crate::engine::DrainOptions {
            data_dir,
            destinations,
            concurrency: self.concurrency(),
            bind_ip: self.bind_ip,
            ca_cert: self.ca_cert.clone(),
            max_in_flight_bytes: self.max_in_flight_bytes,
            batch_size: self.batch_size,
            resume,
            settle_only,
            reassign_after: self.reassign_after,
            fallback: self
                .fallback_path
                .clone()
                .zip(self.automatic_fallback_after),
            progress: crate::engine::ProgressMode::Off,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Finish an interrupted drain (after SIGKILL, a crash, exit 40/41/42).
    Resume(ResumeArgs),
    /// Audit the journal (not built yet).
    Inspect(InspectArgs),
    /// Run this instance: accept drains from other instances over HTTPS.
    Serve(ServeArgs),
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
    #[command(flatten)]
    pub drain: DrainArgs,
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
pub struct InspectArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0: any free port, written to <data-dir>/serve.addr).
    #[arg(long, default_value = "0.0.0.0:443")]
    pub listen: SocketAddr,
    /// Certificate chain (PEM).
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// Private key (PEM).
    #[arg(long)]
    pub tls_key: PathBuf,
    /// Who may drain into this instance: IP or CIDR, repeatable or comma-separated.
    /// Nothing is accepted unless listed.
    #[arg(long = "accept-drain-from", value_name = "IP|CIDR")]
    pub accept_drain_from: Vec<String>,
    /// Proxies whose X-Forwarded-For / Client-IP headers are honoured (IP or CIDR).
    #[arg(long = "trusted-proxy-ips", value_name = "IP|CIDR")]
    pub trusted_proxy_ips: Vec<String>,
    /// Incoming messages processed at once.
    #[arg(long, default_value_t = 8)]
    pub incoming_drain_workers: usize,
    /// Largest transfer request accepted, in bytes (413 beyond).
    #[arg(long, default_value_t = 256 << 20)]
    pub max_request_size: usize,
    /// Where the event processor POSTs events, as a JSON array (repeatable).
    #[arg(long = "event-endpoint", value_name = "URL")]
    pub event_endpoints: Vec<String>,
    /// After a drain of this instance stopped it, stay alive (serving nothing, holding
    /// nothing) until SIGTERM/SIGINT: for a container's main process, which must outlive the
    /// preStop hook that drains it.
    #[arg(long)]
    pub wait_after_drain: bool,
    /// How long dedupe keys are kept when a sender never says its run finished.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d", value_name = "DURATION")]
    pub dedupe_retention: std::time::Duration,
}

impl ServeArgs {
    pub fn into_options(self, data_dir: PathBuf) -> anyhow::Result<ServeOptions> {
        let mut accept = NetList::default();
        for s in &self.accept_drain_from {
            accept
                .parse_into(s)
                .map_err(|e| anyhow::anyhow!("--accept-drain-from: {e}"))?;
        }
        let mut proxies = NetList::default();
        for s in &self.trusted_proxy_ips {
            proxies
                .parse_into(s)
                .map_err(|e| anyhow::anyhow!("--trusted-proxy-ips: {e}"))?;
        }
        Ok(ServeOptions {
            data_dir,
            listen: self.listen,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            access: Access {
                accept_from: accept,
                trusted_proxies: proxies,
            },
            workers: self.incoming_drain_workers.max(1),
            max_request_bytes: self.max_request_size,
            dedupe_retention: self.dedupe_retention,
            event_endpoints: self.event_endpoints,
            wait_after_drain: self.wait_after_drain,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum SpoolCommand {
    /// Store one message (body from FILE or standard input, bytes kept exactly); prints its id.
    #[command(
        after_help = "Example:\n  drain spool add --queue queue --from a@example.com --to b@example.com --attempts 2 \\\n      --next-retry 2026-12-01T10:00:00Z message.eml"
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
    /// Envelope sender.
    #[arg(long)]
    pub from: String,
    /// Envelope recipients (repeatable).
    #[arg(long, required = true, num_args = 1..)]
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
    /// The body; standard input when absent.
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
