//! A certificate's validity period, read from its DER encoding, so a CA file can be reported
//! expired (or not yet valid) when it is loaded rather than by every handshake failing.
//!
//! Reads only the path `Certificate > TBSCertificate > Validity` of RFC 5280; anything it
//! cannot read is reported as unreadable, never guessed. Used by `client_auth` (CA files) and
//! the server configuration (the serve's own certificate).

use std::path::Path;

use rustls::pki_types::CertificateDer;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use super::TlsError;

/// Checks that `cert` (from the file `path`; `what` names it in messages: "the CA
/// certificate") is valid at `now`.
pub fn check_current(
    path: &Path,
    cert: &CertificateDer<'_>,
    now: OffsetDateTime,
    what: &str,
) -> Result<(), TlsError> {
    let bad = |reason: String| TlsError::Pem {
        path: path.into(),
        reason,
    };
    let (from, until) =
        period(cert).ok_or_else(|| bad("cannot read the certificate's validity period".into()))?;
    if now > until {
        return Err(bad(format!(
            "{what} expired on {} (valid from {})",
            day(until),
            day(from)
        )));
    }
    if now < from {
        return Err(bad(format!(
            "{what} is not valid before {} (valid until {}); check this machine's clock",
            day(from),
            day(until)
        )));
    }
    Ok(())
}

fn day(t: OffsetDateTime) -> String {
    format!("{} {:02}:{:02} UTC", t.date(), t.hour(), t.minute())
}

/// `(notBefore, notAfter)` of a DER certificate.
pub fn period(der: &[u8]) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // version [0] EXPLICIT, optional
    if let Some((0xa0, _, r)) = tlv(rest) {
        rest = r;
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (t1, v1, r) = tlv(validity)?;
    let (t2, v2, _) = tlv(r)?;
    Some((time_of(t1, v1)?, time_of(t2, v2)?))
}

/// One DER element: (tag, contents, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        (
            bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b)),
            rest,
        )
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18).
fn time_of(tag: u8, v: &[u8]) -> Option<OffsetDateTime> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s.get(..4)?.parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| rest.get(i..i + 2)?.parse::<u8>().ok();
    let date = Date::from_calendar_date(year, Month::try_from(n(0)?).ok()?, n(2)?).ok()?;
    let t = Time::from_hms(n(4)?, n(6)?, n(8)?).ok()?;
    Some(PrimitiveDateTime::new(date, t).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid(from: OffsetDateTime, until: OffsetDateTime) -> CertificateDer<'static> {
        let mut p = rcgen::CertificateParams::new(vec!["ca.test".to_string()]).unwrap();
        p.not_before = from;
        p.not_after = until;
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn reads_the_period_and_reports_expired_and_future_certificates() {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let from = time::macros::datetime!(2001-02-03 04:05:06 UTC);
        let until = time::macros::datetime!(2061-07-08 09:10:11 UTC);
        let c = cert_valid(from, until);
        assert_eq!(period(&c), Some((from, until)));
        let p = Path::new("ca.pem");
        assert!(check_current(p, &c, now, "the CA certificate").is_ok());
        let old = cert_valid(now - 10 * day, now - day);
        let e = check_current(p, &old, now, "the CA certificate")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ca.pem: the CA certificate expired on"),
            "{e}"
        );
        let future = cert_valid(now + day, now + 10 * day);
        let e = check_current(p, &future, now, "the CA certificate")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid before"), "{e}");
        assert_eq!(period(b"\x30\x03\x02\x01"), None);
    }
}
