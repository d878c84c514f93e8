//! A pack that is still being downloaded, readable while it arrives.
//!
//! Fetching a pack and unpacking it are the two long steps of staging. Done one after the
//! other, the download (hundreds of MiB over mTLS) sits in front of every unpack. Done
//! together, the download costs almost nothing on the critical path:
//!
//! 1. The fetcher asks the controller for the zip's **tail** first (a ranged `Fetch`): the
//!    end-of-central-directory record and the central directory, which [`central_directory_start`]
//!    locates. The tail is kept in memory.
//! 2. It then streams the **body** into the partial file from where it stands, in [`Block`]s of
//!    1 MiB, and [`ArrivingPack::publish`]es each block once it is written (and hashed).
//! 3. The unpacker reads the archive through [`ArrivingReader`]s (one per extraction thread):
//!    reads inside the tail are served from memory; reads in the body wait until the download
//!    has got past them, and are served from the published blocks while they are in memory, from
//!    the file otherwise. It takes entries in the order they sit in the zip, so it follows the
//!    download closely.
//!
//! **A window, not a second copy.** Each reader tells the pack where it reads; a block every
//! reader has passed is let go (and refilled by the download). When more than [`WINDOW`] is
//! held, the download waits for the slowest reader, except while any reader waits for the
//! download (so neither can wait for the other). With no reader reading, the oldest blocks past
//! [`WINDOW`] are let go. The cache file is written around the page cache where it can be
//! ([`crate::exec::packfile`]): the unpack reads the download's own blocks, so a download costs a
//! few MiB of memory instead of a pack's worth of page cache.
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

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most of a pack's end the fetcher asks for before the body: the end record, an archive
/// comment, and the central directory of a pack with ~10,000 entries. A larger directory is
/// fetched with a second range, up to [`MAX_TAIL`].
pub const TAIL_PROBE: u64 = 1 << 20;

/// The largest central directory (plus end records) kept in memory. A large product pack has
/// about 25,000 entries, a directory of ~3 MiB.
pub const MAX_TAIL: u64 = 64 << 20;

/// The alignment direct I/O needs of buffers, file offsets and lengths (4096 serves devices
/// with 512-byte and with 4 KiB logical sectors).
pub const DIO_ALIGN: usize = 4096;

/// What one [`Block`] holds when it starts on an aligned offset.
pub const BLOCK_SIZE: usize = 1 << 20;

/// Body bytes kept in memory ahead of the unpacker. Past this the download waits for the
/// unpacker to move on (never while a reader waits for the download).
pub const WINDOW: u64 = 16 << 20;

/// How long one published block waits for an unpacker that does not move before the download
/// stops waiting for it (a guard against a stuck reader, not reached in normal operation).
const STALL_GUARD: Duration = Duration::from_secs(30);

/// A piece of the body, `len` bytes from `start`, in a buffer aligned for direct I/O.
#[derive(Debug)]
pub struct Block {
    buf: Box<[u8]>,
    /// Where the aligned region starts in `buf`.
    at: usize,
    len: usize,
    start: u64,
}

impl Block {
    /// An empty block for the body bytes from `start`.
    pub fn new(start: u64) -> Block {
        let buf = vec![0u8; BLOCK_SIZE + DIO_ALIGN].into_boxed_slice();
        // `align_offset` may decline (usize::MAX); the block is then written buffered.
        let at = buf.as_ptr().align_offset(DIO_ALIGN).min(DIO_ALIGN);
        Block {
            buf,
            at,
            len: 0,
            start,
        }
    }

    /// Empties the block for the body bytes from `start`.
    pub fn reset(&mut self, start: u64) {
        self.len = 0;
        self.start = start;
    }

    /// The body offset of the first byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The body offset just past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    /// The bytes held.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }

    /// How many bytes the block takes: a whole block from an aligned start, else up to the
    /// next aligned offset (so the next block starts aligned).
    pub fn capacity(&self) -> usize {
        match (self.start % DIO_ALIGN as u64) as usize {
            0 => BLOCK_SIZE,
            misaligned => DIO_ALIGN - misaligned,
        }
    }

    /// Whether the block holds all it takes.
    pub fn is_full(&self) -> bool {
        self.len == self.capacity()
    }

    /// Whether the block can be written with direct I/O: memory, offset and length aligned.
    pub fn is_aligned(&self) -> bool {
        let data = self.data();
        !data.is_empty()
            && data.as_ptr().addr().is_multiple_of(DIO_ALIGN)
            && self.start.is_multiple_of(DIO_ALIGN as u64)
            && data.len().is_multiple_of(DIO_ALIGN)
    }

