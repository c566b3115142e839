//! Disk workers: threads "disk N" of one torrent that hash completed pieces and write the good
//! ones, so neither SHA-1 nor `pwrite` ever runs on the coordinator's event loop. A piece is
//! written only after its hash matched; the coordinator announces it only after the write.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use sha1::{Digest, Sha1};

use super::ResumeTarget;
use crate::metainfo::Metainfo;
use crate::profile::{self, Role};
use crate::resume::{ResumeData, ResumeError};
use crate::storage::{Storage, StorageError};
use crate::wire::Bitfield;

/// Work for a disk thread.
pub enum DiskJob {
    /// Hash `data` against `expected`; if it matches, write it as piece `piece`.
    VerifyAndWrite {
        piece: u32,
        data: Vec<u8>,
        expected: [u8; 20],
    },
    /// Flush every file to stable storage.
    Sync,
    /// Check that every file is still where and as long as we left it (stats only).
    CheckFiles,
    /// Snapshot the files' sizes and mtimes with the pieces we have, and save it atomically.
    SaveResume {
        meta: Arc<Metainfo>,
        target: ResumeTarget,
        have: Bitfield,
        uploaded: u64,
        downloaded: u64,
        completed_unix: Option<u64>,
    },
}

/// What a disk thread did, in the past tense.
pub enum DiskResult {
    /// Hash matched and the piece is written. `data` comes back for reuse and comparisons.
    Written {
        piece: u32,
        data: Vec<u8>,
    },
    /// Hash did not match; nothing was written.
    HashFailed {
        piece: u32,
        data: Vec<u8>,
    },
    /// Hash matched but the write failed.
    WriteFailed {
        piece: u32,
        error: StorageError,
    },
    Synced(Result<(), StorageError>),
    FilesChecked(Result<(), StorageError>),
    ResumeSaved(Result<(), ResumeError>),
}

/// Spawns `threads` disk threads sharing one job queue. They exit when `jobs` disconnects.
///
/// # Errors
/// When a thread cannot be spawned.
pub fn spawn(
    storage: &Arc<Storage>,
    threads: usize,
    name: &str,
    jobs: &Receiver<DiskJob>,
    results: &Sender<DiskResult>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..threads.max(1))
        .map(|i| {
            let storage = Arc::clone(storage);
            let jobs = jobs.clone();
            let results = results.clone();
            std::thread::Builder::new()
                .name(format!("disk {i} {name}"))
                .spawn(move || {
                    profile::run_as(Role::Disk, || {
                        for job in jobs {
                            if results.send(run(&storage, job)).is_err() {
                                break;
                            }
                        }
                    });
                })
        })
        .collect()
}

fn run(storage: &Storage, job: DiskJob) -> DiskResult {
    match job {
        DiskJob::VerifyAndWrite {
            piece,
            data,
            expected,
        } => {
            if Sha1::digest(&data).as_slice() != expected {
                return DiskResult::HashFailed { piece, data };
            }
            match storage.write_piece(piece, &data) {
                Ok(()) => DiskResult::Written { piece, data },
                Err(error) => DiskResult::WriteFailed { piece, error },
            }
        }
        DiskJob::Sync => DiskResult::Synced(storage.sync_all()),
        DiskJob::CheckFiles => DiskResult::FilesChecked(storage.check_files()),
        DiskJob::SaveResume {
            meta,
            target,
            have,
            uploaded,
            downloaded,
            completed_unix,
        } => DiskResult::ResumeSaved(save_resume(
            &meta,
            &target,
            &have,
            uploaded,
            downloaded,
            completed_unix,
        )),
    }
}

/// Captures and atomically saves resume data. Runs on a disk thread, or on the coordinator
/// while it shuts down (when no disk thread is left).
///
/// # Errors
/// When the resume file cannot be written.
pub fn save_resume(
    meta: &Metainfo,
    target: &ResumeTarget,
    have: &Bitfield,
    uploaded: u64,
    downloaded: u64,
    completed_unix: Option<u64>,
) -> Result<(), ResumeError> {
    ResumeData::capture(
        meta,
        &target.root,
        have,
        uploaded,
        downloaded,
        completed_unix,
    )
    .save(&target.path)
}
