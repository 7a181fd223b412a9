//! Why an attempt with a destination failed, as a *kind* an operator can act on, plus one
//! detail line: the report groups failed attempts by destination and kind (not by full error
//! text, which carries temporary names and repeats itself), and the log and progress line use
//! the same words.
//!
//! Classification walks the error's source chain and looks at typed errors only (`io::Error`
//! kinds, `rustls::Error` variants, reqwest's flags), never at message text. Owns
//! [`FailureKind`] and [`Failure`]; used by `client` (transfers, queries), `deliver`,
//! `settle` and the report.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use rustls::{CertificateError, InvalidMessage};

use crate::base::causes;

/// What went wrong, in the words the report uses. Ordered for stable report output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// Nothing listens on the destination's port.
    ConnectionRefused,
    /// No route to the destination (network or host unreachable).
    Unreachable,
    /// The TCP connection was not made in time.
    ConnectTimeout,
    /// The connection was not made for another reason (name resolution, local address, ...).
    ConnectFailed,
    /// The peer answered, but not with TLS (a plain-HTTP server, or another protocol).
    NotTls,
    /// The destination's certificate did not verify.
    CertificateRejected,
    /// The destination refused us at the TLS handshake for our client certificate (mutual
    /// TLS): permanent, like a 403.
    ClientCertificate(&'static str),
    /// Another TLS failure (an alert from the peer, a protocol error).
    Tls,
    /// The connection broke while the request or its answer was on the way.
    ConnectionLost,
    /// No answer in time once the request was sent.
    Timeout,
    /// An HTTP status other than 200 (503 busy, 5xx, 4xx), with the typed code if any.
    Status(u16, Option<&'static str>),
    /// A message of the batch was rejected, by its typed code.
    Rejected(&'static str),
    /// The answer could not be read or did not match the request.
    BadAnswer,
    /// Anything else.
    Other,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::ConnectionRefused => {
                f.write_str("connection refused (nothing listens there)")
            }
            FailureKind::Unreachable => f.write_str("not reachable (no route to the address)"),
            FailureKind::ConnectTimeout => f.write_str("connection timed out"),
            FailureKind::ConnectFailed => f.write_str("could not connect"),
            FailureKind::NotTls => f.write_str(
                "does not speak TLS (a plain-HTTP server or another service on that port?)",
            ),
            FailureKind::CertificateRejected => f.write_str("its TLS certificate was not accepted"),
            FailureKind::ClientCertificate(label) => f.write_str(label),
            FailureKind::Tls => f.write_str("TLS failure"),
            FailureKind::ConnectionLost => f.write_str("connection lost mid-request"),
            FailureKind::Timeout => f.write_str("stopped answering (no answer in time)"),
            FailureKind::Status(s, Some(code)) => write!(f, "HTTP {s} ({code})"),
            FailureKind::Status(503, None) => f.write_str("HTTP 503 (not accepting)"),
            FailureKind::Status(s, None) => write!(f, "HTTP {s}"),
            FailureKind::Rejected(code) => write!(f, "message rejected ({code})"),
            FailureKind::BadAnswer => f.write_str("unreadable answer"),
            FailureKind::Other => f.write_str("failed"),
        }
    }
}

/// One failed attempt: its kind and a detail line (the innermost cause, or the peer's reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
        }
    }

    /// Classifies an error of the HTTPS client.
    pub fn from_http(e: &reqwest::Error) -> Failure {
        if let Some(f) = from_chain(e) {
            return f;
        }
        let detail = innermost(e);
        let kind = if e.is_timeout() && e.is_connect() {
            FailureKind::ConnectTimeout
        } else if e.is_timeout() {
            FailureKind::Timeout
        } else if e.is_connect() {
            FailureKind::ConnectFailed
        } else if e.is_decode() || e.is_body() {
            FailureKind::BadAnswer
        } else {
            FailureKind::Other
        };
        Failure { kind, detail }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() || matches!(self.kind, FailureKind::ClientCertificate(_)) {
            // A client-certificate refusal's detail already starts with its kind's words.
            if !self.detail.is_empty() {
                return f.write_str(&self.detail);
            }
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.detail)
        }
    }
}

