//! The settings file (`drain serve --config`): any text parses or fails with errors naming
//! file, line and key; settings that resolve are written back by `--check-config`'s renderer
//! to a file that parses and resolves to the same settings (`parse(write(x)) == x`).
#![no_main]

use std::path::{Path, PathBuf};

use drain::intake::config::{Layer, Settings};
use libfuzzer_sys::fuzz_target;

fn resolve(text: &str) -> Option<Settings> {
    let layer = Layer::parse(text, "fuzz.toml", Path::new("/etc/drain")).ok()?;
    Settings::resolve(
        Layer::default(),
        Some((PathBuf::from("/etc/drain/fuzz.toml"), layer)),
    )
    .ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Layer::parse(text, "fuzz.toml", Path::new("/etc/drain")) {
        assert!(!e.0.is_empty(), "an error with no message");
    }
    if let Some(s) = resolve(text) {
        // Rendered settings resolve to the same values; only the source comments change
        // (a default written out comes from the file the second time).
        let out = s.to_toml();
        let again = resolve(&out).expect("rendered settings resolve again");
        assert_eq!(values(&again.to_toml()), values(&out));
    }
});

/// The `key = value` lines of `--check-config` output, without their `# source` comments.
fn values(rendered: &str) -> Vec<&str> {
    rendered
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit_once("  # ").map_or(l, |(v, _)| v).trim_end())
        .collect()
}
