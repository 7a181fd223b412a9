//! A copy-on-write view of a file, as a redb storage backend: reads come from the file unless
//! the range was written; writes go to memory, in 4 KiB blocks, and never reach the file.
//!
//! The journal's read-only `Reader` uses it to read a journal left unclean by a writer that is
//! gone (SIGKILL): redb must repair such a file before reading it, and the repair (rebuilding
//! the allocator state, rewriting the header) happens here, in memory. The file is opened read-only, so
//! nothing can modify it. What the repair writes is small next to the journal (headers and
//! allocator state), so memory stays bounded by it, not by the number of messages.
//!
//! No file locks are taken (the lock methods keep redb's `Unsupported` default): the reader
//! checks afterwards that no writer opened the journal meanwhile (`reader::read`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Mutex;

const BLOCK: u64 = 4096;

#[derive(Debug)]
pub struct Overlay {
    file: File,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The view's length.
    len: u64,
    /// File bytes at or beyond this offset are not part of the view (it was shrunk below
    /// them); they read as zero unless written.
    file_visible: u64,
    /// Written blocks, by block index; bytes beyond `len` in them are zero.
    blocks: HashMap<u64, Box<[u8]>>,
}

impl Overlay {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> io::Result<Overlay> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Overlay {
            file,
            state: Mutex::new(State {
                len,
                file_visible: len,
                blocks: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills `out` with the view's bytes at `abs` as they are without the written blocks: the
    /// file's bytes below `file_visible`, zeros beyond.
    fn read_file_part(&self, st: &State, abs: u64, out: &mut [u8]) -> io::Result<()> {
        let end = abs + out.len() as u64;
        let from_file = st.file_visible.clamp(abs, end) - abs;
        let (head, tail) = out.split_at_mut(from_file as usize);
        if !head.is_empty() {
            self.file.read_exact_at(head, abs)?;
        }
        tail.fill(0);
        Ok(())
    }

    fn load_block<'a>(&self, st: &'a mut State, b: u64) -> io::Result<&'a mut [u8]> {
        if !st.blocks.contains_key(&b) {
            let mut buf = vec![0u8; BLOCK as usize].into_boxed_slice();
            let start = b * BLOCK;
            let visible = st.len.clamp(start, start + BLOCK) - start;
            self.read_file_part(st, start, &mut buf[..visible as usize])?;
            st.blocks.insert(b, buf);
        }
        Ok(st
            .blocks
            .entry(b)
            .or_insert_with(|| vec![0u8; BLOCK as usize].into_boxed_slice()))
    }
}

fn out_of_range(offset: u64, n: usize, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("range {offset}+{n} is beyond the end ({len})"),
    )
}

impl redb::StorageBackend for Overlay {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let st = self.lock();
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|e| *e <= st.len)
            .ok_or_else(|| out_of_range(offset, out.len(), st.len))?;
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK;
            let in_block = pos - b * BLOCK;
            let n = (BLOCK - in_block).min(end - pos) as usize;
            let dst = &mut out[(pos - offset) as usize..][..n];
            match st.blocks.get(&b) {
                Some(block) => dst.copy_from_slice(&block[in_block as usize..][..n]),
                None => self.read_file_part(&st, pos, dst)?,
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut st = self.lock();
        if len < st.len {
            // Forget what lies beyond: it must read as zero if the view grows again.
            st.blocks.retain(|b, _| b * BLOCK < len);
            let b = len / BLOCK;
            let cut = (len - b * BLOCK) as usize;
            if cut > 0 {
                let block = self.load_block(&mut st, b)?;
                block[cut..].fill(0);
            }
            st.file_visible = st.file_visible.min(len);
        }
        st.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut st = self.lock();
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= st.len)
            .ok_or_else(|| out_of_range(offset, data.len(), st.len))?;
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK;
            let in_block = (pos - b * BLOCK) as usize;
            let n = (BLOCK as usize - in_block).min((end - pos) as usize);
            let block = self.load_block(&mut st, b)?;
            block[in_block..][..n].copy_from_slice(&data[(pos - offset) as usize..][..n]);
            pos += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend as _;

    #[test]
    fn writes_stay_in_memory_and_reads_merge_them() {
        let dir = std::env::temp_dir().join(format!("drain-overlay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &original).unwrap();
        let o = Overlay::open(&path).unwrap();
        assert_eq!(o.len().unwrap(), 10_000);
        o.write(4090, &[7u8; 20]).unwrap();
        let mut buf = vec![0u8; 40];
        o.read(4080, &mut buf).unwrap();
        assert_eq!(&buf[..10], &original[4080..4090]);
        assert_eq!(&buf[10..30], &[7u8; 20]);
        assert_eq!(&buf[30..], &original[4110..4120]);
        // Shrink then grow: the cut part reads as zero, from the file and from written blocks.
        o.set_len(4095).unwrap();
        assert!(o.read(4090, &mut [0u8; 10]).is_err());
        o.set_len(12_000).unwrap();
        let mut tail = vec![1u8; 12_000 - 4090];
        o.read(4090, &mut tail).unwrap();
        assert_eq!(&tail[..5], &[7u8; 5]);
        assert!(tail[5..].iter().all(|b| *b == 0));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            original,
            "the file is untouched"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
