//! What a setting is, independent of which settings exist: a value with its [`Source`], the
//! precedence rule that picks it (flag over file over default), and [`ConfigError`], every
//! problem found as one line.
//!
//! The bottom of `config`: used by the table (`config/mod.rs`), `file`, `resolve` and
//! `render`; imports nothing of theirs.

use std::fmt;
use std::path::PathBuf;

/// One or more problems with the settings, each a complete line naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => f.write_str(one),
            many => {
                write!(f, "{} problems with the settings:", many.len())?;
                for p in many {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where an effective setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    File,
    Default,
}

/// A setting's value and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// The flag's value if given, else the file's.
pub fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<Setting<T>> {
    match (flag, file) {
        (Some(value), _) => Some(Setting {
            value,
            source: Source::Flag,
        }),
        (None, Some(value)) => Some(Setting {
            value,
            source: Source::File,
        }),
        (None, None) => None,
    }
}

pub fn or_default<T>(s: Option<Setting<T>>, value: T) -> Setting<T> {
    s.unwrap_or(Setting {
        value,
        source: Source::Default,
    })
}

/// A required setting: its value, or `None` and one problem in `missing` saying how to give
/// it (`what` describes it).
pub fn required<T>(
    s: Option<Setting<T>>,
    key: &str,
    flag: &str,
    what: &str,
    config_file: &Option<PathBuf>,
    missing: &mut Vec<String>,
) -> Option<Setting<T>> {
    if s.is_none() {
        missing.push(match config_file {
            Some(p) => format!(
                "{key}: {what} is required: give {flag} or set {key} in {}",
                p.display()
            ),
            None => format!("{key}: {what} is required: give {flag} (or --config FILE with {key})"),
        });
    }
    s
}
