//! TLS material: loading certificates and keys, server configuration (optionally requiring a
//! client certificate: `client_auth`), and self-signed certificates for the demo and tests.
//! rustls with the ring provider everywhere.
//!
//! Used by `intake` (the server's configuration, its listener, and `--check-config`), by the
//! sending side's HTTP client (identity, refusals) and the event processor (the crypto
//! provider), and by the demo and tests.

mod client_auth;
mod validity;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use client_auth::{
    ClientIdentity, HandshakeRefusal, NEEDS_CERT, REFUSED_CERT, client_verifier, find_rustls_error,
    handshake_refusal, is_client_cert_failure, key_exposure_warning,
};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Makes ring the process-wide rustls provider (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem {
            path: path.into(),
            reason: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.into(),
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// The server side: certificate chain and key from PEM files, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_mtls(cert, key, None)
}

/// [`server_config`], and with `client_ca` only clients presenting a certificate that chains
/// to a CA in that file are accepted (mutual TLS).
pub fn server_config_mtls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    install_provider();
    let certs = load_certs(cert)?;
    // An expired (or not yet valid) certificate would fail every handshake: refuse it at start
    // and in --check-config, with its dates.
    if let Some(leaf) = certs.first() {
        let now = time::OffsetDateTime::now_utc();
        validity::check_current(cert, leaf, now, "the serve's TLS certificate")?;
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.into(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Writes a self-signed certificate valid for `names` (IP addresses or DNS names) as
/// `<dir>/<stem>.crt` and `<dir>/<stem>.key`; returns their paths.
pub fn write_self_signed(
    names: &[String],
    dir: &Path,
    stem: &str,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, ck.cert.pem()).map_err(|source| TlsError::Io {
        path: cert_path.clone(),
        source,
    })?;
    write_key(&key_path, ck.signing_key.serialize_pem().as_bytes())?;
    Ok((cert_path, key_path))
}

/// Writes a private key readable by its owner only (replacing any file there).
pub fn write_key(path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.into(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut f = crate::base::durable::create_private_file(path).map_err(io)?;
    std::io::Write::write_all(&mut f, pem).map_err(io)
}