    /// Appends as much of `src` as the block takes; returns how much that was.
    pub fn fill(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.capacity() - self.len);
        let from = self.at + self.len;
        self.buf[from..from + n].copy_from_slice(&src[..n]);
        self.len += n;
        n
    }
}

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
    /// Readers wait here for bytes.
    arrived: Condvar,
    /// The writer waits here for the readers to move on.
    room: Condvar,
}

#[derive(Debug, Default)]
struct Arrival {
    /// The body bytes `[0, written)` are in the file.
    written: u64,
    /// Why the download ended without the whole pack.
    failed: Option<String>,
    /// The latest published blocks: consecutive, the last ending at `written`.
    window: VecDeque<Arc<Block>>,
    /// The bytes the window holds.
    window_bytes: u64,
    /// Blocks the readers are done with, for the writer to fill again: the download reuses
    /// the same few MiB instead of touching fresh memory for every block.
    spare: Vec<Block>,
    /// Live readers and where each last read in the body (`None`: not yet).
    readers: BTreeMap<u64, Option<u64>>,
    next_reader: u64,
    /// Readers blocked until the download gets past them.
    waiting: usize,
    /// The download is waiting for the readers to move on.
    paused: bool,
    /// The download stopped waiting for the readers ([`STALL_GUARD`] passed once).
    unpaced: bool,
}

impl Arrival {
    /// Where the reader furthest behind stands (`None` while no reader has read the body).
    /// A reader that has not read yet does not hold the window back: the threads of one unpack
    /// start together and read in zip order, and at worst a late one reads from the file.
    fn floor(&self) -> Option<u64> {
        self.readers.values().flatten().min().copied()
    }

    /// Drops the blocks no reader needs any more: those every reader has read past, or (with
    /// no reader reading) the oldest beyond [`WINDOW`]. Returns whether any went.
    fn evict(&mut self) -> bool {
        let floor = self.floor();
        let mut evicted = false;
        while let Some(front) = self.window.front() {
            let done = match floor {
                Some(f) => front.end() <= f,
                None => self.window_bytes > WINDOW,
            };
            if !done {
                break;
            }
            let block = self.window.pop_front().expect("front exists");
            self.window_bytes -= block.data().len() as u64;
            if let Ok(b) = Arc::try_unwrap(block)
                && self.spare.len() < (WINDOW as usize / BLOCK_SIZE)
            {
                self.spare.push(b);
            }
            evicted = true;
        }
        evicted
    }

    /// The block holding body byte `pos`, if it is still in memory.
    fn block_at(&self, pos: u64) -> Option<Arc<Block>> {
        let i = self.window.partition_point(|b| b.end() <= pos);
        self.window
            .get(i)
            .filter(|b| b.start() <= pos)
            .map(Arc::clone)
    }

