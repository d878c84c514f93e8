//! A pack that is still being downloaded, readable while it arrives.
//!
//! Fetching a pack and unpacking it are the two long steps of staging. Done one after the
//! other, the download (hundreds of MiB over mTLS) sits in front of every unpack. Done
//! together, the download costs almost nothing on the critical path:
//!
//! 1. The fetcher asks the controller for the zip's **tail** first (a ranged `Fetch`): the
//!    end-of-central-directory record and the central directory, which [`central_directory_start`]
//!    locates. The tail is kept in memory.
//! 2. It then streams the **body** into the partial file from where it stands, calling
//!    [`ArrivingPack::advance`] after each chunk has been written.
//! 3. The unpacker reads the archive through [`ArrivingPack::read_at`]: reads inside the tail are
//!    served from memory; reads in the body wait until the download has written past them. It
//!    takes entries in the order they sit in the zip, so it follows the download closely.
//!
//! Nothing read this way is trusted: the bytes were not verified when they were read. The
//! staged tree goes live only once the whole file's sha256 matched the plan's digest **and**
//! the tail the unpacker read is byte for byte the verified file's tail
//! ([`ArrivingPack::tail_matches`]); otherwise the staging directory is discarded. Every guard of
//! the unpacker (names, links, sizes, CRCs) runs as it does for a cached pack.
//!
//! A download that fails or is abandoned calls [`ArrivingPack::fail`] (the fetcher does it from a
//! drop guard), which wakes every waiting reader with an error, so extraction threads can never
//! wait forever.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

/// The most of a pack's end the fetcher asks for before the body: the end record, an archive
/// comment, and the central directory of a pack with ~10,000 entries. A larger directory is
/// fetched with a second range, up to [`MAX_TAIL`].
pub const TAIL_PROBE: u64 = 1 << 20;

/// The largest central directory (plus end records) kept in memory. A 4.x WSO2 pack has about
/// 25,000 entries, a directory of ~3 MiB.
pub const MAX_TAIL: u64 = 64 << 20;

/// A download in progress, as the unpacker sees it. Shared between the fetcher (writer) and the
/// extraction threads (readers) behind an `Arc`.
#[derive(Debug)]
pub struct ArrivingPack {
    path: PathBuf,
    file: File,
    size: u64,
    tail_start: u64,
    tail: Vec<u8>,
    state: Mutex<Arrival>,
    arrived: Condvar,
}

#[derive(Debug)]
struct Arrival {
    /// The body bytes `[0, written)` are in the file.
    written: u64,
    /// Why the download ended without the whole pack.
    failed: Option<String>,
}

impl ArrivingPack {
    /// A pack of `size` bytes arriving in `path` (which already holds `written` bytes), read
    /// through `file`, with its last bytes `tail` (starting at `size - tail.len()`) already in
    /// memory. An empty `tail` is fine: every read then waits for the body.
    pub fn new(path: PathBuf, file: File, size: u64, written: u64, tail: Vec<u8>) -> Self {
        // A "tail" longer than the pack cannot be one: do without.
        let tail = if tail.len() as u64 > size {
            Vec::new()
        } else {
            tail
        };
        ArrivingPack {
            path,
            file,
            size,
            tail_start: size - tail.len() as u64,
            tail,
            state: Mutex::new(Arrival {
                written: written.min(size),
                failed: None,
            }),
            arrived: Condvar::new(),
        }
    }

    /// The partial file the body is written to (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pack's full size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the in-memory tail starts (`size` when there is none).
    pub fn tail_start(&self) -> u64 {
        self.tail_start
    }

    fn lock(&self) -> MutexGuard<'_, Arrival> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The body's first `written` bytes are in the file: wake the readers waiting for them.
    pub fn advance(&self, written: u64) {
        let mut s = self.lock();
        if written > s.written {
            s.written = written.min(self.size);
            self.arrived.notify_all();
        }
    }

