//! Moving a torrent's files to another download directory (the RPC's `torrent-set-location`
//! with `move`): each file is renamed when both directories are on one file system, else
//! copied beside its target as `<name>.part`, synced, renamed into place, given the source's
//! modification time (so the torrent's resume data still matches) and only then removed at the
//! source. A file is therefore whole at one place or the other at every moment; a failure
//! leaves the files already moved at the target and the rest at the source, and says which.
//! Runs on a `move NAME` thread; touches only the files it is given.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Moves `files` (relative paths, the torrent's) from under `from` to under `to`, creating
/// directories as needed, then removes the directories under `from` that the move emptied.
/// Files missing at the source are skipped (nothing of them was downloaded yet).
///
/// # Errors
/// The first file that could not be moved, and why; the files before it are at `to`.
pub fn move_files(files: &[PathBuf], from: &Path, to: &Path) -> Result<(), String> {
    for rel in files {
        let (src, dst) = (from.join(rel), to.join(rel));
        if !src.exists() {
            continue;
        }
        move_one(&src, &dst).map_err(|e| format!("{} -> {}: {e}", src.display(), dst.display()))?;
    }
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .flat_map(|rel| {
            rel.ancestors()
                .skip(1)
                .map(|d| from.join(d))
                .collect::<Vec<_>>()
        })
        .filter(|d| d != from && d.starts_with(from))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for dir in dirs {
        // Only empty ones go; a directory with other files stays.
        let _ = fs::remove_dir(&dir);
    }
    Ok(())
}

fn move_one(src: &Path, dst: &Path) -> io::Result<()> {
    if let Some(dir) = dst.parent() {
        fs::create_dir_all(dir)?;
    }
    match fs::rename(src, dst) {
        Ok(()) => return Ok(()),
        // Another file system: copy instead. Anything else is an error to report.
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {}
        Err(e) => return Err(e),
    }
    let mut part = dst.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let copied = (|| {
        fs::copy(src, &part)?;
        let file = File::options().write(true).open(&part)?;
        file.set_modified(fs::metadata(src)?.modified()?)?;
        file.sync_all()?;
        fs::rename(&part, dst)
    })();
    if copied.is_err() {
        let _ = fs::remove_file(&part);
    }
    copied?;
    fs::remove_file(src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TempDir;

    #[test]
    fn a_torrents_files_move_with_their_times_and_leave_others_and_empty_dirs_behind() {
        let dir = TempDir::new("relocate");
        let (from, to) = (dir.0.join("old"), dir.0.join("new"));
        let files = [
            PathBuf::from("t/a.bin"),
            PathBuf::from("t/sub/b.bin"),
            PathBuf::from("t/never.bin"),
        ];
        fs::create_dir_all(from.join("t/sub")).unwrap();
        fs::write(from.join("t/a.bin"), b"aaaa").unwrap();
        fs::write(from.join("t/sub/b.bin"), b"bb").unwrap();
        let mtime = fs::metadata(from.join("t/a.bin"))
            .unwrap()
            .modified()
            .unwrap();
        fs::write(from.join("t/mine.txt"), b"not the torrent's").unwrap();

        move_files(&files, &from, &to).unwrap();
        assert_eq!(fs::read(to.join("t/a.bin")).unwrap(), b"aaaa");
        assert_eq!(fs::read(to.join("t/sub/b.bin")).unwrap(), b"bb");
        assert_eq!(
            fs::metadata(to.join("t/a.bin"))
                .unwrap()
                .modified()
                .unwrap(),
            mtime
        );
        assert!(!to.join("t/never.bin").exists());
        assert!(!from.join("t/a.bin").exists() && !from.join("t/sub").exists());
        assert!(
            from.join("t/mine.txt").exists(),
            "a file it does not name moved"
        );
    }

    #[test]
    fn a_file_that_cannot_be_moved_is_named_and_the_earlier_ones_are_moved() {
        let dir = TempDir::new("relocate-fail");
        let (from, to) = (dir.0.join("old"), dir.0.join("new"));
        fs::create_dir_all(from.join("t")).unwrap();
        fs::write(from.join("t/a"), b"a").unwrap();
        fs::write(from.join("t/b"), b"b").unwrap();
        // Something that is not a directory where b's directory must go.
        fs::create_dir_all(&to).unwrap();
        fs::create_dir_all(to.join("t")).unwrap();
        fs::create_dir_all(to.join("t/b")).unwrap();
        fs::write(to.join("t/b/x"), b"in the way").unwrap();
        let err =
            move_files(&[PathBuf::from("t/a"), PathBuf::from("t/b")], &from, &to).unwrap_err();
        assert!(err.contains("t/b"), "{err}");
        assert!(to.join("t/a").exists() && from.join("t/b").exists());
    }
}
