//! Storage: maps the torrent's concatenated byte range onto its files and does positioned reads
//! and writes (`pread`, `pwrite`, `pwritev` for pieces held as blocks), so any thread may use
//! one `Storage` at once. Owns the open file handles and the torrent's part file. Knows nothing
//! of peers or of which pieces are verified: callers write only verified pieces and read only
//! pieces they have announced.
//!
//! A file nobody wants (file selection) is not created. The bytes a wanted piece has in it go
//! to the torrent's part file instead (in the state directory, at their offset in the torrent,
//! so it is sparse and holds only those bytes), as libtorrent does. When such a file becomes
//! wanted it is created and its bytes are copied out of the part file; a file that exists stays
//! where it is whatever its selection. Each file's place sits behind a read-write lock taken
//! for every read and write, so a change of place never races a write.
//!
//! BEP 47: a pad file is never created, read or written (its bytes read as zeros, writes to it
//! are dropped); a file with the `x` attribute is made executable when created; a symlink entry
//! becomes a relative symbolic link to its target (inside the torrent's directory) once the
//! files are created.

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
    place: parking_lot::RwLock<Place>,
    /// Held for each write into the file: one writer at a time, so disk threads writing
    /// pieces of one file wait here, asleep, instead of spinning in the kernel on the
    /// file's inode lock (their hashing still runs in parallel). Holds the file's `O_DIRECT`
    /// handle.
    writer: parking_lot::Mutex<Direct>,
    /// True when the file (or, for one in the part file, the part file) held data before we
    /// opened it, so its pieces are worth hashing.
    had_data: bool,
}

/// Where one file's bytes are.
enum Place {
    /// A zero-length file: no bytes to read or write.
    Empty,
    /// In the file itself.
    File(File),
    /// Not created (nobody wants it): in the part file, at the torrent offset.
    Part,
    /// A BEP 47 pad file: zeros, never on disk.
    Pad,
}

/// A file's second handle, opened with `O_DIRECT` at its first write, for the page-aligned
/// bytes of each write: they go from the piece's buffer to the device without being copied
/// into the page cache (which, on the machines measured, cost more CPU than hashing).
enum Direct {
    Untried,
    Open(File),
    /// The file system refused `O_DIRECT` (or an aligned write with it): buffered writes only.
    Unavailable,
}

/// What `O_DIRECT` writes must be aligned to, in memory, in the file and in length: the page
/// size, a multiple of every block device's logical block size.
const DIRECT_ALIGN: usize = 4096;

impl Direct {
    /// The `O_DIRECT` handle of the file open as `handle`, opened now if never tried. Opened
    /// through `/proc/self/fd`, so it is the same file even if its path changed meanwhile.
    fn handle(&mut self, handle: &File) -> Option<&File> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        if let Direct::Untried = self {
            let opened = OpenOptions::new()
                .write(true)
                .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
                .open(format!("/proc/self/fd/{}", handle.as_raw_fd()));
            *self = opened.map_or(Direct::Unavailable, Direct::Open);
        }
        match self {
            Direct::Open(file) => Some(file),
            _ => None,
        }
    }
}

/// Most buffers one `pwritev` takes (Linux's `IOV_MAX` is 1024).
const MAX_IOV: usize = 512;

