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

impl Clone for AtomicFileError {
    /// The same error; its `io::Error` copied by kind and message.
    fn clone(&self) -> Self {
        let io = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            Self::CreateDir { path, source } => Self::CreateDir {
                path: path.clone(),
                source: io(source),
            },
            Self::Encode { path, source } => Self::Encode {
                path: path.clone(),
                source: serde::ser::Error::custom(source),
            },
            Self::Write { path, source } => Self::Write {
                path: path.clone(),
                source: io(source),
            },
            Self::Sync { path, source } => Self::Sync {
                path: path.clone(),
                source: io(source),
            },
            Self::Rename { from, to, source } => Self::Rename {
                from: from.clone(),
                to: to.clone(),
                source: io(source),
            },
            Self::SyncDir { path, source } => Self::SyncDir {
                path: path.clone(),
                source: io(source),
            },
        }
    }
}

impl AtomicFileError {
    /// Whether this is an error about replacing `path` (its directory, its temporary file, or
    /// itself).
    #[must_use]
    pub fn names(&self, path: &Path) -> bool {
        match self {
            Self::CreateDir { path: dir, .. } | Self::SyncDir { path: dir, .. } => {
                path.parent() == Some(dir.as_path())
            }
            Self::Encode { path: p, .. }
            | Self::Write { path: p, .. }
            | Self::Sync { path: p, .. } => p == path || *p == tmp_path(path),
            Self::Rename { to, .. } => to == path,
        }
    }
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

/// From this many files on, [`write_many`] syncs their file system once instead of each file.
const SYNCFS_FROM: usize = 64;

/// Replaces many files at once, each as [`write()`] would, but (from `SYNCFS_FROM` files on)
/// with one `syncfs` of their file system for all their new contents and one sync per
/// directory for all their renames, instead of two syncs each: what a daemon stopping with thousands of records needs to fit its stop
/// budget. Each file is still either old or new after a crash. Returns the files that could
/// not be replaced, each with its error (the others are replaced).
pub fn write_many(files: Vec<(PathBuf, Vec<u8>)>) -> Vec<AtomicFileError> {
    if files.len() < SYNCFS_FROM {
        // A few: a sync each costs less than a sync of everything on the file system (which
        // waits for every other writer's dirty pages too).
        return files
            .into_iter()
            .filter_map(|(path, bytes)| write(&path, &bytes).err())
            .collect();
    }
    let mut errors = Vec::new();
    let mut written: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (path, bytes) in files {
        let dir = parent_dir(&path);
        if let Err(source) = fs::create_dir_all(dir) {
            errors.push(AtomicFileError::CreateDir {
                path: dir.to_owned(),
                source,
            });
            continue;
        }
        let tmp = tmp_path(&path);
        let created = File::create(&tmp).and_then(|mut f| f.write_all(&bytes));
        match created {
            Ok(()) => written.push((tmp, path)),
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                errors.push(AtomicFileError::Write { path: tmp, source });
            }
        }
    }
    // One sync of each file system the new files are on (usually one: the state directory's).
    let mut synced: Vec<&Path> = Vec::new();
    let mut unsynced = Vec::new();
    for (tmp, _) in &written {
        let dir = parent_dir(tmp);
        if synced.contains(&dir) {
            continue;
        }
        let result = File::open(dir).and_then(|d| nix::unistd::syncfs(&d).map_err(io::Error::from));
        match result {
            Ok(()) => synced.push(dir),
            Err(source) => unsynced.push((dir.to_owned(), source)),
        }
    }
    let mut renamed_dirs: Vec<PathBuf> = Vec::new();
    for (tmp, path) in written {
        let dir = parent_dir(&path).to_owned();
        if let Some((_, e)) = unsynced.iter().find(|(d, _)| *d == dir) {
            let _ = fs::remove_file(&tmp);
            errors.push(AtomicFileError::Sync {
                path: tmp,
                source: io::Error::new(e.kind(), e.to_string()),
            });
            continue;
        }
        if let Err(source) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            errors.push(AtomicFileError::Rename {
                from: tmp,
                to: path,
                source,
            });
            continue;
        }
        if !renamed_dirs.contains(&dir) {
            renamed_dirs.push(dir);
        }
    }
    for dir in renamed_dirs {
        if let Err(source) = File::open(&dir).and_then(|d| d.sync_all()) {
            errors.push(AtomicFileError::SyncDir { path: dir, source });
        }
    }
    errors
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TempDir;

    #[test]
    fn write_many_replaces_each_file_and_names_the_ones_it_cannot() {
        let dir = TempDir::new("write-many");
        let old = dir.0.join("a.json");
        fs::write(&old, b"old").unwrap();
        // A directory where a file's parent should be: that one fails, the others land.
        fs::write(dir.0.join("blocker"), b"").unwrap();
        let blocked = dir.0.join("blocker").join("c.json");
        let mut files = vec![
            (old.clone(), b"new a".to_vec()),
            (dir.0.join("sub").join("b.json"), b"new b".to_vec()),
            (blocked.clone(), b"never".to_vec()),
        ];
        // Enough files for one syncfs; a few on their own go the way of `write`, checked too.
        for i in 0..SYNCFS_FROM {
            files.push((
                dir.0.join(format!("many-{i}.json")),
                format!("{i}").into_bytes(),
            ));
        }
        let few = write_many(vec![
            (dir.0.join("few.json"), b"few".to_vec()),
            (blocked.clone(), b"never".to_vec()),
        ]);
        assert_eq!(fs::read(dir.0.join("few.json")).unwrap(), b"few");
        assert_eq!(few.len(), 1, "{few:?}");
        assert!(few[0].names(&blocked), "{few:?}");
        let errors = write_many(files);
        for i in 0..SYNCFS_FROM {
            let path = dir.0.join(format!("many-{i}.json"));
            assert_eq!(fs::read(&path).unwrap(), format!("{i}").into_bytes());
            assert!(!tmp_path(&path).exists());
        }
        assert_eq!(fs::read(&old).unwrap(), b"new a");
        assert_eq!(
            fs::read(dir.0.join("sub").join("b.json")).unwrap(),
            b"new b"
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            matches!(&errors[0], AtomicFileError::CreateDir { path, .. } if path.ends_with("blocker")),
            "{errors:?}"
        );
        // No temporary file is left behind.
        assert!(!tmp_path(&old).exists());
    }
}