    /// The download ended without the whole pack: every read that would wait fails instead.
    /// Idempotent; the first reason is kept.
    pub fn fail(&self, reason: impl Into<String>) {
        let mut s = self.lock();
        if s.failed.is_none() {
            s.failed = Some(reason.into());
        }
        self.arrived.notify_all();
    }

    /// How many body bytes are in the file.
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    /// Whether the in-memory tail equals `verified` (the same range of the pack that passed
    /// its digest check).
    pub fn tail_matches(&self, verified: &[u8]) -> bool {
        verified == self.tail.as_slice()
    }

    /// Reads at `pos` like `pread`, blocking until the bytes have arrived. Short reads happen
    /// (the bytes not yet written are not waited for once one byte is there); 0 means `pos` is
    /// at or past the end.
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        if buf.is_empty() || pos >= self.size {
            return Ok(0);
        }
        if pos >= self.tail_start {
            let from = usize::try_from(pos - self.tail_start).map_err(io::Error::other)?;
            let n = buf.len().min(self.tail.len() - from);
            buf[..n].copy_from_slice(&self.tail[from..from + n]);
            return Ok(n);
        }
        let written = {
            let mut s = self.lock();
            loop {
                if s.written > pos {
                    break s.written;
                }
                if let Some(reason) = &s.failed {
                    return Err(io::Error::other(format!(
                        "the download of {} ended early: {reason}",
                        self.path.display()
                    )));
                }
                s = self.arrived.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        };
        let room = usize::try_from(written - pos).unwrap_or(usize::MAX);
        let n = buf.len().min(room);
        self.file.read_at(&mut buf[..n], pos)
    }
}

