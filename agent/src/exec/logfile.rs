//! A node's log files, read for the operator (`apimctl logs`).
//!
//! The agent serves only regular files inside one folder (the node's log folder, which its spec
//! names): [`open_in`] refuses an empty, absolute or `..` path, a symlink whose target leaves the
//! folder, and anything but a regular file (a FIFO, a device, a directory), then checks the file
//! it actually opened (through `/proc/self/fd`), so a path component swapped for a symlink between
//! the check and the open is caught too. A FIFO is opened non-blocking, so it cannot hang the
//! agent before it is refused.
//!
//! [`tail`] reads the last lines of a file, bounded in lines ([`MAX_LINES`]) and bytes
//! ([`MAX_TAIL_BYTES`]); [`Follower`] reads what is appended, at most a budget per call, and
//! starts over when the file shrank (truncated in place) or was replaced (rotated), after
//! reading what the replaced file still held.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;

use crate::exec::error::{ExecError, Result};

/// Most lines a tail sends first.
pub const MAX_LINES: u32 = 10_000;
/// Most bytes a tail sends first (the start of a longer tail is cut at a line boundary).
pub const MAX_TAIL_BYTES: u64 = 1 << 20;
/// Largest piece of a log sent in one message.
pub const MAX_CHUNK: usize = 64 << 10;

/// Blocks read backwards while looking for the start of the last lines.
const BLOCK: u64 = 64 << 10;

fn refused(file: &str, reason: impl Into<String>) -> ExecError {
    ExecError::LogRefused {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

/// `file` as a path relative to the log folder: not empty, not absolute, only plain names (no
/// `..`, no `.`), no NUL.
pub fn check_name(file: &str) -> Result<PathBuf> {
    if file.is_empty() {
        return Err(refused(file, "no file named"));
    }
    if file.contains('\0') {
        return Err(refused(file, "the name holds a NUL byte"));
    }
    let p = Path::new(file);
    if p.is_absolute() {
        return Err(refused(
            file,
            "an absolute path; name a file of the node's log folder",
        ));
    }
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(refused(
            file,
            "'..' and '.' are not allowed; name a file of the node's log folder",
        ));
    }
    Ok(p.to_path_buf())
}

/// An open log file, checked by [`open_in`].
#[derive(Debug)]
pub struct LogFile {
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl LogFile {
    /// Its size now.
    pub fn len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| ExecError::io("stat log file", &self.path, e))?
            .len())
    }

    /// Whether it is empty now.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    fn read_at(&mut self, pos: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.path.clone();
        let io = |e| ExecError::io("read log file", path.clone(), e);
        self.file.seek(SeekFrom::Start(pos)).map_err(io)?;
        let mut buf = Vec::with_capacity(len);
        (&mut self.file)
            .take(len as u64)
            .read_to_end(&mut buf)
            .map_err(io)?;
        Ok(buf)
    }
}

/// Opens `file` (relative) inside `dir` when it is a regular file whose real path lies inside
/// `dir` (see the module docs).
pub fn open_in(dir: &Path, file: &str) -> Result<LogFile> {
    let rel = check_name(file)?;
    let root = dir.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => refused(
            file,
            format!("the node's log folder {} does not exist yet", dir.display()),
        ),
        _ => ExecError::io("resolve log folder", dir, e),
    })?;
    let wanted = root.join(&rel);
    let real = wanted.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => refused(file, "no such file in the node's log folder"),
        _ => ExecError::io("resolve log file", &wanted, e),
    })?;
    if real == root || !real.starts_with(&root) {
        return Err(refused(file, "it leads out of the node's log folder"));
    }
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(&real)
        .map_err(|e| ExecError::io("open log file", &real, e))?;
    let meta = opened
        .metadata()
        .map_err(|e| ExecError::io("stat log file", &real, e))?;
    if !meta.file_type().is_file() {
        return Err(refused(file, "not a regular file"));
    }
    // The file opened is one inside the folder, whatever changed since the check.
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()));
    if let Ok(target) = std::fs::read_link(&fd_path)
        && !target.starts_with(&root)
    {
        return Err(refused(file, "it leads out of the node's log folder"));
    }
    Ok(LogFile {
        file: opened,
        path: real,
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Where the last `lines` lines of `bytes` start (a final newline ends the last line, it does
/// not start an empty one); `None` when `bytes` holds fewer lines.
fn start_of_last_lines(bytes: &[u8], lines: u32) -> Option<usize> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return Some(i + 1);
            }
        }
    }
    None
}

