//! The command line: argument definitions (clap), logging setup, and exit codes.
//! Each subcommand is a thin layer over the library; errors are reported here with context.
//! `drain` and `drain resume` run through `engine::session` (lock, signals, report); the demo
//! is called from here and never calls back.

mod args;
mod serve_args;
mod spool_cmd;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

pub use args::{Cli, Command, LogFormat};

use crate::control::EventWait;
use crate::engine::{Mode, ProgressMode, session};
use crate::signal::wait_for_signal;

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
    // rustls logs its own errors without the peer or what to do; drain reports each with both
    // (RUST_LOG=rustls=debug brings them back).
    let default = if quiet {
        "warn,rustls=off"
    } else {
        "info,rustls=off"
    };
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

/// `drain serve`: validate the settings (`--check-config`), or serve until a signal.
fn serve(
    a: args::ServeArgs,
    data_dir: Option<&std::path::Path>,
    need_dir: impl Fn() -> anyhow::Result<std::path::PathBuf>,
) -> anyhow::Result<i32> {
    if a.check_config {
        // Validates without serving: no data directory, lock or listener needed.
        let settings = a.settings()?;
        settings.check()?;
        for w in settings.warnings(data_dir) {
            let _ = writeln!(std::io::stderr(), "drain serve: warning: {w}");
        }
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
        Some(Command::Serve(a)) => serve(*a, data_dir.as_deref(), need_dir),
        Some(Command::Spool(cmd)) => spool_cmd::run(&need_dir()?, cmd),
        Some(Command::Resume(a)) => {
            let dests = args::parse_destinations(&a.destinations)?;
            let mode = if a.settle_only {
                Mode::SettleOnly
            } else {
                Mode::Resume
            };
            let mut opts = cli.drain.options(need_dir()?, dests, mode);
            opts.progress = ProgressMode::for_stderr(cli.quiet, cli.drain.progress_every);
            session::drain(opts, None)?.print(cli.json || a.json)
        }
        Some(Command::Recover(a)) => {
            let opts = crate::engine::recover::RecoverOptions {
                data_dir: need_dir()?,
                ca_cert: cli.drain.ca_cert.clone(),
                bind_ip: cli.drain.bind_ip,
                client_identity: cli.drain.client_identity(),
            };
            let out = crate::engine::recover::recover(opts)?;
            let _ = std::io::stdout().write_all(out.render(cli.json || a.json)?.as_bytes());
            Ok(out.exit_code)
        }
        Some(Command::Compact(a)) => compact(&need_dir()?, a.older_than),
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
            let mut opts = cli.drain.options(need_dir()?, destinations, Mode::Fresh);
            opts.progress = ProgressMode::for_stderr(cli.quiet, cli.drain.progress_every);
            let wait = EventWait {
                wait: !cli.drain.no_wait_on_events,
                max: cli.drain.max_event_wait,
            };
            session::drain(opts, Some(wait))?.print(cli.json)
        }
    }
}

/// `drain compact`: keeps only the audit of finished runs that ended at least `older_than`
/// ago, under the instance's lock (no drain or serve at work here), then gives the space back.
fn compact(data_dir: &std::path::Path, older_than: std::time::Duration) -> anyhow::Result<i32> {
    let inst = crate::instance::Instance::open(data_dir)?;
    let _lock = inst.try_lock("drain compact")?;
    let path = crate::journal::file_path(data_dir);
    if !path.exists() {
        println!(
            "nothing to compact: no drain has run on this data directory ({} does not exist)",
            path.display()
        );
        return Ok(0);
    }
    let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let before = size();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let journal = crate::journal::Journal::open(data_dir)?;
    let done = rt.block_on(crate::inspect::compact::compact(&journal, older_than));
    journal.close();
    let done = done?;
    if let Err(e) = crate::journal::shrink(data_dir) {
        tracing::warn!("the journal's free space was not given back: {e}");
    }
    let runs: Vec<String> = done.runs.iter().map(|s| format!("#{s}")).collect();
    println!(
        "compacted {} finished run(s){}{}: {} message records dropped; {} is {} (was {})",
        done.runs.len(),
        if runs.is_empty() { "" } else { " " },
        runs.join(", "),
        done.messages,
        path.display(),
        crate::base::units::human_bytes(size()),
        crate::base::units::human_bytes(before)
    );
    Ok(0)
}
