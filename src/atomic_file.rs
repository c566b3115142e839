//! Replacing a small file atomically: the one way btd writes its state files (resume data,
//! torrent records, fetched metadata). `<path>.tmp` is written and synced, renamed over `path`,
//! and the directory (created if missing) is synced, so after a crash `path` holds the old
//! bytes or the new, never a mix. Pure file I/O on the caller's thread.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A step of an atomic replacement that failed, naming its file.
#[derive(Debug, thiserror::Error)]
pub enum AtomicFileError {
    #[error("{path}: cannot create the directory: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{path}: cannot encode: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: cannot sync: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("{from}: cannot rename to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("{path}: cannot sync the directory: {source}")]
    SyncDir { path: PathBuf, source: io::Error },
}

/// Replaces `path` with `value` as pretty JSON and a final newline (see the module docs).
/// Callers write one file from one thread at a time (they share the `.tmp` name).
///
/// # Errors
/// The step that failed; the old file, if any, is then still in place.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), AtomicFileError> {
    let mut json = serde_json::to_vec_pretty(value).map_err(|source| AtomicFileError::Encode {
        path: path.to_owned(),
        source,
    })?;
    json.push(b'\n');
    write(path, &json)
}

/// Replaces `path` with `bytes` (see the module docs).
///
/// # Errors
/// The step that failed; the old file, if any, is then still in place.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), AtomicFileError> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).map_err(|source| AtomicFileError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let tmp = tmp_path(path);
    let written = write_synced(&tmp, bytes).and_then(|()| {
        fs::rename(&tmp, path).map_err(|source| AtomicFileError::Rename {
            from: tmp.clone(),
            to: path.to_owned(),
            source,
        })
    });
    if written.is_err() {
        // Best effort: the error that matters is already in hand.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| AtomicFileError::SyncDir {
            path: dir.to_owned(),
            source,
        })
}

/// Creates (truncating any leftover) and writes `path`, then syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), AtomicFileError> {
    let write_err = |source| AtomicFileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = File::create(path).map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(|source| AtomicFileError::Sync {
        path: path.to_owned(),
        source,
    })
}

/// The directory holding `path`; `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The temporary file a replacement of `path` is written to first.
#[must_use]
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}
