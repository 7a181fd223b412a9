//! The command line: argument definitions (clap), logging setup, signals, and exit codes.
//! Each subcommand is a thin layer over the library; errors are reported here with context.

mod args;
mod spool_cmd;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

pub use args::{Cli, Command, LogFormat};

use crate::control::{EventWait, PrepareError};
use crate::engine::{self, DrainOptions, Stop};

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.quiet);
    let code = match run(cli) {
        Ok(code) => code,
        // The reader went away (`drain spool ls | head`): not an error, as in ripgrep.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            0
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "drain: error: {e:#}");
            1
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn init_logging(format: LogFormat, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr (a restarted log collector) must not turn into a panic.
        .log_internal_errors(false)
        .with_target(false);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let data_dir = cli.data_dir.clone();
    let need_dir = || {
        data_dir
            .clone()
            .context("--data-dir (or DRAIN_DATA_DIR) is required: the instance's data directory")
    };
    if cli.command.is_some() && !cli.destinations.is_empty() {
        anyhow::bail!(
            "destinations go after the subcommand (`drain resume DEST...`), not before it: {:?}",
            cli.destinations
        );
    }
    match cli.command {
        Some(Command::Serve(a)) => {
            if a.check_config {
                // Validates without serving: no data directory, lock or listener needed.
                let settings = a.settings()?;
                settings.check()?;
                let _ = std::io::stdout().write_all(settings.to_toml().as_bytes());
                let _ = writeln!(std::io::stderr(), "drain serve: the settings are valid");
                return Ok(0);
            }
            let opts = a.into_options(need_dir()?)?;
            runtime()?.block_on(async {
                crate::intake::serve(opts, async {
                    wait_for_signal().await;
                })
                .await
            })?;
            Ok(0)
        }
        Some(Command::Spool(cmd)) => spool_cmd::run(&need_dir()?, cmd),
        Some(Command::Resume(a)) => {
            let dests = args::parse_destinations(&a.destinations)?;
            let flags = a.drain.or(&cli.drain);
            let mut opts = flags.options(need_dir()?, dests, true, a.settle_only);
            opts.progress = progress_mode(cli.quiet, flags.progress_every);
            drain(opts, flags.json, None)
        }
        Some(Command::Inspect(a)) => {
            let out = crate::inspect::inspect(&a.options(need_dir()?)?)?;
            // A closed stdout (`| head`) is not an error of the audit.
            let _ = std::io::stdout().write_all(out.as_bytes());
            Ok(0)
        }
        Some(Command::Completions { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "drain", &mut std::io::stdout());
            Ok(0)
        }
        Some(Command::Man) => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(0)
        }
        Some(Command::Demo(a)) => crate::demo::run(a.messages, a.keep),
        None => {
            if cli.destinations.is_empty() {
                anyhow::bail!("no destination given (see `drain --help`)");
            }
            let destinations = args::parse_destinations(&cli.destinations)?;
            let mut opts = cli.drain.options(need_dir()?, destinations, false, false);
            opts.progress = progress_mode(cli.quiet, cli.drain.progress_every);
            let wait = EventWait {
                wait: !cli.drain.no_wait_on_events,
                max: cli.drain.max_event_wait,
            };
            drain(opts, cli.drain.json, Some(wait))
        }
    }
}

/// Progress on a terminal is a live bar; elsewhere a log line every few seconds; `--quiet`: none.
pub fn progress_mode(quiet: bool, every: std::time::Duration) -> engine::ProgressMode {
    if quiet {
        engine::ProgressMode::Off
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        engine::ProgressMode::Bar
    } else {
        engine::ProgressMode::Log(every)
    }
}

/// How long a SIGTERM/SIGINT waits for requests in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a drain with signal handling and prints the report; returns the exit code.
pub fn drain(opts: DrainOptions, json: bool, events: Option<EventWait>) -> anyhow::Result<i32> {
    let rt = runtime()?;
    let stop = Stop::default();
    // The instance's exclusive lock, held for the whole run: a fresh drain first stops a
    // running `drain serve` (after its events are delivered); a resume just takes the lock.
    let inst = crate::instance::Instance::open(&opts.data_dir)?;
    let _lock = match events {
        Some(wait) => match rt.block_on(crate::control::prepare(&inst, wait)) {
            Ok(lock) => lock,
            Err(PrepareError::EventsPending(msg)) => {
                let _ = writeln!(std::io::stderr(), "drain: {msg}");
                return Ok(10);
            }
            Err(e) => return Err(e.into()),
        },
        None => inst.try_lock("drain resume")?,
    };
    let report = rt.block_on(async {
        let s = stop.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::warn!(
                "signal received: finishing requests in flight, then stopping (exit 42)"
            );
            s.request();
            // Bounded: a second signal, or requests still in flight after the grace period,
            // stop at once. Every journal record is durable before it is acted on, so this is
            // as safe as SIGKILL: `drain resume` settles what was in flight.
            tokio::select! {
                _ = wait_for_signal() => {
                    tracing::warn!("second signal: stopping now; run `drain resume` to settle");
                }
                _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
                    tracing::warn!(
                        "requests still in flight after {SHUTDOWN_GRACE:?}: stopping now; \
                         run `drain resume` to settle"
                    );
                }
            }
            std::process::exit(42);
        });
        engine::run(opts, stop).await
    })?;
    let text = if json {
        format!("{}\n", serde_json::to_string(&report)?)
    } else {
        report.to_text()
    };
    // The exit code is the contract; a closed stdout must not change it.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    Ok(report.exit_code)
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
