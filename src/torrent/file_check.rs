//! The process's file checker: one thread ("file check") that notices a file of a running torrent
//! deleted, replaced or truncated under us ([`Storage::check_file`], two `stat`s, no data read).
//! A deleted file stays readable through our handle, so reads alone would never notice.
//!
//! Torrents register their storage and disk-result sender ([`FileCheckHandle::register`]); the
//! thread walks every registered torrent's files round-robin, [`ROUND`] by round, checking in
//! each round `ceil(files / 5)` files but at most [`FILES_PER_ROUND`]. So a change is noticed
//! within [`MIN_SWEEP`] (5 s) while the process has at most `5 * FILES_PER_ROUND` files, and
//! within `files / FILES_PER_ROUND` seconds beyond (50 s for 10,000 single-file torrents): the
//! cost grows with the number of files, capped per second, instead of one job per torrent every
//! 5 s. A change goes to the torrent as [`DiskResult::FileChanged`] on its disk-result channel;
//! the coordinator decides what it means (a recheck). The thread holds a torrent's storage only
//! while it checks it, and never holds the registry's lock across a `stat`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::disk::{DiskResult, Results};
use crate::profile::{self, Role};
use crate::storage::Storage;

/// How often the thread wakes to check a batch of files.
pub const ROUND: Duration = Duration::from_secs(1);
/// The shortest time between two checks of one file.
pub const MIN_SWEEP: Duration = Duration::from_secs(5);
/// The most files checked in one round: at most this many pairs of `stat`s a second.
pub const FILES_PER_ROUND: usize = 200;

/// One registered torrent.
struct Entry {
    id: u64,
    storage: Arc<Storage>,
    results: Results,
    /// The next of its files to check.
    next_file: usize,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    entries: Vec<Entry>,
    /// Index into `entries` of the torrent whose files are checked next.
    cursor: usize,
}

impl Registry {
    /// Takes the next `budget` files round-robin: (storage, file index, results) of each.
    fn next_batch(&mut self, budget: usize) -> Vec<(Arc<Storage>, usize, Results)> {
        let mut batch = Vec::new();
        // A torrent with no files at all takes no budget; stop after a lap that took nothing.
        let mut empty_visits = 0;
        while batch.len() < budget && empty_visits < self.entries.len() {
            if self.cursor >= self.entries.len() {
                self.cursor = 0;
            }
            let entry = &mut self.entries[self.cursor];
            let files = entry.storage.file_count();
            if entry.next_file < files {
                batch.push((
                    Arc::clone(&entry.storage),
                    entry.next_file,
                    entry.results.clone(),
                ));
                entry.next_file += 1;
                empty_visits = 0;
            } else {
                empty_visits += 1;
            }
            if entry.next_file >= files {
                entry.next_file = 0;
                self.cursor += 1;
            }
        }
        batch
    }

    fn file_count(&self) -> usize {
        self.entries.iter().map(|e| e.storage.file_count()).sum()
    }
}

/// How many files a round checks when `files` are registered: a fifth of them (each file every
/// [`MIN_SWEEP`]), at most [`FILES_PER_ROUND`].
fn round_budget(files: usize) -> usize {
    files.div_ceil(5).min(FILES_PER_ROUND)
}

