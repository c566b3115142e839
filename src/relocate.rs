//! Moving a torrent's files to another download directory (the RPC's `torrent-set-location`
//! with `move`): each file is renamed when both directories are on one file system, else
//! copied beside its target as `<name>.part`, synced, renamed into place, given the source's
//! modification time (so the torrent's resume data still matches) and only then removed at the
//! source. A file is therefore whole at one place or the other at every moment (after a crash
//! between the rename and the removal, at both). When a file cannot be moved, the files this
//! call moved go back the same way, so a failure leaves every file where it was; only when one
//! of them cannot go back either are they split, and the error says so. Moving again what is
//! half moved finishes the move (files missing at the source are skipped, a `.part` is
//! overwritten). Runs on a `move NAME` thread; touches only the files it is given.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Why a move did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveFailed {
    /// The file that could not be moved, and why.
    pub reason: String,
    /// `None`: every file moved before it went back to the source. Otherwise the first that
    /// could not, and why: the files are split between source and target.
    pub split: Option<String>,
}

/// Moves `files` (relative paths, the torrent's) from under `from` to under `to`, creating
/// directories as needed, then removes the directories under `from` that the move emptied.
/// Files missing at the source are skipped (nothing of them was downloaded yet, or an earlier
/// move that did not finish moved them).
///
/// # Errors
/// The first file that could not be moved, and why, after the files moved before it went
/// back (see [`MoveFailed`]).
pub fn move_files(files: &[PathBuf], from: &Path, to: &Path) -> Result<(), MoveFailed> {
    let mut done: Vec<&PathBuf> = Vec::new();
    for rel in files {
        let (src, dst) = (from.join(rel), to.join(rel));
        if !src.exists() {
            continue;
        }
        if let Err(e) = move_one(&src, &dst) {
            let reason = format!("{} -> {}: {e}", src.display(), dst.display());
            let split = done.iter().rev().find_map(|rel| {
                let (back, at) = (from.join(rel), to.join(rel));
                move_one(&at, &back)
                    .err()
                    .map(|e| format!("{} -> {}: {e}", at.display(), back.display()))
            });
            if split.is_none() {
                remove_emptied_dirs(files, to);
            }
            return Err(MoveFailed { reason, split });
        }
        done.push(rel);
    }
    remove_emptied_dirs(files, from);
    Ok(())
}

/// Removes the directories of `files` under `root` that are empty (never `root` itself).
fn remove_emptied_dirs(files: &[PathBuf], root: &Path) {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .flat_map(|rel| {
            rel.ancestors()
                .skip(1)
                .map(|d| root.join(d))
                .collect::<Vec<_>>()
        })
        .filter(|d| d != root && d.starts_with(root))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for dir in dirs {
        // Only empty ones go; a directory with other files stays.
        let _ = fs::remove_dir(&dir);
    }
}

fn move_one(src: &Path, dst: &Path) -> io::Result<()> {
    if let Some(dir) = dst.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut part = dst.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    match fs::rename(src, dst) {
        Ok(()) => {
            // A copy cut short by a crash of an earlier move, if any, is ours.
            let _ = fs::remove_file(&part);
            return Ok(());
        }
        // Another file system: copy instead. Anything else is an error to report.
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {}
        Err(e) => return Err(e),
    }
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
        assert!(err.reason.contains("t/b"), "{err:?}");
        assert_eq!(err.split, None, "a went back");
        assert_eq!(fs::read(from.join("t/a")).unwrap(), b"a");
        assert!(from.join("t/b").exists() && !to.join("t/a").exists());
        assert!(to.join("t/b/x").exists(), "what was in the way is not ours");
    }

    #[test]
    fn moving_again_what_a_crash_left_half_moved_finishes_the_move() {
        let dir = TempDir::new("relocate-resume");
        let (from, to) = (dir.0.join("old"), dir.0.join("new"));
        let files = [
            PathBuf::from("t/a"),
            PathBuf::from("t/b"),
            PathBuf::from("t/c"),
        ];
        fs::create_dir_all(from.join("t")).unwrap();
        fs::create_dir_all(to.join("t")).unwrap();
        // a moved, b copied and renamed but its source not yet removed, c's copy cut short.
        fs::write(to.join("t/a"), b"a").unwrap();
        fs::write(from.join("t/b"), b"b").unwrap();
        fs::write(to.join("t/b"), b"b").unwrap();
        fs::write(from.join("t/c"), b"ccc").unwrap();
        fs::write(to.join("t/c.part"), b"c").unwrap();

        move_files(&files, &from, &to).unwrap();
        for (name, bytes) in [("t/a", &b"a"[..]), ("t/b", b"b"), ("t/c", b"ccc")] {
            assert_eq!(fs::read(to.join(name)).unwrap(), bytes, "{name}");
        }
        assert!(!to.join("t/c.part").exists(), "the cut copy stays");
        assert!(!from.join("t").exists(), "the source is left with files");
    }
}
