//! Metainfo: the only importer of lava_torrent's torrent types. Turns a `.torrent` file into a
//! [`Metainfo`]: the info hash (over the raw bytes of the info dictionary), the piece
//! [`Geometry`], the sanitised file list and the trackers. Pure: no threads, no sockets.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use lava_torrent::bencode::BencodeElem;
use lava_torrent::torrent::v1::Torrent;
use sha1::{Digest, Sha1};

use crate::wire::{BLOCK_LEN, BlockRef};

/// The SHA-1 of a torrent's info dictionary: the torrent's identity on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// Lower-case hex, as trackers and other clients print it.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// From 40 hex digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 40 {
            return None;
        }
        crate::hex::decode(text)?.try_into().ok().map(InfoHash)
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a `.torrent` file was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid torrent: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The largest piece length we accept: 64 MiB, four times the most any common client makes by
/// default, and the most the disk queue holds. One piece is assembled in memory.
pub const MAX_PIECE_LEN: u32 = 64 * 1024 * 1024;
/// The most pieces we accept (libtorrent's default limit, 2^21): with 64 MiB pieces, 128 TiB.
/// The picker, the bitfields and the piece hashes all grow with it.
pub const MAX_PIECES: u64 = 1 << 21;

/// How the torrent's bytes divide into pieces and blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub total_len: u64,
    pub piece_len: u32,
    pub num_pieces: u32,
}

impl Geometry {
    /// # Panics
    /// If `piece_len` is zero or the total needs more than `u32::MAX` pieces.
    pub fn new(total_len: u64, piece_len: u32) -> Self {
        assert!(piece_len > 0, "piece length must be positive");
        let num_pieces = u32::try_from(total_len.div_ceil(u64::from(piece_len)))
            .expect("piece count fits in u32");
        Self {
            total_len,
            piece_len,
            num_pieces,
        }
    }

    /// Length of piece `piece`; the last one is usually short.
    pub fn piece_len(&self, piece: u32) -> u32 {
        let start = self.piece_offset(piece);
        let len = (self.total_len - start).min(u64::from(self.piece_len));
        u32::try_from(len).expect("a piece is at most piece_len long")
    }

    /// Byte offset of piece `piece` in the torrent's concatenated data.
    pub fn piece_offset(&self, piece: u32) -> u64 {
        u64::from(piece) * u64::from(self.piece_len)
    }

    /// Number of 16 KiB blocks in piece `piece`.
    pub fn blocks_in_piece(&self, piece: u32) -> u32 {
        self.piece_len(piece).div_ceil(BLOCK_LEN)
    }

    /// The `index`th block of `piece`; the last block of the last piece is usually short.
    pub fn block(&self, piece: u32, index: u32) -> BlockRef {
        let offset = index * BLOCK_LEN;
        let len = (self.piece_len(piece) - offset).min(BLOCK_LEN);
        BlockRef::new(piece, offset, len)
    }

    /// True when `block` is exactly one of this torrent's blocks.
    pub fn is_valid_block(&self, block: &BlockRef) -> bool {
        block.piece < self.num_pieces
            && block.offset.is_multiple_of(BLOCK_LEN)
            && block.offset < self.piece_len(block.piece)
            && self.block(block.piece, block.offset / BLOCK_LEN).len == block.len
    }

    /// True when `block` lies within its piece and is at most 16 KiB: what we serve to peers.
    pub fn is_servable_request(&self, block: &BlockRef) -> bool {
        block.piece < self.num_pieces
            && block.len > 0
            && block.len <= BLOCK_LEN
            && u64::from(block.offset) + u64::from(block.len)
                <= u64::from(self.piece_len(block.piece))
    }
}

/// One file of the torrent, laid end to end with the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the download directory; starts with the torrent's name. Sanitised.
    pub path: PathBuf,
    pub len: u64,
    /// Offset of the file's first byte in the torrent's concatenated data.
    pub offset: u64,
}

/// What a torrent file says about itself outside `info`: shown to RPC clients, never trusted.
#[derive(Clone, Debug, Default)]
pub struct About {
    /// `comment`, empty when absent or not a string.
    pub comment: String,
    /// `created by`, empty when absent or not a string.
    pub created_by: String,
    /// `creation date` (Unix seconds), 0 when absent.
    pub creation_date: i64,
}

