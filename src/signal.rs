//! Termination signals as a future: SIGTERM or SIGINT (Ctrl-C).
//!
//! Used by `drain serve` (the CLI) to shut down gracefully and by `engine::session` to stop a
//! drain within its grace period. Depends on nothing else in the crate.

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
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
