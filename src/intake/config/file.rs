//! Reading the config file: TOML with spans, so that every problem is reported as
//! `FILE:LINE: key: what`, all of them (not only the first), sorted by line.
//!
//! Owns the file's syntax and the "unknown key; did you mean" hint; what each key holds and
//! how its value is checked come from the caller (the settings table in `config/mod.rs`, with
//! the value types of `values`). Imports only `setting`; called by `Layer::parse`.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::setting::ConfigError;

/// A value of the parsed document, with its place in the text.
pub type Value<'i> = Spanned<DeValue<'i>>;

/// Reads values out of a parsed document, collecting every problem with its line.
pub struct Reader<'a> {
    name: &'a str,
    text: &'a str,
    errors: Vec<(usize, String)>,
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

impl Reader<'_> {
    /// Records a problem with `key` at `span`.
    pub fn err(&mut self, span: Range<usize>, key: &str, msg: impl fmt::Display) {
        let line = line_of(self.text, span.start);
        self.errors
            .push((line, format!("{}:{line}: {key}: {msg}", self.name)));
    }

    fn wrong_type(&mut self, key: &str, v: &Value<'_>, want: &str) {
        let found = v.get_ref().type_str();
        self.err(
            v.span(),
            key,
            format!("expected {want}, found {} {found}", article(found)),
        );
    }

    pub fn string<'v>(&mut self, key: &str, v: &'v Value<'_>) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    /// An array of strings, or one string; each with its span.
    pub fn strings<'v>(
        &mut self,
        key: &str,
        v: &'v Value<'_>,
    ) -> Option<Vec<(&'v str, Range<usize>)>> {
        match v.get_ref() {
            DeValue::String(s) => Some(vec![(s.as_ref(), v.span())]),
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push((s.as_ref(), item.span())),
                        _ => {
                            self.wrong_type(key, item, "a string in the array");
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.wrong_type(key, v, "an array of strings");
                None
            }
        }
    }

    /// An integer from `min` to `max`.
    pub fn integer(&mut self, key: &str, v: &Value<'_>, min: u64, max: u64) -> Option<usize> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(key, v, "an integer");
            return None;
        };
        match u64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| usize::try_from(n).ok())
        {
            Some(n) => Some(n),
            None => {
                self.err(
                    v.span(),
                    key,
                    format!("{i} is out of range ({min} to {max})"),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, key: &str, v: &Value<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(key, v, "true or false");
                None
            }
        }
    }

    /// A string, parsed by `parse`; its error is the problem reported.
    pub fn parsed<T>(
        &mut self,
        key: &str,
        v: &Value<'_>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(key, v)?;
        match parse(s) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(v.span(), key, e);
                None
            }
        }
    }
}

/// Known keys (with their flags), as the settings table lists them.
type Keys = &'static [(&'static str, &'static str)];

/// A known key close to an unknown one, for "did you mean".
fn suggest(keys_and_flags: Keys, unknown: &str) -> Option<&'static str> {
    let norm = unknown.trim().to_ascii_lowercase().replace('-', "_");
    let keys = keys_and_flags.iter().map(|(k, _)| *k);
    if let Some(k) = keys.clone().find(|k| *k == norm) {
        return Some(k);
    }
    // The flag's name (`trusted_proxy_ips`, `event_endpoint`) or a near miss.
    if let Some((k, _)) = keys_and_flags
        .iter()
        .find(|(_, f)| f.trim_start_matches('-').replace('-', "_") == norm)
    {
        return Some(k);
    }
    keys.map(|k| (strsim::levenshtein(&norm, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn unknown_key_hint(keys: Keys, key: &str) -> String {
    match suggest(keys, key) {
        Some(k) => format!("; did you mean {k}?"),
        None => {
            let all: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            format!("; the keys are {}", all.join(", "))
        }
    }
}

/// Parses a config file's text (`name` names it in errors) and hands every top-level key, in
/// file order, to `read`, which returns false for an unknown key. Every problem is collected.
pub fn read_document(
    text: &str,
    name: &str,
    keys: Keys,
    mut read: impl FnMut(&mut Reader<'_>, &str, &Value<'_>) -> bool,
) -> Result<(), ConfigError> {
    let doc = DeTable::parse(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(":{}", line_of(text, s.start)))
            .unwrap_or_default();
        // The parser says "duplicate key" without the key: name it, from the text it points at.
        let key = e
            .span()
            .and_then(|s| text.get(s))
            .map(|k| k.trim().trim_matches('"'))
            .filter(|k| !k.is_empty() && k.len() <= 100)
            .map(|k| format!("{k}: "))
            .unwrap_or_default();
        ConfigError(vec![format!(
            "{name}{at}: {key}not valid TOML: {}",
            e.message().trim()
        )])
    })?;
    let mut r = Reader {
        name,
        text,
        errors: Vec::new(),
    };
    let mut entries: Vec<_> = doc.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (k, v) in entries {
        let key: &str = k.get_ref().as_ref();
        if !read(&mut r, key, v) {
            r.err(
                k.span(),
                key,
                format!("unknown key{}", unknown_key_hint(keys, key)),
            );
        }
    }
    if r.errors.is_empty() {
        Ok(())
    } else {
        r.errors.sort_by_key(|(line, _)| *line);
        Err(ConfigError(r.errors.into_iter().map(|(_, e)| e).collect()))
    }
}
