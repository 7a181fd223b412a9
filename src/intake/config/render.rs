//! `--check-config` output: the effective settings as a config file, each line commented with
//! where its value came from (`--flag`, the file's name, or `default`), then a comment per
//! optional setting left unset. The output is itself a valid config file.
//!
//! The lines come from the settings table (`config/mod.rs`), in its order. Called by the CLI.

use super::{Settings, Source, flag_of};

/// Values longer than this are not aligned with the others.
const ALIGN_UP_TO: usize = 60;

impl Settings {
    fn source_note(&self, key: &str, source: Source) -> String {
        match source {
            Source::Flag => flag_of(key).to_string(),
            Source::File => self
                .config_file
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "config file".into()),
            Source::Default => "default".into(),
        }
    }

    /// The effective settings as a config file, each line commented with its source.
    pub fn to_toml(&self) -> String {
        let (lines, unset) = self.entries();
        let mut out = String::from("# drain serve: effective settings");
        match &self.config_file {
            Some(p) => out.push_str(&format!(
                " (flags given override {}; the rest are defaults)\n",
                p.display()
            )),
            None => out.push_str(" (from flags and defaults; no --config file)\n"),
        }
        let width = lines
            .iter()
            .map(|(k, v, _)| k.len() + 3 + v.len())
            .filter(|w| *w <= ALIGN_UP_TO)
            .max()
            .unwrap_or(0);
        for (k, v, src) in &lines {
            let kv = format!("{k} = {v}");
            out.push_str(&format!("{kv:<width$}  # {}\n", self.source_note(k, *src)));
        }
        for (k, meaning) in unset {
            out.push_str(&format!("# {k} is not set: {meaning}\n"));
        }
        out
    }
}
