//! Disk workers: the process's pool of threads "disk N", shared by all torrents, that hash
//! completed pieces and write the good ones, so neither SHA-1 nor `pwrite` ever runs on a
//! coordinator's event loop. A piece is
//! written only after its hash matched; the coordinator announces it only after the write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, select};
use sha1::{Digest, Sha1};

use super::ResumeTarget;
use super::piece_buffer::PieceData;
use crate::metainfo::Metainfo;
use crate::profile::{self, Role};
use crate::resume::{ResumeData, ResumeError};
use crate::storage::{Storage, StorageError};
use crate::wire::Bitfield;

/// Work for a disk thread.
pub enum DiskJob {
    /// Hash `data` (its blocks in order) against `expected`; if it matches, write it as piece
    /// `piece` (one `pwritev` per file).
    VerifyAndWrite {
        piece: u32,
        data: PieceData,
        expected: [u8; 20],
    },
    /// Flush every file to stable storage.
    Sync,
    /// These files are wanted now: create those kept in the part file and move their bytes
    /// out of it ([`Storage::want_files`]).
    WantFiles(Vec<bool>),
    /// Flush every file, then snapshot the files' sizes and mtimes with the pieces we have and
    /// save it atomically: resume data lists only pieces whose bytes are on stable storage.
    SaveResume {
        meta: Arc<Metainfo>,
        target: ResumeTarget,
        have: Bitfield,
    },
}

/// What a disk thread did, in the past tense.
pub enum DiskResult {
    /// Hash matched and the piece is written. `data` comes back for reuse and comparisons.
    Written {
        piece: u32,
        data: PieceData,
    },
    /// Hash did not match; nothing was written.
    HashFailed {
        piece: u32,
        data: PieceData,
    },
    /// Hash matched but the write failed.
    WriteFailed {
        piece: u32,
        error: StorageError,
    },
    Synced(Result<(), StorageError>),
    /// From the file checker ([`super::file_check`]), not a disk thread: one of our files was
    /// deleted, replaced or truncated under us.
    FileChanged(StorageError),
    FilesWanted(Result<(), StorageError>),
    ResumeSaved(Result<(), ResumeError>),
}

/// Where a torrent's disk results go: its coordinator's channel, whose doorbell each result
/// rings (a parked coordinator is resumed to take it; `super::parking`).
#[derive(Clone)]
pub struct Results {
    tx: Sender<DiskResult>,
    doorbell: Arc<super::parking::Doorbell>,
}

impl Results {
    /// Results sent on `tx`, each ringing `doorbell`.
    #[must_use]
    pub fn new(tx: Sender<DiskResult>, doorbell: Arc<super::parking::Doorbell>) -> Self {
        Self { tx, doorbell }
    }

    /// Sends `result`; false when the torrent is gone.
    pub fn send(&self, result: DiskResult) -> bool {
        let sent = self.tx.send(result).is_ok();
        self.doorbell.ring();
        sent
    }
}

/// A job in the pool's queue: the work, the torrent's storage, and where its result goes.
struct PoolJob {
    storage: Arc<Storage>,
    job: DiskJob,
    results: Results,
}

