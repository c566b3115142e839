//! Storage: maps the torrent's concatenated byte range onto its files and does positioned reads
//! and writes (`pread`/`pwrite`), so any thread may use one `Storage` at once without locks.
//! Owns the open file handles. Knows nothing of peers or of which pieces are verified: callers
//! write only verified pieces and read only pieces they have announced.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::metainfo::{FileEntry, Geometry, Metainfo};
use crate::wire::Bitfield;

/// A failed disk operation, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: read failed: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: write failed: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file under the path is not the one we opened, or is shorter than the torrent says:
    /// deleted, replaced or truncated behind our back.
    #[error("{path}: {what}")]
    Changed { path: PathBuf, what: String },
}

/// Whether we may create and write files, or only read what is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create missing directories and files (sparse, at their full length); read and write.
    Download,
    /// Open existing files for reading only; a missing file is an error.
    Seed,
}

struct StoredFile {
    entry: FileEntry,
    abs_path: PathBuf,
    /// None for zero-length files, which hold no bytes to read or write.
    handle: Option<File>,
    /// True when the file held data before we opened it (so its pieces are worth hashing).
    had_data: bool,
}

/// One contiguous run of bytes inside one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub file: usize,
    pub file_offset: u64,
    pub len: u64,
}

/// The torrent's files on disk.
pub struct Storage {
    files: Vec<StoredFile>,
    geometry: Geometry,
}

