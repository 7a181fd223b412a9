//! Combining the sources into the effective [`Settings`]: the per-setting part is generated
//! from the table in `config/mod.rs` (with the rules of `setting`); this module adds what no
//! single setting can check, the certificate check of `--check-config`, and the server's
//! options. Called by the CLI.

use std::path::{Path, PathBuf};

use super::{ConfigError, Layer, Settings};
use crate::intake::access::Access;
use crate::intake::options::{ServeOptions, Timeouts};

impl Settings {
    /// Combines the flags given with the config file (if any). The certificate and key are
    /// required from one or the other.
    pub fn resolve(flags: Layer, file: Option<(PathBuf, Layer)>) -> Result<Settings, ConfigError> {
        let (config_file, file) = match file {
            Some((p, l)) => (Some(p), l),
            None => (None, Layer::default()),
        };
        let s = Settings::combine(flags, file, config_file)?;
        s.cross_check()?;
        Ok(s)
    }

    /// What no single setting can check.
    fn cross_check(&self) -> Result<(), ConfigError> {
        if let Some(m) = self.metrics_listen.value
            && m == self.listen.value
            && m.port() != 0
        {
            return Err(ConfigError(vec![format!(
                "metrics_listen: {m} is also the intake's listen address; give it its own port"
            )]));
        }
        Ok(())
    }

    /// What `--check-config` checks beyond the values themselves: the certificate and key
    /// load and match; the client CA file holds certificates, each valid now.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = crate::tls::server_config(&self.tls_cert.value, &self.tls_key.value) {
            problems.push(format!("tls_cert / tls_key: {e}"));
        }
        if let Some(ca) = &self.client_ca.value
            && let Err(e) = crate::tls::client_verifier(ca)
        {
            problems.push(format!("client_ca: {e}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// What is valid but unsafe: a TLS key others may read, a data directory (when given)
    /// group or others may read. One line each.
    pub fn warnings(&self, data_dir: Option<&Path>) -> Vec<String> {
        let key = crate::tls::key_exposure_warning(&self.tls_key.value, "tls_key");
        let dir = data_dir.and_then(crate::instance::exposure_warning);
        key.into_iter().chain(dir).collect()
    }

    /// The server's options.
    pub fn into_options(self, data_dir: PathBuf) -> ServeOptions {
        ServeOptions {
            data_dir,
            listen: self.listen.value,
            tls_cert: self.tls_cert.value,
            tls_key: self.tls_key.value,
            client_ca: self.client_ca.value,
            access: Access {
                accept_from: self.accept_drain_from.value,
                trusted_proxies: self.http_trusted_proxy_ips.value,
            },
            workers: self.incoming_drain_workers.value,
            max_request_bytes: self.max_request_size.value,
            dedupe_retention: self.dedupe_retention.value,
            event_endpoints: self.event_endpoints.value,
            event_timeout: self.event_timeout.value,
            wait_after_drain: self.wait_after_drain.value,
            metrics_listen: self.metrics_listen.value,
            timeouts: Timeouts {
                tls_handshake: self.tls_handshake_timeout.value,
                header_read: self.header_read_timeout.value,
                body_idle: self.body_idle_timeout.value,
            },
            max_connections_per_peer: self.max_connections_per_peer.value,
            spool_sync: self.spool_sync.value,
        }
    }
}