/// The process's disk threads ("disk N"), shared by every torrent through one FIFO queue, so a
/// daemon with 500 torrents has `threads` disk threads, not two per torrent. Owned by the engine;
/// torrents hold [`DiskQueue`]s.
pub struct DiskPool {
    jobs: Sender<PoolJob>,
    /// Dropped to stop the threads: torrents' queues hold senders of `jobs` too, so its
    /// disconnection cannot be the signal.
    stop: Option<Sender<()>>,
    stopped: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DiskPool {
    /// Starts `threads` (at least one) disk threads.
    ///
    /// # Errors
    /// When a thread cannot be spawned (those already started are stopped).
    pub fn start(threads: usize) -> std::io::Result<DiskPool> {
        let (tx, rx) = crossbeam_channel::unbounded::<PoolJob>();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let mut pool = DiskPool {
            jobs: tx,
            stop: Some(stop_tx),
            stopped: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let (jobs, stop) = (rx.clone(), stop_rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("disk {i}"))
                .spawn(move || profile::run_as(Role::Disk, || work(&jobs, &stop)));
            match spawned {
                Ok(thread) => pool.threads.push(thread),
                Err(e) => {
                    pool.stop();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// A handle torrents take their [`DiskQueue`]s from.
    pub fn handle(&self) -> DiskPoolHandle {
        DiskPoolHandle {
            jobs: self.jobs.clone(),
            stopped: Arc::clone(&self.stopped),
        }
    }

    /// Refuses new jobs, lets the queued ones finish, then joins the threads.
    pub fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        drop(self.stop.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for DiskPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A way into the [`DiskPool`], cloned into each torrent's parameters.
#[derive(Clone)]
pub struct DiskPoolHandle {
    jobs: Sender<PoolJob>,
    stopped: Arc<AtomicBool>,
}

impl DiskPoolHandle {
    /// A queue for one torrent: its jobs run against `storage` and their results come back on
    /// `results`.
    pub fn queue(&self, storage: Arc<Storage>, results: Results) -> DiskQueue {
        DiskQueue {
            jobs: self.jobs.clone(),
            stopped: Arc::clone(&self.stopped),
            storage,
            results,
        }
    }
}

/// One torrent's way into the [`DiskPool`].
pub struct DiskQueue {
    jobs: Sender<PoolJob>,
    stopped: Arc<AtomicBool>,
    storage: Arc<Storage>,
    results: Results,
}

impl DiskQueue {
    /// Queues `job`; false if the pool has stopped (the process is going down).
    pub fn send(&self, job: DiskJob) -> bool {
        !self.stopped.load(Ordering::SeqCst)
            && self
                .jobs
                .send(PoolJob {
                    storage: Arc::clone(&self.storage),
                    job,
                    results: self.results.clone(),
                })
                .is_ok()
    }
}

/// A disk thread: runs jobs until `stop` disconnects, then the jobs already queued.
fn work(jobs: &Receiver<PoolJob>, stop: &Receiver<()>) {
    // A torrent that stopped waiting dropped its receiver: the work is done all the same (a
    // verified piece written is never wrong).
    let run_one = |PoolJob {
                       storage,
                       job,
                       results,
                   }| {
        results.send(run(&storage, job));
    };
    loop {
        select! {
            recv(jobs) -> job => match job {
                Ok(job) => run_one(job),
                Err(_) => return,
            },
            recv(stop) -> _ => {
                while let Ok(job) = jobs.try_recv() {
                    run_one(job);
                }
                return;
            }
        }
    }
}

fn run(storage: &Storage, job: DiskJob) -> DiskResult {
    match job {
        DiskJob::VerifyAndWrite {
            piece,
            data,
            expected,
        } => {
            let mut sha1 = Sha1::new();
            for block in data.blocks() {
                sha1.update(&**block);
            }
            if sha1.finalize().as_slice() != expected {
                return DiskResult::HashFailed { piece, data };
            }
            match storage.write_piece_parts(piece, &data.parts()) {
                Ok(()) => DiskResult::Written { piece, data },
                Err(error) => DiskResult::WriteFailed { piece, error },
            }
        }
        DiskJob::Sync => DiskResult::Synced(storage.sync_all()),
        DiskJob::WantFiles(wanted) => DiskResult::FilesWanted(storage.want_files(&wanted)),
        // `have` holds only pieces whose writes had finished when it was taken: syncing now
        // puts all of them on disk before the resume data names them.
        DiskJob::SaveResume { meta, target, have } => match storage.sync_all() {
            Ok(()) => DiskResult::ResumeSaved(save_resume(storage, &meta, &target, &have)),
            Err(error) => DiskResult::ResumeSaved(Err(error.into())),
        },
    }
}

/// Captures and atomically saves resume data. Runs on a disk thread, or on the coordinator
/// while it shuts down (when no disk thread is left).
///
/// # Errors
/// When the resume file cannot be written.
pub fn save_resume(
    storage: &Storage,
    meta: &Metainfo,
    target: &ResumeTarget,
    have: &Bitfield,
) -> Result<(), ResumeError> {
    ResumeData::capture(meta, &target.root, have, storage.part_path()).save(&target.path)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::*;
    use crate::metainfo::{FileEntry, Geometry, InfoHash};
    use crate::storage::OpenMode;

    /// A one-file torrent `name` of `data` in 16 KiB pieces, opened for download under `dir`.
    fn storage(dir: &Path, name: &str, data: &[u8]) -> (Arc<Storage>, Vec<[u8; 20]>) {
        let hashes: Vec<[u8; 20]> = data.chunks(16384).map(|c| Sha1::digest(c).into()).collect();
        let meta = Metainfo {
            info_hash: InfoHash([0; 20]),
            name: name.into(),
            geometry: Geometry::new(data.len() as u64, 16384),
            files: vec![FileEntry {
                path: PathBuf::from(name),
                len: data.len() as u64,
                offset: 0,
                attr: Default::default(),
            }],
            piece_hashes: hashes.clone(),
            announce: None,
            announce_list: None,
            private: false,
            about: Default::default(),
            info_bytes: Arc::from(&b""[..]),
        };
        let storage = Storage::open(dir, &meta, OpenMode::Download).unwrap();
        (Arc::new(storage), hashes)
    }

    #[test]
    fn one_pool_serves_two_torrents_and_routes_each_result_home() {
        let tmp = crate::test_dir::TempDir::new("disk-pool");
        let dir = tmp.0.clone();
        let a_data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let b_data: Vec<u8> = (0..20_000u32).map(|i| (i % 13) as u8).collect();
        let (a, a_hashes) = storage(&dir, "a", &a_data);
        let (b, b_hashes) = storage(&dir, "b", &b_data);
        let mut pool = DiskPool::start(1).unwrap();
        let (a_tx, a_rx) = crossbeam_channel::unbounded();
        let (b_tx, b_rx) = crossbeam_channel::unbounded();
        let a_queue = pool
            .handle()
            .queue(Arc::clone(&a), Results::new(a_tx, Arc::default()));
        let b_queue = pool
            .handle()
            .queue(Arc::clone(&b), Results::new(b_tx, Arc::default()));
        for (piece, chunk) in a_data.chunks(16384).enumerate() {
            let piece = u32::try_from(piece).unwrap();
            let expected = a_hashes[piece as usize];
            assert!(a_queue.send(DiskJob::VerifyAndWrite {
                piece,
                data: PieceData::copy_of(chunk),
                expected,
            }));
        }
        // A piece of b with a's hash: refused, nothing written.
        assert!(b_queue.send(DiskJob::VerifyAndWrite {
            piece: 0,
            data: PieceData::copy_of(&b_data[..16384]),
            expected: a_hashes[0],
        }));
        assert!(b_queue.send(DiskJob::VerifyAndWrite {
            piece: 1,
            data: PieceData::copy_of(&b_data[16384..]),
            expected: b_hashes[1],
        }));
        let wait = Duration::from_secs(10);
        let mut written: Vec<u32> = (0..3)
            .map(|_| match a_rx.recv_timeout(wait).unwrap() {
                DiskResult::Written { piece, .. } => piece,
                _ => panic!("a's piece was not written"),
            })
            .collect();
        written.sort_unstable();
        assert_eq!(written, [0, 1, 2]);
        assert!(matches!(
            b_rx.recv_timeout(wait).unwrap(),
            DiskResult::HashFailed { piece: 0, .. }
        ));
        assert!(matches!(
            b_rx.recv_timeout(wait).unwrap(),
            DiskResult::Written { piece: 1, .. }
        ));
        assert!(a_rx.try_recv().is_err() && b_rx.try_recv().is_err());
        let mut block = vec![0; 100];
        a.read(2, 0, &mut block).unwrap();
        assert_eq!(block, a_data[32768..32868]);
        // Stopped: queues refuse work instead of losing it silently.
        pool.stop();
        assert!(!a_queue.send(DiskJob::Sync));
    }
}