/// The last `lines` lines of `log` (at most [`MAX_LINES`]), at most `max_bytes` of them (cut at
/// a line start when the lines are longer), and the offset they end at (where following goes on).
pub fn tail(log: &mut LogFile, lines: u32, max_bytes: u64) -> Result<(Vec<u8>, u64)> {
    let lines = lines.min(MAX_LINES);
    let len = log.len()?;
    if lines == 0 || len == 0 {
        return Ok((Vec::new(), len));
    }
    let floor = len.saturating_sub(max_bytes.min(MAX_TAIL_BYTES));
    let trailing = log.read_at(len - 1, 1)? == b"\n";
    // Walk back block by block until enough newlines are behind us or the byte cap is reached.
    let mut pos = len;
    let mut newlines: usize = 0;
    while pos > floor {
        let step = BLOCK.min(pos - floor);
        pos -= step;
        let block = log.read_at(pos, step as usize)?;
        newlines += block.iter().filter(|b| **b == b'\n').count();
        if newlines >= lines as usize + usize::from(trailing) {
            break;
        }
    }
    let window = log.read_at(pos, (len - pos) as usize)?;
    let start = match start_of_last_lines(&window, lines) {
        Some(s) => s,
        // Fewer lines than asked: all of it, from a line start when the cap cut the file.
        None if pos > 0 => window.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1),
        None => 0,
    };
    Ok((window[start..].to_vec(), len))
}

/// What [`Follower::poll`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes appended to the file.
    Data(Vec<u8>),
    /// Something happened to the file, in words for the operator.
    Notice(String),
}

/// Reads what is appended to a log file (see the module docs).
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    name: String,
    log: LogFile,
    pos: u64,
}

impl Follower {
    /// Follows `log` (opened with [`open_in`] from `dir` and `name`) from `pos`.
    pub fn new(dir: &Path, name: &str, log: LogFile, pos: u64) -> Self {
        Follower {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            log,
            pos,
        }
    }

    /// Whether the name now leads to another file than the one being read (rotated); a name
    /// that leads nowhere for now is not (the new file may not be created yet).
    fn replaced(&self) -> bool {
        std::fs::metadata(self.dir.join(&self.name))
            .is_ok_and(|m| (m.dev(), m.ino()) != (self.log.dev, self.log.ino))
    }

