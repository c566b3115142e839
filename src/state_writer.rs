//! The state writer: one `state writer` thread that replaces and removes the daemon's small
//! state files (torrent records, the `.torrent` files it keeps) in the order they were asked
//! for, so the main thread never waits on a disk sync. It owns nothing but its queue.
//!
//! Each replacement is atomic (`atomic_file`). What waits in the queue is written in batches:
//! a file asked for twice before its turn is written once, with its latest bytes, in its first
//! place; a batch of many files costs one `syncfs` (`atomic_file::write_many`), so a first
//! start's 10,000 new records take seconds, not 20,000 syncs on the main thread. A removal
//! waits for every write asked before it and goes before every write asked after it, so a
//! torrent removed and added again ends with its new files.
//!
//! A failed write is logged here and handed back through [`StateWriter::failed`] (the caller
//! asks again); [`StateWriter::write_now`] waits for its own result instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use log::warn;

use crate::atomic_file::{self, AtomicFileError};

/// Most files replaced in one batch (one `syncfs`): bounds how long a removal or a
/// [`StateWriter::write_now`] queued behind thousands of writes waits.
const BATCH: usize = 500;

/// See the module documentation.
pub struct StateWriter {
    ops: Sender<Op>,
    failed: Receiver<AtomicFileError>,
    /// Writes and removals asked for and not yet done.
    pending: Arc<AtomicUsize>,
}

/// What the thread is asked.
enum Op {
    Write {
        path: PathBuf,
        bytes: Vec<u8>,
        /// Told the write's result (`write_now`).
        reply: Option<Sender<Result<(), AtomicFileError>>>,
    },
    Remove(PathBuf),
    /// Told once everything asked before it is done.
    Flush(Sender<()>),
}

impl StateWriter {
    /// Starts the thread. It ends once this handle is dropped and its queue is done (or with
    /// the process: each file is then old or new, never a mix).
    ///
    /// # Errors
    /// When the OS cannot start a thread.
    pub fn start() -> std::io::Result<Self> {
        let (ops, rx) = crossbeam_channel::unbounded();
        let (failed_tx, failed) = crossbeam_channel::unbounded();
        let pending = Arc::new(AtomicUsize::new(0));
        {
            let pending = Arc::clone(&pending);
            std::thread::Builder::new()
                .name("state writer".into())
                .spawn(move || run(&rx, &failed_tx, &pending))?;
        }
        Ok(Self {
            ops,
            failed,
            pending,
        })
    }

    /// Replaces `path` with `bytes`, in the background.
    pub fn write(&self, path: PathBuf, bytes: Vec<u8>) {
        self.send(Op::Write {
            path,
            bytes,
            reply: None,
        });
    }

    /// Replaces `path` with `bytes` after everything asked before, and waits for it: for what
    /// must be on disk before the caller goes on.
    ///
    /// # Errors
    /// The step that failed; the old file, if any, is then still in place.
    pub fn write_now(&self, path: &Path, bytes: Vec<u8>) -> Result<(), AtomicFileError> {
        let (reply, result) = crossbeam_channel::bounded(1);
        self.send(Op::Write {
            path: path.to_owned(),
            bytes,
            reply: Some(reply),
        });
        // The thread answers every write it takes, and ends only once this handle is dropped.
        result.recv().unwrap_or_else(|_| {
            Err(AtomicFileError::Write {
                path: path.to_owned(),
                source: std::io::Error::other("the state writer thread ended"),
            })
        })
    }

    /// Removes `path` (gone already is fine), after every write asked before.
    pub fn remove(&self, path: PathBuf) {
        self.send(Op::Remove(path));
    }

    /// The writes that failed since the last look (each logged already).
    pub fn failed(&self) -> impl Iterator<Item = AtomicFileError> + '_ {
        self.failed.try_iter()
    }

    /// Waits until everything asked so far is done, or `until`; whether it all was.
    pub fn flush(&self, until: Instant) -> bool {
        let (done, wait) = crossbeam_channel::bounded(1);
        self.send(Op::Flush(done));
        wait.recv_deadline(until).is_ok()
    }

    /// Writes and removals asked for and not done yet.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op) {
        if !matches!(op, Op::Flush(_)) {
            self.pending.fetch_add(1, Ordering::Relaxed);
        }
        // The thread ends only once this handle is dropped.
        let _ = self.ops.send(op);
    }
}