    /// Whether the writer must wait for the readers before publishing more.
    fn must_wait(&self) -> bool {
        self.window_bytes > WINDOW
            && self.waiting == 0
            && self.failed.is_none()
            && !self.unpaced
            && self.floor().is_some()
    }
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
                ..Arrival::default()
            }),
            arrived: Condvar::new(),
            room: Condvar::new(),
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

    /// `block` is in the file (it must start where the body written so far ends): readers get
    /// its bytes from memory while they need them. Waits, before returning, while the window
    /// is full and no reader is waiting for the download, so the download keeps just ahead of
    /// the unpacker instead of piling the pack up in memory.
    pub fn publish(&self, block: Block) {
        let mut s = self.lock();
        if block.start() != s.written {
            // Not contiguous with the window (never happens with one writer): serve the
            // bytes before it from the file.
            s.window.clear();
            s.window_bytes = 0;
        }
        s.written = block.end().min(self.size);
        s.window_bytes += block.data().len() as u64;
        s.window.push_back(Arc::new(block));
        s.evict();
        self.arrived.notify_all();
        let give_up = Instant::now() + STALL_GUARD;
        while s.must_wait() {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(path = %self.path.display(), "the unpacker has not moved for {} s; the download no longer waits for it", STALL_GUARD.as_secs());
                s.unpaced = true;
                break;
            }
            s.paused = true;
            s = self
                .room
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.paused = false;
    }

    /// Whether the download is waiting for the unpacker to catch up (a diagnostic).
    pub fn download_paused(&self) -> bool {
        self.lock().paused
    }

    /// An empty block for the body bytes from `start`: one the readers are done with when
    /// there is one.
    pub fn spare_block(&self, start: u64) -> Block {
        let spare = self.lock().spare.pop();
        match spare {
            Some(mut b) => {
                b.reset(start);
                b
            }
            None => Block::new(start),
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
        self.room.notify_all();
    }

    /// How many body bytes are in the file.
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    /// The body bytes held in memory for the readers.
    pub fn in_memory(&self) -> u64 {
        self.lock().window_bytes
    }

    /// Whether the in-memory tail equals `verified` (the same range of the pack that passed
    /// its digest check).
    pub fn tail_matches(&self, verified: &[u8]) -> bool {
        verified == self.tail.as_slice()
    }

    /// A reader that tells the download where it is, so the download keeps the blocks it still
    /// needs in memory and waits for it when it falls behind. Reads in order (each at or after
    /// the last) keep it cheap; a reader is let go when dropped.
    pub fn reader(self: &Arc<Self>) -> ArrivingReader {
        let mut s = self.lock();
        let id = s.next_reader;
        s.next_reader += 1;
        s.readers.insert(id, None);
        ArrivingReader {
            pack: Arc::clone(self),
            id,
        }
    }

    /// Reads at `pos` like `pread`, blocking until the bytes have arrived. Short reads happen
    /// (the bytes not yet written are not waited for once one byte is there); 0 means `pos` is
    /// at or past the end.
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.read_as(None, buf, pos)
    }

    fn read_as(&self, reader: Option<u64>, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        if buf.is_empty() || pos >= self.size {
            return Ok(0);
        }
        if pos >= self.tail_start {
            let from = usize::try_from(pos - self.tail_start).map_err(io::Error::other)?;
            let n = buf.len().min(self.tail.len() - from);
            buf[..n].copy_from_slice(&self.tail[from..from + n]);
            return Ok(n);
        }
        let (written, block) = {
            let mut s = self.lock();
            if let Some(mark) = reader.and_then(|id| s.readers.get_mut(&id)) {
                *mark = Some(pos);
                if s.evict() {
                    self.room.notify_all();
                }
            }
            loop {
                if s.written > pos {
                    break;
                }
                if let Some(reason) = &s.failed {
                    return Err(io::Error::other(format!(
                        "the download of {} ended early: {reason}",
                        self.path.display()
                    )));
                }
                s.waiting += 1;
                self.room.notify_all();
                s = self.arrived.wait(s).unwrap_or_else(|p| p.into_inner());
                s.waiting -= 1;
            }
            (s.written, s.block_at(pos))
        };
        match block {
            Some(b) => {
                let from = usize::try_from(pos - b.start()).map_err(io::Error::other)?;
                let n = buf.len().min(b.data().len() - from);
                buf[..n].copy_from_slice(&b.data()[from..from + n]);
                Ok(n)
            }
            None => {
                let room = usize::try_from(written - pos).unwrap_or(usize::MAX);
                let n = buf.len().min(room);
                self.file.read_at(&mut buf[..n], pos)
            }
        }
    }
}

/// One reader of an [`ArrivingPack`] (see [`ArrivingPack::reader`]). A clone is a new reader.
#[derive(Debug)]
pub struct ArrivingReader {
    pack: Arc<ArrivingPack>,
    id: u64,
}

impl ArrivingReader {
    /// [`ArrivingPack::read_at`], recording that this reader has moved on to `pos`.
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.pack.read_as(Some(self.id), buf, pos)
    }

    /// The pack being read.
    pub fn pack(&self) -> &Arc<ArrivingPack> {
        &self.pack
    }
}

impl Clone for ArrivingReader {
    fn clone(&self) -> Self {
        self.pack.reader()
    }
}

impl Drop for ArrivingReader {
    fn drop(&mut self) {
        let mut s = self.pack.lock();
        s.readers.remove(&self.id);
        s.evict();
        self.pack.room.notify_all();
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

    const MIB: u64 = 1 << 20;

    /// A pack of `blocks` MiB whose file holds zeros, so a read that returns the pattern came
    /// from memory and one that returns zeros came from the file.
    fn zeroed_pack(blocks: u64) -> (tempfile::TempPath, Arc<ArrivingPack>) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(blocks * MIB).unwrap();
        let file = File::open(f.path()).unwrap();
        let path = f.into_temp_path();
        let pack = ArrivingPack::new(path.to_path_buf(), file, blocks * MIB, 0, Vec::new());
        (path, Arc::new(pack))
    }

    /// Block `i` (1 MiB at `i` MiB), every byte `i + 1`.
    fn block(pack: &ArrivingPack, i: u64) -> Block {
        let mut b = pack.spare_block(i * MIB);
        assert_eq!(b.capacity(), BLOCK_SIZE);
        assert_eq!(b.fill(&vec![(i + 1) as u8; BLOCK_SIZE + 10]), BLOCK_SIZE);
        assert!(b.is_full() && b.is_aligned());
        b
    }

