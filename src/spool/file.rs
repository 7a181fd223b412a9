//! Reading one spool file safely: only regular files are opened, never through a symlink and
//! never blocking (a FIFO in the spool must not hang the drain), and never more bytes than the
//! caller's limit (a 3 GiB or sparse file must not exhaust memory).
//!
//! The size is known from `fstat` before anything is read; the first line and the header are
//! read and checked against that size before the body is, so a truncated or padded file is
//! refused without reading its body.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::SpoolError;
use super::format;

/// Bytes read first, enough for the first line and a usual header.
const PROBE: u64 = 64 << 10;

/// What kind of non-regular file `meta` describes, for the error message.
fn non_regular_kind(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_symlink() {
        Some("a symbolic link")
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_block_device() || t.is_char_device() {
        Some("a device")
    } else {
        Some("not a regular file")
    }
}

/// Opens `path` for reading if, and only if, it is a regular file (checked with `lstat`
/// before opening, then again on the open descriptor). Returns the file and its size.
pub(super) fn open_regular(path: &Path) -> Result<(File, u64), SpoolError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| SpoolError::io(path, e))?;
    if let Some(kind) = non_regular_kind(&meta) {
        return Err(SpoolError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| SpoolError::io(path, e))?;
    let now = f.metadata().map_err(|e| SpoolError::io(path, e))?;
    // Replaced between the two checks: whatever it is now, it is not what we checked.
    if let Some(kind) = non_regular_kind(&now) {
        return Err(SpoolError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    if now.ino() != meta.ino() || now.dev() != meta.dev() {
        return Err(SpoolError::io(
            path,
            io::Error::other("replaced while being opened"),
        ));
    }
    Ok((f, now.len()))
}

/// Reads a whole spool file of at most `limit` bytes, checking its first line and header
/// against its size before reading the body.
pub(super) fn read_message_file(path: &Path, limit: u64) -> Result<Vec<u8>, SpoolError> {
    let (f, len) = open_regular(path)?;
    if len > limit {
        return Err(SpoolError::TooLarge {
            path: path.to_path_buf(),
            size: len,
            limit,
        });
    }
    let corrupt = |source| SpoolError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = Vec::new();
    let mut r = f.take(len + 1);
    read_up_to(&mut r, &mut buf, len.min(PROBE), path)?;
    // The whole header must be in hand before the body is read.
    let header_end = format::header_end(&buf).map_err(corrupt)?;
    if (buf.len() as u64) < header_end && header_end <= len {
        read_up_to(&mut r, &mut buf, header_end, path)?;
    }
    format::check_size(&buf, len).map_err(corrupt)?;
    buf.reserve_exact((len as usize).saturating_sub(buf.len()));
    r.read_to_end(&mut buf)
        .map_err(|e| SpoolError::io(path, e))?;
    if buf.len() as u64 != len {
        return Err(SpoolError::io(
            path,
            io::Error::other(format!(
                "changed size while being read ({len} bytes, then {})",
                buf.len()
            )),
        ));
    }
    Ok(buf)
}

/// Reads until `buf` holds `want` bytes or the file ends.
fn read_up_to(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    want: u64,
    path: &Path,
) -> Result<(), SpoolError> {
    let need = want.saturating_sub(buf.len() as u64);
    r.by_ref()
        .take(need)
        .read_to_end(buf)
        .map_err(|e| SpoolError::io(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::{MessageId, QueueKind, Timestamp};
    use crate::spool::{FormatError, Header};

    fn sample(body: &[u8]) -> Vec<u8> {
        let h = Header {
            id: MessageId([9; 16]),
            queue: QueueKind::Queue,
            from: "a@example.com".into(),
            to: vec!["b@example.com".into()],
            attempts: 0,
            next_retry_at: None,
            created_at: Timestamp::now(),
            properties: Default::default(),
            body_len: 0,
        };
        format::encode(&h, body).unwrap()
    }

    #[test]
    fn sizes_are_checked_before_the_body_is_read() {
        let dir = std::env::temp_dir().join(format!("drain-spool-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m");
        let good = sample(&vec![b'x'; 100_000]);
        std::fs::write(&p, &good).unwrap();
        assert_eq!(read_message_file(&p, 1 << 20).unwrap(), good);

        let err = read_message_file(&p, 1000).unwrap_err();
        assert!(
            matches!(err, SpoolError::TooLarge { size, limit: 1000, .. } if size == good.len() as u64)
        );

        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        let err = read_message_file(&p, 1 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::Corrupt {
                    source: FormatError::BodyLength { .. },
                    ..
                }
            ),
            "{err}"
        );

        std::fs::write(&p, b"GARBAGE").unwrap();
        let err = read_message_file(&p, 1 << 20).unwrap_err();
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");

        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        let err = read_message_file(&p, 1 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::NotRegular {
                    kind: "a symbolic link",
                    ..
                }
            ),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
