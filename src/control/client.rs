//! The drain's side of the control socket: one request, one answer, within a time limit; and
//! the connection that holds a drain begun ([`DrainHold`]).
//!
//! Owns [`ControlError`]. Invariant: no request waits longer than its limit, so a serve that is
//! stopped (SIGSTOP) or hung cannot hang a drain. Used by `prepare`, and by tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{Answer, Request, socket_path};

/// How long a control request may take when `--max-event-wait` does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens (the serve stopped or crashed), or the connection broke.
    #[error("not reachable on its control socket {}: {source}", path.display())]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Connected, but no answer in time: the serve is stopped (SIGSTOP) or hung.
    #[error("no answer on its control socket {} within {} (stopped or hung?)", path.display(), seconds(*after))]
    Timeout { path: PathBuf, after: Duration },
    #[error("a bad answer on its control socket {}: {why}", path.display())]
    Protocol { path: PathBuf, why: String },
}

/// A limit as the messages show it: in whole seconds (a limit taken from what is left of
/// `--max-event-wait` is a few microseconds short of it).
pub(crate) fn seconds(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs_f64().round() as u64)).to_string()
}

/// Sends one control request to the serve of `data_dir`, waiting at most [`DEFAULT_TIMEOUT`].
pub async fn request(data_dir: &Path, req: &Request) -> Result<Answer, ControlError> {
    request_within(data_dir, req, DEFAULT_TIMEOUT).await
}

/// Sends one control request, waiting at most `limit` for its answer.
pub async fn request_within(
    data_dir: &Path,
    req: &Request,
    limit: Duration,
) -> Result<Answer, ControlError> {
    exchange(data_dir, req, limit).await.map(|(a, _)| a)
}

/// The open connection of a drain begun: intake stays stopped while it is open (and the serve
/// gives intake back when it closes, the drainer killed included).
#[derive(Debug)]
pub struct DrainHold {
    _stream: UnixStream,
    /// The serve's answer to `begin-drain` (its pid, whether it accepts).
    pub answer: Answer,
}

/// Asks the serve of `data_dir` to stop intake for drainer `by` (pid `pid`). On success the
/// returned hold keeps the drain going until it is dropped. A refusal is an answer with `ok`
/// false (and no hold).
pub async fn begin_drain(
    data_dir: &Path,
    by: &str,
    pid: u32,
    limit: Duration,
) -> Result<Result<DrainHold, Answer>, ControlError> {
    let req = Request::BeginDrain {
        by: by.to_string(),
        pid: Some(pid),
    };
    let (answer, stream) = exchange(data_dir, &req, limit).await?;
    Ok(if answer.ok {
        Ok(DrainHold {
            _stream: stream,
            answer,
        })
    } else {
        Err(answer)
    })
}

/// Connects, writes `req`, reads one answer line, all within `limit`.
async fn exchange(
    data_dir: &Path,
    req: &Request,
    limit: Duration,
) -> Result<(Answer, UnixStream), ControlError> {
    let path = socket_path(data_dir);
    let unreachable = |source| ControlError::Unreachable {
        path: path.clone(),
        source,
    };
    let talk = async {
        let mut stream = UnixStream::connect(&path).await.map_err(unreachable)?;
        let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Protocol {
            path: path.clone(),
            why: e.to_string(),
        })?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(unreachable)?;
        let mut answer = String::new();
        let mut reader = BufReader::new(&mut stream);
        let n = reader.read_line(&mut answer).await.map_err(unreachable)?;
        if n == 0 {
            return Err(unreachable(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed without answering",
            )));
        }
        let a = serde_json::from_str(answer.trim()).map_err(|e| ControlError::Protocol {
            path: path.clone(),
            why: format!("{e}: {:?}", answer.trim()),
        })?;
        Ok((a, stream))
    };
    match tokio::time::timeout(limit, talk).await {
        Ok(r) => r,
        Err(_) => Err(ControlError::Timeout {
            path: path.clone(),
            after: limit,
        }),
    }
}
