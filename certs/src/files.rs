//! Small file helpers shared by every module that keeps key material on disk: private
//! directories (0700), private files (0600, written atomically with [`apim_atomic`]), and the
//! "load the pair, or create both" dance used by the two CAs and the primary key.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{CertsError, Result};

/// Mode for files holding private keys or other secrets.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode for directories holding private keys.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and parents) if needed and makes it 0700.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(CertsError::io("creating directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
        .map_err(CertsError::io("setting permissions on", dir))
}

/// The directory a file lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically with mode 0600: a temp file in the same directory is
/// written, synced and renamed over `path`. With `no_clobber`, an existing `path` is an error
/// (used when creating a CA, so two concurrent first starts cannot overwrite each other).
pub(crate) fn write_private_file(path: &Path, bytes: &[u8], no_clobber: bool) -> Result<()> {
    write_atomic(path, bytes, PRIVATE_FILE_MODE, None, no_clobber)
}

/// Writes `bytes` to `path` atomically ([`apim_atomic`]: a private temp file in the same
/// directory, given `mode` and `owner` (uid, gid), synced, renamed over `path`; the directory is
/// synced after). With `no_clobber`, an existing `path` is an error.
pub(crate) fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    no_clobber: bool,
) -> Result<()> {
    let mut writer = apim_atomic::AtomicWriter::new(mode).no_clobber(no_clobber);
    if let Some((uid, gid)) = owner {
        writer = writer.owner(uid, gid);
    }
    writer.write(path, bytes).map(drop).map_err(|e| match e {
        apim_atomic::AtomicError::Io { op, path, source } => CertsError::Io {
            action: op,
            path,
            source,
        },
        // Only when a test asks the writer for it; never here.
        other => CertsError::Io {
            action: "writing",
            path: path.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// Reads a file that holds a secret, refusing it if group or others can read or write it.
pub(crate) fn read_private_file(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).map_err(CertsError::io("reading metadata of", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CertsError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(CertsError::io("reading", path))
}

/// A key PEM and a certificate PEM, as stored on disk.
pub(crate) struct PemPair {
    /// PKCS#8 private key PEM.
    pub(crate) key_pem: String,
    /// Certificate PEM.
    pub(crate) cert_pem: String,
}

/// Loads `dir/key_name` + `dir/cert_name`, or, when neither exists, calls `create` and stores
/// its result (both files 0600, dir 0700). Half a pair is an error, never a silent re-create.
/// Returns the pair and whether it was created now.
pub(crate) fn load_or_create_pair(
    dir: &Path,
    key_name: &str,
    cert_name: &str,
    create: impl FnOnce() -> Result<PemPair>,
) -> Result<(PemPair, bool)> {
    ensure_private_dir(dir)?;
    let key_path = dir.join(key_name);
    let cert_path = dir.join(cert_name);
    match (exists(&key_path)?, exists(&cert_path)?) {
        (true, true) => {
            let key_pem = read_private_file(&key_path)?;
            // The certificate is public: a looser mode on it is not worth refusing to start.
            let cert_pem =
                fs::read_to_string(&cert_path).map_err(CertsError::io("reading", &cert_path))?;
            Ok((PemPair { key_pem, cert_pem }, false))
        }
        (false, false) => {
            let pair = create()?;
            // Key first: if we crash between the two writes the next start reports an
            // incomplete pair instead of trusting a certificate without its key.
            write_private_file(&key_path, pair.key_pem.as_bytes(), true)?;
            write_private_file(&cert_path, pair.cert_pem.as_bytes(), true)?;
            Ok((pair, true))
        }
        (true, false) => Err(CertsError::IncompletePair {
            present: key_path,
            missing: cert_path,
        }),
        (false, true) => Err(CertsError::IncompletePair {
            present: cert_path,
            missing: key_path,
        }),
    }
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists()
        .map_err(CertsError::io("checking existence of", PathBuf::from(path)))
}
