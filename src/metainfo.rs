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
        self.0.iter().map(|b| format!("{b:02x}")).collect()
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
        let torrent = Torrent::read_from_bytes(bytes).map_err(|e| e.to_string())?;
        let info_dict = parse_info(info)?;
        let private = matches!(info_dict.get("private"), Some(BencodeElem::Integer(1)));
        check_raw_paths(&info_dict)?;

        check_component(&torrent.name).map_err(|e| format!("name {:?}: {e}", torrent.name))?;
        let piece_len = u32::try_from(torrent.piece_length)
            .ok()
            .filter(|&len| len > 0)
            .ok_or_else(|| format!("piece length {} out of range", torrent.piece_length))?;
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
            if files.iter().any(|f: &FileEntry| f.path == path) {
                return Err(format!("{}: listed twice", path.display()));
            }
            files.push(FileEntry { path, len, offset });
            offset = offset
                .checked_add(len)
                .ok_or("total length overflows 64 bits")?;
        }
        if offset == 0 {
            return Err("the torrent holds no data".into());
        }
        let expected_pieces = offset.div_ceil(u64::from(piece_len));
        if u64::try_from(torrent.pieces.len()).ok() != Some(expected_pieces) {
            return Err(format!(
                "{} piece hashes for {offset} bytes in pieces of {piece_len} (expected {expected_pieces})",
                torrent.pieces.len()
            ));
        }
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
        })
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

/// One path component from a stranger: no separators, no NUL, not `.`/`..`, not empty.
fn check_component(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty path component")
    } else if name == "." || name == ".." {
        Err("path component `.` or `..`")
    } else if name.contains(['/', '\\', '\0']) {
        Err("path component contains a separator or NUL")
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

/// lava_torrent joins path components into a `PathBuf`, which hides empty components and
/// components holding a `/`; check the lists as they are in the file.
fn check_raw_paths(info: &HashMap<String, BencodeElem>) -> Result<(), String> {
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
        for component in path {
            if let BencodeElem::String(name) = component {
                check_component(name).map_err(|e| format!("file path {name:?}: {e}"))?;
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
    fn rejects_path_traversal_and_absolute_paths() {
        for path in ["l2:..1:xe", "l4:/etce", "l0:e", "l3:a/be"] {
            let info =
                format!("d5:filesld6:lengthi3e4:path{path}ee4:name1:d12:piece lengthi16384e#Pe");
            assert!(
                Metainfo::from_bytes(&torrent_bytes(&info, 1)).is_err(),
                "{path}"
            );
        }
        let bytes = torrent_bytes("d6:lengthi5e4:name2:..12:piece lengthi16384e#Pe", 1);
        assert!(Metainfo::from_bytes(&bytes).is_err());
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