/// A parsed, validated v1 torrent.
#[derive(Clone, Debug)]
pub struct Metainfo {
    pub info_hash: InfoHash,
    pub name: String,
    pub geometry: Geometry,
    pub files: Vec<FileEntry>,
    pub piece_hashes: Vec<[u8; 20]>,
    pub announce: Option<String>,
    pub announce_list: Option<Vec<Vec<String>>>,
    pub private: bool,
    /// Comment, creator and creation date.
    pub about: About,
    /// The info dictionary exactly as in the file: what we serve to peers (BEP 9).
    pub info_bytes: Arc<[u8]>,
}

impl Metainfo {
    /// Reads and validates a `.torrent` file.
    ///
    /// # Errors
    /// `Read` when the file cannot be read, `Invalid` (naming the file and the reason) when it is
    /// not a valid v1 torrent or names a path outside the download directory.
    pub fn from_file(path: &Path) -> Result<Self, MetainfoError> {
        let bytes = std::fs::read(path).map_err(|source| MetainfoError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|reason| MetainfoError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses a torrent from its bencoded bytes.
    ///
    /// # Errors
    /// A message saying what is wrong with the torrent.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let info = raw_info_span(bytes).ok_or("no well-formed `info` dictionary")?;
        let info_hash = InfoHash(Sha1::digest(info).into());
        // Our checks first, on the dictionary as it is, so their reasons are the ones reported.
        let info_dict = parse_info(info)?;
        check_raw_info(&info_dict)?;
        let private = matches!(info_dict.get("private"), Some(BencodeElem::Integer(1)));
        let torrent = Torrent::read_from_bytes(bytes).map_err(|e| e.to_string())?;
        let extra = |key: &str| torrent.extra_fields.as_ref().and_then(|f| f.get(key));
        let text = |key: &str| match extra(key) {
            Some(BencodeElem::String(s)) => s.clone(),
            _ => String::new(),
        };
        let about = About {
            comment: text("comment"),
            created_by: text("created by"),
            creation_date: match extra("creation date") {
                Some(BencodeElem::Integer(t)) => *t,
                _ => 0,
            },
        };

        check_component(&torrent.name).map_err(|e| format!("name {:?}: {e}", torrent.name))?;
        let piece_len = check_piece_len(torrent.piece_length)?;
        let mut files = Vec::new();
        let mut offset = 0u64;
        let listed: Vec<(PathBuf, i64)> = match &torrent.files {
            None => vec![(PathBuf::from(&torrent.name), torrent.length)],
            Some(list) => list
                .iter()
                .map(|f| (Path::new(&torrent.name).join(&f.path), f.length))
                .collect(),
        };
        for (path, len) in listed {
            check_relative(&path)?;
            let len =
                u64::try_from(len).map_err(|_| format!("{}: negative length", path.display()))?;
            files.push(FileEntry { path, len, offset });
            offset = offset
                .checked_add(len)
                .ok_or("total length overflows 64 bits")?;
        }
        check_distinct(&files)?;
        if offset == 0 {
            return Err("the torrent holds no data".into());
        }
        check_piece_count(offset, piece_len, torrent.pieces.len())?;
        let piece_hashes = torrent
            .pieces
            .iter()
            .map(|p| <[u8; 20]>::try_from(p.as_slice()).map_err(|_| "bad piece hash".to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            info_hash,
            info_bytes: Arc::from(info),
            name: torrent.name,
            geometry: Geometry::new(offset, piece_len),
            files,
            piece_hashes,
            announce: torrent.announce,
            announce_list: torrent.announce_list,
            private,
            about,
        })
    }
}

/// Why a path inside a torrent cannot be renamed (`torrent-rename-path`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenameError {
    #[error("name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("path {0:?} is neither a file nor a directory of this torrent")]
    NotInTorrent(String),
    #[error("{0:?} already exists in this torrent")]
    Exists(String),
}

