//! Timestamps.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time, kept as UTC with the precision it was given, written as RFC 3339.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub OffsetDateTime);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(OffsetDateTime::now_utc())
    }

    /// Parses any RFC 3339 time and normalises it to UTC (the same instant).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|e| format!("invalid RFC 3339 time {s:?}: {e}"))?;
        // 9999-12-31T23:59:59-01:00 is in year 10000 in UTC, and 0000-01-01T00:00:00+01:00
        // in year -1: neither can be written back as RFC 3339.
        t.checked_to_offset(time::UtcOffset::UTC)
            .filter(|u| (0..=9999).contains(&u.year()))
            .map(Timestamp)
            .ok_or_else(|| format!("time {s:?} is out of range (years 0 to 9999 in UTC)"))
    }

    pub fn unix_nanos(self) -> i128 {
        self.0.unix_timestamp_nanos()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}", self.0.unix_timestamp()),
        }
    }
}

super::serde_as_text!(Timestamp, Timestamp::parse);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_normalise_to_utc_and_out_of_range_is_an_error() {
        let t = Timestamp::parse("2030-01-02T03:04:05.5+02:00").unwrap();
        assert_eq!(t.to_string(), "2030-01-02T01:04:05.5Z");
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        assert!(Timestamp::parse("9999-12-31T23:59:59-01:00").is_err());
        assert!(Timestamp::parse("0000-01-01T00:00:00+01:00").is_err());
        assert!(Timestamp::parse("yesterday").is_err());
    }
}