impl Storage {
    /// Opens (and in `Download` mode creates) every file of `meta` under `root`.
    ///
    /// # Errors
    /// `Open` naming the first file that could not be opened or created.
    pub fn open(root: &Path, meta: &Metainfo, mode: OpenMode) -> Result<Self, StorageError> {
        let mut files = Vec::with_capacity(meta.files.len());
        for entry in &meta.files {
            let abs_path = root.join(&entry.path);
            let open_err = |source| StorageError::Open {
                path: abs_path.clone(),
                source,
            };
            let (handle, had_data) = match mode {
                OpenMode::Download => {
                    if let Some(dir) = abs_path.parent() {
                        std::fs::create_dir_all(dir).map_err(open_err)?;
                    }
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&abs_path)
                        .map_err(open_err)?;
                    let existing = file.metadata().map_err(open_err)?.len();
                    if existing < entry.len {
                        file.set_len(entry.len).map_err(open_err)?;
                    }
                    (Some(file), existing > 0)
                }
                OpenMode::Seed => {
                    let file = File::open(&abs_path).map_err(open_err)?;
                    let existing = file.metadata().map_err(open_err)?.len();
                    if existing < entry.len {
                        return Err(open_err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("{existing} bytes, expected {}", entry.len),
                        )));
                    }
                    (Some(file), true)
                }
            };
            let handle = if entry.len == 0 { None } else { handle };
            files.push(StoredFile {
                entry: entry.clone(),
                abs_path,
                handle,
                had_data,
            });
        }
        Ok(Self {
            files,
            geometry: meta.geometry,
        })
    }

    /// The runs of bytes, file by file, that hold `len` bytes at torrent offset `offset`.
    /// Zero-length files never appear.
    pub fn segments(&self, offset: u64, len: u64) -> Vec<Segment> {
        segments(self.files.iter().map(|f| &f.entry), offset, len)
    }

    /// Reads `buf.len()` bytes of piece `piece` starting `offset` bytes into it.
    ///
    /// # Errors
    /// `Read` naming the file, also when the file is shorter than the torrent says.
    pub fn read(&self, piece: u32, offset: u32, buf: &mut [u8]) -> Result<(), StorageError> {
        let start = self.geometry.piece_offset(piece) + u64::from(offset);
        let mut done = 0usize;
        for seg in self.segments(start, buf.len() as u64) {
            let file = &self.files[seg.file];
            let len = usize::try_from(seg.len).expect("segment within buffer");
            let handle = file.handle.as_ref().expect("non-empty file is open");
            handle
                .read_exact_at(&mut buf[done..done + len], seg.file_offset)
                .map_err(|source| StorageError::Read {
                    path: file.abs_path.clone(),
                    source,
                })?;
            done += len;
        }
        Ok(())
    }

    /// Writes a whole piece. Callers pass only data whose hash has been verified.
    ///
    /// # Errors
    /// `Write` naming the file.
    pub fn write_piece(&self, piece: u32, data: &[u8]) -> Result<(), StorageError> {
        let start = self.geometry.piece_offset(piece);
        let mut done = 0usize;
        for seg in self.segments(start, data.len() as u64) {
            let file = &self.files[seg.file];
            let len = usize::try_from(seg.len).expect("segment within buffer");
            let handle = file.handle.as_ref().expect("non-empty file is open");
            handle
                .write_all_at(&data[done..done + len], seg.file_offset)
                .map_err(|source| StorageError::Write {
                    path: file.abs_path.clone(),
                    source,
                })?;
            done += len;
        }
        Ok(())
    }

    /// Flushes every file to disk.
    ///
    /// # Errors
    /// `Write` naming the file that failed to sync.
    pub fn sync_all(&self) -> Result<(), StorageError> {
        for file in &self.files {
            if let Some(handle) = &file.handle {
                handle.sync_data().map_err(|source| StorageError::Write {
                    path: file.abs_path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Checks that every file we opened is still at its path (same device and inode) and still
    /// as long as the torrent says. Stats only, no data is read: cheap enough to run every few
    /// seconds. A deleted file stays readable through our handle, so reads alone never notice.
    ///
    /// # Errors
    /// `Changed` naming the first file that was deleted, replaced or truncated; `Read` when our
    /// own handle cannot be examined.
    pub fn check_files(&self) -> Result<(), StorageError> {
        use std::os::unix::fs::MetadataExt;
        for file in &self.files {
            let Some(handle) = &file.handle else {
                continue;
            };
            let changed = |what: String| StorageError::Changed {
                path: file.abs_path.clone(),
                what,
            };
            let ours = handle.metadata().map_err(|source| StorageError::Read {
                path: file.abs_path.clone(),
                source,
            })?;
            let on_disk = match std::fs::metadata(&file.abs_path) {
                Ok(m) => m,
                Err(e) => return Err(changed(format!("deleted ({e})"))),
            };
            if (on_disk.dev(), on_disk.ino()) != (ours.dev(), ours.ino()) {
                return Err(changed("replaced by another file".into()));
            }
            if ours.len() < file.entry.len {
                return Err(changed(format!(
                    "truncated to {} bytes, the torrent has {}",
                    ours.len(),
                    file.entry.len
                )));
            }
        }
        Ok(())
    }

    /// Hashes every piece that could hold data, on `threads` threads, and returns the pieces
    /// whose hash matches. Pieces touching a file we just created are skipped: they cannot be
    /// there yet. `progress` counts the pieces checked (a display reads it as they go).
    pub fn verify(
        &self,
        hashes: &[[u8; 20]],
        threads: usize,
        progress: &std::sync::atomic::AtomicU32,
    ) -> Bitfield {
        let num_pieces = self.geometry.num_pieces;
        let next = std::sync::atomic::AtomicU32::new(0);
        let good = parking_lot::Mutex::new(Bitfield::new(num_pieces));
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| {
                    let mut buf = Vec::new();
                    loop {
                        let piece = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if piece >= num_pieces {
                            break;
                        }
                        if self.piece_matches(piece, &hashes[piece as usize], &mut buf) {
                            good.lock().set(piece);
                        }
                        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        good.into_inner()
    }

    fn piece_matches(&self, piece: u32, expected: &[u8; 20], buf: &mut Vec<u8>) -> bool {
        let start = self.geometry.piece_offset(piece);
        let len = self.geometry.piece_len(piece);
        if self
            .segments(start, u64::from(len))
            .iter()
            .any(|seg| !self.files[seg.file].had_data)
        {
            return false;
        }
        buf.resize(len as usize, 0);
        self.read(piece, 0, buf).is_ok() && Sha1::digest(&buf[..]).as_slice() == expected
    }

    /// The files (relative paths) that hold any byte of the given pieces.
    pub fn files_of_pieces(&self, pieces: impl Iterator<Item = u32>) -> Vec<PathBuf> {
        let mut touched = vec![false; self.files.len()];
        for piece in pieces {
            let start = self.geometry.piece_offset(piece);
            let len = self.geometry.piece_len(piece);
            for seg in self.segments(start, u64::from(len)) {
                touched[seg.file] = true;
            }
        }
        self.files
            .iter()
            .zip(touched)
            .filter(|(_, t)| *t)
            .map(|(f, _)| f.entry.path.clone())
            .collect()
    }
}

/// Pure mapping of a byte range onto files laid end to end (sorted by offset).
fn segments<'a>(files: impl Iterator<Item = &'a FileEntry>, offset: u64, len: u64) -> Vec<Segment> {
    let end = offset + len;
    let mut out = Vec::new();
    for (index, file) in files.enumerate() {
        let file_end = file.offset + file.len;
        if file.len == 0 || file_end <= offset {
            continue;
        }
        if file.offset >= end {
            break;
        }
        let from = offset.max(file.offset);
        let to = end.min(file_end);
        out.push(Segment {
            file: index,
            file_offset: from - file.offset,
            len: to - from,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(lens: &[u64]) -> Vec<FileEntry> {
        let mut offset = 0;
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                let e = FileEntry {
                    path: PathBuf::from(format!("f{i}")),
                    len,
                    offset,
                };
                offset += len;
                e
            })
            .collect()
    }

    fn seg(file: usize, file_offset: u64, len: u64) -> Segment {
        Segment {
            file,
            file_offset,
            len,
        }
    }

    #[test]
    fn range_spanning_three_files_skips_the_empty_one() {
        let files = entries(&[10, 0, 5, 20]);
        assert_eq!(
            segments(files.iter(), 8, 10),
            vec![seg(0, 8, 2), seg(2, 0, 5), seg(3, 0, 3)]
        );
    }

    #[test]
    fn range_inside_one_file() {
        let files = entries(&[10, 30]);
        assert_eq!(segments(files.iter(), 15, 10), vec![seg(1, 5, 10)]);
        assert_eq!(segments(files.iter(), 0, 10), vec![seg(0, 0, 10)]);
    }

    #[test]
    fn writes_and_reads_pieces_across_file_boundaries() {
        let tmp = crate::test_dir::TempDir::new("storage");
        let dir = tmp.0.clone();
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let mut files = entries(&[7, 0, 20_000, 29_993]);
        for f in &mut files {
            f.path = PathBuf::from("t").join(&f.path);
        }
        let piece_len = 16384u32;
        let geometry = Geometry::new(50_000, piece_len);
        let hashes = data
            .chunks(piece_len as usize)
            .map(|c| <[u8; 20]>::from(Sha1::digest(c)))
            .collect::<Vec<_>>();
        let meta = Metainfo {
            info_hash: crate::metainfo::InfoHash([0; 20]),
            name: "t".into(),
            geometry,
            files,
            piece_hashes: hashes.clone(),
            announce: None,
            announce_list: None,
            private: false,
            about: Default::default(),
            info_bytes: std::sync::Arc::from(&b""[..]),
        };
        let storage = Storage::open(&dir, &meta, OpenMode::Download).unwrap();
        assert_eq!(
            storage.verify(&hashes, 2, &Default::default()).count_ones(),
            0
        );
        for (i, chunk) in data.chunks(piece_len as usize).enumerate() {
            storage
                .write_piece(u32::try_from(i).unwrap(), chunk)
                .unwrap();
        }
        assert_eq!(std::fs::metadata(dir.join("t/f1")).unwrap().len(), 0);
        let mut block = vec![0u8; 100];
        storage.read(1, 16000, &mut block).unwrap();
        assert_eq!(&block[..], &data[16384 + 16000..16384 + 16100]);
        drop(storage);
        let reopened = Storage::open(&dir, &meta, OpenMode::Seed).unwrap();
        assert!(reopened.verify(&hashes, 2, &Default::default()).is_full());
    }

    #[test]
    fn check_files_notices_a_deleted_a_replaced_and_a_truncated_file() {
        let tmp = crate::test_dir::TempDir::new("storage-check");
        let dir = tmp.0.clone();
        let files = entries(&[20_000, 0, 30_000]);
        let meta = Metainfo {
            info_hash: crate::metainfo::InfoHash([0; 20]),
            name: "c".into(),
            geometry: Geometry::new(50_000, 16384),
            files,
            piece_hashes: vec![[0; 20]; 4],
            announce: None,
            announce_list: None,
            private: false,
            about: Default::default(),
            info_bytes: std::sync::Arc::from(&b""[..]),
        };
        let reason = |storage: &Storage| match storage.check_files() {
            Err(StorageError::Changed { path, what }) => {
                format!("{}: {what}", path.file_name().unwrap().to_string_lossy())
            }
            other => format!("{other:?}"),
        };
        let storage = Storage::open(&dir, &meta, OpenMode::Download).unwrap();
        storage.check_files().unwrap();

        std::fs::remove_file(dir.join("f2")).unwrap();
        assert!(
            reason(&storage).starts_with("f2: deleted"),
            "{}",
            reason(&storage)
        );
        drop(storage);

        let storage = Storage::open(&dir, &meta, OpenMode::Download).unwrap();
        storage.check_files().unwrap();
        std::fs::rename(dir.join("f2"), dir.join("old")).unwrap();
        std::fs::write(dir.join("f2"), vec![0u8; 30_000]).unwrap();
        assert_eq!(reason(&storage), "f2: replaced by another file");
        drop(storage);

        let storage = Storage::open(&dir, &meta, OpenMode::Download).unwrap();
        storage.check_files().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("f0"))
            .unwrap()
            .set_len(100)
            .unwrap();
        assert_eq!(
            reason(&storage),
            "f0: truncated to 100 bytes, the torrent has 20000"
        );
        let mut block = vec![0u8; 1000];
        assert!(
            matches!(
                storage.read(0, 5000, &mut block),
                Err(StorageError::Read { .. })
            ),
            "a read past the truncated end must fail, not return short data"
        );
    }
}