/// The thread: takes what is queued in batches until every sender is gone.
fn run(ops: &Receiver<Op>, failed: &Sender<AtomicFileError>, pending: &AtomicUsize) {
    let mut batch = Batch::default();
    while let Ok(first) = ops.recv() {
        let mut next = Some(first);
        while let Some(op) = next {
            match op {
                Op::Write { path, bytes, reply } => batch.add(path, bytes, reply),
                Op::Remove(path) => {
                    batch.write(failed, pending);
                    if let Err(e) = std::fs::remove_file(&path)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        warn!("{}: cannot remove: {e}", path.display());
                    }
                    pending.fetch_sub(1, Ordering::Relaxed);
                }
                Op::Flush(done) => {
                    batch.write(failed, pending);
                    let _ = done.send(());
                }
            }
            if batch.files.len() >= BATCH {
                batch.write(failed, pending);
            }
            next = ops.try_recv().ok();
        }
        batch.write(failed, pending);
    }
}

/// Writes waiting for their batch, each file once, in the order first asked.
#[derive(Default)]
struct Batch {
    files: Vec<(PathBuf, Vec<u8>)>,
    replies: Vec<Vec<Sender<Result<(), AtomicFileError>>>>,
    at: HashMap<PathBuf, usize>,
    /// Writes asked for in this batch, the ones asked twice included.
    asked: usize,
}

impl Batch {
    fn add(
        &mut self,
        path: PathBuf,
        bytes: Vec<u8>,
        reply: Option<Sender<Result<(), AtomicFileError>>>,
    ) {
        let index = match self.at.get(&path) {
            Some(&index) => {
                // Asked again before its turn: the latest bytes, in the first place.
                self.files[index].1 = bytes;
                index
            }
            None => {
                self.at.insert(path.clone(), self.files.len());
                self.files.push((path, bytes));
                self.replies.push(Vec::new());
                self.files.len() - 1
            }
        };
        self.replies[index].extend(reply);
        self.asked += 1;
    }

    /// Writes the batch, tells who waits, hands back what failed.
    fn write(&mut self, failed: &Sender<AtomicFileError>, pending: &AtomicUsize) {
        if self.files.is_empty() {
            return;
        }
        let files = std::mem::take(&mut self.files);
        let replies = std::mem::take(&mut self.replies);
        let asked = std::mem::take(&mut self.asked);
        self.at.clear();
        let paths: Vec<PathBuf> = files.iter().map(|(path, _)| path.clone()).collect();
        let errors = atomic_file::write_many(files);
        for (path, replies) in paths.iter().zip(replies) {
            let error = errors.iter().find(|e| e.names(path));
            for reply in replies {
                let _ = reply.send(error.map_or(Ok(()), |e| Err(e.clone())));
            }
        }
        for e in errors {
            warn!("{e}");
            let _ = failed.send(e);
        }
        pending.fetch_sub(asked, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TempDir;
    use std::fs;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn the_last_bytes_asked_for_land_and_a_removal_keeps_its_place_between_writes() {
        let dir = TempDir::new("state-writer-order");
        let writer = StateWriter::start().unwrap();
        let (a, b) = (dir.0.join("a.json"), dir.0.join("sub").join("b.json"));
        // Enough files that some batches take the `syncfs` path of `write_many`.
        let many: Vec<PathBuf> = (0..150).map(|i| dir.0.join(format!("m{i}"))).collect();
        for round in 0..3 {
            writer.write(a.clone(), format!("a{round}").into_bytes());
            for path in &many {
                writer.write(path.clone(), format!("{round}").into_bytes());
            }
        }
        writer.write(b.clone(), b"first b".to_vec());
        writer.remove(b.clone());
        writer.remove(a.clone());
        writer.write(a.clone(), b"a again".to_vec());
        assert!(writer.flush(soon()));
        assert_eq!(fs::read(&a).unwrap(), b"a again");
        assert!(!b.exists(), "removed after its write");
        for path in &many {
            assert_eq!(fs::read(path).unwrap(), b"2");
        }
        assert_eq!(writer.pending(), 0);
        assert_eq!(writer.failed().count(), 0);
        let leftovers = fs::read_dir(&dir.0)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("tmp".as_ref()))
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_failed_write_is_handed_back_or_answered_and_the_others_land() {
        let dir = TempDir::new("state-writer-fail");
        fs::write(dir.0.join("blocker"), b"").unwrap();
        let blocked = dir.0.join("blocker").join("c.json");
        let fine = dir.0.join("fine.json");
        let writer = StateWriter::start().unwrap();
        writer.write(blocked.clone(), b"never".to_vec());
        writer.write(fine.clone(), b"fine".to_vec());
        assert!(writer.flush(soon()));
        let failed: Vec<AtomicFileError> = writer.failed().collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].names(&blocked), "{}", failed[0]);
        assert_eq!(fs::read(&fine).unwrap(), b"fine");
        // Waited for, the error is the caller's.
        let e = writer.write_now(&blocked, b"never".to_vec()).unwrap_err();
        assert!(e.names(&blocked), "{e}");
        assert!(writer.write_now(&fine, b"now".to_vec()).is_ok());
        assert_eq!(fs::read(&fine).unwrap(), b"now");
    }
}
