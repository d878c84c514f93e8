//! A cloneable `Read + Seek` over a pack (at rest or still arriving) with positioned reads, so
//! several extraction threads share one parsed central directory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::exec::arriving::ArrivingReader;

const READ_WINDOW: usize = 128 * 1024;

/// What a [`PreadReader`] reads from.
#[derive(Clone)]
pub(super) enum Source {
    File(Arc<File>),
    /// Each clone is a reader of its own, so the download knows how far each thread is.
    Arriving(ArrivingReader),
}

impl Source {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        match self {
            Source::File(f) => f.read_at(buf, pos),
            Source::Arriving(a) => a.read_at(buf, pos),
        }
    }
}

/// A cloneable `Read + Seek` over a shared file (or a pack still arriving) using positioned
/// reads (`pread`), with a small read window. Clones have their own position and window, so
/// several threads can read one archive, sharing its parsed central directory.
pub(super) struct PreadReader {
    source: Source,
    len: u64,
    pos: u64,
    window: Box<[u8]>,
    window_start: u64,
    window_len: usize,
}

impl PreadReader {
    pub(super) fn new(source: Source, len: u64) -> Self {
        PreadReader {
            source,
            len,
            pos: 0,
            window: vec![0u8; READ_WINDOW].into_boxed_slice(),
            window_start: 0,
            window_len: 0,
        }
    }
}

impl Clone for PreadReader {
    fn clone(&self) -> Self {
        let mut c = PreadReader::new(self.source.clone(), self.len);
        c.pos = self.pos;
        c
    }
}

impl Read for PreadReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let in_window =
            self.pos >= self.window_start && self.pos < self.window_start + self.window_len as u64;
        if !in_window {
            if out.len() >= self.window.len() {
                let n = self.source.read_at(out, self.pos)?;
                self.pos += n as u64;
                return Ok(n);
            }
            let n = self.source.read_at(&mut self.window, self.pos)?;
            self.window_start = self.pos;
            self.window_len = n;
            if n == 0 {
                return Ok(0);
            }
        }
        let off = (self.pos - self.window_start) as usize;
        let n = out.len().min(self.window_len - off);
        out[..n].copy_from_slice(&self.window[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PreadReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start of file",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pread_reader_reads_and_seeks_like_a_file() {
        let mut t = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
        t.write_all(&data).unwrap();
        let len = t.metadata().unwrap().len();
        let mut r = PreadReader::new(Source::File(Arc::new(t)), len);
        let mut small = [0u8; 10];
        r.seek(SeekFrom::Start(1000)).unwrap();
        r.read_exact(&mut small).unwrap();
        assert_eq!(&small, &data[1000..1010]);
        let mut c = r.clone();
        let mut big = vec![0u8; 300_000];
        c.read_exact(&mut big).unwrap();
        assert_eq!(&big[..], &data[1010..301_010]);
        r.seek(SeekFrom::End(-5)).unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(&rest[..], &data[data.len() - 5..]);
        assert!(r.seek(SeekFrom::Current(-1_000_000)).is_err());
    }
}