impl Metainfo {
    /// Renames the file or directory `path` of the torrent (spelt as [`FileEntry::path`] is:
    /// `name`, `name/dir`, `name/dir/file`) to `new_name`, its new last component: every file
    /// under it follows. Renaming the top (`name`) renames the torrent, as Transmission does.
    /// The info dictionary (what peers see) is untouched. Returns the old and new relative
    /// paths (equal when `new_name` is the current name). Pure: the disk is the caller's.
    ///
    /// # Errors
    /// A `new_name` that is empty, `.`, `..` or holds a separator; a `path` that names
    /// nothing of the torrent; a new path another file or directory of the torrent has.
    pub fn rename_path(
        &mut self,
        path: &str,
        new_name: &str,
    ) -> Result<(PathBuf, PathBuf), RenameError> {
        check_component(new_name).map_err(|reason| RenameError::BadName {
            name: new_name.to_owned(),
            reason,
        })?;
        let old = Path::new(path);
        // Spelt exactly as the file list spells it: no `./`, `//` or trailing `/` either.
        let plain = old.components().collect::<PathBuf>().as_os_str() == path;
        let named = !path.is_empty()
            && plain
            && check_relative(old).is_ok()
            && self.files.iter().any(|f| f.path.starts_with(old));
        if !named {
            return Err(RenameError::NotInTorrent(path.to_owned()));
        }
        let old = old.to_owned();
        let new = old.with_file_name(new_name);
        if new == old {
            return Ok((old, new));
        }
        if self.files.iter().any(|f| f.path.starts_with(&new)) {
            return Err(RenameError::Exists(new.display().to_string()));
        }
        for file in &mut self.files {
            if let Ok(rest) = file.path.strip_prefix(&old) {
                // `join("")` would add a trailing separator.
                file.path = if rest.as_os_str().is_empty() {
                    new.clone()
                } else {
                    new.join(rest)
                };
            }
        }
        if old.parent() == Some(Path::new("")) {
            new_name.clone_into(&mut self.name);
        }
        Ok((old, new))
    }
}

impl Metainfo {
    /// A torrent from an info dictionary fetched from peers (a magnet link) and tracker tiers.
    /// The caller has checked that the bytes hash to the info hash it wanted.
    ///
    /// # Errors
    /// A message saying what is wrong with the info dictionary.
    pub fn from_info_bytes(info: &[u8], trackers: &[Vec<String>]) -> Result<Self, String> {
        let encode = |s: &str| BencodeElem::String(s.to_owned()).encode();
        let mut bytes = b"d".to_vec();
        let first = trackers.iter().flatten().next();
        if let Some(first) = first {
            bytes.extend(b"8:announce");
            bytes.extend(encode(first));
            bytes.extend(b"13:announce-list");
            let tiers = trackers
                .iter()
                .filter(|tier| !tier.is_empty())
                .map(|tier| {
                    BencodeElem::List(
                        tier.iter()
                            .map(|t| BencodeElem::String(t.clone()))
                            .collect(),
                    )
                })
                .collect();
            bytes.extend(BencodeElem::List(tiers).encode());
        }
        bytes.extend(b"4:info");
        bytes.extend_from_slice(info);
        bytes.push(b'e');
        Self::from_bytes(&bytes)
    }

    /// The torrent as a `.torrent` file (for saving fetched metadata).
    pub fn to_torrent_bytes(&self) -> Vec<u8> {
        let tiers: Vec<Vec<String>> = match (&self.announce_list, &self.announce) {
            (Some(list), _) => list.clone(),
            (None, Some(one)) => vec![vec![one.clone()]],
            (None, None) => Vec::new(),
        };
        let mut bytes = b"d".to_vec();
        if let Some(first) = tiers.iter().flatten().next() {
            bytes.extend(b"8:announce");
            bytes.extend(BencodeElem::String(first.clone()).encode());
            bytes.extend(b"13:announce-list");
            let list = tiers
                .iter()
                .map(|tier| {
                    BencodeElem::List(
                        tier.iter()
                            .map(|t| BencodeElem::String(t.clone()))
                            .collect(),
                    )
                })
                .collect();
            bytes.extend(BencodeElem::List(list).encode());
        }
        bytes.extend(b"4:info");
        bytes.extend_from_slice(&self.info_bytes);
        bytes.push(b'e');
        bytes
    }
}

