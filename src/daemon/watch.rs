//! The watch directory: new `.torrent`/`.magnet` files are added and renamed `*.added`, bad
//! ones `*.invalid` once they have stopped changing, and a deleted `*.added` removes its
//! torrent.

use super::*;

pub(super) const WATCH_ADDED: &str = ".added";
pub(super) const WATCH_INVALID: &str = ".invalid";

impl Daemon {
    // ---- the watch directory -------------------------------------------------------------

    /// Adds new `*.torrent` and `*.magnet` files (renamed `*.added`; one that does not parse is
    /// tried again at each scan until it has not changed for [`WATCH_SETTLE`], then renamed
    /// `*.invalid` with the reason logged), loads `*.added` files we do not know yet (after a
    /// restart), and removes torrents whose `*.added` file is gone.
    pub(super) fn scan_watch_dir(&mut self) {
        let Some(dir) = self.config.watch_dir.clone() else {
            return;
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                warn!("watch dir {}: {e}", dir.display());
                return;
            }
        };
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        self.watch_pending
            .retain(|path| names.binary_search_by(|n| n.as_path().cmp(path)).is_ok());
        let known: HashSet<PathBuf> = self
            .torrents
            .iter()
            .filter_map(|t| match &t.source {
                Source::Watch(file) => Some(file.clone()),
                Source::Config(_) | Source::Rpc => None,
            })
            .collect();
        for path in names {
            let name = path.to_string_lossy();
            if name.ends_with(".torrent") || name.ends_with(".magnet") {
                self.add_watch_file(&path, &with_suffix(&path, WATCH_ADDED));
            } else if (name.ends_with(".torrent.added") || name.ends_with(".magnet.added"))
                && !known.contains(&path)
            {
                self.add_watch_file(&path, &path);
            }
        }
        let gone: Vec<InfoHash> = self
            .torrents
            .iter()
            .filter(|t| matches!(&t.source, Source::Watch(file) if !file.exists()))
            .map(|t| t.info_hash)
            .collect();
        for info_hash in gone {
            if let Some(index) = self.index_of(&info_hash) {
                self.remove(index);
            }
        }
    }

    /// Reads a watch-dir torrent or magnet link at `path`; on success it ends up at `added`. A
    /// new file (`path` is not `added`) that does not parse waits for the next scan until it has
    /// settled (see [`WatchPending`]); an `*.added` file, which the daemon itself renamed whole,
    /// does not wait.
    pub(super) fn add_watch_file(&mut self, path: &Path, added: &Path) {
        let invalid = |reason: String| {
            let target = with_suffix(path, WATCH_INVALID);
            warn!("watch dir: {reason}; renamed to {}", target.display());
            if let Err(e) = std::fs::rename(path, &target) {
                error!("watch dir: rename {}: {e}", path.display());
            }
        };
        let origin = match read_watch_file(path) {
            Ok(origin) => origin,
            Err(reason) if path != added && !self.watch_file_settled(path, &reason) => return,
            Err(reason) => {
                self.watch_pending.forget(path);
                return invalid(reason);
            }
        };
        self.watch_pending.forget(path);
        if let Some(other) = self.find(&origin.info_hash()) {
            return invalid(format!(
                "{}: duplicate of torrent {}",
                path.display(),
                other.name()
            ));
        }
        if path != added
            && let Err(e) = std::fs::rename(path, added)
        {
            error!("watch dir: rename {}: {e}", path.display());
            return;
        }
        let _ = self.add(
            origin,
            Source::Watch(added.to_owned()),
            None,
            Vec::new(),
            false,
        );
    }

    /// Whether `path`, a new watch-dir file that did not parse (`reason`), has kept its size and
    /// mtime for [`WATCH_SETTLE`], so that it is refused now; false while it may still be being
    /// written, or when it is gone. The first time a file waits, the log says so.
    pub(super) fn watch_file_settled(&mut self, path: &Path, reason: &str) -> bool {
        // A dangling symlink is judged by the link itself.
        let meta = std::fs::metadata(path).or_else(|_| std::fs::symlink_metadata(path));
        let Ok(meta) = meta else {
            // Gone since the scan listed it.
            self.watch_pending.forget(path);
            return false;
        };
        let seen = FileLook {
            len: meta.len(),
            mtime: meta.modified().ok(),
        };
        match self.watch_pending.observe(path, seen, Instant::now()) {
            Settling::FirstSeen => {
                info!(
                    "watch dir: {reason}; trying again until the file has not changed for {}s",
                    WATCH_SETTLE.as_secs()
                );
                false
            }
            Settling::Waiting => false,
            Settling::Settled => true,
        }
    }
}

