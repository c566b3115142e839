//! Resume data: what we knew about one torrent's data on disk when we last saved, so the next
//! start can skip hashing every piece. Owns the resume file format (JSON, one file per torrent,
//! `<state_dir>/resume/<hex info hash>.json`) and its atomic replacement. Called by whoever starts
//! or stops a torrent; it reads file metadata only (never file contents) and opens no sockets.
//!
//! The trust rule: the recorded pieces are believed only while every file of the torrent still
//! has the size and modification time it had when they were recorded. Anything else (another
//! torrent, another piece count, a file changed, missing or unreadable, a damaged resume file)
//! means "hash everything again", which is slow but never wrong. A change that keeps both size
//! and mtime (`touch -r`, or a write within the file system's timestamp granularity of the
//! capture) goes unnoticed; that is the price of not reading the data.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::atomic_file::{self, AtomicFileError};
use crate::hex;
use crate::metainfo::{InfoHash, Metainfo};
use crate::wire::Bitfield;

/// The format version this build writes and reads.
pub const RESUME_VERSION: u32 = 1;

/// What we know about one torrent's data on disk, saved as JSON in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResumeData {
    /// [`RESUME_VERSION`].
    pub version: u32,
    /// The torrent's info hash, lower-case hex.
    pub info_hash: String,
    /// The number of pieces, i.e. of bits in `pieces`.
    pub num_pieces: u32,
    /// Hex of the bitfield's wire bytes: the verified pieces.
    pub pieces: String,
    /// One stamp per file of the torrent, in metainfo order.
    pub files: Vec<FileStamp>,
    /// The part file's stamp, when the torrent had one (file selection: bytes of wanted pieces
    /// that lie in files not created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<FileStamp>,
}

/// A file's size and modification time when its pieces were recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    /// Relative to the download directory, as in [`crate::metainfo::FileEntry::path`].
    pub path: String,
    pub len: u64,
    /// Nanoseconds since the Unix epoch (negative before it); 0 with `len` 0 for a missing file.
    pub mtime_ns: i128,
}