/// The first typed cause the chain carries, if any.
fn from_chain(e: &(dyn StdError + 'static)) -> Option<Failure> {
    for err in causes(e) {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(from_tls(t));
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            let kind = match io.kind() {
                io::ErrorKind::ConnectionRefused => FailureKind::ConnectionRefused,
                io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                    FailureKind::Unreachable
                }
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => FailureKind::ConnectionLost,
                io::ErrorKind::TimedOut => FailureKind::Timeout,
                _ => continue,
            };
            return Some(Failure::new(kind, io_text(io)));
        }
    }
    None
}

/// An I/O error's own text, without the repeated wrapper text.
fn io_text(io: &io::Error) -> String {
    match io.get_ref() {
        Some(inner) => inner.to_string(),
        None => io.to_string(),
    }
}

/// A rustls error in plain words (rustls prints some variants in Rust's debug notation).
fn from_tls(e: &rustls::Error) -> Failure {
    match e {
        rustls::Error::InvalidCertificate(c) => {
            Failure::new(FailureKind::CertificateRejected, certificate_text(c))
        }
        rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType)
        | rustls::Error::InvalidMessage(InvalidMessage::MessageTooLarge)
        | rustls::Error::InvalidMessage(InvalidMessage::UnknownProtocolVersion) => Failure::new(
            FailureKind::NotTls,
            "the first bytes of its answer are not a TLS record",
        ),
        rustls::Error::AlertReceived(a) => Failure::new(FailureKind::Tls, alert_text(*a)),
        other => Failure::new(FailureKind::Tls, other.to_string()),
    }
}

fn alert_text(a: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    match a {
        A::CertificateRequired => "the destination requires a client certificate \
             (--client-cert, --client-key)"
            .to_string(),
        A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::AccessDenied => {
            "the destination refused our client certificate".to_string()
        }
        A::HandshakeFailure | A::ProtocolVersion | A::InsufficientSecurity => {
            "no TLS version or cipher suite in common with the destination".to_string()
        }
        other => format!(
            "the destination ended the TLS session (alert {})",
            u8::from(other)
        ),
    }
}

fn certificate_text(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => "it is not signed by a CA this drain trusts; \
             pass the destination's CA with --ca-cert"
            .to_string(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired; renew the destination's certificate".to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet (check both machines' clocks)".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "it does not name the address or host name the drain was given; \
             add that name to the certificate's subjectAltName, or use a destination it names"
                .to_string()
        }
        CertificateError::Revoked => "it has been revoked".to_string(),
        CertificateError::BadSignature | CertificateError::BadEncoding => {
            "it is malformed or badly signed".to_string()
        }
        other => format!("{other}"),
    }
}

/// The innermost error's text: the cause, without the layers that repeat it.
fn innermost(e: &(dyn StdError + 'static)) -> String {
    causes(e).last().map(|c| c.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_inside_io_errors_are_found_by_kind() {
        let inner = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let outer = io::Error::other(inner);
        let f = from_chain(&outer).unwrap();
        assert_eq!(f.kind, FailureKind::ConnectionRefused);
    }

    #[test]
    fn a_plain_http_answer_is_not_tls() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType),
        );
        assert_eq!(from_chain(&e).unwrap().kind, FailureKind::NotTls);
    }

    #[test]
    fn certificate_failures_have_a_hint_and_no_debug_text() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let f = from_chain(&e).unwrap();
        assert_eq!(f.kind, FailureKind::CertificateRejected);
        assert!(f.detail.contains("--ca-cert"), "{f}");
        assert!(!f.to_string().contains("UnknownIssuer"), "{f}");
    }
}