/// A watch-directory file: a `.torrent`, or a `.magnet` holding one magnet URI (either one
/// possibly renamed `*.added` already).
pub(super) fn read_watch_file(path: &Path) -> Result<Origin, String> {
    let name = path.to_string_lossy();
    if name.ends_with(".magnet") || name.ends_with(".magnet.added") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Magnet::parse(text.trim())
            .map(Origin::Magnet)
            .map_err(|e| format!("{}: {e}", path.display()))
    } else {
        // Its errors name the file.
        Metainfo::from_file(path)
            .map(Origin::Meta)
            .map_err(|e| e.to_string())
    }
}

/// How long a new watch-dir file that does not parse must keep its size and mtime before it is
/// refused: an upload in progress (SFTP, a web form) writes it in parts, seconds apart.
pub(super) const WATCH_SETTLE: Duration = Duration::from_secs(5);

/// A file's size and mtime, as one scan of the watch directory saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileLook {
    pub(super) len: u64,
    pub(super) mtime: Option<std::time::SystemTime>,
}

/// Where a watch-dir file that does not parse stands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Settling {
    /// Seen for the first time: it waits.
    FirstSeen,
    /// Changed since, or unchanged for less than [`WATCH_SETTLE`]: it waits.
    Waiting,
    /// Unchanged for [`WATCH_SETTLE`]: refuse it.
    Settled,
}

/// The watch-dir files that did not parse yet: path -> how each looked and since when it has
/// looked so. Only the main thread's scans use it; time is passed in.
#[derive(Debug, Default)]
pub(super) struct WatchPending(pub(super) std::collections::HashMap<PathBuf, (FileLook, Instant)>);

impl WatchPending {
    /// `path` did not parse and looks like `look` at `now`.
    pub(super) fn observe(&mut self, path: &Path, look: FileLook, now: Instant) -> Settling {
        match self.0.get_mut(path) {
            None => {
                self.0.insert(path.to_owned(), (look, now));
                Settling::FirstSeen
            }
            Some((before, since)) if *before != look => {
                *before = look;
                *since = now;
                Settling::Waiting
            }
            Some((_, since)) if now.duration_since(*since) >= WATCH_SETTLE => Settling::Settled,
            Some(_) => Settling::Waiting,
        }
    }

    /// Done with `path`: added, refused, or gone.
    pub(super) fn forget(&mut self, path: &Path) {
        self.0.remove(path);
    }

    /// Keeps the files for which `present` holds (those still in the watch directory).
    pub(super) fn retain(&mut self, present: impl Fn(&Path) -> bool) {
        self.0.retain(|path, _| present(path));
    }
}

pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_watch_file_that_does_not_parse_is_refused_only_once_unchanged_for_the_settle_time() {
        let path = Path::new("/watch/slow.torrent");
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let look = |len: u64| FileLook { len, mtime: None };
        let mut pending = WatchPending::default();
        assert_eq!(pending.observe(path, look(100), t0), Settling::FirstSeen);
        assert_eq!(pending.observe(path, look(100), at(4)), Settling::Waiting);
        // The upload goes on: the wait starts again.
        assert_eq!(pending.observe(path, look(300), at(4)), Settling::Waiting);
        assert_eq!(pending.observe(path, look(300), at(8)), Settling::Waiting);
        assert_eq!(pending.observe(path, look(300), at(9)), Settling::Settled);
        // A new mtime alone is a change too.
        let touched = FileLook {
            len: 300,
            mtime: Some(std::time::SystemTime::UNIX_EPOCH),
        };
        assert_eq!(pending.observe(path, touched, at(9)), Settling::Waiting);
        assert_eq!(pending.observe(path, touched, at(14)), Settling::Settled);
    }

    #[test]
    fn pending_watch_files_are_forgotten_once_gone() {
        let (a, b) = (Path::new("/watch/a.torrent"), Path::new("/watch/b.magnet"));
        let t0 = Instant::now();
        let look = FileLook {
            len: 0,
            mtime: None,
        };
        let mut pending = WatchPending::default();
        pending.observe(a, look, t0);
        pending.observe(b, look, t0);
        pending.retain(|p| p == b);
        pending.forget(b);
        // Both start over: a file written again under the same name gets the whole wait.
        let later = t0 + WATCH_SETTLE;
        assert_eq!(pending.observe(a, look, later), Settling::FirstSeen);
        assert_eq!(pending.observe(b, look, later), Settling::FirstSeen);
    }
}
