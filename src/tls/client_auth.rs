//! Mutual TLS: the server's client-certificate verifier (`--client-ca`), the sender's client
//! identity (`--client-cert` / `--client-key`), and how a refusal at the handshake is
//! recognised on either side.
//!
//! A refusal is classified by the typed rustls error found in the error's source chain
//! ([`handshake_refusal`], [`is_client_cert_failure`]), never by message text. With TLS 1.3 the
//! server checks the client's certificate after the client considers the handshake done, so
//! its alert arrives on the first read of the connection: the chain of that read's error
//! holds it too. Used by `tls` (server configuration), the engine's HTTPS client and the
//! intake's listener.

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::AlertDescription;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

use super::{TlsError, load_certs, validity};
use crate::base::durable::{self, Exposure};

/// The reason text a client-certificate refusal starts with when the sender presented none.
pub const NEEDS_CERT: &str = "asks for a client certificate";
/// The reason text a client-certificate refusal starts with when the sender presented one.
pub const REFUSED_CERT: &str = "refused our client certificate";

/// A verifier accepting only clients whose certificate chains to a CA in `ca` (PEM). The CA
/// file must hold at least one certificate, each valid now.
pub fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let certs = load_certs(ca)?;
    let now = time::OffsetDateTime::now_utc();
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        validity::check_current(ca, &cert, now, "the CA certificate")?;
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: ca.into(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| TlsError::Pem {
            path: ca.into(),
            reason: format!("cannot verify client certificates with it: {e}"),
        })
}

/// The certificate (PEM chain) and private key (PEM) a sender presents to destinations that
/// ask for one. Both or neither: the CLI enforces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientIdentity {
    /// Loads and checks both files (readable, PEM, the key matching the certificate) and
    /// returns them as one PEM bundle, key first (what the HTTPS client takes).
    pub fn load_pem(&self) -> Result<Vec<u8>, TlsError> {
        let chain = load_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Pem {
            path: self.key.clone(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Pem {
            path: self.key.clone(),
            reason: format!(
                "does not match the certificate {}: {e}",
                self.cert.display()
            ),
        })?;
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Io {
                path: p.into(),
                source,
            })
        };
        let mut pem = read(&self.key)?;
        pem.push(b'\n');
        pem.extend(read(&self.cert)?);
        Ok(pem)
    }
}

/// A warning when a private key file is readable by others (`flag` names the option).
pub fn key_exposure_warning(key: &Path, flag: &str) -> Option<String> {
    durable::exposure_warning(key, flag, Exposure::Others)
}

/// Why a destination refused us at the TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// It requires a client certificate and we presented none.
    NeedsCertificate(AlertDescription),
    /// It refused the certificate we presented.
    RefusedCertificate(AlertDescription),
}

impl std::fmt::Display for HandshakeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeRefusal::NeedsCertificate(a) => write!(
                f,
                "{NEEDS_CERT}; pass --client-cert/--client-key (TLS alert {})",
                u8::from(*a)
            ),
            HandshakeRefusal::RefusedCertificate(a) => {
                write!(
                    f,
                    "{REFUSED_CERT}: {} (TLS alert {})",
                    alert_words(*a),
                    u8::from(*a)
                )
            }
        }
    }
}

impl HandshakeRefusal {
    /// True when `reason` is the text of a refusal (as recorded in the journal).
    pub fn is_reason(reason: &str) -> bool {
        reason.starts_with(NEEDS_CERT) || reason.starts_with(REFUSED_CERT)
    }
}

fn alert_words(a: AlertDescription) -> &'static str {
    match a {
        AlertDescription::UnknownCA => "not issued by a CA it trusts",
        AlertDescription::CertificateExpired => "expired or not yet valid",
        AlertDescription::CertificateRevoked => "revoked",
        AlertDescription::UnsupportedCertificate => "unsupported certificate",
        AlertDescription::CertificateRequired => "it wants another certificate",
        _ => "bad certificate",
    }
}

/// The alerts a server sends when it refuses (or misses) the client's certificate.
fn is_client_cert_alert(a: AlertDescription) -> bool {
    matches!(
        a,
        AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
    )
}

/// The first rustls error in `err`'s source chain. `io::Error::source` skips the error it
/// wraps, so the wrapped error is looked at through `get_ref`.
pub fn find_rustls_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    crate::base::causes(err)
        .into_iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>())
}

/// The sender's side: whether `err` (a request's error) is the destination refusing our client
/// certificate, or asking for one we did not present (`presented`: we had one to present).
pub fn handshake_refusal(err: &(dyn Error + 'static), presented: bool) -> Option<HandshakeRefusal> {
    match find_rustls_error(err)? {
        rustls::Error::AlertReceived(a) if is_client_cert_alert(*a) => Some(if presented {
            HandshakeRefusal::RefusedCertificate(*a)
        } else {
            HandshakeRefusal::NeedsCertificate(*a)
        }),
        _ => None,
    }
}

/// The server's side: whether a failed handshake failed on the client's certificate (none
/// presented, or not acceptable).
pub fn is_client_cert_failure(err: &io::Error) -> bool {
    matches!(
        find_rustls_error(err),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_found_through_io_errors_and_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("request failed")]
        struct Outer(#[source] io::Error);
        let alert = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        let wrapped = Outer(io::Error::new(io::ErrorKind::InvalidData, alert));
        assert_eq!(
            handshake_refusal(&wrapped, true),
            Some(HandshakeRefusal::RefusedCertificate(
                AlertDescription::UnknownCA
            ))
        );
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        let r = handshake_refusal(&required, false).unwrap();
        assert_eq!(
            r,
            HandshakeRefusal::NeedsCertificate(AlertDescription::CertificateRequired)
        );
        assert!(HandshakeRefusal::is_reason(&r.to_string()), "{r}");
        let other = rustls::Error::AlertReceived(AlertDescription::HandshakeFailure);
        assert_eq!(handshake_refusal(&other, true), None);
        let plain = Outer(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(handshake_refusal(&plain, true), None);
        let server = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert!(is_client_cert_failure(&server));
        assert!(!is_client_cert_failure(&io::Error::from(
            io::ErrorKind::UnexpectedEof
        )));
    }
}