/// Where a zip's central directory starts, read off its end records in `tail` (the pack's
/// bytes from `tail_start` to its end), or `None` when the tail holds no valid end record.
/// Handles an archive comment and zip64 end records.
pub fn central_directory_start(tail: &[u8], tail_start: u64) -> Option<u64> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const EOCD64_LOCATOR: [u8; 4] = [0x50, 0x4b, 0x06, 0x07];
    const EOCD64: [u8; 4] = [0x50, 0x4b, 0x06, 0x06];
    let le16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let le32 = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    };
    let le64 = |b: &[u8], at: usize| {
        b.get(at..at + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    // The end record is 22 bytes plus a comment whose length it states; search backwards for
    // the last signature whose comment reaches exactly the end.
    let eocd = (0..=tail.len().checked_sub(22)?).rev().find(|&i| {
        tail[i..i + 4] == EOCD
            && le16(tail, i + 20).is_some_and(|c| i + 22 + usize::from(c) == tail.len())
    })?;
    let cd_size = le32(tail, eocd + 12)?;
    let cd_offset = le32(tail, eocd + 16)?;
    if cd_size != u32::MAX && cd_offset != u32::MAX {
        return Some(u64::from(cd_offset));
    }
    // zip64: a 20-byte locator just before the end record points at the zip64 end record.
    let locator = eocd.checked_sub(20)?;
    if tail[locator..locator + 4] != EOCD64_LOCATOR {
        return None;
    }
    let record = le64(tail, locator + 8)?;
    let at = usize::try_from(record.checked_sub(tail_start)?).ok()?;
    if tail.get(at..at + 4)? != EOCD64 {
        return None;
    }
    le64(tail, at + 48)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    fn pack_of(data: &[u8], written: u64, tail_len: usize) -> Arc<ArrivingPack> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data[..written as usize]).unwrap();
        let file = File::open(f.path()).unwrap();
        let tail = data[data.len() - tail_len..].to_vec();
        let path = f.into_temp_path().keep().unwrap();
        Arc::new(ArrivingPack::new(
            path,
            file,
            data.len() as u64,
            written,
            tail,
        ))
    }

    #[test]
    fn reads_come_from_the_tail_or_wait_for_the_body() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let pack = pack_of(&data, 3000, 1000);
        let mut buf = [0u8; 100];
        // The tail is there before the body.
        assert_eq!(pack.read_at(&mut buf, 9950).unwrap(), 50);
        assert_eq!(&buf[..50], &data[9950..]);
        // A read over the written mark is short.
        assert_eq!(pack.read_at(&mut buf, 2950).unwrap(), 50);
        assert_eq!(&buf[..50], &data[2950..3000]);
        assert_eq!(pack.read_at(&mut buf, 10_000).unwrap(), 0);
        // A read past the mark waits until the writer gets there.
        let reader = {
            let pack = Arc::clone(&pack);
            std::thread::spawn(move || {
                let mut b = [0u8; 10];
                let n = pack.read_at(&mut b, 5000).unwrap();
                (n, b)
            })
        };
        std::fs::OpenOptions::new()
            .append(true)
            .open(pack.path())
            .unwrap()
            .write_all(&data[3000..6000])
            .unwrap();
        pack.advance(6000);
        let (n, b) = reader.join().unwrap();
        assert_eq!((n, &b[..]), (10, &data[5000..5010]));
        std::fs::remove_file(pack.path()).unwrap();
    }

    #[test]
    fn a_failed_download_wakes_every_waiting_reader_with_an_error() {
        let data = vec![7u8; 4096];
        let pack = pack_of(&data, 0, 0);
        let readers: Vec<_> = (0..3)
            .map(|i| {
                let pack = Arc::clone(&pack);
                std::thread::spawn(move || pack.read_at(&mut [0u8; 8], i * 100))
            })
            .collect();
        pack.fail("cut by the test");
        for r in readers {
            let e = r.join().unwrap().unwrap_err();
            assert!(e.to_string().contains("cut by the test"), "{e}");
        }
        assert!(pack.read_at(&mut [0u8; 8], 0).is_err());
        std::fs::remove_file(pack.path()).unwrap();
    }

    fn zip_with(entries: usize, comment: &str) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.set_comment(comment).unwrap();
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for i in 0..entries {
            w.start_file(format!("top/file-{i}.txt"), opts).unwrap();
            w.write_all(format!("content {i}").as_bytes()).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn the_central_directory_is_found_from_the_end_records() {
        for comment in ["", "a comment with PK\u{5}\u{6} inside"] {
            let data = zip_with(50, comment);
            let archive = zip::ZipArchive::new(std::io::Cursor::new(&data)).unwrap();
            let expected = Some(archive.central_directory_start());
            for tail_len in [data.len(), 2000, 300] {
                let start = (data.len() - tail_len) as u64;
                let found = central_directory_start(&data[data.len() - tail_len..], start);
                assert_eq!(found, expected, "comment {comment:?}, tail {tail_len}");
            }
        }
        // zip64: the classic record says 0xFFFFFFFF; the zip64 record has the real offset.
        let tail_start = 5_000_000_000u64;
        let mut tail = vec![0u8; 100];
        let record_at = tail_start + tail.len() as u64;
        tail.extend_from_slice(&[0x50, 0x4b, 0x06, 0x06]);
        tail.extend_from_slice(&44u64.to_le_bytes());
        tail.extend_from_slice(&[0u8; 28]);
        tail.extend_from_slice(&4096u64.to_le_bytes()); // directory size
        tail.extend_from_slice(&4_999_999_000u64.to_le_bytes()); // directory offset
        tail.extend_from_slice(&[0x50, 0x4b, 0x06, 0x07, 0, 0, 0, 0]);
        tail.extend_from_slice(&record_at.to_le_bytes());
        tail.extend_from_slice(&1u32.to_le_bytes());
        tail.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        tail.extend_from_slice(&[0xff; 8]);
        tail.extend_from_slice(&[0, 0]);
        assert_eq!(
            central_directory_start(&tail, tail_start),
            Some(4_999_999_000)
        );
        // The zip64 record outside the tail: not known.
        assert_eq!(
            central_directory_start(&tail[156..], tail_start + 156),
            None
        );
        assert_eq!(central_directory_start(b"not a zip at all", 0), None);
        assert_eq!(central_directory_start(&[], 0), None);
    }
}
