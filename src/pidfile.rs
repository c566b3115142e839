//! The pid file: one daemon per state directory. Owns the lock protocol on that file: the daemon
//! holds an exclusive `flock` (via [`File::try_lock`]) on it for its whole life and writes its pid
//! into it; `btd status` and `btd add` ask [`running_pid`] whether a daemon runs. Runs on the main
//! thread at start and stop; no other thread touches it.
//!
//! The lock, not the file's existence, says whether a daemon runs: a file left behind by a crash
//! is unlocked (the kernel drops `flock` locks when the process dies) and is simply taken over.
//! `flock` locks belong to an open file description, so two `open`s conflict even within one
//! process. They do not work across some network file systems; keep the state directory local.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often [`PidFile::acquire`] retries a lock that is held: [`running_pid`] holds a shared
/// lock for a moment while probing, which must not make a starting daemon give up.
const LOCK_ATTEMPTS: u32 = 5;
/// How often [`running_pid`] rereads a locked file that holds no pid yet: the daemon writes its
/// pid just after taking the lock.
const READ_ATTEMPTS: u32 = 20;
const RETRY_DELAY: Duration = Duration::from_millis(10);
/// How often [`PidFile::acquire`] starts over when the file it locked was removed meanwhile.
const REPLACED_ATTEMPTS: u32 = 10;

/// Why we could not become the daemon of a state directory.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// Another live process holds the lock; `pid` is what it recorded, if readable.
    #[error("another btd daemon ({}) holds {}", describe_pid(*.pid), .path.display())]
    AlreadyRunning { path: PathBuf, pid: Option<u32> },
    /// `op` on the pid file failed.
    #[error("{path}: cannot {op} the pid file: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

fn describe_pid(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
}

/// The locked pid file of the running daemon. Dropping it releases the lock but leaves the file
/// (as a crash would); [`release`](Self::release) also removes it.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: File,
}

impl PidFile {
    /// Opens or creates `path` (and its directory), takes an exclusive non-blocking lock and
    /// writes our pid. A stale file left by a crashed daemon (not locked) is simply taken over.
    ///
    /// # Errors
    /// `AlreadyRunning { path, pid }` when another live process holds the lock (with the pid it
    /// recorded), `Io { path, op, source }` when creating, opening, locking or writing fails.
    pub fn acquire(path: &Path) -> Result<Self, PidFileError> {
        let io_err = |op: &'static str| {
            move |source| PidFileError::Io {
                path: path.to_owned(),
                op,
                source,
            }
        };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            fs::create_dir_all(dir).map_err(io_err("create the directory of"))?;
        }
        for _ in 0..REPLACED_ATTEMPTS {
            // Not truncated on open: until we hold the lock, the pid in it may be a live daemon's.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io_err("open"))?;
            match try_lock_patiently(&file) {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(PidFileError::AlreadyRunning {
                        path: path.to_owned(),
                        pid: read_pid(&file),
                    });
                }
                Err(TryLockError::Error(source)) => return Err(io_err("lock")(source)),
            }
            // The daemon we waited for may have removed the file (release) between our open and
            // our lock: then we hold the lock of an unlinked file, and a newcomer could create
            // and lock a fresh one. Only a lock on what `path` names now counts.
            if !names_file(path, &file).map_err(io_err("inspect"))? {
                continue;
            }
            file.set_len(0).map_err(io_err("write"))?;
            file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
                .map_err(io_err("write"))?;
            file.sync_data().map_err(io_err("write"))?;
            return Ok(Self {
                path: path.to_owned(),
                file,
            });
        }
        Err(io_err("lock")(io::Error::other(
            "the file kept being replaced while we locked it",
        )))
    }

    /// The pid file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file while still holding the lock (so nobody can lock it in between and
    /// lose it to the removal), then releases the lock. A failure to remove is logged: the file
    /// is unlocked either way, and the next daemon takes it over.
    pub fn release(self) {
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("{}: cannot remove the pid file: {e}", self.path.display());
        }
        // Closing the file drops the lock too; unlocking first says so explicitly.
        let _ = self.file.unlock();
    }
}

/// The pid recorded in `path` if the file is locked by someone and that process is alive, for
/// `btd status` and `btd add`. `Ok(None)` when no daemon runs (no file, or a file nobody locks).
/// Probing takes a shared lock for a moment, which [`PidFile::acquire`] tolerates.
///
/// # Errors
/// Opening, locking or reading the file fails (other than it not existing), or the file stays
/// locked without a readable pid for 200 ms.
pub fn running_pid(path: &Path) -> io::Result<Option<u32>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match file.try_lock_shared() {
        Ok(()) => {
            file.unlock()?;
            return Ok(None);
        }
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(e),
    }
    for attempt in 0..READ_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(RETRY_DELAY);
        }
        if let Some(pid) = read_pid(&file) {
            return Ok(is_alive(pid).then_some(pid));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: locked, but holds no pid", path.display()),
    ))
}

/// `try_lock`, retried for a moment while the lock is held (see [`LOCK_ATTEMPTS`]).
fn try_lock_patiently(file: &File) -> Result<(), TryLockError> {
    let mut attempt = 1;
    loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) if attempt < LOCK_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(RETRY_DELAY);
            }
            result => return result,
        }
    }
}