/// A piece length we can work with: a multiple of the 16 KiB block (BEP 3 allows any length,
/// but every client makes powers of two of at least 16 KiB, and a piece that ends mid-block
/// is a sign of a broken or hostile file), at most [`MAX_PIECE_LEN`].
fn check_piece_len(len: i64) -> Result<u32, String> {
    let bad = |why: String| Err(format!("piece length {len}: {why}"));
    match u32::try_from(len) {
        Ok(0) => bad("must be positive".into()),
        Ok(n) if n > MAX_PIECE_LEN => bad(format!("over the limit of {MAX_PIECE_LEN} (64 MiB)")),
        Ok(n) if !n.is_multiple_of(BLOCK_LEN) => {
            bad(format!("not a multiple of 16 KiB ({BLOCK_LEN})"))
        }
        Ok(n) => Ok(n),
        Err(_) if len < 0 => bad("must be positive".into()),
        Err(_) => bad(format!("over the limit of {MAX_PIECE_LEN} (64 MiB)")),
    }
}

/// No two files at the same path, and no file where another needs a directory.
fn check_distinct(files: &[FileEntry]) -> Result<(), String> {
    let mut paths = std::collections::HashSet::with_capacity(files.len());
    for file in files {
        if !paths.insert(file.path.as_path()) {
            return Err(format!("{}: listed twice", file.path.display()));
        }
    }
    for file in files {
        if let Some(dir) = file.path.ancestors().skip(1).find(|a| paths.contains(a)) {
            return Err(format!(
                "{}: a file, and also the directory of {}",
                dir.display(),
                file.path.display()
            ));
        }
    }
    Ok(())
}