/// The file-check thread, owned by the engine; torrents hold [`FileCheckRegistration`]s.
pub struct FileChecker {
    registry: Arc<Mutex<Registry>>,
    /// Dropped to stop the thread.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FileChecker {
    /// Starts the thread.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start() -> std::io::Result<FileChecker> {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let shared = Arc::clone(&registry);
        let thread = std::thread::Builder::new()
            .name("file check".into())
            .spawn(move || profile::run_as(Role::Disk, || work(&shared, &stop_rx)))?;
        Ok(FileChecker {
            registry,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A handle torrents register with.
    pub fn handle(&self) -> FileCheckHandle {
        FileCheckHandle {
            registry: Arc::clone(&self.registry),
        }
    }
}

impl Drop for FileChecker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

fn work(registry: &Mutex<Registry>, stop: &Receiver<()>) {
    loop {
        match stop.recv_timeout(ROUND) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let batch = {
            let mut registry = lock(registry);
            let budget = round_budget(registry.file_count());
            registry.next_batch(budget)
        };
        for (storage, index, results) in batch {
            if let Err(error) = storage.check_file(index) {
                // A torrent that has stopped dropped its receiver: nothing to tell.
                results.send(DiskResult::FileChanged(error));
            }
        }
    }
}

/// A way into the [`FileChecker`], cloned into each torrent's parameters.
#[derive(Clone)]
pub struct FileCheckHandle {
    registry: Arc<Mutex<Registry>>,
}

impl FileCheckHandle {
    /// Has `storage`'s files checked from now on, changes reported on `results`, until the
    /// registration is dropped.
    pub fn register(&self, storage: Arc<Storage>, results: Results) -> FileCheckRegistration {
        let mut registry = lock(&self.registry);
        let id = registry.next_id;
        registry.next_id += 1;
        registry.entries.push(Entry {
            id,
            storage,
            results,
            next_file: 0,
        });
        FileCheckRegistration {
            id,
            registry: Arc::clone(&self.registry),
        }
    }
}

/// One torrent's files in the [`FileChecker`]'s round; dropping it takes them out.
pub struct FileCheckRegistration {
    id: u64,
    registry: Arc<Mutex<Registry>>,
}

impl Drop for FileCheckRegistration {
    fn drop(&mut self) {
        let mut registry = lock(&self.registry);
        if let Some(at) = registry.entries.iter().position(|e| e.id == self.id) {
            registry.entries.remove(at);
            if registry.cursor > at {
                registry.cursor -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::{FileEntry, Geometry, Metainfo};
    use crate::storage::OpenMode;

    #[test]
    fn a_round_checks_a_fifth_of_the_files_at_most_two_hundred() {
        assert_eq!(round_budget(0), 0);
        assert_eq!(round_budget(1), 1);
        assert_eq!(round_budget(5), 1);
        assert_eq!(round_budget(6), 2);
        assert_eq!(round_budget(1000), 200);
        assert_eq!(round_budget(10_000), FILES_PER_ROUND);
    }

    fn torrent(dir: &std::path::Path, name: &str, lens: &[u64]) -> Arc<Storage> {
        let mut offset = 0;
        let files: Vec<FileEntry> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                offset += len;
                FileEntry {
                    path: format!("f{i}").into(),
                    len,
                    offset: offset - len,
                    attr: Default::default(),
                }
            })
            .collect();
        let total: u64 = lens.iter().sum();
        let meta = Metainfo {
            info_hash: crate::metainfo::InfoHash([0; 20]),
            name: name.into(),
            geometry: Geometry::new(total, 16384),
            files,
            piece_hashes: vec![[0; 20]; usize::try_from(total.div_ceil(16384)).unwrap()],
            announce: None,
            announce_list: None,
            private: false,
            about: Default::default(),
            info_bytes: Arc::from(&b""[..]),
        };
        Arc::new(Storage::open(&dir.join(name), &meta, OpenMode::Download).unwrap())
    }

    #[test]
    fn the_batch_walks_every_torrents_files_round_robin() {
        let tmp = crate::test_dir::TempDir::new("file-check-batch");
        let a = torrent(&tmp.0, "a", &[10, 10, 10]);
        let b = torrent(&tmp.0, "b", &[10]);
        let (tx, _rx) = crossbeam_channel::unbounded();
        let mut registry = Registry::default();
        for (id, storage) in [(0, &a), (1, &b)] {
            registry.entries.push(Entry {
                id,
                storage: Arc::clone(storage),
                results: Results::new(tx.clone(), Arc::default()),
                next_file: 0,
            });
        }
        let names = |batch: Vec<(Arc<Storage>, usize, Results)>| -> Vec<String> {
            batch
                .iter()
                .map(|(s, i, _)| format!("{}{i}", if Arc::ptr_eq(s, &a) { "a" } else { "b" }))
                .collect()
        };
        assert_eq!(names(registry.next_batch(2)), ["a0", "a1"]);
        assert_eq!(names(registry.next_batch(3)), ["a2", "b0", "a0"]);
        assert_eq!(names(registry.next_batch(10)).len(), 10, "laps repeat");
    }

    #[test]
    fn a_deleted_file_is_reported_on_the_torrents_channel_within_a_sweep() {
        let tmp = crate::test_dir::TempDir::new("file-check-deleted");
        let storage = torrent(&tmp.0, "t", &[100, 200]);
        let checker = FileChecker::start().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let registration = checker
            .handle()
            .register(Arc::clone(&storage), Results::new(tx, Arc::default()));
        std::fs::remove_file(tmp.0.join("t").join("f1")).unwrap();
        match rx.recv_timeout(MIN_SWEEP + 2 * ROUND) {
            Ok(DiskResult::FileChanged(error)) => {
                assert!(error.to_string().contains("deleted"), "{error}");
            }
            Ok(_) => panic!("not a file change"),
            Err(e) => panic!("the deletion was not noticed: {e}"),
        }
        drop(registration);
        assert!(lock(&checker.registry).entries.is_empty());
    }
}