/// Writes `parts`, one after the other, at `offset` of the file open as `handle`: the runs that
/// are page-aligned in memory and in the file (whole pages of 4 KiB-aligned blocks) with
/// `O_DIRECT` when it can (see [`Direct`]), the rest (an unaligned head or tail, a buffer whose
/// start cannot line up with the file offset, or everything when the file system refuses
/// `O_DIRECT`) through the page cache, with write-back started at once ([`start_write_back`]).
/// Contiguous runs of either kind go in one `pwritev`. The caller holds the file's writer
/// lock, `direct`.
fn write_file(
    handle: &File,
    direct: &mut Direct,
    parts: &[&[u8]],
    offset: u64,
) -> std::io::Result<()> {
    let mut run: Vec<&[u8]> = Vec::new();
    let mut run_direct = false;
    let mut run_at = offset;
    let mut at = offset;
    for part in parts {
        let mut rest: &[u8] = part;
        while !rest.is_empty() {
            let misalign = usize::try_from(at % DIRECT_ALIGN as u64).expect("below 4096");
            let (len, is_direct) = if misalign != 0 {
                // Up to the file's next page boundary, through the page cache.
                ((DIRECT_ALIGN - misalign).min(rest.len()), false)
            } else if (rest.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
                && rest.len() >= DIRECT_ALIGN
                && !matches!(direct, Direct::Unavailable)
            {
                (rest.len() / DIRECT_ALIGN * DIRECT_ALIGN, true)
            } else {
                (rest.len(), false)
            };
            if !run.is_empty() && (run_direct != is_direct || run.len() == MAX_IOV) {
                write_run(handle, direct, &run, run_at, run_direct)?;
                run.clear();
            }
            if run.is_empty() {
                run_direct = is_direct;
                run_at = at;
            }
            let (now, later) = rest.split_at(len);
            run.push(now);
            at += len as u64;
            rest = later;
        }
    }
    if run.is_empty() {
        return Ok(());
    }
    write_run(handle, direct, &run, run_at, run_direct)
}

/// Writes one run of [`write_file`]: with the `O_DIRECT` handle when `use_direct` and it can,
/// through the page cache otherwise.
fn write_run(
    handle: &File,
    direct: &mut Direct,
    run: &[&[u8]],
    at: u64,
    use_direct: bool,
) -> std::io::Result<()> {
    if use_direct && let Some(file) = direct.handle(handle) {
        match write_all_vectored_at(file, run, at) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32) => {
                *direct = Direct::Unavailable;
            }
            Err(e) => return Err(e),
        }
    }
    write_all_vectored_at(handle, run, at)?;
    start_write_back(handle, at, run.iter().map(|p| p.len() as u64).sum());
    Ok(())
}