    /// What was appended since the last call, at most `budget` bytes of it (the rest comes
    /// next time); a file that fell more than `max_backlog` bytes behind is skipped to its end,
    /// with a notice. A truncated file is read again from its start, a rotated one once the old
    /// file is read to its end.
    pub fn poll(&mut self, budget: usize, max_backlog: u64) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut len = self.log.len()?;
        if len < self.pos {
            self.pos = 0;
            events.push(Event::Notice(
                "log truncated: reading it from its start".into(),
            ));
        }
        if len == self.pos && self.replaced() {
            self.log = open_in(&self.dir, &self.name)?;
            self.pos = 0;
            len = self.log.len()?;
            events.push(Event::Notice(
                "log rotated: following the new file from its start".into(),
            ));
        }
        let behind = len - self.pos;
        if behind > max_backlog {
            events.push(Event::Notice(format!(
                "skipped {behind} bytes: the log grows faster than it may be streamed"
            )));
            self.pos = len;
            return Ok(events);
        }
        let want = usize::try_from(behind).unwrap_or(usize::MAX).min(budget);
        if want > 0 {
            let data = self.log.read_at(self.pos, want)?;
            self.pos += data.len() as u64;
            if !data.is_empty() {
                events.push(Event::Data(data));
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("logs")).unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join("logs").join(name), text).unwrap();
        }
        d
    }

    fn reason(r: Result<LogFile>) -> String {
        match r {
            Err(ExecError::LogRefused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_guard_refuses_dot_dot_absolute_and_empty_names() {
        let d = dir_with(&[("server.log", "x\n")]);
        let logs = d.path().join("logs");
        std::fs::write(d.path().join("secret.txt"), "s3cret").unwrap();
        assert!(reason(open_in(&logs, "../secret.txt")).contains(".."));
        assert!(reason(open_in(&logs, "../../../etc/passwd")).contains(".."));
        assert!(reason(open_in(&logs, "/etc/passwd")).contains("absolute"));
        assert!(reason(open_in(&logs, "./server.log")).contains(".."));
        assert!(reason(open_in(&logs, "")).contains("no file"));
        assert!(reason(open_in(&logs, "missing.log")).contains("no such file"));
        assert!(open_in(&logs, "server.log").is_ok());
    }

    #[test]
    fn the_guard_refuses_symlinks_leading_out_but_follows_those_inside() {
        let d = dir_with(&[("server.log", "inside\n")]);
        let logs = d.path().join("logs");
        std::fs::write(d.path().join("secret.txt"), "s3cret").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret.txt"), logs.join("out.log")).unwrap();
        std::os::unix::fs::symlink(d.path(), logs.join("up")).unwrap();
        std::os::unix::fs::symlink("server.log", logs.join("current.log")).unwrap();
        assert!(reason(open_in(&logs, "out.log")).contains("leads out"));
        assert!(reason(open_in(&logs, "up/secret.txt")).contains("leads out"));
        let mut f = open_in(&logs, "current.log").expect("a symlink inside the folder");
        assert_eq!(tail(&mut f, 5, MAX_TAIL_BYTES).unwrap().0, b"inside\n");
    }

    #[test]
    fn the_guard_refuses_what_is_not_a_regular_file() {
        let d = dir_with(&[]);
        let logs = d.path().join("logs");
        std::fs::create_dir(logs.join("archive")).unwrap();
        nix::unistd::mkfifo(&logs.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(reason(open_in(&logs, "archive")).contains("regular"));
        // A FIFO with no writer: refused at once, not waited on.
        assert!(reason(open_in(&logs, "pipe")).contains("regular"));
        std::os::unix::fs::symlink("/dev/zero", logs.join("zero")).unwrap();
        assert!(reason(open_in(&logs, "zero")).contains("leads out"));
    }

    #[test]
    fn tail_sends_the_last_lines_within_the_byte_cap() {
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        let d = dir_with(&[("a.log", &text), ("b.log", "one\ntwo\nthree")]);
        let logs = d.path().join("logs");
        let mut a = open_in(&logs, "a.log").unwrap();
        let (got, end) = tail(&mut a, 3, MAX_TAIL_BYTES).unwrap();
        assert_eq!(got, b"line 48\nline 49\nline 50\n");
        assert_eq!(end, text.len() as u64);
        assert_eq!(
            tail(&mut a, 500, MAX_TAIL_BYTES).unwrap().0,
            text.as_bytes()
        );
        assert!(tail(&mut a, 0, MAX_TAIL_BYTES).unwrap().0.is_empty());
        // The byte cap cuts at a line start.
        let (capped, _) = tail(&mut a, 50, 20).unwrap();
        assert_eq!(capped, b"line 49\nline 50\n");
        // A last line without its newline counts.
        let mut b = open_in(&logs, "b.log").unwrap();
        assert_eq!(tail(&mut b, 2, MAX_TAIL_BYTES).unwrap().0, b"two\nthree");
        // Across the blocks read backwards.
        let long: String = (0..20_000).map(|i| format!("{i:08}\n")).collect();
        std::fs::write(logs.join("long.log"), &long).unwrap();
        let mut l = open_in(&logs, "long.log").unwrap();
        let (got, _) = tail(&mut l, 10_000, MAX_TAIL_BYTES).unwrap();
        assert_eq!(got.len(), 90_000);
        assert!(got.starts_with(b"00010000\n"));
    }

    fn data(events: &[Event]) -> Vec<u8> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Data(d) => Some(d.clone()),
                Event::Notice(_) => None,
            })
            .flatten()
            .collect()
    }

    fn notices(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Notice(n) => Some(n.clone()),
                Event::Data(_) => None,
            })
            .collect()
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn follow_reads_appends_within_the_budget() {
        let d = dir_with(&[("s.log", "old\n")]);
        let logs = d.path().join("logs");
        let mut log = open_in(&logs, "s.log").unwrap();
        let (_, end) = tail(&mut log, 10, MAX_TAIL_BYTES).unwrap();
        let mut f = Follower::new(&logs, "s.log", log, end);
        assert!(f.poll(1024, 1 << 20).unwrap().is_empty());
        append(&logs.join("s.log"), "new 1\nnew 2\n");
        assert_eq!(data(&f.poll(6, 1 << 20).unwrap()), b"new 1\n");
        assert_eq!(data(&f.poll(1024, 1 << 20).unwrap()), b"new 2\n");
        // Too far behind: skipped, said so.
        append(&logs.join("s.log"), &"x".repeat(100));
        let ev = f.poll(10, 50).unwrap();
        assert!(data(&ev).is_empty());
        assert!(notices(&ev)[0].contains("skipped 100 bytes"), "{ev:?}");
    }

    #[test]
    fn follow_starts_over_on_truncation() {
        let d = dir_with(&[("s.log", "a long first line\nsecond\n")]);
        let logs = d.path().join("logs");
        let log = open_in(&logs, "s.log").unwrap();
        let end = log.len().unwrap();
        let mut f = Follower::new(&logs, "s.log", log, end);
        // Truncated in place (copytruncate), then written again.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(logs.join("s.log"))
            .unwrap();
        append(&logs.join("s.log"), "fresh\n");
        let ev = f.poll(1024, 1 << 20).unwrap();
        assert_eq!(notices(&ev), ["log truncated: reading it from its start"]);
        assert_eq!(data(&ev), b"fresh\n");
    }

    #[test]
    fn follow_reads_the_rotated_file_to_its_end_then_the_new_one() {
        let d = dir_with(&[("s.log", "before\n")]);
        let logs = d.path().join("logs");
        let log = open_in(&logs, "s.log").unwrap();
        let end = log.len().unwrap();
        let mut f = Follower::new(&logs, "s.log", log, end);
        // Written just before the rotation, then renamed away and replaced.
        append(&logs.join("s.log"), "last old line\n");
        std::fs::rename(logs.join("s.log"), logs.join("s.log.1")).unwrap();
        // Renamed, the new file not created yet: the old one is still read.
        let ev = f.poll(1024, 1 << 20).unwrap();
        assert_eq!(data(&ev), b"last old line\n");
        assert!(notices(&ev).is_empty());
        std::fs::write(logs.join("s.log"), "first new line\n").unwrap();
        let ev = f.poll(1024, 1 << 20).unwrap();
        assert_eq!(
            notices(&ev),
            ["log rotated: following the new file from its start"]
        );
        assert_eq!(data(&ev), b"first new line\n");
        append(&logs.join("s.log"), "second\n");
        assert_eq!(data(&f.poll(1024, 1 << 20).unwrap()), b"second\n");
    }
}