/// A resume file that could not be written or read, naming the file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("resume data: {0}")]
    Save(#[from] AtomicFileError),
    /// The torrent's files could not be synced, so no resume data was saved (it would name
    /// pieces that may not be on disk).
    #[error("resume data not saved: {0}")]
    NotSynced(#[from] crate::storage::StorageError),
    #[error("{path}: cannot read resume data: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: not valid resume data: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: not valid resume data: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Why resume data does not describe the files on disk any more. Not an error: the torrent's
/// pieces are simply hashed again. The text is meant for an `info!` line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    #[error("resume format version {found}, this btd reads {RESUME_VERSION}")]
    Version { found: u32 },
    #[error("recorded for another torrent ({recorded})")]
    OtherTorrent { recorded: String },
    #[error("recorded {recorded} pieces, the torrent has {expected}")]
    PieceCount { recorded: u32, expected: u32 },
    #[error("recorded file list differs from the torrent's")]
    FileList,
    #[error("{path}: missing or unreadable")]
    FileMissing { path: PathBuf },
    #[error("{path}: size or modification time changed")]
    FileChanged { path: PathBuf },
    #[error("recorded pieces are not a valid bitfield")]
    BadPieces,
}

impl ResumeData {
    /// Snapshot: the `have` pieces, and the current size and mtime of each file of `meta` under
    /// `root` and of the part file `part` if any (a missing or unreadable file is recorded as
    /// `len` 0, `mtime_ns` 0: a file nobody wanted, which must still be missing for
    /// [`validate`](Self::validate) to accept the pieces). Take it after the files were synced,
    /// so nothing written before the snapshot changes their mtime afterwards.
    ///
    /// `have` must have one bit per piece of `meta` (checked in debug builds); otherwise the
    /// snapshot is recorded as is and rejected by `validate`.
    #[must_use]
    pub fn capture(meta: &Metainfo, root: &Path, have: &Bitfield, part: Option<&Path>) -> Self {
        debug_assert_eq!(have.len(), meta.geometry.num_pieces, "bitfield size");
        let files = meta
            .files
            .iter()
            .map(|entry| {
                let (len, mtime_ns) = stat(&root.join(&entry.path)).unwrap_or((0, 0));
                FileStamp {
                    path: entry.path.to_string_lossy().into_owned(),
                    len,
                    mtime_ns,
                }
            })
            .collect();
        Self {
            version: RESUME_VERSION,
            info_hash: meta.info_hash.to_hex(),
            num_pieces: have.len(),
            pieces: hex::encode(have.as_bytes()),
            files,
            part: part.map(|path| {
                let (len, mtime_ns) = stat(path).unwrap_or((0, 0));
                FileStamp {
                    path: path.to_string_lossy().into_owned(),
                    len,
                    mtime_ns,
                }
            }),
        }
    }

    /// The files under `from` (a file or directory of the torrent, relative to the download
    /// directory) are now under `to`: a rename keeps sizes and modification times, so the
    /// pieces recorded still hold once the paths say where the files are.
    pub fn rename_path(&mut self, from: &Path, to: &Path) {
        for stamp in &mut self.files {
            let path = Path::new(&stamp.path);
            if let Ok(rest) = path.strip_prefix(from) {
                let renamed = if rest.as_os_str().is_empty() {
                    to.to_owned()
                } else {
                    to.join(rest)
                };
                stamp.path = renamed.to_string_lossy().into_owned();
            }
        }
    }

    /// Path of the resume file for a torrent: `<state_dir>/resume/<hex info hash>.json`.
    #[must_use]
    pub fn path_in(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
        state_dir
            .join("resume")
            .join(format!("{}.json", info_hash.to_hex()))
    }

    /// Writes the resume file atomically: `<path>.tmp` is written and synced, renamed over
    /// `path`, and the directory (created if missing) is synced, so after a crash `path` holds
    /// either the old data or the new, never a mix. Callers save one torrent's file from one
    /// thread at a time (they share the `.tmp` name).
    ///
    /// # Errors
    /// The [`ResumeError`] variant naming the step that failed and its file; the old file, if
    /// any, is then still in place.
    pub fn save(&self, path: &Path) -> Result<(), ResumeError> {
        Ok(atomic_file::write_json(path, self)?)
    }

    /// Reads a resume file. Checks its form (version, hex fields, bitfield size), not whether it
    /// still describes the files: that is [`validate`](Self::validate)'s job.
    ///
    /// # Errors
    /// `Read` when the file exists but cannot be read, `Parse` when it is not (complete) JSON of
    /// the right shape, `Invalid` when a field is out of form; each names the file.
    pub fn load(path: &Path) -> Result<Option<Self>, ResumeError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ResumeError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let data: Self = serde_json::from_slice(&bytes).map_err(|source| ResumeError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |reason: String| ResumeError::Invalid {
            path: path.to_owned(),
            reason,
        };
        if data.version != RESUME_VERSION {
            return Err(invalid(format!(
                "format version {}, this btd reads {RESUME_VERSION}",
                data.version
            )));
        }
        if data.info_hash.len() != 40 || hex::decode(&data.info_hash).is_none() {
            return Err(invalid(format!(
                "info hash {:?} is not 40 hex digits",
                data.info_hash
            )));
        }
        if data.bitfield().is_none() {
            return Err(invalid(format!(
                "pieces are not a bitfield of {} pieces",
                data.num_pieces
            )));
        }
        Ok(Some(data))
    }

    /// The verified pieces, if this resume data still describes the files under `root` (and
    /// the part file `part`): same info hash, same piece count, and every file's current size
    /// and mtime equal to the recorded ones (a file recorded missing is still missing). `None`
    /// means hash every piece again.
    #[must_use]
    pub fn validate(&self, meta: &Metainfo, root: &Path, part: Option<&Path>) -> Option<Bitfield> {
        self.check(meta, root, part).ok()
    }

    /// [`validate`](Self::validate), saying why the data was not trusted.
    ///
    /// # Errors
    /// The first reason found for not trusting the recorded pieces.
    pub fn check(
        &self,
        meta: &Metainfo,
        root: &Path,
        part: Option<&Path>,
    ) -> Result<Bitfield, Stale> {
        if self.version != RESUME_VERSION {
            return Err(Stale::Version {
                found: self.version,
            });
        }
        if !self
            .info_hash
            .eq_ignore_ascii_case(&meta.info_hash.to_hex())
        {
            return Err(Stale::OtherTorrent {
                recorded: self.info_hash.clone(),
            });
        }
        if self.num_pieces != meta.geometry.num_pieces {
            return Err(Stale::PieceCount {
                recorded: self.num_pieces,
                expected: meta.geometry.num_pieces,
            });
        }
        if self.files.len() != meta.files.len()
            || self
                .files
                .iter()
                .zip(&meta.files)
                .any(|(stamp, entry)| stamp.path != entry.path.to_string_lossy())
        {
            return Err(Stale::FileList);
        }
        let never_created = |stamp: &FileStamp| (stamp.len, stamp.mtime_ns) == (0, 0);
        for (stamp, entry) in self.files.iter().zip(&meta.files) {
            let path = root.join(&entry.path);
            match stat(&path) {
                // Not created because nobody wanted it (its bytes of wanted pieces are in the
                // part file, whose stamp is checked below), and still not there.
                None if never_created(stamp) && entry.len > 0 && self.part.is_some() => {}
                None => return Err(Stale::FileMissing { path }),
                Some(now) if now != (stamp.len, stamp.mtime_ns) => {
                    return Err(Stale::FileChanged { path });
                }
                Some(_) => {}
            }
        }
        let recorded = self.part.as_ref().filter(|s| !never_created(s));
        let now = part.and_then(stat);
        match (recorded, now) {
            (None, None) => {}
            (Some(stamp), Some(now)) if now == (stamp.len, stamp.mtime_ns) => {}
            (Some(stamp), _) => {
                return Err(Stale::FileChanged {
                    path: PathBuf::from(&stamp.path),
                });
            }
            // A part file that appeared since may hold what the files recorded did not.
            (None, Some(_)) => {
                return Err(Stale::FileChanged {
                    path: part.expect("stat found it").to_owned(),
                });
            }
        }
        self.bitfield().ok_or(Stale::BadPieces)
    }

    fn bitfield(&self) -> Option<Bitfield> {
        Bitfield::from_wire(&hex::decode(&self.pieces)?, self.num_pieces).ok()
    }
}

/// Size and mtime (ns since the epoch) of the regular file at `path`, or None when there is none
/// we can stat.
fn stat(path: &Path) -> Option<(u64, i128)> {
    let meta = fs::metadata(path).ok().filter(fs::Metadata::is_file)?;
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    Some((meta.len(), mtime_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic_file::tmp_path;
    use std::time::{Duration, SystemTime};

    use crate::test_dir::TempDir;

    /// A two-file torrent written by hand: `t/a` (5 bytes) and `t/b` (20000 bytes), pieces of
    /// 16 KiB, so 2 pieces. `name` changes the info hash.
    fn torrent(name: &str) -> Metainfo {
        let mut bytes = format!(
            "d4:infod5:filesld6:lengthi5e4:pathl1:aeed6:lengthi20000e4:pathl1:beee4:name{}:{name}12:piece lengthi16384e6:pieces40:",
            name.len()
        )
        .into_bytes();
        bytes.extend([0xAB; 40]);
        bytes.extend(b"ee");
        Metainfo::from_bytes(&bytes).unwrap()
    }

    /// Writes every file of `meta` under `root` at its full length.
    fn write_files(meta: &Metainfo, root: &Path) {
        for entry in &meta.files {
            let path = root.join(&entry.path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, vec![7u8; usize::try_from(entry.len).unwrap()]).unwrap();
        }
    }

    fn have(bits: &[u32], len: u32) -> Bitfield {
        let mut field = Bitfield::new(len);
        for &bit in bits {
            field.set(bit);
        }
        field
    }

    fn mtime(path: &Path) -> SystemTime {
        fs::metadata(path).unwrap().modified().unwrap()
    }

    fn set_mtime(path: &Path, when: SystemTime) {
        let file = fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(when).unwrap();
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = TempDir::new("round-trip");
        let meta = torrent("t");
        let root = dir.0.join("downloads");
        write_files(&meta, &root);
        let data = ResumeData::capture(&meta, &root, &have(&[1], 2), None);
        assert_eq!(data.pieces, "40");
        assert_eq!(
            data.files
                .iter()
                .map(|f| (f.path.as_str(), f.len))
                .collect::<Vec<_>>(),
            [("t/a", 5), ("t/b", 20000)]
        );
        assert!(data.files.iter().all(|f| f.mtime_ns > 0));

        let path = ResumeData::path_in(&dir.0.join("state"), &meta.info_hash);
        assert_eq!(
            path,
            dir.0
                .join("state/resume")
                .join(format!("{}.json", meta.info_hash.to_hex()))
        );
        data.save(&path).unwrap();
        assert_eq!(ResumeData::load(&path).unwrap(), Some(data));
        assert!(!tmp_path(&path).exists());
    }

    #[test]
    fn renamed_files_keep_their_pieces_once_the_paths_are_renamed_too() {
        let dir = TempDir::new("renamed");
        let mut meta = torrent("t");
        let root = dir.0.join("downloads");
        write_files(&meta, &root);
        let mut data = ResumeData::capture(&meta, &root, &have(&[0, 1], 2), None);
        let (from, to) = meta.rename_path("t", "u").unwrap();
        fs::rename(root.join(&from), root.join(&to)).unwrap();
        assert_eq!(data.check(&meta, &root, None), Err(Stale::FileList));
        data.rename_path(&from, &to);
        assert_eq!(data.check(&meta, &root, None).unwrap().count_ones(), 2);
        // A file's own rename; `u/b` is not a prefix of `u/bb` (whole components only).
        let (from, to) = meta.rename_path("u/b", "bb").unwrap();
        fs::rename(root.join(&from), root.join(&to)).unwrap();
        data.rename_path(&from, &to);
        data.rename_path(Path::new("u/b"), Path::new("u/c"));
        data.rename_path(Path::new("u/a"), Path::new("u/zz"));
        let paths: Vec<&str> = data.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["u/zz", "u/bb"]);
    }

    #[test]
    fn load_of_a_missing_file_is_none() {
        let dir = TempDir::new("missing");
        assert_eq!(ResumeData::load(&dir.0.join("nope.json")).unwrap(), None);
    }

    #[test]
    fn validate_accepts_untouched_files() {
        let dir = TempDir::new("untouched");
        let meta = torrent("t");
        write_files(&meta, &dir.0);
        let pieces = have(&[0], 2);
        let path = dir.0.join("r.json");
        ResumeData::capture(&meta, &dir.0, &pieces, None)
            .save(&path)
            .unwrap();
        let loaded = ResumeData::load(&path).unwrap().unwrap();
        assert_eq!(loaded.check(&meta, &dir.0, None), Ok(pieces.clone()));
        assert_eq!(loaded.validate(&meta, &dir.0, None), Some(pieces));
    }

    #[test]
    fn validate_rejects_a_changed_mtime() {
        let dir = TempDir::new("mtime");
        let meta = torrent("t");
        write_files(&meta, &dir.0);
        let data = ResumeData::capture(&meta, &dir.0, &Bitfield::full(2), None);
        let b = dir.0.join("t/b");
        set_mtime(&b, mtime(&b) + Duration::from_secs(1));
        assert_eq!(
            data.check(&meta, &dir.0, None),
            Err(Stale::FileChanged { path: b })
        );
        assert_eq!(data.validate(&meta, &dir.0, None), None);
    }

    #[test]
    fn validate_rejects_a_changed_size_even_with_the_old_mtime() {
        let dir = TempDir::new("size");
        let meta = torrent("t");
        write_files(&meta, &dir.0);
        let data = ResumeData::capture(&meta, &dir.0, &Bitfield::full(2), None);
        let a = dir.0.join("t/a");
        let before = mtime(&a);
        let file = fs::OpenOptions::new().write(true).open(&a).unwrap();
        file.set_len(4).unwrap();
        file.set_modified(before).unwrap();
        drop(file);
        assert_eq!(mtime(&a), before);
        assert_eq!(
            data.check(&meta, &dir.0, None),
            Err(Stale::FileChanged { path: a })
        );
    }

    #[test]
    fn validate_rejects_a_missing_file() {
        let dir = TempDir::new("gone");
        let meta = torrent("t");
        write_files(&meta, &dir.0);
        let data = ResumeData::capture(&meta, &dir.0, &Bitfield::full(2), None);
        let a = dir.0.join("t/a");
        fs::remove_file(&a).unwrap();
        assert_eq!(
            data.check(&meta, &dir.0, None),
            Err(Stale::FileMissing { path: a })
        );
    }

    #[test]
    fn a_file_nobody_wanted_may_stay_missing_while_the_part_file_is_unchanged() {
        let dir = TempDir::new("unwanted-missing");
        let meta = torrent("t");
        write_files(&meta, &dir.0);
        fs::remove_file(dir.0.join("t/b")).unwrap();
        let part = dir.0.join("t.parts");
        fs::write(&part, b"boundary bytes").unwrap();
        let data = ResumeData::capture(&meta, &dir.0, &Bitfield::full(2), Some(&part));
        assert_eq!(
            data.check(&meta, &dir.0, Some(&part)),
            Ok(Bitfield::full(2))
        );
        fs::write(&part, b"other bytes, other length").unwrap();
        assert_eq!(
            data.check(&meta, &dir.0, Some(&part)),
            Err(Stale::FileChanged { path: part.clone() })
        );
        fs::remove_file(&part).unwrap();
        assert!(
            data.check(&meta, &dir.0, Some(&part)).is_err(),
            "part file gone"
        );
        assert!(
            data.check(&meta, &dir.0, None).is_err(),
            "no part file where one was"
        );
    }

    #[test]
    fn a_file_missing_at_capture_is_never_trusted() {
        let dir = TempDir::new("missing-at-capture");
        let meta = torrent("t");
        let data = ResumeData::capture(&meta, &dir.0, &Bitfield::new(2), None);
        assert_eq!((data.files[0].len, data.files[0].mtime_ns), (0, 0));
        assert_eq!(
            data.check(&meta, &dir.0, None),
            Err(Stale::FileMissing {
                path: dir.0.join("t/a")
            })
        );
        // Created later (as storage does), it still does not match the "missing" stamp.
        write_files(&meta, &dir.0);
        assert!(matches!(
            data.check(&meta, &dir.0, None),
            Err(Stale::FileChanged { .. })
        ));
    }

    #[test]
    fn validate_rejects_another_torrent_or_piece_count() {
        let dir = TempDir::new("other");
        let meta = torrent("t");
        write_files(&meta, &dir.0);
        let data = ResumeData::capture(&meta, &dir.0, &Bitfield::full(2), None);

        let other = torrent("u");
        assert_ne!(other.info_hash, meta.info_hash);
        assert_eq!(
            data.check(&other, &dir.0, None),
            Err(Stale::OtherTorrent {
                recorded: meta.info_hash.to_hex()
            })
        );

        let mut fewer = data.clone();
        fewer.num_pieces = 1;
        fewer.pieces = "80".into();
        assert_eq!(
            fewer.check(&meta, &dir.0, None),
            Err(Stale::PieceCount {
                recorded: 1,
                expected: 2
            })
        );

        let mut renamed = data.clone();
        renamed.files[1].path = "t/c".into();
        assert_eq!(renamed.check(&meta, &dir.0, None), Err(Stale::FileList));

        let mut spare_bits = data;
        spare_bits.pieces = "ff".into();
        assert_eq!(spare_bits.check(&meta, &dir.0, None), Err(Stale::BadPieces));
    }

    #[test]
    fn load_names_the_file_when_it_is_damaged() {
        let dir = TempDir::new("damaged");
        let meta = torrent("t");
        write_files(&meta, &dir.0);
        let path = dir.0.join("r.json");
        ResumeData::capture(&meta, &dir.0, &Bitfield::full(2), None)
            .save(&path)
            .unwrap();
        let good = fs::read_to_string(&path).unwrap();

        let damaged = [
            good[..good.len() / 2].to_owned(),
            String::new(),
            "garbage".into(),
            "[1, 2]".into(),
            good.replace("\"c0\"", "\"zz\""),
            good.replace("\"c0\"", "\"c0c0\""),
            good.replace("\"version\": 1", "\"version\": 9"),
            good.replace(&meta.info_hash.to_hex(), "abc"),
        ];
        for (i, text) in damaged.iter().enumerate() {
            assert_ne!(text, &good, "case {i} changes the file");
            fs::write(&path, text).unwrap();
            let err = ResumeData::load(&path).unwrap_err();
            assert!(
                matches!(err, ResumeError::Parse { .. } | ResumeError::Invalid { .. }),
                "case {i}: {err:?}"
            );
            assert!(
                err.to_string().starts_with(&path.display().to_string()),
                "case {i}: {err}"
            );
        }
    }

    #[test]
    fn a_leftover_tmp_file_breaks_neither_load_nor_save() {
        let dir = TempDir::new("leftover");
        let meta = torrent("t");
        write_files(&meta, &dir.0);
        let path = dir.0.join("resume/r.json");
        let first = ResumeData::capture(&meta, &dir.0, &have(&[0], 2), None);
        first.save(&path).unwrap();

        // A crash between writing the temporary file and the rename leaves it behind.
        fs::write(tmp_path(&path), "{\"version\": 1, \"info_ha").unwrap();
        assert_eq!(ResumeData::load(&path).unwrap().as_ref(), Some(&first));

        let second = ResumeData::capture(&meta, &dir.0, &Bitfield::full(2), None);
        second.save(&path).unwrap();
        assert_eq!(ResumeData::load(&path).unwrap(), Some(second));
        assert!(!tmp_path(&path).exists());
    }
}