/// `pwritev` until every byte of `parts` is written at `offset`.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], offset: u64) -> std::io::Result<()> {
    use std::io::IoSlice;
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut left: &mut [IoSlice<'_>] = &mut slices;
    let mut at = offset;
    while !left.is_empty() {
        let off = i64::try_from(at)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        match nix::sys::uio::pwritev(file, left, off) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
            Ok(n) => {
                at += n as u64;
                IoSlice::advance_slices(&mut left, n);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The part file: bytes of wanted pieces that lie in files not created.
struct PartFile {
    path: PathBuf,
    handle: File,
    /// One writer at a time, as [`StoredFile::writer`].
    writer: parking_lot::Mutex<Direct>,
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
    /// Open when some file lives in it.
    part: Option<PartFile>,
    /// Where the part file is (when a selection was given), open or not: resume data stamps
    /// it whenever it exists.
    part_path: Option<PathBuf>,
    /// Set after each write of a piece, cleared as [`Storage::sync_all`] starts: a torrent that
    /// wrote nothing since its last sync (a seed) syncs nothing, so saving the resume data of
    /// thousands of seeding torrents costs no device flushes.
    unsynced: std::sync::atomic::AtomicBool,
}

impl Storage {
    /// Opens (and in `Download` mode creates) every file of `meta` under `root`.
    ///
    /// # Errors
    /// `Open` naming the first file that could not be opened or created.
    pub fn open(root: &Path, meta: &Metainfo, mode: OpenMode) -> Result<Self, StorageError> {
        Self::open_inner(root, meta, mode, None)
    }

    /// Opens for download with a file selection: `wanted[i]` says whether file `i` is wanted.
    /// A file nobody wants is not created unless it exists; its bytes go to the part file at
    /// `part` (opened, and created, only when some file is kept out).
    ///
    /// # Errors
    /// `Open` naming the first file that could not be opened or created.
    pub fn open_selected(
        root: &Path,
        meta: &Metainfo,
        wanted: &[bool],
        part: &Path,
    ) -> Result<Self, StorageError> {
        Self::open_inner(root, meta, OpenMode::Download, Some((wanted, part)))
    }

    fn open_inner(
        root: &Path,
        meta: &Metainfo,
        mode: OpenMode,
        selection: Option<(&[bool], &Path)>,
    ) -> Result<Self, StorageError> {
        let unwanted = |index: usize| {
            selection.is_some_and(|(wanted, _)| !wanted.get(index).copied().unwrap_or(true))
        };
        let kept_out = |index: usize, abs_path: &Path| {
            unwanted(index)
                && meta.files[index].len > 0
                && meta.files[index].on_disk()
                && std::fs::symlink_metadata(abs_path).is_err()
        };
        let mut part = None;
        if let Some((_, part_path)) = selection
            && meta
                .files
                .iter()
                .enumerate()
                .any(|(i, e)| kept_out(i, &root.join(&e.path)))
        {
            part = Some(PartFile::open(part_path)?);
        }
        let part_had_data = part
            .as_ref()
            .is_some_and(|p| p.handle.metadata().is_ok_and(|m| m.len() > 0));
        let mut files = Vec::with_capacity(meta.files.len());
        for (index, entry) in meta.files.iter().enumerate() {
            let abs_path = root.join(&entry.path);
            let (place, had_data) = if entry.attr.pad {
                (Place::Pad, true)
            } else if entry.attr.symlink.is_some() {
                (Place::Empty, false)
            } else if entry.len == 0 && mode == OpenMode::Download {
                if !unwanted(index) {
                    create_file(&abs_path, 0)?;
                }
                (Place::Empty, false)
            } else if kept_out(index, &abs_path) {
                (Place::Part, part_had_data)
            } else {
                match mode {
                    OpenMode::Download => {
                        let (file, existing) = create_file(&abs_path, entry.len)?;
                        if entry.attr.executable {
                            make_executable(&file, &abs_path)?;
                        }
                        (Place::File(file), existing > 0)
                    }
                    OpenMode::Seed => {
                        let open_err = |source| StorageError::Open {
                            path: abs_path.clone(),
                            source,
                        };
                        let file = File::open(&abs_path).map_err(open_err)?;
                        let existing = file.metadata().map_err(open_err)?.len();
                        if existing < entry.len {
                            return Err(open_err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!("{existing} bytes, expected {}", entry.len),
                            )));
                        }
                        let place = if entry.len == 0 {
                            Place::Empty
                        } else {
                            Place::File(file)
                        };
                        (place, true)
                    }
                }
            };
            files.push(StoredFile {
                entry: entry.clone(),
                abs_path,
                place: parking_lot::RwLock::new(place),
                writer: parking_lot::Mutex::new(Direct::Untried),
                had_data,
            });
        }
        if mode == OpenMode::Download {
            for (index, entry) in meta.files.iter().enumerate() {
                if let Some(target) = &entry.attr.symlink
                    && !unwanted(index)
                {
                    make_symlink(root, &entry.path, target)?;
                }
            }
        }
        Ok(Self {
            files,
            geometry: meta.geometry,
            part,
            part_path: selection.map(|(_, path)| path.to_owned()),
            unsynced: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Where this torrent's part file is (opened with a selection), whether or not it exists.
    pub fn part_path(&self) -> Option<&Path> {
        self.part_path.as_deref()
    }

    /// Whether [`Storage::want_files`] has anything to do for `wanted`: a wanted file still
    /// lives in the part file. A look at each file's place, no I/O.
    pub fn wants_files_made(&self, wanted: &[bool]) -> bool {
        self.files.iter().enumerate().any(|(index, file)| {
            wanted.get(index).copied().unwrap_or(true) && matches!(*file.place.read(), Place::Part)
        })
    }

    /// Files wanted now (one flag per file): each one kept in the part file so far is created
    /// and gets its bytes from the part file. Files already created stay as they are.
    ///
    /// # Errors
    /// `Open` when a file cannot be created, `Read`/`Write` when the copy fails; the files
    /// before it have moved, the rest have not.
    pub fn want_files(&self, wanted: &[bool]) -> Result<(), StorageError> {
        for (index, file) in self.files.iter().enumerate() {
            if !wanted.get(index).copied().unwrap_or(true) {
                continue;
            }
            let mut place = file.place.write();
            if !matches!(*place, Place::Part) {
                continue;
            }
            let part = self
                .part
                .as_ref()
                .expect("a file in the part file means one is open");
            let (created, _) = create_file(&file.abs_path, file.entry.len)?;
            // Only the file's first and last pieces can hold bytes in the part file: a piece
            // lying wholly in an unwanted file is never fetched.
            let mut buf = Vec::new();
            for (from, len) in self.edge_ranges(&file.entry) {
                buf.resize(usize::try_from(len).expect("a piece fits in memory"), 0);
                let read = read_up_to(&part.handle, &mut buf, file.entry.offset + from).map_err(
                    |source| StorageError::Read {
                        path: part.path.clone(),
                        source,
                    },
                )?;
                created
                    .write_all_at(&buf[..read], from)
                    .map_err(|source| StorageError::Write {
                        path: file.abs_path.clone(),
                        source,
                    })?;
            }
            created.sync_data().map_err(|source| StorageError::Write {
                path: file.abs_path.clone(),
                source,
            })?;
            *place = Place::File(created);
        }
        Ok(())
    }

    /// The ranges (offset in the file, length) of a file's first and last pieces that lie in
    /// the file, merged when they overlap.
    fn edge_ranges(&self, entry: &FileEntry) -> Vec<(u64, u64)> {
        let piece_len = u64::from(self.geometry.piece_len);
        let first_end = ((entry.offset / piece_len + 1) * piece_len).min(entry.offset + entry.len);
        let last_start = ((entry.offset + entry.len - 1) / piece_len * piece_len).max(entry.offset);
        if last_start <= first_end {
            vec![(0, entry.len)]
        } else {
            vec![
                (0, first_end - entry.offset),
                (
                    last_start - entry.offset,
                    entry.offset + entry.len - last_start,
                ),
            ]
        }
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
            let out = &mut buf[done..done + len];
            let result = match &*file.place.read() {
                Place::File(handle) => handle.read_exact_at(out, seg.file_offset),
                Place::Part => self
                    .part()
                    .read_exact_at(out, file.entry.offset + seg.file_offset),
                Place::Empty => Ok(()),
                Place::Pad => {
                    out.fill(0);
                    Ok(())
                }
            };
            result.map_err(|source| StorageError::Read {
                path: self.path_of(file),
                source,
            })?;
            done += len;
        }
        Ok(())
    }

    fn part(&self) -> &File {
        &self
            .part
            .as_ref()
            .expect("a file in the part file means one is open")
            .handle
    }

    /// Where a file's bytes are now: its own path, or the part file's.
    fn path_of(&self, file: &StoredFile) -> PathBuf {
        match (&*file.place.read(), &self.part) {
            (Place::Part, Some(part)) => part.path.clone(),
            _ => file.abs_path.clone(),
        }
    }

    /// Writes a whole piece. Callers pass only data whose hash has been verified.
    ///
    /// Each file's writes are serialized (`StoredFile::writer`). Bytes aligned to 4 KiB in
    /// `data` and in the file go straight to the device (`O_DIRECT`, see `Direct`; a piece
    /// buffer is aligned, so that is all of a piece but an unaligned file boundary or the last
    /// piece's tail); the rest is written through the page cache with write-back started at once
    /// (`posix_fadvise(DONTNEED)` on the range: on dirty pages the kernel only starts writing
    /// them out; nothing is dropped, nothing waited for). Either way no dirty pages pile up for
    /// the final sync.
    ///
    /// # Errors
    /// `Write` naming the file.
    pub fn write_piece(&self, piece: u32, data: &[u8]) -> Result<(), StorageError> {
        self.write_piece_parts(piece, &[data])
    }

    /// [`Storage::write_piece`] of a piece held in several buffers (its blocks), in order:
    /// one `pwritev` per file run, each block's aligned pages with `O_DIRECT`.
    ///
    /// # Errors
    /// `Write` naming the file.
    pub fn write_piece_parts(&self, piece: u32, parts: &[&[u8]]) -> Result<(), StorageError> {
        let start = self.geometry.piece_offset(piece);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut done = 0usize;
        for seg in self.segments(start, total as u64) {
            let file = &self.files[seg.file];
            let len = usize::try_from(seg.len).expect("segment within buffer");
            let bytes = sub_parts(parts, done, len);
            let result = match &*file.place.read() {
                Place::File(handle) => {
                    write_file(handle, &mut file.writer.lock(), &bytes, seg.file_offset)
                }
                Place::Part => {
                    let part = self
                        .part
                        .as_ref()
                        .expect("a file in the part file means one is open");
                    let at = file.entry.offset + seg.file_offset;
                    write_file(&part.handle, &mut part.writer.lock(), &bytes, at)
                }
                // Zeros by definition: nothing to keep.
                Place::Empty | Place::Pad => Ok(()),
            };
            result.map_err(|source| StorageError::Write {
                path: self.path_of(file),
                source,
            })?;
            done += len;
        }
        // After the write: a sync that cleared the flag before this point finds the bytes
        // written already, one after it finds the flag set.
        self.unsynced
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Flushes every file (and the part file) to disk, if a piece was written since the last
    /// sync (files moved out of the part file are synced by [`Storage::want_files`] itself).
    ///
    /// # Errors
    /// `Write` naming the file that failed to sync (it stays to be synced next time).
    pub fn sync_all(&self) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        if !self.unsynced.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let result = self.sync_files();
        if result.is_err() {
            self.unsynced.store(true, Ordering::SeqCst);
        }
        result
    }

    fn sync_files(&self) -> Result<(), StorageError> {
        for file in &self.files {
            if let Place::File(handle) = &*file.place.read() {
                handle.sync_data().map_err(|source| StorageError::Write {
                    path: file.abs_path.clone(),
                    source,
                })?;
            }
        }
        if let Some(part) = &self.part {
            part.handle
                .sync_data()
                .map_err(|source| StorageError::Write {
                    path: part.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Checks that every file we opened is still at its path (same device and inode) and still
    /// as long as the torrent says ([`Storage::check_file`] for each).
    ///
    /// # Errors
    /// As [`Storage::check_file`], for the first file that fails.
    pub fn check_files(&self) -> Result<(), StorageError> {
        (0..self.files.len()).try_for_each(|index| self.check_file(index))
    }

    /// How many files [`Storage::check_file`] takes (the torrent's files, pad files included).
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Checks that file `index`, if we opened it, is still at its path (same device and inode)
    /// and still as long as the torrent says. Stats only, no data is read: two system calls. A
    /// deleted file stays readable through our handle, so reads alone never notice. An index
    /// past the last file is `Ok`.
    ///
    /// # Errors
    /// `Changed` when the file was deleted, replaced or truncated; `Read` when our own handle
    /// cannot be examined.
    pub fn check_file(&self, index: usize) -> Result<(), StorageError> {
        use std::os::unix::fs::MetadataExt;
        let Some(file) = self.files.get(index) else {
            return Ok(());
        };
        let place = file.place.read();
        let Place::File(handle) = &*place else {
            return Ok(());
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
            .filter(|(f, t)| *t && f.entry.on_disk())
            .map(|(f, _)| f.entry.path.clone())
            .collect()
    }
}

impl PartFile {
    fn open(path: &Path) -> Result<Self, StorageError> {
        let (handle, _) = create_file(path, 0)?;
        Ok(Self {
            path: path.to_owned(),
            handle,
            writer: parking_lot::Mutex::new(Direct::Untried),
        })
    }
}

/// The `len` bytes that start `from` bytes into `parts` (buffers one after the other), as
/// slices of them.
fn sub_parts<'a>(parts: &[&'a [u8]], from: usize, len: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let (mut skip, mut want) = (from, len);
    for part in parts {
        if want == 0 {
            break;
        }
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        let take = (part.len() - skip).min(want);
        out.push(&part[skip..skip + take]);
        want -= take;
        skip = 0;
    }
    out
}

/// Starts write-back of `len` bytes at `offset` of `file`, without waiting: Linux's
/// `POSIX_FADV_DONTNEED` starts writing dirty pages of the range and drops only clean ones (none,
/// just after a write). Advice that fails changes nothing but timing, so its error is ignored.
fn start_write_back(file: &File, offset: u64, len: u64) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let _ = posix_fadvise(file, offset, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
}

/// Creates (with its directories) or opens a file for reading and writing, at least `len`
/// bytes long (sparse); returns it and the length it had.
fn create_file(path: &Path, len: u64) -> Result<(File, u64), StorageError> {
    let open_err = |source| StorageError::Open {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(open_err)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(open_err)?;
    let existing = file.metadata().map_err(open_err)?.len();
    if existing < len {
        file.set_len(len).map_err(open_err)?;
    }
    Ok((file, existing))
}

/// Adds the executable bits where the file has read bits (BEP 47 `x`).
fn make_executable(file: &File, path: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::PermissionsExt;
    let open_err = |source| StorageError::Open {
        path: path.to_owned(),
        source,
    };
    let mut perms = file.metadata().map_err(open_err)?.permissions();
    let mode = perms.mode();
    perms.set_mode(mode | ((mode & 0o444) >> 2));
    file.set_permissions(perms).map_err(open_err)
}

/// Makes `link` (relative to `root`) a symbolic link to `target` (relative to `root` too),
/// written relative to the link's directory so the torrent's directory can move. A symlink
/// already there is replaced; anything else there is an error.
fn make_symlink(root: &Path, link: &Path, target: &Path) -> Result<(), StorageError> {
    let abs = root.join(link);
    let open_err = |source| StorageError::Open {
        path: abs.clone(),
        source,
    };
    let from: Vec<_> = link
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    let to: Vec<_> = target.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in common..from.len() {
        relative.push("..");
    }
    relative.extend(&to[common..]);
    if let Some(dir) = abs.parent() {
        std::fs::create_dir_all(dir).map_err(open_err)?;
    }
    match std::fs::symlink_metadata(&abs) {
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(&abs).ok().as_deref() == Some(relative.as_path()) {
                return Ok(());
            }
            std::fs::remove_file(&abs).map_err(open_err)?;
        }
        Ok(_) => {
            return Err(open_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the torrent has a symlink here, but something else is in its place",
            )));
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&relative, &abs).map_err(open_err)
}

/// Reads what there is of `buf.len()` bytes at `offset` (a sparse or short file ends early).
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
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

    #[test]
    fn writes_put_every_byte_in_place_whether_aligned_direct_or_through_the_page_cache() {
        let tmp = crate::test_dir::TempDir::new("storage-direct");
        let path = tmp.0.join("f");
        let (file, _) = create_file(&path, 64 * 1024).unwrap();
        let mut direct = Direct::Untried;
        let source: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        let aligned = crate::torrent::piece_buffer::BlockData::copy_of(&source);
        // Aligned start and length; an unaligned head and tail around an aligned middle; a
        // buffer whose start cannot line up with the file offset; a write shorter than a page.
        let writes: [(usize, usize); 4] = [
            (0, 8192),
            (8292, 3 * 4096 + 50),
            (30_001, 9000),
            (50_000, 10),
        ];
        for (at, len) in writes {
            write_file(&file, &mut direct, &[&aligned[at..at + len]], at as u64).unwrap();
        }
        let mut back = vec![0u8; 64 * 1024];
        file.read_exact_at(&mut back, 0).unwrap();
        for (at, len) in writes {
            assert_eq!(back[at..at + len], source[at..at + len], "write at {at}");
        }
        assert!(
            back[8192..8292].iter().all(|&b| b == 0),
            "bytes between writes untouched"
        );
    }

    #[test]
    fn a_vectored_write_of_aligned_blocks_lands_in_order_at_any_file_offset() {
        use crate::torrent::piece_buffer::BlockData;
        let tmp = crate::test_dir::TempDir::new("storage-vectored");
        let (file, _) = create_file(&tmp.0.join("f"), 256 * 1024).unwrap();
        let mut direct = Direct::Untried;
        let source: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let blocks: Vec<BlockData> = source.chunks(16384).map(BlockData::copy_of).collect();
        let parts: Vec<&[u8]> = blocks.iter().map(|b| &**b).collect();
        // Page-aligned in the file (direct runs), then 1000 bytes off (every page buffered).
        for at in [0u64, 120_000] {
            write_file(&file, &mut direct, &parts, at).unwrap();
            let mut back = vec![0u8; source.len()];
            file.read_exact_at(&mut back, at).unwrap();
            assert!(back == source, "write at {at}");
        }
        let cut = sub_parts(&parts, 16_000, 20_000);
        assert_eq!(
            cut.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [384, 16384, 3232]
        );
        assert_eq!(cut.concat(), source[16_000..36_000]);
    }

    /// A torrent "t" of `files` for the tests of this module.
    fn test_meta(
        geometry: Geometry,
        files: Vec<FileEntry>,
        piece_hashes: Vec<[u8; 20]>,
    ) -> Metainfo {
        Metainfo {
            info_hash: crate::metainfo::InfoHash([0; 20]),
            name: "t".into(),
            geometry,
            files,
            piece_hashes,
            announce: None,
            announce_list: None,
            private: false,
            about: Default::default(),
            info_bytes: std::sync::Arc::from(&b""[..]),
        }
    }

    fn entries(lens: &[u64]) -> Vec<FileEntry> {
        let mut offset = 0;
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                let e = FileEntry {
                    path: PathBuf::from(format!("f{i}")),
                    len,
                    offset,
                    attr: Default::default(),
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
        let meta = test_meta(geometry, files, hashes.clone());
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
    fn pad_files_are_zeros_never_on_disk_executables_and_symlinks_are_made() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = crate::test_dir::TempDir::new("storage-bep47");
        let dir = tmp.0.clone();
        // a (10 bytes, executable), a pad to the piece boundary, b (5 bytes), a link to b.
        let mut files = entries(&[10, 16374, 5, 0]);
        let names = ["t/a", "t/.pad/16374", "t/sub/b", "t/link/to-b"];
        for (f, name) in files.iter_mut().zip(names) {
            f.path = PathBuf::from(name);
        }
        files[0].attr.executable = true;
        files[1].attr.pad = true;
        files[3].attr.symlink = Some(PathBuf::from("t/sub/b"));
        let mut data = vec![0u8; 16384 + 5];
        data[..10].copy_from_slice(b"0123456789");
        data[16384..].copy_from_slice(b"hello");
        let hashes: Vec<[u8; 20]> = data.chunks(16384).map(|c| Sha1::digest(c).into()).collect();
        let meta = test_meta(
            Geometry::new(data.len() as u64, 16384),
            files,
            hashes.clone(),
        );
        let storage = Storage::open(&dir, &meta, OpenMode::Download).unwrap();
        // A peer's piece whose pad bytes are not zeros loses them: they are never stored.
        let mut dirty = data[..16384].to_vec();
        dirty[20] = 0xff;
        storage.write_piece(0, &dirty).unwrap();
        storage.write_piece(1, &data[16384..]).unwrap();
        assert!(!dir.join("t/.pad").exists());
        let mut back = vec![1u8; 16384];
        storage.read(0, 0, &mut back).unwrap();
        assert_eq!(back, data[..16384]);
        let mode = std::fs::metadata(dir.join("t/a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, (mode & 0o444) >> 2, "{mode:o}");
        assert_ne!(mode & 0o100, 0);
        assert_eq!(
            std::fs::read_link(dir.join("t/link/to-b")).unwrap(),
            PathBuf::from("../sub/b")
        );
        assert_eq!(std::fs::read(dir.join("t/link/to-b")).unwrap(), b"hello");
        drop(storage);
        // Seeding the data as another client leaves it: no pad files, no symlink needed.
        std::fs::remove_file(dir.join("t/link/to-b")).unwrap();
        let seed = Storage::open(&dir, &meta, OpenMode::Seed).unwrap();
        assert!(seed.verify(&hashes, 1, &Default::default()).is_full());
        assert_eq!(
            seed.files_of_pieces(0..2),
            vec![PathBuf::from("t/a"), PathBuf::from("t/sub/b")]
        );
    }

    #[test]
    fn an_unwanted_file_is_never_created_and_its_share_of_wanted_pieces_goes_to_the_part_file() {
        let tmp = crate::test_dir::TempDir::new("storage-select");
        let dir = tmp.0.clone();
        // Pieces of 16 KiB; f1 (40,000 bytes) shares piece 0 with f0 and piece 3 with f2.
        let data: Vec<u8> = (0..60_000u32).map(|i| (i % 249) as u8).collect();
        let mut files = entries(&[10_000, 40_000, 10_000]);
        for f in &mut files {
            f.path = PathBuf::from("t").join(&f.path);
        }
        let piece_len = 16384u32;
        let hashes = data
            .chunks(piece_len as usize)
            .map(|c| <[u8; 20]>::from(Sha1::digest(c)))
            .collect::<Vec<_>>();
        let meta = test_meta(Geometry::new(60_000, piece_len), files, hashes.clone());
        let part = dir.join("state/t.parts");
        let wanted = [true, false, true];
        let storage = Storage::open_selected(&dir, &meta, &wanted, &part).unwrap();
        assert!(!dir.join("t/f1").exists(), "not created");
        assert_eq!(storage.part_path(), Some(part.as_path()));
        // The wanted pieces: 0 (f0 + f1) and 3 (f1 + f2).
        for piece in [0u32, 3] {
            let at = piece as usize * piece_len as usize;
            let end = (at + piece_len as usize).min(data.len());
            storage.write_piece(piece, &data[at..end]).unwrap();
        }
        assert!(!dir.join("t/f1").exists(), "still not created");
        let mut back = vec![0u8; 16384];
        storage.read(0, 0, &mut back).unwrap();
        assert_eq!(&back[..], &data[..16384], "read back through the part file");
        let f0 = std::fs::read(dir.join("t/f0")).unwrap();
        assert_eq!(&f0[..], &data[..10_000]);
        assert!(
            std::fs::metadata(&part).unwrap().len() <= 60_000,
            "bytes at their torrent offsets"
        );
        drop(storage);
        // Reopened with the same selection: the wanted pieces verify from the part file.
        let storage = Storage::open_selected(&dir, &meta, &wanted, &part).unwrap();
        let good = storage.verify(&hashes, 2, &Default::default());
        assert_eq!(good.iter_ones().collect::<Vec<_>>(), vec![0, 3]);
        // Wanted now: created, with its bytes of pieces 0 and 3 moved out of the part file.
        storage.want_files(&[true, true, true]).unwrap();
        let f1 = std::fs::read(dir.join("t/f1")).unwrap();
        assert_eq!(f1.len(), 40_000);
        assert_eq!(&f1[..16384 - 10_000], &data[10_000..16384]);
        assert_eq!(&f1[49152 - 10_000..], &data[49152..50_000]);
        for piece in [1u32, 2] {
            let at = piece as usize * piece_len as usize;
            storage
                .write_piece(piece, &data[at..at + piece_len as usize])
                .unwrap();
        }
        assert!(storage.verify(&hashes, 2, &Default::default()).is_full());
        assert_eq!(
            std::fs::read(dir.join("t/f1")).unwrap(),
            &data[10_000..50_000]
        );
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
