//! File selection: which files of a torrent are wanted and how urgently, and what that means
//! for its pieces (pure). A piece is wanted when any byte of it lies in a wanted file, and it
//! is as urgent as the most urgent such file; a piece lying wholly in unwanted files is never
//! requested. The daemon keeps the selection in the torrent's record, the picker orders its
//! picks by the piece priorities, and storage keeps the bytes a wanted piece has in an unwanted
//! file out of that file (in the torrent's part file).

use crate::metainfo::{FileEntry, Geometry};

/// How much a file is wanted. The order is the urgency: a `High` file's pieces are picked
/// before any `Normal` one's.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Not wanted: never requested, never created.
    Skip,
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    /// The piece priority this file gives its pieces: 0 for skip, then 1 (low) to 3 (high).
    #[must_use]
    pub fn level(self) -> u8 {
        match self {
            Self::Skip => 0,
            Self::Low => 1,
            Self::Normal => 2,
            Self::High => 3,
        }
    }

    #[must_use]
    pub fn is_wanted(self) -> bool {
        self != Self::Skip
    }

    /// Transmission's number for a wanted file's priority (`-1` low, `0` normal, `1` high);
    /// a skipped file keeps the priority it would have (normal).
    #[must_use]
    pub fn transmission(self) -> i64 {
        match self {
            Self::Low => -1,
            Self::Skip | Self::Normal => 0,
            Self::High => 1,
        }
    }

    /// The word for it, as `btd files` prints and takes it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// Each file's priority, in metainfo order. An empty list means every file is `Normal` (what
/// a torrent has until someone selects), so records of torrents nobody touched stay small.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Selection(Vec<Priority>);

impl Selection {
    /// Every one of `files` files wanted at normal priority.
    #[must_use]
    pub fn all() -> Self {
        Self(Vec::new())
    }

    /// The priority of file `index`.
    #[must_use]
    pub fn get(&self, index: usize) -> Priority {
        self.0.get(index).copied().unwrap_or_default()
    }

    /// Sets file `index` of `files` to `priority`.
    pub fn set(&mut self, files: usize, index: usize, priority: Priority) {
        if self.0.len() < files {
            self.0.resize(files, Priority::Normal);
        }
        if let Some(p) = self.0.get_mut(index) {
            *p = priority;
        }
        if self.0.iter().all(|p| *p == Priority::Normal) {
            self.0.clear();
        }
    }

    /// True when every file is wanted at normal priority.
    #[must_use]
    pub fn is_all(&self) -> bool {
        self.0.iter().all(|p| *p == Priority::Normal)
    }

    /// Whether each of `files` files is wanted.
    #[must_use]
    pub fn wanted(&self, files: usize) -> Vec<bool> {
        (0..files).map(|i| self.get(i).is_wanted()).collect()
    }

    /// Each piece's priority level (see [`Priority::level`]): the highest of the files it
    /// overlaps. Zero-length files overlap nothing, and BEP 47 pad files count for nothing (a
    /// piece holding a skipped file's end and the pad after it is not wanted).
    #[must_use]
    pub fn piece_levels(&self, geometry: &Geometry, files: &[FileEntry]) -> Vec<u8> {
        let mut levels = vec![0u8; geometry.num_pieces as usize];
        if geometry.num_pieces == 0 {
            return levels;
        }
        let piece_len = u64::from(geometry.piece_len);
        for (index, file) in files.iter().enumerate() {
            if file.len == 0 || !file.on_disk() {
                continue;
            }
            let level = self.get(index).level();
            let first = file.offset / piece_len;
            let last = (file.offset + file.len - 1) / piece_len;
            for piece in first..=last {
                let slot = &mut levels[usize::try_from(piece).expect("piece index fits usize")];
                *slot = (*slot).max(level);
            }
        }
        levels
    }
}

/// Bytes of the pieces with a nonzero level: what the torrent is when its wanted files are done
/// (Transmission's `sizeWhenDone`, piece-aligned as the pieces are what is fetched).
#[must_use]
pub fn wanted_bytes(geometry: &Geometry, levels: &[u8]) -> u64 {
    levels
        .iter()
        .zip(0u32..)
        .filter(|(level, _)| **level > 0)
        .map(|(_, piece)| u64::from(geometry.piece_len(piece)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn files(lens: &[u64]) -> Vec<FileEntry> {
        let mut offset = 0;
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                let entry = FileEntry {
                    path: PathBuf::from(format!("t/f{i}")),
                    len,
                    offset,
                    attr: Default::default(),
                };
                offset += len;
                entry
            })
            .collect()
    }

    #[test]
    fn a_piece_takes_the_most_urgent_file_it_touches_and_unwanted_ones_count_for_nothing() {
        // Pieces of 10 bytes: f0 = 0..15, f1 = 15..40 (pieces 1-3), f2 = 40..45, f3 empty.
        let files = files(&[15, 25, 5, 0]);
        let geometry = Geometry::new(45, 10);
        let mut sel = Selection::all();
        assert_eq!(sel.piece_levels(&geometry, &files), vec![2, 2, 2, 2, 2]);
        sel.set(4, 1, Priority::Skip);
        assert_eq!(
            sel.piece_levels(&geometry, &files),
            vec![2, 2, 0, 0, 2],
            "piece 1 shares bytes with f0, piece 4 is f2's"
        );
        sel.set(4, 2, Priority::High);
        sel.set(4, 0, Priority::Low);
        assert_eq!(sel.piece_levels(&geometry, &files), vec![1, 1, 0, 0, 3]);
        assert_eq!(
            wanted_bytes(&geometry, &sel.piece_levels(&geometry, &files)),
            25
        );
        assert_eq!(sel.wanted(4), vec![true, false, true, true]);
    }

    #[test]
    fn a_pad_file_wants_nothing_of_the_piece_it_ends() {
        // f0 = 0..15, its pad 15..20 (pieces of 10), f2 = 20..30.
        let mut files = files(&[15, 5, 10]);
        files[1].attr.pad = true;
        let geometry = Geometry::new(30, 10);
        let mut sel = Selection::all();
        sel.set(3, 0, Priority::Skip);
        assert_eq!(sel.piece_levels(&geometry, &files), vec![0, 0, 2]);
    }

    #[test]
    fn back_to_all_normal_is_the_empty_selection() {
        let mut sel = Selection::all();
        sel.set(3, 2, Priority::Skip);
        assert!(!sel.is_all());
        assert_eq!(
            serde_json::to_string(&sel).unwrap(),
            r#"["normal","normal","skip"]"#
        );
        sel.set(3, 2, Priority::Normal);
        assert!(sel.is_all());
        assert_eq!(sel, Selection::all());
        assert_eq!(serde_json::to_string(&sel).unwrap(), "[]");
        sel.set(3, 7, Priority::Skip);
        assert!(sel.is_all(), "an index past the files changes nothing");
    }

    #[test]
    fn transmission_numbers() {
        assert_eq!(Priority::Low.transmission(), -1);
        assert_eq!(Priority::Normal.transmission(), 0);
        assert_eq!(Priority::High.transmission(), 1);
        assert_eq!(Priority::Skip.transmission(), 0);
    }
}