/// The torrent's length as the file gives it (`length`, or the sum of the `files`), when every
/// length is a non-negative integer and the sum fits.
fn raw_total_len(info: &HashMap<String, BencodeElem>) -> Option<u64> {
    let len = |elem: Option<&BencodeElem>| match elem {
        Some(BencodeElem::Integer(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    if info.contains_key("length") {
        return len(info.get("length"));
    }
    let Some(BencodeElem::List(files)) = info.get("files") else {
        return None;
    };
    files.iter().try_fold(0u64, |sum, file| match file {
        BencodeElem::Dictionary(d) => sum.checked_add(len(d.get("length"))?),
        _ => None,
    })
}

/// `hashes` piece hashes must be exactly what `total` bytes in pieces of `piece_len` need, and
/// that at most [`MAX_PIECES`].
fn check_piece_count(total: u64, piece_len: u32, hashes: usize) -> Result<(), String> {
    let expected = total.div_ceil(u64::from(piece_len));
    if expected > MAX_PIECES {
        return Err(format!(
            "{total} bytes in pieces of {piece_len} make {expected} pieces, over the limit of \
             {MAX_PIECES}"
        ));
    }
    if u64::try_from(hashes).ok() != Some(expected) {
        return Err(format!(
            "{hashes} piece hashes for {total} bytes in pieces of {piece_len} (expected {expected})"
        ));
    }
    Ok(())
}

/// One path component from a stranger: no separators, no NUL, not `.`/`..`, not empty.
fn check_component(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty path component")
    } else if name == ".." {
        Err("path traversal (`..`)")
    } else if name == "." {
        Err("path component `.`")
    } else if name.starts_with(['/', '\\']) {
        Err("absolute path")
    } else if name.contains(['/', '\\']) {
        Err("path component contains a separator")
    } else if name.contains('\0') {
        Err("path component contains NUL")
    } else {
        Ok(())
    }
}

/// Every component of `path` must be a plain name, so joining it to the download directory
/// can never point outside it.
fn check_relative(path: &Path) -> Result<(), String> {
    for component in path.components() {
        match component {
            Component::Normal(name) => {
                let name = name.to_string_lossy();
                check_component(&name).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            _ => return Err(format!("{}: not a plain relative path", path.display())),
        }
    }
    Ok(())
}

fn parse_info(info: &[u8]) -> Result<HashMap<String, BencodeElem>, String> {
    match BencodeElem::from_bytes(info)
        .map_err(|e| e.to_string())?
        .pop()
    {
        Some(BencodeElem::Dictionary(d)) => Ok(d),
        _ => Err("`info` is not a dictionary with text keys".into()),
    }
}

/// Checks the name, the piece length, that there are pieces and every file path, as they are in
/// the file. lava_torrent joins path components into a `PathBuf`, which hides empty components
/// and components holding a `/`, and its own refusals are vaguer than ours.
fn check_raw_info(info: &HashMap<String, BencodeElem>) -> Result<(), String> {
    if let Some(BencodeElem::String(name)) = info.get("name") {
        check_component(name).map_err(|e| format!("name {name:?}: {e}"))?;
    }
    if let Some(BencodeElem::Integer(len)) = info.get("piece length") {
        check_piece_len(*len)?;
    }
    let pieces_len = match info.get("pieces") {
        Some(BencodeElem::Bytes(b)) => Some(b.len()),
        Some(BencodeElem::String(s)) => Some(s.len()),
        _ => None,
    };
    if pieces_len == Some(0) {
        return Err("no pieces: `pieces` is empty".into());
    }
    if let Some(n) = pieces_len.filter(|n| n % 20 != 0) {
        return Err(format!("`pieces` is {n} bytes, not a multiple of 20"));
    }
    if let (Some(total), Some(BencodeElem::Integer(piece_len)), Some(n)) =
        (raw_total_len(info), info.get("piece length"), pieces_len)
    {
        check_piece_count(total, check_piece_len(*piece_len)?, n / 20)?;
    }
    let Some(BencodeElem::List(files)) = info.get("files") else {
        return Ok(());
    };
    for file in files {
        let BencodeElem::Dictionary(file) = file else {
            continue;
        };
        let Some(BencodeElem::List(path)) = file.get("path") else {
            continue;
        };
        let shown = || {
            path.iter()
                .map(|c| match c {
                    BencodeElem::String(name) => name.as_str(),
                    _ => "?",
                })
                .collect::<Vec<_>>()
                .join("/")
        };
        for component in path {
            if let BencodeElem::String(name) = component {
                check_component(name).map_err(|e| format!("file {:?}: {e}", shown()))?;
            }
        }
    }
    Ok(())
}

/// The exact bytes of the top-level `info` value. lava_torrent hashes a re-encoding of the parsed
/// dictionary, which differs from the file when its keys are unsorted; the info hash must be taken
/// over the bytes as they appear. This only measures spans; lava_torrent does the parsing.
fn raw_info_span(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.first() != Some(&b'd') {
        return None;
    }
    // Walk every top-level entry, not just up to `info`: this also refuses nesting deep enough
    // to overflow lava_torrent's recursive decoder before it sees the bytes.
    let mut pos = 1;
    let mut info = None;
    while *bytes.get(pos)? != b'e' {
        let key_end = crate::bencode::skip_value(bytes, pos, 0)?;
        let key = bytes.get(pos..key_end)?;
        let value_end = crate::bencode::skip_value(bytes, key_end, 0)?;
        if key == b"4:info" && bytes.get(key_end) == Some(&b'd') {
            info = bytes.get(key_end..value_end);
        }
        pos = value_end;
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A torrent around `info`, where `#P` stands for `n` binary piece hashes (`6:pieces…`).
    fn torrent_bytes(info: &str, n: usize) -> Vec<u8> {
        let mut pieces = format!("6:pieces{}:", n * 20).into_bytes();
        pieces.extend(std::iter::repeat_n(0xffu8, n * 20));
        let (head, tail) = info.split_once("#P").expect("info has #P");
        let mut out = b"d8:announce14:http://t/a/ann4:info".to_vec();
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&pieces);
        out.extend_from_slice(tail.as_bytes());
        out.push(b'e');
        out
    }

    fn info_of(torrent: &[u8]) -> &[u8] {
        let start = torrent.windows(6).position(|w| w == b"4:info").unwrap() + 6;
        &torrent[start..torrent.len() - 1]
    }

    #[test]
    fn info_hash_is_sha1_of_the_raw_info_bytes() {
        let bytes = torrent_bytes(
            "d6:lengthi5e4:name1:a12:piece lengthi16384e#P7:x-extrali1ei2eee",
            1,
        );
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(
            meta.info_hash.0,
            <[u8; 20]>::from(Sha1::digest(info_of(&bytes)))
        );
        assert_eq!(meta.files[0].path, PathBuf::from("a"));
        assert_eq!(meta.geometry.total_len, 5);
        assert!(!meta.private);
    }

    #[test]
    fn rebuilds_the_same_torrent_from_its_info_bytes() {
        let bytes = torrent_bytes("d6:lengthi5e4:name1:a12:piece lengthi16384e#Pe", 1);
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        let tiers = vec![
            vec!["http://t/a/ann".to_string()],
            vec!["udp://u:1".to_string()],
        ];
        let again = Metainfo::from_info_bytes(&meta.info_bytes, &tiers).unwrap();
        assert_eq!(again.info_hash, meta.info_hash);
        assert_eq!(again.announce.as_deref(), Some("http://t/a/ann"));
        assert_eq!(again.announce_list.as_ref().map(Vec::len), Some(2));
        let file = Metainfo::from_bytes(&again.to_torrent_bytes()).unwrap();
        assert_eq!(file.info_hash, meta.info_hash);
        assert!(Metainfo::from_info_bytes(b"d4:name1:ae", &[]).is_err());
    }

    #[test]
    fn refuses_unsorted_keys_with_a_clear_reason() {
        let bytes = torrent_bytes("d4:name1:a6:lengthi5e12:piece lengthi16384e#Pe", 1);
        let err = Metainfo::from_bytes(&bytes).unwrap_err();
        assert!(err.contains("sorted"), "{err}");
    }

    #[test]
    fn refuses_absurd_nesting_before_parsing() {
        let mut bytes = torrent_bytes("d6:lengthi5e4:name1:a12:piece lengthi16384e#Pe", 1);
        bytes.pop();
        bytes.extend_from_slice(b"1:z");
        bytes.extend(std::iter::repeat_n(b'l', 100_000));
        assert!(Metainfo::from_bytes(&bytes).is_err());
    }

    #[test]
    fn reads_comment_creator_and_creation_date_outside_info() {
        let plain = torrent_bytes("d6:lengthi5e4:name1:a12:piece lengthi16384e#Pe", 1);
        let about = Metainfo::from_bytes(&plain).unwrap().about;
        assert_eq!(
            (about.comment.as_str(), about.created_by.as_str()),
            ("", "")
        );
        assert_eq!(about.creation_date, 0);

        let head = b"d8:announce14:http://t/a/ann";
        let fields = b"7:comment5:hello10:created by7:btd/0.113:creation datei1700000000e";
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(fields);
        bytes.extend_from_slice(&plain[head.len()..]);
        let about = Metainfo::from_bytes(&bytes).unwrap().about;
        assert_eq!(about.comment, "hello");
        assert_eq!(about.created_by, "btd/0.1");
        assert_eq!(about.creation_date, 1_700_000_000);
    }

    #[test]
    fn reads_the_private_flag() {
        let bytes = torrent_bytes(
            "d6:lengthi5e4:name1:a12:piece lengthi16384e#P7:privatei1ee",
            1,
        );
        assert!(Metainfo::from_bytes(&bytes).unwrap().private);
    }

    #[test]
    fn multi_file_offsets_run_end_to_end() {
        let bytes = torrent_bytes(
            "d5:filesld6:lengthi3e4:pathl1:xeed6:lengthi0e4:pathl1:yeed6:lengthi20000e4:pathl3:sub1:zeee4:name1:d12:piece lengthi16384e#Pe",
            2,
        );
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        let got: Vec<_> = meta
            .files
            .iter()
            .map(|f| (f.path.clone(), f.len, f.offset))
            .collect();
        assert_eq!(
            got,
            vec![
                (PathBuf::from("d/x"), 3, 0),
                (PathBuf::from("d/y"), 0, 3),
                (PathBuf::from("d/sub/z"), 20000, 3)
            ]
        );
        assert_eq!(meta.geometry.num_pieces, 2);
        assert_eq!(meta.geometry.piece_len(1), 20003 - 16384);
    }

    #[test]
    fn renaming_a_path_moves_every_file_under_it_and_refuses_bad_names_and_paths() {
        let bytes = torrent_bytes(
            "d5:filesld6:lengthi3e4:pathl1:xeed6:lengthi0e4:pathl1:yeed6:lengthi20000e4:pathl3:sub1:zeee4:name1:d12:piece lengthi16384e#Pe",
            2,
        );
        let original = Metainfo::from_bytes(&bytes).unwrap();
        let paths = |m: &Metainfo| -> Vec<String> {
            m.files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect()
        };
        let mut meta = original.clone();
        assert_eq!(
            meta.rename_path("d/sub", "deeper"),
            Ok((PathBuf::from("d/sub"), PathBuf::from("d/deeper")))
        );
        assert_eq!(paths(&meta), ["d/x", "d/y", "d/deeper/z"]);
        meta.rename_path("d/deeper/z", "z.bin").unwrap();
        assert_eq!(paths(&meta), ["d/x", "d/y", "d/deeper/z.bin"]);
        assert_eq!(meta.name, "d", "only the top renames the torrent");
        meta.rename_path("d", "top").unwrap();
        assert_eq!(paths(&meta), ["top/x", "top/y", "top/deeper/z.bin"]);
        assert_eq!(meta.name, "top");
        // Offsets, lengths and the info dictionary stay: peers see the same torrent.
        assert_eq!(meta.info_bytes, original.info_bytes);
        assert!(
            meta.files
                .iter()
                .zip(&original.files)
                .all(|(a, b)| (a.len, a.offset) == (b.len, b.offset))
        );
        // Its own name again: nothing changes.
        assert_eq!(
            meta.rename_path("top/x", "x"),
            Ok((PathBuf::from("top/x"), PathBuf::from("top/x")))
        );

        let before = paths(&meta);
        for (path, name, says) in [
            ("top/x", "", "empty path component"),
            ("top/x", ".", "path component `.`"),
            ("top/x", "..", "path traversal"),
            ("top/x", "a/b", "separator"),
            ("top/x", "/abs", "absolute path"),
            ("top/nothing", "n", "neither a file nor a directory"),
            ("top/x/", "n", "neither"),
            ("", "n", "neither"),
            ("to", "n", "neither"),
            ("top/../top/x", "n", "neither"),
            ("/top/x", "n", "neither"),
            ("top/x", "y", "\"top/y\" already exists"),
            ("top/x", "deeper", "already exists"),
        ] {
            let err = meta.rename_path(path, name).unwrap_err().to_string();
            assert!(err.contains(says), "{path} -> {name}: {err}");
        }
        assert_eq!(paths(&meta), before, "a refused rename changed nothing");

        // A single-file torrent: its file is its top.
        let single = torrent_bytes("d6:lengthi5e4:name5:a.iso12:piece lengthi16384e#Pe", 1);
        let mut meta = Metainfo::from_bytes(&single).unwrap();
        meta.rename_path("a.iso", "b.iso").unwrap();
        assert_eq!(
            (paths(&meta), meta.name.as_str()),
            (vec!["b.iso".to_owned()], "b.iso")
        );
    }

    /// The reason a multi-file torrent with these `files` entries and `n` piece hashes is refused.
    fn refusal(files: &str, piece_len: i64, n: usize) -> String {
        let info = format!("d5:filesl{files}e4:name1:d12:piece lengthi{piece_len}e#Pe");
        Metainfo::from_bytes(&torrent_bytes(&info, n)).unwrap_err()
    }

    fn file(len: u64, path: &str) -> String {
        format!("d6:lengthi{len}e4:path{path}e")
    }

    #[test]
    fn rejects_path_traversal_and_absolute_paths() {
        for (path, want) in [
            ("l2:..1:xe", "file \"../x\": path traversal (`..`)"),
            ("l1:a2:..2:..1:xe", "file \"a/../../x\": path traversal"),
            ("l4:/etc6:passwde", "file \"/etc/passwd\": absolute path"),
            ("l2:\\ae", "absolute path"),
            ("l0:e", "empty path component"),
            ("l3:a/be", "separator"),
            ("l1:.e", "`.`"),
            ("l3:a\0be", "NUL"),
        ] {
            let err = refusal(&file(3, path), 16384, 1);
            assert!(err.contains(want), "{path}: {err}");
        }
        let bytes = torrent_bytes("d6:lengthi5e4:name2:..12:piece lengthi16384e#Pe", 1);
        let err = Metainfo::from_bytes(&bytes).unwrap_err();
        assert!(err.contains("name \"..\": path traversal"), "{err}");
        let bytes = torrent_bytes("d6:lengthi5e4:name4:/etc12:piece lengthi16384e#Pe", 1);
        let err = Metainfo::from_bytes(&bytes).unwrap_err();
        assert!(err.contains("absolute path"), "{err}");
    }

    #[test]
    fn rejects_duplicate_files_and_a_file_that_is_also_a_directory() {
        let twice = format!("{}{}", file(3, "l1:xe"), file(4, "l1:xe"));
        assert_eq!(refusal(&twice, 16384, 1), "d/x: listed twice");
        let nested = format!("{}{}", file(3, "l1:a1:be"), file(4, "l1:a1:b1:ce"));
        assert_eq!(
            refusal(&nested, 16384, 1),
            "d/a/b: a file, and also the directory of d/a/b/c"
        );
        let nested_first = format!("{}{}", file(4, "l1:a1:b1:ce"), file(3, "l1:ae"));
        assert!(refusal(&nested_first, 16384, 1).starts_with("d/a: a file, and also"));
        // Siblings with a common prefix of their names are fine.
        let siblings = format!("{}{}", file(3, "l1:ae"), file(4, "l2:abe"));
        let info = format!("d5:filesl{siblings}e4:name1:d12:piece lengthi16384e#Pe");
        assert!(Metainfo::from_bytes(&torrent_bytes(&info, 1)).is_ok());
    }

    #[test]
    fn rejects_piece_lengths_that_are_not_multiples_of_16_kib_or_absurd() {
        let one = file(20_000, "l1:xe");
        for (piece_len, want) in [
            (0, "piece length 0: must be positive"),
            (-16384, "piece length -16384: must be positive"),
            (1000, "piece length 1000: not a multiple of 16 KiB (16384)"),
            (16384 + 1, "not a multiple of 16 KiB"),
            (3 * 16384 / 2, "not a multiple of 16 KiB"),
            (128 << 20, "over the limit of 67108864 (64 MiB)"),
            (1 << 40, "over the limit"),
        ] {
            let err = refusal(&one, piece_len, 1);
            assert!(err.contains(want), "{piece_len}: {err}");
        }
        // Any multiple of 16 KiB will do, not only powers of two.
        let info = format!("d5:filesl{one}e4:name1:d12:piece lengthi49152e#Pe");
        assert!(Metainfo::from_bytes(&torrent_bytes(&info, 1)).is_ok());
    }

    #[test]
    fn rejects_zero_pieces_huge_piece_counts_and_hashes_that_do_not_add_up() {
        let err = refusal(&file(20_000, "l1:xe"), 16384, 0);
        assert!(err.contains("no pieces"), "{err}");
        let err = refusal(&file(0, "l1:xe"), 16384, 0);
        assert!(err.contains("no pieces"), "{err}");
        // 1 PiB in 16 KiB pieces: 2^36 pieces, whatever `pieces` says.
        let err = refusal(&file(1 << 50, "l1:xe"), 16384, 1);
        assert!(
            err.contains("68719476736 pieces, over the limit of 2097152"),
            "{err}"
        );
        let max = i64::MAX.unsigned_abs();
        let huge = format!("{}{}", file(max, "l1:xe"), file(max, "l1:ye"));
        assert!(refusal(&huge, 16384, 1).contains("over the limit"));
        let overflow = format!("{huge}{}", file(max, "l1:ze"));
        let err = refusal(&overflow, 16384, 1);
        assert!(err.contains("overflow"), "{err}");
        let err = refusal(&file(20_000, "l1:xe"), 16384, 5);
        assert!(err.contains("5 piece hashes for 20000 bytes"), "{err}");
        let ragged =
            b"d4:infod6:lengthi5e4:name1:a12:piece lengthi16384e6:pieces19:0123456789012345678ee";
        let err = Metainfo::from_bytes(ragged).unwrap_err();
        assert_eq!(err, "`pieces` is 19 bytes, not a multiple of 20");
    }

    #[test]
    fn rejects_wrong_piece_count() {
        let bytes = torrent_bytes("d6:lengthi40000e4:name1:a12:piece lengthi16384e#Pe", 2);
        let err = Metainfo::from_bytes(&bytes).unwrap_err();
        assert!(err.contains("piece"), "{err}");
    }

    #[test]
    fn geometry_blocks_cover_pieces_exactly() {
        let g = Geometry::new(3 * 32768 + 100, 32768);
        assert_eq!(g.num_pieces, 4);
        assert_eq!(g.blocks_in_piece(0), 2);
        assert_eq!(g.blocks_in_piece(3), 1);
        assert_eq!(g.block(3, 0), BlockRef::new(3, 0, 100));
        assert!(g.is_valid_block(&BlockRef::new(1, 16384, 16384)));
        assert!(!g.is_valid_block(&BlockRef::new(3, 0, 16384)));
        assert!(!g.is_servable_request(&BlockRef::new(0, 0, 32768)));
        assert!(g.is_servable_request(&BlockRef::new(0, 100, 1000)));
    }
}
