//! Combining the sources into the effective [`Settings`]: the per-setting part is generated
//! from the table in `config/mod.rs` (with the rules of `setting`); this module adds what no
//! single setting can check, the certificate check of `--check-config`, and the server's
//! options. Called by the CLI.

use std::path::PathBuf;

use super::{ConfigError, Layer, Settings};
use crate::intake::access::Access;
use crate::intake::options::ServeOptions;

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
    /// load and match.
    pub fn check(&self) -> Result<(), ConfigError> {
        crate::tls::server_config(&self.tls_cert.value, &self.tls_key.value)
            .map(|_| ())
            .map_err(|e| ConfigError(vec![format!("tls_cert / tls_key: {e}")]))
    }

    /// The server's options.
    pub fn into_options(self, data_dir: PathBuf) -> ServeOptions {
        ServeOptions {
            data_dir,
            listen: self.listen.value,
            tls_cert: self.tls_cert.value,
            tls_key: self.tls_key.value,
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
        }
    }
}
