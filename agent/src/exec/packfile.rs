//! The download's file: whole aligned blocks written with `O_DIRECT`, the rest buffered.
//!
//! A pack being downloaded is read once, by the unpacker following the download, and that read
//! is served from the download's own blocks in memory ([`crate::exec::arriving`]). Written through
//! the page cache as well, every download would also take a pack's worth of fresh page cache
//! (200–500 MB) that nothing reads while it is there. On a VM that is the dearest memory there
//! is: a page the guest has not touched for a while costs the hypervisor a fault to hand back,
//! and a staging that writes the pack and its unpacked tree pays that for both. Direct writes
//! skip the page cache; the unaligned head of a resumed download and the pack's last partial
//! block go through it. Where the file system refuses direct I/O (tmpfs before Linux 6.6, some
//! network file systems) every write is buffered, as before.
//!
//! Durability is unchanged: a verified pack is not synced unless the kernel has no boot id
//! (see [`crate::daemon::fetch`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::exec::arriving::Block;

/// The partial file of one download, open for positioned writes (never `O_APPEND`: a
/// positioned write to an appending file would land at its end whatever the offset).
#[derive(Debug)]
pub struct PackFile {
    path: PathBuf,
    buffered: File,
    /// `None` where the file system refuses direct I/O.
    direct: Option<File>,
}

impl PackFile {
    /// Opens (creating, mode 0600) `path` for writing.
    pub fn open(path: &Path) -> io::Result<PackFile> {
        let open = |flags: i32| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(flags | nix::libc::O_CLOEXEC)
                .open(path)
        };
        let buffered = open(0)?;
        let direct = match open(nix::libc::O_DIRECT) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no direct I/O here; the download is written through the page cache");
                None
            }
        };
        Ok(PackFile {
            path: path.to_path_buf(),
            buffered,
            direct,
        })
    }

    /// Whether whole aligned blocks still go around the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Writes `block` at its offset: directly when it is aligned and the file system lets it,
    /// through the page cache otherwise.
    pub fn write_block(&mut self, block: &Block) -> io::Result<()> {
        if block.is_aligned()
            && let Some(direct) = &self.direct
        {
            match direct.write_all_at(block.data(), block.start()) {
                Ok(()) => return Ok(()),
                // The device or file system wants another alignment: buffered from now on.
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    tracing::debug!(path = %self.path.display(), error = %e, "direct write refused; the download is written through the page cache");
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        self.buffered.write_all_at(block.data(), block.start())
    }

    /// `fsync`s the file (direct writes are on the device, not necessarily on its media).
    pub fn sync_all(&self) -> io::Result<()> {
        self.buffered.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::arriving::{BLOCK_SIZE, DIO_ALIGN};

    /// A resumed download: an unaligned head already in the file, then a head block up to the
    /// next aligned offset, whole blocks, and a short tail. The file ends up byte for byte the
    /// data, whichever way each block went.
    #[test]
    fn blocks_land_at_their_offsets_whether_direct_or_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack.partial");
        let data: Vec<u8> = (0..3 * BLOCK_SIZE + 777).map(|i| (i % 251) as u8).collect();
        let resumed_at = 1000;
        std::fs::write(&path, &data[..resumed_at]).unwrap();
        let mut file = PackFile::open(&path).unwrap();
        let mut at = resumed_at;
        let mut aligned = 0;
        while at < data.len() {
            let mut b = Block::new(at as u64);
            at += b.fill(&data[at..]);
            aligned += usize::from(b.is_aligned());
            file.write_block(&b).unwrap();
        }
        file.sync_all().unwrap();
        assert_eq!(aligned, 2, "the whole blocks between the head and the tail");
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(DIO_ALIGN.is_power_of_two() && BLOCK_SIZE.is_multiple_of(DIO_ALIGN));
    }
}