/// The pid written in `file`, read from its start; None when empty or not a number.
fn read_pid(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Whether `path` currently names the same file as the open `file`.
fn names_file(path: &Path, file: &File) -> io::Result<bool> {
    let ours = file.metadata()?;
    match fs::metadata(path) {
        Ok(now) => Ok((now.dev(), now.ino()) == (ours.dev(), ours.ino())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether process `pid` exists (Linux: it has a `/proc` entry).
fn is_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_dir::TempDir;

    /// A pid no process can have: above the kernel's limit.
    fn dead_pid() -> u32 {
        let max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = max + 1;
        assert!(!is_alive(pid));
        pid
    }

    #[test]
    fn flock_conflicts_between_two_opens_in_one_process() {
        let dir = TempDir::new("flock");
        let path = dir.0.join("lock");
        let first = File::create(&path).unwrap();
        let second = File::open(&path).unwrap();
        first.try_lock().unwrap();
        assert!(matches!(second.try_lock(), Err(TryLockError::WouldBlock)));
        assert!(matches!(
            second.try_lock_shared(),
            Err(TryLockError::WouldBlock)
        ));
        // A clone shares the open file description, and so the lock.
        let clone = first.try_clone().unwrap();
        clone.try_lock().unwrap();
        drop(first);
        assert!(matches!(second.try_lock(), Err(TryLockError::WouldBlock)));
        drop(clone);
        second.try_lock().unwrap();
    }

    #[test]
    fn a_second_acquire_names_the_holder_and_the_file() {
        let dir = TempDir::new("twice");
        let path = dir.0.join("state/btd.pid");
        let held = PidFile::acquire(&path).unwrap();
        assert_eq!(held.path(), path);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );

        let err = PidFile::acquire(&path).unwrap_err();
        let PidFileError::AlreadyRunning { path: p, pid } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((p, *pid), (&path, Some(std::process::id())));
        assert_eq!(
            err.to_string(),
            format!(
                "another btd daemon (pid {}) holds {}",
                std::process::id(),
                path.display()
            )
        );
        // The failed attempt left the holder's file alone.
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        held.release();
    }

    #[test]
    fn a_holder_without_a_readable_pid_is_still_reported() {
        let dir = TempDir::new("no-pid");
        let path = dir.0.join("btd.pid");
        let other = File::create(&path).unwrap();
        other.try_lock().unwrap();
        let err = PidFile::acquire(&path).unwrap_err();
        assert!(
            matches!(err, PidFileError::AlreadyRunning { pid: None, .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("another btd daemon (pid unknown) holds {}", path.display())
        );
    }

    #[test]
    fn a_stale_file_with_a_dead_pid_is_taken_over() {
        let dir = TempDir::new("stale");
        let path = dir.0.join("btd.pid");
        fs::write(&path, format!("{}\n", dead_pid())).unwrap();
        assert_eq!(running_pid(&path).unwrap(), None);

        let held = PidFile::acquire(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(running_pid(&path).unwrap(), Some(std::process::id()));
        held.release();
    }

    #[test]
    fn a_stale_file_with_a_longer_pid_leaves_no_trailing_digits() {
        let dir = TempDir::new("longer");
        let path = dir.0.join("btd.pid");
        fs::write(&path, "12345678901234567890\n").unwrap();
        let held = PidFile::acquire(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(held);
    }

    #[test]
    fn release_removes_the_file_and_frees_the_lock() {
        let dir = TempDir::new("release");
        let path = dir.0.join("btd.pid");
        PidFile::acquire(&path).unwrap().release();
        assert!(!path.exists());
        assert_eq!(running_pid(&path).unwrap(), None);
        PidFile::acquire(&path).unwrap().release();
    }

    #[test]
    fn drop_unlocks_but_leaves_the_file() {
        let dir = TempDir::new("drop");
        let path = dir.0.join("btd.pid");
        drop(PidFile::acquire(&path).unwrap());
        assert!(path.exists());
        // The pid in it is ours and alive, but nobody holds the lock: no daemon.
        assert_eq!(running_pid(&path).unwrap(), None);
        PidFile::acquire(&path).unwrap().release();
    }

    #[test]
    fn running_pid_reports_a_live_holder_only() {
        let dir = TempDir::new("running");
        let path = dir.0.join("btd.pid");
        assert_eq!(running_pid(&path).unwrap(), None);

        let held = PidFile::acquire(&path).unwrap();
        assert_eq!(running_pid(&path).unwrap(), Some(std::process::id()));
        // Probing did not disturb the lock.
        assert!(matches!(
            PidFile::acquire(&path),
            Err(PidFileError::AlreadyRunning { .. })
        ));
        held.release();

        // Locked, but the recorded process is gone (another pid namespace, say).
        let other = File::create(&path).unwrap();
        other.try_lock().unwrap();
        fs::write(&path, format!("{}\n", dead_pid())).unwrap();
        assert_eq!(running_pid(&path).unwrap(), None);
    }

    #[test]
    fn a_lock_on_a_removed_file_does_not_count() {
        let dir = TempDir::new("replaced");
        let path = dir.0.join("btd.pid");
        let old = File::create(&path).unwrap();
        assert!(names_file(&path, &old).unwrap());
        fs::remove_file(&path).unwrap();
        assert!(!names_file(&path, &old).unwrap());
        let new = File::create(&path).unwrap();
        assert!(!names_file(&path, &old).unwrap());
        assert!(names_file(&path, &new).unwrap());
    }
}