    /// A thread publishing blocks `from..to`, reporting each one published.
    fn publisher(
        pack: &Arc<ArrivingPack>,
        from: u64,
        to: u64,
    ) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<u64>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let pack = Arc::clone(pack);
        let h = std::thread::spawn(move || {
            for i in from..to {
                pack.publish(block(&pack, i));
                let _ = tx.send(i);
            }
        });
        (h, rx)
    }

    /// Waits (a failure guard, not a synchronisation sleep) until the download pauses.
    fn wait_paused(pack: &ArrivingPack) {
        let give_up = Instant::now() + Duration::from_secs(60);
        while !pack.download_paused() {
            assert!(Instant::now() < give_up, "the download never paused");
            std::thread::yield_now();
        }
    }

    fn recv(rx: &std::sync::mpsc::Receiver<u64>) -> u64 {
        rx.recv_timeout(Duration::from_secs(60)).expect("publisher")
    }

    #[test]
    fn a_block_starts_aligned_after_an_unaligned_head() {
        let mut head = Block::new(1000);
        assert_eq!(head.capacity(), DIO_ALIGN - 1000);
        assert_eq!(head.fill(&[1u8; 5000]), DIO_ALIGN - 1000);
        assert!(head.is_full() && !head.is_aligned());
        let mut next = Block::new(head.end());
        assert_eq!(next.capacity(), BLOCK_SIZE);
        assert_eq!(next.fill(&[2u8; 100]), 100);
        assert!(!next.is_aligned(), "a partial block is written buffered");
    }

    #[test]
    fn readers_are_served_from_memory_and_the_download_keeps_just_ahead_of_them() {
        let (_path, pack) = zeroed_pack(24);
        let reader = pack.reader();
        let mut buf = vec![0u8; 4096];
        // The reader starts at the front: it is handed the first block from memory.
        pack.publish(block(&pack, 0));
        assert_eq!(reader.read_at(&mut buf, 10).unwrap(), 4096);
        assert!(buf.iter().all(|&b| b == 1));
        // With the reader at the first block, the download stops once the window is full.
        let (writer, published) = publisher(&pack, 1, 24);
        wait_paused(&pack);
        let held = pack.written();
        assert_eq!(held, WINDOW + MIB, "published until over the window");
        assert_eq!(pack.in_memory(), held);
        let paused_at = held / MIB - 1;
        for i in 1..paused_at {
            assert_eq!(recv(&published), i);
        }
        // The reader moves on: what it has passed is let go, and the download goes on.
        assert_eq!(reader.read_at(&mut buf, 8 * MIB).unwrap(), 4096);
        assert!(buf.iter().all(|&b| b == 9));
        assert_eq!(recv(&published), paused_at);
        // Bytes let go come from the file (zeros here: the file is not what was published).
        assert_eq!(pack.read_at(&mut buf, MIB).unwrap(), 4096);
        assert!(buf.iter().all(|&b| b == 0));
        // A reader waiting past the download is never kept waiting by the window.
        assert_eq!(reader.read_at(&mut buf, 23 * MIB + 5).unwrap(), 4096);
        assert!(buf.iter().all(|&b| b == 24));
        writer.join().unwrap();
        assert_eq!(pack.written(), 24 * MIB);
        // Every block before the reader went; blocks come back to be filled again.
        assert_eq!(pack.in_memory(), MIB);
        drop(reader);
        assert_eq!(
            pack.in_memory(),
            MIB,
            "the last block stays (within the window)"
        );
    }

    #[test]
    fn a_reader_that_goes_away_or_a_failure_releases_a_paused_download() {
        for end in ["reader dropped", "download failed"] {
            let (_path, pack) = zeroed_pack(40);
            let reader = pack.reader();
            pack.publish(block(&pack, 0));
            assert_eq!(reader.read_at(&mut [0u8; 16], 0).unwrap(), 16);
            let (writer, _published) = publisher(&pack, 1, 40);
            wait_paused(&pack);
            match end {
                "reader dropped" => drop(reader),
                _ => pack.fail("cut"),
            }
            writer.join().unwrap();
            assert_eq!(pack.written(), 40 * MIB, "{end}");
            assert!(!pack.download_paused(), "{end}");
        }
    }

    #[test]
    fn without_readers_the_window_stays_bounded_and_nothing_waits() {
        let (_path, pack) = zeroed_pack(40);
        for i in 0..40 {
            pack.publish(block(&pack, i));
            assert!(pack.in_memory() <= WINDOW, "block {i}");
        }
        assert!(!pack.download_paused());
        // A reader that never read does not hold the window either.
        let idle = pack.reader();
        let (_path2, other) = zeroed_pack(40);
        let _idle2 = other.reader();
        for i in 0..40 {
            other.publish(block(&other, i));
        }
        assert!(other.in_memory() <= WINDOW);
        drop(idle);
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
