//! iotpki files: the one way every crate replaces a file on disk.
//!
//! A power cut must leave the old file or the new one, never half of either:
//! [`write_atomic`] writes a temporary file in the same directory (created
//! with its final mode, so a secret is never readable by others, even for an
//! instant), fsyncs it, renames it over the target and fsyncs the directory
//! (without which the rename itself may not survive the power cut).
//! [`rename_durable`] does the last two steps for a file or a whole directory
//! made elsewhere (the authority's `init`), [`write_new`] makes a file that
//! must not exist yet.
//!
//! With the `keyfile` feature, [`keyfile`] reads and writes the encrypted
//! PKCS#8 key files of the authority's CAs and the station's delegated CA.
//! Without it this crate needs nothing but std.

#![forbid(unsafe_code)]

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "keyfile")]
pub mod keyfile;

/// Mode of a secret file (a key, a passphrase, a device identity): owner only.
pub const SECRET: u32 = 0o600;
/// Mode of a public file (a certificate, a bundle, a config).
pub const PUBLIC: u32 = 0o644;

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What happened.
        error: std::io::Error,
    },
    /// A key file could not be read or written (damaged, wrong passphrase,
    /// not the format expected); the message names the file and what to do.
    Key(String),
}

impl Error {
    fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io { path: path.into(), error }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Key(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } => Some(error),
            Self::Key(_) => None,
        }
    }
}

/// The steps of [`write_atomic_observed`], for crash tests that stop a
/// process between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// The temporary file is written and fsync'd; the target is untouched.
    TmpWritten,
    /// The temporary file is renamed over the target; the directory is not fsync'd yet.
    Renamed,
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Replace `path` with `bytes` atomically and durably, the file having `mode`
/// (e.g. [`SECRET`], [`PUBLIC`], or [`mode_or`] to keep the current one).
/// A power cut leaves the old content or the new one; no temporary file is left.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    write_atomic_observed(path, bytes, mode, |_| {})
}

/// [`write_atomic`], calling `at` after each [`Step`].
pub fn write_atomic_observed(path: &Path, bytes: &[u8], mode: u32, mut at: impl FnMut(Step)) -> Result<(), Error> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")))?;
    // A name of its own, so that two writers of one file (a relay's refresher
    // and a request) never rename each other's temporary file away.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.{}-{n}.tmp", name.to_string_lossy(), std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = write_new(&tmp, bytes, mode).and_then(|()| {
        at(Step::TmpWritten);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    at(Step::Renamed);
    sync_dir(dir)
}

/// Write a new file `path` (refusing one that exists) with `mode` from its
/// creation, and fsync it. The directory entry is durable only after [`sync_dir`].
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| Error::io(path, e))?;
    // The mode asked for, whatever the umask took away at creation.
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// The mode of `path` if it exists, else `default`: to replace a file keeping
/// the mode its owner gave it.
pub fn mode_or(path: &Path, default: u32) -> u32 {
    fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(default)
}

/// Fsync a directory: the names created, renamed or removed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Rename `from` to `to` (a file, or a directory made whole beside it) and
/// fsync the directories involved: after it returns, the rename survives a power cut.
pub fn rename_durable(from: &Path, to: &Path) -> Result<(), Error> {
    fs::rename(from, to).map_err(|e| Error::io(to, e))?;
    let (src, dst) = (parent_of(from), parent_of(to));
    sync_dir(dst)?;
    if src != dst {
        sync_dir(src)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_leaves_no_temporary_file_and_sets_the_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("identity.json");
        write_atomic(&p, b"first", SECRET).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "a secret is owner-only");
        write_atomic(&p, b"second, longer", SECRET).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second, longer", "the content is replaced");
        assert_eq!(names(d.path()), ["identity.json"], "no temporary file left");

        let public = d.path().join("bundle.cbor");
        write_atomic(&public, b"b", PUBLIC).unwrap();
        assert_eq!(fs::metadata(&public).unwrap().permissions().mode() & 0o777, 0o644);
        // Keeping the mode an operator gave the file.
        fs::set_permissions(&public, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&public, b"c", mode_or(&public, PUBLIC)).unwrap();
        assert_eq!(fs::metadata(&public).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(mode_or(&d.path().join("absent"), PUBLIC), PUBLIC);
    }

    #[test]
    fn write_atomic_reports_its_steps_and_a_failure_leaves_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut steps = Vec::new();
        write_atomic_observed(&p, b"x", SECRET, |s| steps.push(s)).unwrap();
        assert_eq!(steps, [Step::TmpWritten, Step::Renamed]);
        // A directory in the way: the rename fails, the temporary file is removed.
        let blocked = d.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("inside"), b"keep").unwrap();
        let err = write_atomic(&blocked, b"y", SECRET).unwrap_err();
        assert!(err.to_string().contains("blocked"), "{err}");
        assert_eq!(names(d.path()), ["blocked", "f"]);
        assert!(write_atomic(Path::new("/"), b"z", SECRET).is_err(), "no file name");
    }

    #[test]
    fn write_new_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.pem");
        write_new(&p, b"one", SECRET).unwrap();
        assert!(write_new(&p, b"two", SECRET).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"one");
    }

    #[test]
    fn rename_durable_moves_a_whole_directory() {
        let d = tempfile::tempdir().unwrap();
        let partial = d.path().join(".authority.partial");
        fs::create_dir(&partial).unwrap();
        fs::write(partial.join("iotpki.toml"), b"x").unwrap();
        let dst = d.path().join("authority");
        rename_durable(&partial, &dst).unwrap();
        assert_eq!(fs::read(dst.join("iotpki.toml")).unwrap(), b"x");
        assert!(!partial.exists());
    }
}
