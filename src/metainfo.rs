//! Metainfo: turns a `.torrent` file (or an info dictionary fetched for a magnet link) into a
//! [`Metainfo`]: the info hash (SHA-1 over the raw bytes of `info` as they are in the file), the
//! piece [`Geometry`], the file list with BEP 47 attributes and the paths btd writes (sanitised,
//! never outside the torrent's directory), the trackers and what the file says about itself.
//! Decoding is `bencode::decode`'s; only what the data needs can refuse a torrent, anything
//! optional that is malformed becomes a warning in [`About::warnings`]. Pure: no threads, no
//! sockets, no disk beyond reading the file.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha1::{Digest, Sha1};

use crate::bencode::{self, Kind, Value};
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
    /// A valid torrent of a kind btd does not handle (yet): v2-only, pieces over the limit.
    #[error("{path}: unsupported torrent: {reason}")]
    Unsupported { path: PathBuf, reason: String },
}

/// Why bytes were refused: not a torrent, or a torrent btd does not handle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Invalid(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self::Invalid(reason)
    }
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        Self::Invalid(reason.to_owned())
    }
}

/// The largest piece length we accept: 64 MiB, four times the most any common client makes by
/// default, and the most the disk queue holds. One piece is assembled in memory.
pub const MAX_PIECE_LEN: u32 = 64 * 1024 * 1024;
/// The most pieces we accept (libtorrent's default limit, 2^21): with 64 MiB pieces, 128 TiB.
/// The picker, the bitfields and the piece hashes all grow with it.
pub const MAX_PIECES: u64 = 1 << 21;
/// A path component longer than this many bytes is shortened to it, keeping a short extension,
/// as libtorrent does (file systems allow 255).
pub const MAX_COMPONENT_LEN: usize = 240;
/// Files that would land on one path get `.1`, `.2`, ... before the extension; past this many
/// the torrent is refused (libtorrent gives up too).
const MAX_DUPLICATES: u32 = 100;
/// The name prefix of BitComet's pad files, from before BEP 47's `attr`.
const OLD_PAD_PREFIX: &str = "_____padding_file_";

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

/// BEP 47 file attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileAttr {
    /// `p`: a pad file. Its bytes are zeros; it is never created, read or written.
    pub pad: bool,
    /// `x`: the file is made executable once created.
    pub executable: bool,
    /// `h`: hidden; only shown.
    pub hidden: bool,
    /// `l`: a symbolic link to this path (relative to the download directory, inside the
    /// torrent's directory); the entry holds no bytes.
    pub symlink: Option<PathBuf>,
}

/// One file of the torrent, laid end to end with the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the download directory; starts with the torrent's name. Sanitised.
    pub path: PathBuf,
    pub len: u64,
    /// Offset of the file's first byte in the torrent's concatenated data.
    pub offset: u64,
    pub attr: FileAttr,
}

impl FileEntry {
    /// True when the file is on disk: not a pad file.
    pub fn on_disk(&self) -> bool {
        !self.attr.pad
    }
}

/// What a torrent file says beyond what its data needs: shown to users and RPC clients, never
/// trusted.
#[derive(Clone, Debug, Default)]
pub struct About {
    /// `comment`, empty when absent or not a string.
    pub comment: String,
    /// `created by`, empty when absent or not a string.
    pub created_by: String,
    /// `creation date` (Unix seconds), 0 when absent.
    pub creation_date: i64,
    /// `source` in `info` (private trackers' tag), empty when absent.
    pub source: String,
    /// `url-list` (BEP 19): the web seeds we download from.
    pub web_seeds: Vec<String>,
    /// `httpseeds` (BEP 17, a different protocol we do not speak): only shown.
    pub http_seeds: Vec<String>,
    /// The SHA-256 of `info` when the torrent is a hybrid (v1 and v2, BEP 52).
    pub info_hash_v2: Option<[u8; 32]>,
    /// Each file's path as the torrent gives it (`/`-joined, bad UTF-8 escaped), beside
    /// [`FileEntry::path`].
    pub original_paths: Vec<String>,
    /// What was ignored or changed to load the torrent, one line each.
    pub warnings: Vec<String>,
}

/// A parsed, validated v1 (or hybrid, used as v1) torrent.
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
    /// Comment, creator, creation date, web seeds, warnings (boxed: rarely read, and a
    /// `Metainfo` is moved around whole).
    pub about: Box<About>,
    /// The info dictionary exactly as in the file: what we serve to peers (BEP 9).
    pub info_bytes: Arc<[u8]>,
}

impl Metainfo {
    /// Reads and validates a `.torrent` file.
    ///
    /// # Errors
    /// `Read` when the file cannot be read, `Invalid` (naming the file and the reason) when it is
    /// not a valid torrent, `Unsupported` when it is one btd cannot handle.
    pub fn from_file(path: &Path) -> Result<Self, MetainfoError> {
        let meta = Self::load_file(path)?;
        for warning in &meta.about.warnings {
            log::warn!("{}: {warning}", path.display());
        }
        Ok(meta)
    }

    /// [`Metainfo::from_file`] without logging the warnings (`btd info` prints them).
    ///
    /// # Errors
    /// As [`Metainfo::from_file`].
    pub fn load_file(path: &Path) -> Result<Self, MetainfoError> {
        let bytes = std::fs::read(path).map_err(|source| MetainfoError::Read {
            path: path.to_owned(),
            source,
        })?;
        let meta = Self::load(&bytes).map_err(|refusal| match refusal {
            Refusal::Invalid(reason) => MetainfoError::Invalid {
                path: path.to_owned(),
                reason,
            },
            Refusal::Unsupported(reason) => MetainfoError::Unsupported {
                path: path.to_owned(),
                reason,
            },
        })?;
        Ok(meta)
    }

    /// Parses a torrent from its bencoded bytes.
    ///
    /// # Errors
    /// A message saying what is wrong with the torrent.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        Self::load(bytes).map_err(|refusal| refusal.to_string())
    }

    /// Parses a torrent from its bencoded bytes, saying whether a refusal is of a torrent btd
    /// does not handle.
    ///
    /// # Errors
    /// What is wrong with the torrent, or what btd does not support in it.
    pub fn load(bytes: &[u8]) -> Result<Self, Refusal> {
        let (top, end) =
            bencode::decode_prefix(bytes).map_err(|e| format!("not a bencoded torrent: {e}"))?;
        if !top.is_dict() {
            return Err("not a bencoded dictionary".into());
        }
        let mut warnings = Vec::new();
        if end < bytes.len() {
            warnings.push(format!(
                "{} bytes after the torrent's dictionary ignored",
                bytes.len() - end
            ));
        }
        let info = top.get("info").ok_or("no `info` dictionary")?;
        if !info.is_dict() {
            return Err("`info` is not a dictionary".into());
        }
        let (announce, announce_list) = trackers_of(&top, &mut warnings);
        let mut meta = parse_info(info, warnings)?;
        meta.announce = announce;
        meta.announce_list = announce_list;
        about_of(&top, &mut meta.about);
        Ok(meta)
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

/// A new name for `torrent-rename-path`: one plain component.
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

/// Every component of `path` is a plain name, so joining it to the download directory can
/// never point outside it.
fn check_relative(path: &Path) -> Result<(), String> {
    for component in path.components() {
        match component {
            std::path::Component::Normal(name) => {
                let name = name.to_string_lossy();
                check_component(&name).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            _ => return Err(format!("{}: not a plain relative path", path.display())),
        }
    }
    Ok(())
}

impl Metainfo {
    /// A torrent from an info dictionary fetched from peers (a magnet link) and tracker tiers.
    /// The caller has checked that the bytes hash to the info hash it wanted.
    ///
    /// # Errors
    /// A message saying what is wrong with the info dictionary.
    pub fn from_info_bytes(info: &[u8], trackers: &[Vec<String>]) -> Result<Self, String> {
        let value = bencode::decode(info).map_err(|e| format!("info dictionary: {e}"))?;
        if !value.is_dict() {
            return Err("`info` is not a dictionary".into());
        }
        let mut meta = parse_info(&value, Vec::new()).map_err(|r| r.to_string())?;
        let tiers: Vec<Vec<String>> = trackers
            .iter()
            .filter(|tier| !tier.is_empty())
            .cloned()
            .collect();
        meta.announce = tiers.iter().flatten().next().cloned();
        meta.announce_list = (!tiers.is_empty()).then_some(tiers);
        Ok(meta)
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
            encode_str(&mut bytes, first);
            bytes.extend(b"13:announce-list");
            bytes.push(b'l');
            for tier in &tiers {
                bytes.push(b'l');
                for url in tier {
                    encode_str(&mut bytes, url);
                }
                bytes.push(b'e');
            }
            bytes.push(b'e');
        }
        bytes.extend(b"4:info");
        bytes.extend_from_slice(&self.info_bytes);
        if !self.about.web_seeds.is_empty() {
            bytes.extend(b"8:url-list");
            bytes.push(b'l');
            for url in &self.about.web_seeds {
                encode_str(&mut bytes, url);
            }
            bytes.push(b'e');
        }
        bytes.push(b'e');
        bytes
    }

    /// Adds web seeds (a magnet link's `ws`) after those it has, skipping duplicates.
    pub fn add_web_seeds(&mut self, urls: &[String]) {
        for url in urls {
            if !url.is_empty() && !self.about.web_seeds.contains(url) {
                self.about.web_seeds.push(url.clone());
            }
        }
    }

    /// The v2 info hash (64 hex digits) of a hybrid torrent.
    pub fn info_hash_v2_hex(&self) -> Option<String> {
        self.about.info_hash_v2.map(|h| crate::hex::encode(&h))
    }
}

fn encode_str(out: &mut Vec<u8>, text: &str) {
    out.extend(format!("{}:", text.len()).bytes());
    out.extend(text.as_bytes());
}

/// Everything inside `info`: the data's layout and what BEP 3 requires of it refuse the
/// torrent when wrong, the rest becomes a warning.
fn parse_info(info: &Value<'_>, mut warnings: Vec<String>) -> Result<Metainfo, Refusal> {
    let info_hash = InfoHash(Sha1::digest(info.raw).into());
    let has_v1 = info.get("pieces").is_some();
    let mut info_hash_v2 = None;
    match info.get("meta version").map(Value::as_int) {
        None | Some(Some(1)) => {}
        Some(Some(2)) if has_v1 => {
            use sha2::Digest as _;
            info_hash_v2 = Some(sha2::Sha256::digest(info.raw).into());
        }
        Some(Some(2)) => {
            return Err(Refusal::Unsupported(
                "a v2-only torrent (BEP 52, `meta version` 2): btd cannot handle this version \
                 yet; it loads v1 and hybrid torrents"
                    .into(),
            ));
        }
        Some(Some(n)) => {
            return Err(Refusal::Unsupported(format!(
                "`meta version` {n}: btd cannot handle this version"
            )));
        }
        Some(None) => warnings.push("`meta version` is not an integer; ignored".into()),
    }

    let name_text = utf8_alternative(info, "name")
        .or_else(|| info.get("name").and_then(Value::as_bytes))
        .ok_or(match info.get("name") {
            None => "no `name`",
            Some(_) => "`name` is not a string",
        })?;
    let (raw_name, escaped) = text_of(name_text);
    if escaped {
        warnings.push(format!(
            "the name is not UTF-8 and has no `name.utf-8`: bad bytes written as %XX: {raw_name:?}"
        ));
    }
    let mut name = sanitise_component(&raw_name);
    if name.is_empty() {
        name = info_hash.to_hex();
    }
    if name != raw_name {
        warnings.push(format!("the name {raw_name:?} is written as {name:?}"));
    }

    let piece_len = match info.get("piece length") {
        None => return Err("no `piece length`".into()),
        Some(v) => check_piece_len(v.as_int().ok_or("`piece length` is not an integer")?)?,
    };
    let pieces = match info.get("pieces") {
        None => return Err("no `pieces`".into()),
        Some(v) => v.as_bytes().ok_or("`pieces` is not a byte string")?,
    };
    if pieces.is_empty() {
        return Err("no pieces: `pieces` is empty".into());
    }
    if !pieces.len().is_multiple_of(20) {
        return Err(format!("`pieces` is {} bytes, not a multiple of 20", pieces.len()).into());
    }

    let mut listed = list_files(info, &name, &mut warnings)?;
    resolve_collisions(&mut listed, &mut warnings)?;
    let mut files = Vec::with_capacity(listed.len());
    let mut original_paths = Vec::with_capacity(listed.len());
    let mut offset = 0u64;
    for file in listed {
        files.push(FileEntry {
            path: file.path,
            len: file.len,
            offset,
            attr: file.attr,
        });
        original_paths.push(file.original);
        offset = offset
            .checked_add(file.len)
            .ok_or("total length overflows 64 bits")?;
    }
    if offset == 0 {
        return Err("the torrent holds no data".into());
    }
    check_piece_count(offset, piece_len, pieces.len() / 20)?;
    let piece_hashes = pieces
        .chunks_exact(20)
        .map(|h| <[u8; 20]>::try_from(h).expect("20 bytes"))
        .collect();
    if info_hash_v2.is_some() && !v1_matches_v2(info, &files, &original_paths) {
        warnings.push(
            "the v1 and v2 file lists of this hybrid disagree; btd uses the v1 list (BEP 52)"
                .into(),
        );
    }
    let private = match info.get("private") {
        None => false,
        Some(v) => match v.as_int() {
            Some(n) => n == 1,
            None => {
                warnings.push("`private` is not an integer; ignored".into());
                false
            }
        },
    };
    let source = optional_text(info, "source", &mut warnings);
    Ok(Metainfo {
        info_hash,
        name,
        geometry: Geometry::new(offset, piece_len),
        files,
        piece_hashes,
        announce: None,
        announce_list: None,
        private,
        about: Box::new(About {
            source,
            info_hash_v2,
            original_paths,
            warnings,
            ..About::default()
        }),
        info_bytes: Arc::from(info.raw),
    })
}

/// A file as listed, before offsets.
struct Listed {
    path: PathBuf,
    original: String,
    len: u64,
    attr: FileAttr,
}

/// The files of `info` (`length` or `files`), with sanitised paths under `name`.
fn list_files(
    info: &Value<'_>,
    name: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<Listed>, Refusal> {
    let Some(files) = info.get("files") else {
        let len = match info.get("length") {
            None => return Err("neither `length` nor `files` in `info`".into()),
            Some(v) => file_len(v).map_err(|e| format!("`length` {e}"))?,
        };
        let mut attr = attributes(info);
        attr.symlink = None;
        attr.pad = false;
        return Ok(vec![Listed {
            path: PathBuf::from(name),
            original: name.to_owned(),
            len,
            attr,
        }]);
    };
    let files = files.as_list().ok_or("`files` is not a list")?;
    if files.is_empty() {
        return Err("no files: `files` is empty".into());
    }
    let mut out = Vec::with_capacity(files.len());
    for (index, file) in files.iter().enumerate() {
        if !file.is_dict() {
            return Err(format!("file {index} is not a dictionary").into());
        }
        let mut attr = attributes(file);
        let components = match utf8_alternative_list(file, "path") {
            Some(list) => Some(list),
            None => match file.get("path") {
                None => None,
                Some(path) => Some(
                    text_list(path)
                        .ok_or_else(|| format!("file {index}: `path` is not a list of strings"))?,
                ),
            },
        };
        let original = match &components {
            Some(c) => std::iter::once(name.to_owned())
                .chain(c.iter().map(|(text, _)| text.clone()))
                .collect::<Vec<_>>()
                .join("/"),
            None => String::new(),
        };
        if components
            .as_ref()
            .and_then(|c| c.last())
            .is_some_and(|(last, _)| last.starts_with(OLD_PAD_PREFIX))
        {
            attr.pad = true;
        }
        let len = if attr.symlink.is_some() {
            0
        } else {
            match file.get("length") {
                None => return Err(format!("file {index} has no `length`").into()),
                Some(v) => file_len(v).map_err(|e| format!("file {index}: `length` {e}"))?,
            }
        };
        if attr.pad {
            // Never on disk: a name for display only, inside the torrent's directory.
            out.push(Listed {
                path: Path::new(name).join(".pad").join(len.to_string()),
                original,
                len,
                attr: FileAttr {
                    pad: true,
                    ..FileAttr::default()
                },
            });
            continue;
        }
        let Some(components) = components else {
            return Err(format!("file {index} has no `path`").into());
        };
        if components.iter().any(|(_, escaped)| *escaped) {
            warnings.push(format!(
                "file {index}: path is not UTF-8 and has no `path.utf-8`: bad bytes written as %XX"
            ));
        }
        let mut path = PathBuf::from(name);
        let kept: Vec<String> = components
            .iter()
            .map(|(text, _)| sanitise_component(text))
            .filter(|c| !c.is_empty())
            .collect();
        if kept.is_empty() {
            path.push("_");
        }
        path.extend(&kept);
        if file.get("symlink path").is_some() || attr.symlink.is_some() {
            attr.symlink = symlink_target(file, name, index, attr.symlink.is_some())?;
            // A link's mode is its target's.
            attr.executable &= attr.symlink.is_none();
        }
        out.push(Listed {
            path,
            original,
            len,
            attr,
        });
    }
    Ok(out)
}

/// The BEP 47 `attr` letters of a file (or a single-file `info`); the symlink target is
/// filled in by the caller. Unknown letters are ignored.
fn attributes(dict: &Value<'_>) -> FileAttr {
    let letters = dict.get("attr").and_then(Value::as_bytes).unwrap_or(b"");
    FileAttr {
        pad: letters.contains(&b'p'),
        executable: letters.contains(&b'x'),
        hidden: letters.contains(&b'h'),
        // A placeholder meaning "is a link"; replaced by the target.
        symlink: letters.contains(&b'l').then(PathBuf::new),
    }
}

/// A symlink's target under the download directory, inside the torrent's directory.
fn symlink_target(
    file: &Value<'_>,
    name: &str,
    index: usize,
    is_link: bool,
) -> Result<Option<PathBuf>, Refusal> {
    if !is_link {
        return Ok(None);
    }
    let target = utf8_alternative_list(file, "symlink path")
        .or_else(|| file.get("symlink path").and_then(text_list))
        .ok_or_else(|| format!("file {index}: a symlink without a `symlink path` of strings"))?;
    let mut depth = 0i32;
    for (component, _) in &target {
        if component.starts_with(['/', '\\']) && depth == 0 {
            return Err(format!(
                "file {index}: symlink target is absolute: it would leave the torrent's directory"
            )
            .into());
        }
        for part in component.split(['/', '\\']) {
            match part {
                "" | "." => {}
                ".." => depth -= 1,
                _ => depth += 1,
            }
            if depth < 0 {
                return Err(format!(
                    "file {index}: symlink target {:?} leaves the torrent's directory",
                    target
                        .iter()
                        .map(|(t, _)| t.as_str())
                        .collect::<Vec<_>>()
                        .join("/")
                )
                .into());
            }
        }
    }
    let kept: Vec<String> = target
        .iter()
        .map(|(text, _)| sanitise_component(text))
        .filter(|c| !c.is_empty())
        .collect();
    if kept.is_empty() {
        return Err(format!("file {index}: empty symlink target").into());
    }
    let mut path = PathBuf::from(name);
    path.extend(kept);
    Ok(Some(path))
}

/// A file length: a non-negative integer.
fn file_len(value: &Value<'_>) -> Result<u64, String> {
    match value.as_int() {
        None => Err("is not an integer".into()),
        Some(n) => u64::try_from(n).map_err(|_| format!("{n} is negative")),
    }
}

/// Gives every on-disk file a path of its own: a file where an earlier file (or directory)
/// is gets `.1`, `.2`, ... before its extension. A file inside another file is refused.
fn resolve_collisions(files: &mut [Listed], warnings: &mut Vec<String>) -> Result<(), Refusal> {
    let mut taken: HashSet<PathBuf> = HashSet::new();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    for file in files.iter_mut().filter(|f| !f.attr.pad) {
        let wanted = file.path.clone();
        let mut n = 0;
        while taken.contains(&file.path) || dirs.contains(&file.path) {
            n += 1;
            if n >= MAX_DUPLICATES {
                return Err(format!(
                    "{}: {MAX_DUPLICATES} files at one path, too many duplicate names",
                    wanted.display()
                )
                .into());
            }
            file.path = with_suffix(&wanted, n);
        }
        if let Some(dir) = file.path.ancestors().skip(1).find(|a| taken.contains(*a)) {
            return Err(format!(
                "{}: a file, and also the directory of {}",
                dir.display(),
                file.path.display()
            )
            .into());
        }
        dirs.extend(file.path.ancestors().skip(1).map(Path::to_path_buf));
        taken.insert(file.path.clone());
    }
    for file in files.iter().filter(|f| !f.attr.pad) {
        let shown = file.path.to_string_lossy();
        if !file.original.is_empty() && file.original != shown {
            warnings.push(format!("{:?} is written as {shown:?}", file.original));
        }
    }
    Ok(())
}

/// `dir/bar.txt` -> `dir/bar.N.txt`, `dir/_` -> `dir/_.N`.
fn with_suffix(path: &Path, n: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let renamed = match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{}.{n}{}", &name[..dot], &name[dot..]),
        _ => format!("{name}.{n}"),
    };
    path.with_file_name(renamed)
}

/// One path component as btd writes it: separators dropped and NUL replaced (as libtorrent
/// does), empty for `.`, `..` and nothing at all, shortened past [`MAX_COMPONENT_LEN`].
fn sanitise_component(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| !matches!(c, '/' | '\\'))
        .map(|c| if c == '\0' { '_' } else { c })
        .collect();
    if clean == "." || clean == ".." {
        return String::new();
    }
    shorten(clean)
}

/// A component of at most [`MAX_COMPONENT_LEN`] bytes plus an extension of at most 15, cut at
/// a character boundary.
fn shorten(name: String) -> String {
    if name.len() <= MAX_COMPONENT_LEN {
        return name;
    }
    let ext = match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= 15 => &name[dot..],
        _ => "",
    };
    let stem = &name[..name.len() - ext.len()];
    let mut cut = MAX_COMPONENT_LEN.min(stem.len());
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ext}", &stem[..cut])
}

/// Bytes as text: UTF-8 as it is; otherwise each bad byte (and each `%`) as `%XX`, which
/// loses nothing. True when something was escaped.
fn text_of(bytes: &[u8]) -> (String, bool) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return (text.to_owned(), false);
    }
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' {
                out.push_str("%25");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    (out, true)
}

/// A list of strings as text (see [`text_of`]); None when it is not a list of strings.
fn text_list(value: &Value<'_>) -> Option<Vec<(String, bool)>> {
    value
        .as_list()?
        .iter()
        .map(|c| c.as_bytes().map(text_of))
        .collect()
}

/// `KEY.utf-8` when it is a string of valid UTF-8.
fn utf8_alternative<'a>(dict: &Value<'a>, key: &str) -> Option<&'a [u8]> {
    dict.get(&format!("{key}.utf-8"))
        .and_then(Value::as_bytes)
        .filter(|b| std::str::from_utf8(b).is_ok())
}

/// `KEY.utf-8` when it is a list of strings of valid UTF-8.
fn utf8_alternative_list(dict: &Value<'_>, key: &str) -> Option<Vec<(String, bool)>> {
    text_list(dict.get(&format!("{key}.utf-8"))?).filter(|l| l.iter().all(|(_, esc)| !esc))
}

/// An optional text field: empty when absent, a warning when not a string.
fn optional_text(dict: &Value<'_>, key: &str, warnings: &mut Vec<String>) -> String {
    if let Some(text) = utf8_alternative(dict, key) {
        return String::from_utf8_lossy(text).into_owned();
    }
    match dict.get(key) {
        None => String::new(),
        Some(v) => match v.as_bytes() {
            Some(b) => String::from_utf8_lossy(b).into_owned(),
            None => {
                warnings.push(format!("`{key}` is not a string; ignored"));
                String::new()
            }
        },
    }
}

/// `announce` and `announce-list` (BEP 12): URLs trimmed of white space, empty ones and
/// anything not a string dropped with a warning, a flat list (not of tiers) ignored.
fn trackers_of(
    top: &Value<'_>,
    warnings: &mut Vec<String>,
) -> (Option<String>, Option<Vec<Vec<String>>>) {
    let url = |v: &Value<'_>| {
        v.as_bytes()
            .map(|b| String::from_utf8_lossy(b).trim().to_owned())
            .filter(|u| !u.is_empty())
    };
    let announce = match top.get("announce") {
        None => None,
        Some(v) => {
            let found = url(v);
            if found.is_none() && v.as_bytes().is_none() {
                warnings.push("`announce` is not a string; ignored".into());
            }
            found
        }
    };
    let mut tiers = Vec::new();
    match top.get("announce-list").map(|v| v.as_list()) {
        None => {}
        Some(None) => warnings.push("`announce-list` is not a list; ignored".into()),
        Some(Some(list)) if list.iter().any(|t| t.as_list().is_none()) => {
            warnings.push("`announce-list` is not a list of tiers (lists of URLs); ignored".into())
        }
        Some(Some(list)) => {
            for tier in list.iter().filter_map(Value::as_list) {
                let urls: Vec<String> = tier.iter().filter_map(url).collect();
                if urls.len() < tier.len() {
                    warnings
                        .push("`announce-list` holds an empty or non-string URL; dropped".into());
                }
                if !urls.is_empty() {
                    tiers.push(urls);
                }
            }
        }
    }
    (announce, (!tiers.is_empty()).then_some(tiers))
}

/// Comment, creator, creation date and web seeds from the top level; a malformed one is a
/// warning.
fn about_of(top: &Value<'_>, about: &mut About) {
    let warnings = &mut about.warnings;
    about.comment = optional_text(top, "comment", warnings);
    about.created_by = optional_text(top, "created by", warnings);
    about.creation_date = match top.get("creation date").map(Value::as_int) {
        None => 0,
        Some(Some(t)) => t,
        Some(None) => {
            warnings.push("`creation date` is not an integer; ignored".into());
            0
        }
    };
    for key in ["url-list", "httpseeds"] {
        let Some(value) = top.get(key) else {
            continue;
        };
        let items: Vec<&Value<'_>> = match &value.kind {
            Kind::Bytes(_) => vec![value],
            Kind::List(items) => items.iter().collect(),
            _ => {
                warnings.push(format!(
                    "`{key}` is neither a URL nor a list of URLs; ignored"
                ));
                continue;
            }
        };
        for item in items {
            match item
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
            {
                Some(url) if url.is_empty() => {}
                Some(url) => {
                    let seeds = if key == "url-list" {
                        &mut about.web_seeds
                    } else {
                        &mut about.http_seeds
                    };
                    if !seeds.contains(&url) {
                        seeds.push(url);
                    }
                }
                None => warnings.push(format!("`{key}` holds a non-string; dropped")),
            }
        }
    }
}

/// True when a hybrid's v2 `file tree` lists the same files (paths and lengths, in order) as
/// its v1 list without pad files.
fn v1_matches_v2(info: &Value<'_>, files: &[FileEntry], original_paths: &[String]) -> bool {
    let mut tree = Vec::new();
    let Some(root) = info.get("file tree") else {
        return false;
    };
    if !walk_tree(root, &mut Vec::new(), &mut tree) {
        return false;
    }
    let single = info.get("files").is_none();
    let v1: Vec<(String, u64)> = files
        .iter()
        .zip(original_paths)
        .filter(|(f, _)| !f.attr.pad && f.attr.symlink.is_none())
        .map(|(f, original)| {
            let path = if single {
                original.clone()
            } else {
                original
                    .split_once('/')
                    .map_or(String::new(), |(_, rest)| rest.to_owned())
            };
            (path, f.len)
        })
        .collect();
    let v2: Vec<(String, u64)> = tree.into_iter().filter(|(p, _)| !p.is_empty()).collect();
    v1 == v2
}

/// The files of a v2 `file tree` (BEP 52), `/`-joined, in the tree's order; false when it is
/// malformed.
fn walk_tree(node: &Value<'_>, at: &mut Vec<String>, out: &mut Vec<(String, u64)>) -> bool {
    let Kind::Dict(entries) = &node.kind else {
        return false;
    };
    for (key, child) in entries {
        if key.is_empty() {
            if child
                .get("attr")
                .and_then(Value::as_bytes)
                .is_some_and(|a| a.contains(&b'l'))
            {
                continue;
            }
            let Some(len) = child.get("length").and_then(Value::as_int) else {
                return false;
            };
            let Ok(len) = u64::try_from(len) else {
                return false;
            };
            out.push((at.join("/"), len));
            continue;
        }
        at.push(text_of(key).0);
        let ok = walk_tree(child, at, out);
        at.pop();
        if !ok {
            return false;
        }
    }
    true
}

/// A piece length we can work with: a multiple of the 16 KiB block (BEP 3 allows any length,
/// but every client makes powers of two of at least 16 KiB, and a piece that ends mid-block
/// is a sign of a broken or hostile file), at most [`MAX_PIECE_LEN`].
fn check_piece_len(len: i64) -> Result<u32, Refusal> {
    let over = || {
        Err(Refusal::Unsupported(format!(
            "piece length {len} is over btd's limit of {MAX_PIECE_LEN} (64 MiB)"
        )))
    };
    match u32::try_from(len) {
        Ok(0) => Err(format!("piece length {len}: must be positive").into()),
        Ok(n) if n > MAX_PIECE_LEN => over(),
        Ok(n) if !n.is_multiple_of(BLOCK_LEN) => {
            Err(format!("piece length {len}: not a multiple of 16 KiB ({BLOCK_LEN})").into())
        }
        Ok(n) => Ok(n),
        Err(_) if len < 0 => Err(format!("piece length {len}: must be positive").into()),
        Err(_) => over(),
    }
}

/// `hashes` piece hashes must be exactly what `total` bytes in pieces of `piece_len` need, and
/// that at most [`MAX_PIECES`].
fn check_piece_count(total: u64, piece_len: u32, hashes: usize) -> Result<(), Refusal> {
    let expected = total.div_ceil(u64::from(piece_len));
    if expected > MAX_PIECES {
        return Err(Refusal::Unsupported(format!(
            "{total} bytes in pieces of {piece_len} make {expected} pieces, over btd's limit of \
             {MAX_PIECES}"
        )));
    }
    if u64::try_from(hashes).ok() != Some(expected) {
        return Err(format!(
            "{hashes} piece hashes for {total} bytes in pieces of {piece_len} (expected {expected})"
        )
        .into());
    }
    Ok(())
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
        assert!(file.about.web_seeds.is_empty());
        // A magnet's `ws` web seeds go into the saved torrent's `url-list`.
        let mut with_seeds = again;
        let seeds = vec!["http://w/a".to_string(), "https://x/b/".to_string()];
        with_seeds.add_web_seeds(&seeds);
        with_seeds.add_web_seeds(&seeds[..1]);
        let file = Metainfo::from_bytes(&with_seeds.to_torrent_bytes()).unwrap();
        assert_eq!(file.about.web_seeds, seeds);
        assert_eq!(file.info_hash, meta.info_hash);
        assert!(Metainfo::from_info_bytes(b"d4:name1:ae", &[]).is_err());
    }

    #[test]
    fn unsorted_keys_and_a_trailing_newline_load_hashed_over_the_raw_bytes() {
        let mut bytes = torrent_bytes("d4:name1:a6:lengthi5e12:piece lengthi16384e#Pe", 1);
        bytes.push(b'\n');
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        let info =
            &bytes[bytes.windows(6).position(|w| w == b"4:info").unwrap() + 6..bytes.len() - 2];
        assert_eq!(meta.info_hash.0, <[u8; 20]>::from(Sha1::digest(info)));
        assert!(
            meta.about
                .warnings
                .iter()
                .any(|w| w.contains("1 bytes after")),
            "{:?}",
            meta.about.warnings
        );
        let twice = torrent_bytes("d6:lengthi5e4:name1:a4:name1:b12:piece lengthi16384e#Pe", 1);
        let err = Metainfo::from_bytes(&twice).unwrap_err();
        assert!(err.contains("\"name\" appears twice"), "{err}");
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

    /// The paths btd writes for a multi-file torrent `d` with these `files` entries.
    fn paths(files: &str) -> Vec<String> {
        let info = format!("d5:filesl{files}e4:name1:d12:piece lengthi16384e#Pe");
        let meta = Metainfo::from_bytes(&torrent_bytes(&info, 1)).unwrap();
        for file in &meta.files {
            assert!(file.path.starts_with("d"), "{}", file.path.display());
            assert!(
                file.path
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            );
        }
        meta.files
            .iter()
            .map(|f| f.path.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn sanitises_traversal_absolute_empty_and_separator_components() {
        for (path, want) in [
            ("l2:..1:xe", "d/x"),
            ("l1:a2:..2:..1:xe", "d/a/x"),
            ("l4:/etc6:passwde", "d/etc/passwd"),
            ("l2:\\ae", "d/a"),
            ("l0:e", "d/_"),
            ("l1:.1:.e", "d/_"),
            ("l3:a/be", "d/ab"),
            ("l9:a/../../be", "d/a....b"),
            ("l3:a\0be", "d/a_b"),
        ] {
            assert_eq!(paths(&file(3, path)), vec![want], "{path}");
        }
        let bytes = torrent_bytes("d6:lengthi5e4:name2:..12:piece lengthi16384e#Pe", 1);
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(meta.name, meta.info_hash.to_hex());
        let bytes = torrent_bytes("d6:lengthi5e4:name4:/etc12:piece lengthi16384e#Pe", 1);
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(meta.files[0].path, PathBuf::from("etc"));
        assert!(
            meta.about
                .warnings
                .iter()
                .any(|w| w.contains("\"/etc\" is written as \"etc\""))
        );
    }

    #[test]
    fn duplicate_paths_get_a_suffix_and_a_file_inside_a_file_is_refused() {
        let twice = format!(
            "{}{}{}",
            file(3, "l5:x.txte"),
            file(4, "l5:x.txte"),
            file(4, "l1:_e")
        );
        let more = format!("{twice}{}", file(1, "l1:/e"));
        assert_eq!(paths(&more), vec!["d/x.txt", "d/x.1.txt", "d/_", "d/_.1"]);
        let nested = format!("{}{}", file(3, "l1:a1:be"), file(4, "l1:a1:b1:ce"));
        assert_eq!(
            refusal(&nested, 16384, 1),
            "d/a/b: a file, and also the directory of d/a/b/c"
        );
        let nested_first = format!("{}{}", file(4, "l1:a1:b1:ce"), file(3, "l1:ae"));
        assert_eq!(paths(&nested_first), vec!["d/a/b/c", "d/a.1"]);
        let many: String = (0..=MAX_DUPLICATES).map(|_| file(1, "l1:xe")).collect();
        assert!(refusal(&many, 16384, 1).contains("too many duplicate names"));
        // Siblings with a common prefix of their names are fine.
        let siblings = format!("{}{}", file(3, "l1:ae"), file(4, "l2:abe"));
        assert_eq!(paths(&siblings), vec!["d/a", "d/ab"]);
    }

    #[test]
    fn pieces_that_happen_to_be_utf8_load_from_a_file_and_from_fetched_metadata() {
        let info = b"d6:lengthi5e4:name1:a12:piece lengthi16384e6:pieces20:01234567890123456789e";
        let mut bytes = b"d4:info".to_vec();
        bytes.extend_from_slice(info);
        bytes.push(b'e');
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(&meta.piece_hashes[0], b"01234567890123456789");
        let fetched = Metainfo::from_info_bytes(info, &[]).unwrap();
        assert_eq!(fetched.info_hash, meta.info_hash);
    }

    #[test]
    fn malformed_optional_keys_are_warnings() {
        let info = "d6:lengthi5e4:name1:a12:piece lengthi16384e#P6:source3:ptpe";
        let plain = torrent_bytes(info, 1);
        let head = b"d8:announce14:http://t/a/ann";
        let fields: &[u8] = b"13:announce-listl14:http://t/a/ann9:udp://u:1e7:commenti5e\
            13:creation date3:now8:url-listi-20e";
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(fields);
        bytes.extend_from_slice(&plain[head.len()..]);
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(meta.announce.as_deref(), Some("http://t/a/ann"));
        assert_eq!(meta.announce_list, None);
        assert_eq!(meta.about.source, "ptp");
        assert_eq!(meta.about.comment, "");
        let warned = meta.about.warnings.join("\n");
        for key in ["announce-list", "comment", "creation date", "url-list"] {
            assert!(warned.contains(&format!("`{key}`")), "{key}: {warned}");
        }
        // Web seeds: a string or a list, trimmed, empty ones dropped, duplicates once.
        let seeds = b"d8:url-listl0:4:  u12:u14:v/w/i1ee9:httpseedsl2:u1ee";
        let mut bytes = seeds[..seeds.len() - 1].to_vec();
        bytes.extend_from_slice(&plain[head.len()..]);
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(meta.about.web_seeds, vec!["u1", "v/w/"]);
        assert_eq!(meta.about.http_seeds, vec!["u1"]);
    }

    #[test]
    fn pad_files_by_attribute_or_old_name_are_marked_and_never_named_outside() {
        let files = format!(
            "{}d4:attr1:p6:lengthi16381eed6:lengthi2e4:pathl21:_____padding_file_0_xeed4:attr2:xh6:lengthi9e4:pathl1:beed4:attr1:l6:lengthi0e4:pathl4:link1:ce12:symlink pathl1:bee",
            file(3, "l1:ae")
        );
        let info = format!("d5:filesl{files}e4:name1:d12:piece lengthi16384e#Pe");
        let meta = Metainfo::from_bytes(&torrent_bytes(&info, 2)).unwrap();
        let got: Vec<_> = meta
            .files
            .iter()
            .map(|f| {
                (
                    f.path.to_string_lossy().into_owned(),
                    f.len,
                    f.offset,
                    f.attr.clone(),
                )
            })
            .collect();
        let attr = |pad, executable, hidden, symlink: Option<&str>| FileAttr {
            pad,
            executable,
            hidden,
            symlink: symlink.map(PathBuf::from),
        };
        assert_eq!(
            got,
            vec![
                ("d/a".into(), 3, 0, attr(false, false, false, None)),
                (
                    "d/.pad/16381".into(),
                    16381,
                    3,
                    attr(true, false, false, None)
                ),
                ("d/.pad/2".into(), 2, 16384, attr(true, false, false, None)),
                ("d/b".into(), 9, 16386, attr(false, true, true, None)),
                (
                    "d/link/c".into(),
                    0,
                    16395,
                    attr(false, false, false, Some("d/b"))
                ),
            ]
        );
    }

    #[test]
    fn a_symlink_may_not_point_outside_the_torrent() {
        for target in ["l2:..2:..3:etce", "l4:/etce", "l9:a/../../be"] {
            let files = format!(
                "{}d4:attr1:l4:pathl1:le12:symlink path{target}e",
                file(3, "l1:ae")
            );
            let err = refusal(&files, 16384, 1);
            assert!(err.contains("symlink target"), "{target}: {err}");
        }
        let files = format!("{}d4:attr1:l4:pathl1:lee", file(3, "l1:ae"));
        assert!(refusal(&files, 16384, 1).contains("without a `symlink path`"));
    }

    #[test]
    fn non_utf8_names_use_the_utf8_keys_or_an_escape() {
        let with_alt = b"d4:infod6:lengthi5e4:name2:\xff%10:name.utf-82:ok12:piece lengthi16384e6:pieces20:01234567890123456789ee";
        let meta = Metainfo::from_bytes(with_alt).unwrap();
        assert_eq!(meta.name, "ok");
        let escaped = b"d4:infod6:lengthi5e4:name3:\xff%a12:piece lengthi16384e6:pieces20:01234567890123456789ee";
        let meta = Metainfo::from_bytes(escaped).unwrap();
        assert_eq!(meta.name, "%FF%25a");
        assert!(meta.about.warnings.iter().any(|w| w.contains("not UTF-8")));
        let mut bytes = b"d4:infod5:filesl".to_vec();
        bytes.extend_from_slice(b"d6:lengthi3e4:pathl2:\xfex2:x\xfee10:path.utf-8l1:y1:zee");
        bytes.extend_from_slice(b"d6:lengthi3e4:pathl2:\xfexeee4:name1:d12:piece length");
        bytes.extend_from_slice(b"i16384e6:pieces20:01234567890123456789ee");
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(meta.files[0].path, PathBuf::from("d/y/z"));
        assert_eq!(meta.files[1].path, PathBuf::from("d/%FEx"));
        assert_eq!(meta.about.original_paths[1], "d/%FEx");
    }

    #[test]
    fn long_components_are_shortened_keeping_the_extension() {
        let long = format!("{}.mkv", "n".repeat(300));
        let path = format!("l{}:{long}e", long.len());
        let got = paths(&file(3, &path));
        assert_eq!(
            got,
            vec![format!("d/{}.mkv", "n".repeat(MAX_COMPONENT_LEN))]
        );
        let odd = "é".repeat(200);
        let path = format!("l{}:{odd}e", odd.len());
        let got = &paths(&file(3, &path))[0];
        assert!(got.len() <= 2 + MAX_COMPONENT_LEN, "{got}");
    }

    #[test]
    fn v2_only_and_unknown_versions_are_unsupported_hybrids_load_as_v1() {
        let v2 = b"d4:infod9:file treed1:ad0:d6:lengthi5eeee12:meta versioni2e4:name1:a12:piece lengthi16384eee";
        let err = Metainfo::load(v2).unwrap_err();
        assert!(
            matches!(&err, Refusal::Unsupported(r) if r.contains("v2-only")),
            "{err}"
        );
        let v3 = b"d4:infod12:meta versioni3e4:name1:aee";
        assert!(matches!(Metainfo::load(v3), Err(Refusal::Unsupported(_))));
        let hybrid = |tree: &str| {
            let info = format!(
                "d9:file treed1:ad0:d6:lengthi{tree}eeee6:lengthi5e12:meta versioni2e4:name1:a12:piece lengthi16384e#Pe"
            );
            Metainfo::from_bytes(&torrent_bytes(&info, 1)).unwrap()
        };
        let meta = hybrid("5");
        let v2_hash: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(&meta.info_bytes[..]).into()
        };
        assert_eq!(meta.about.info_hash_v2, Some(v2_hash));
        assert!(meta.about.warnings.is_empty(), "{:?}", meta.about.warnings);
        let disagreeing = hybrid("6");
        assert!(disagreeing.about.warnings[0].contains("disagree"));
        assert_eq!(disagreeing.geometry.total_len, 5);
    }

    #[test]
    fn missing_or_wrong_required_keys_name_the_key() {
        for (info, want) in [
            ("d6:lengthi5e12:piece lengthi16384e#Pe", "no `name`"),
            (
                "d6:lengthi5e4:namei1e12:piece lengthi16384e#Pe",
                "`name` is not a string",
            ),
            ("d6:lengthi5e4:name1:a#Pe", "no `piece length`"),
            (
                "d6:lengthi5e4:name1:a12:piece length5:16384#Pe",
                "`piece length` is not an integer",
            ),
            (
                "d6:lengthl1:5e4:name1:a12:piece lengthi16384e#Pe",
                "`length` is not an integer",
            ),
            (
                "d4:name1:a12:piece lengthi16384e#Pe",
                "neither `length` nor `files`",
            ),
            (
                "d5:filesle4:name1:a12:piece lengthi16384e#Pe",
                "`files` is empty",
            ),
            (
                "d5:filesld6:lengthi5eee4:name1:a12:piece lengthi16384e#Pe",
                "file 0 has no `path`",
            ),
            (
                "d5:filesld6:lengthi5e4:pathli1eeee4:name1:a12:piece lengthi16384e#Pe",
                "not a list of strings",
            ),
        ] {
            let err = Metainfo::from_bytes(&torrent_bytes(info, 1)).unwrap_err();
            assert!(err.contains(want), "{info}: {err}");
        }
        let no_pieces = b"d4:infod6:lengthi5e4:name1:a12:piece lengthi16384eee";
        assert_eq!(Metainfo::from_bytes(no_pieces).unwrap_err(), "no `pieces`");
        let int_pieces = b"d4:infod6:lengthi5e4:name1:a12:piece lengthi16384e6:piecesi-23eee";
        assert_eq!(
            Metainfo::from_bytes(int_pieces).unwrap_err(),
            "`pieces` is not a byte string"
        );
        assert_eq!(
            Metainfo::from_bytes(b"4:spam").unwrap_err(),
            "not a bencoded dictionary"
        );
        assert_eq!(
            Metainfo::from_bytes(b"d4:info4:spame").unwrap_err(),
            "`info` is not a dictionary"
        );
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
            (
                128 << 20,
                "unsupported: piece length 134217728 is over btd's limit of 67108864 (64 MiB)",
            ),
            (1 << 40, "over btd's limit"),
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
            err.contains("68719476736 pieces, over btd's limit of 2097152"),
            "{err}"
        );
        let max = i64::MAX.unsigned_abs();
        let huge = format!("{}{}", file(max, "l1:xe"), file(max, "l1:ye"));
        assert!(refusal(&huge, 16384, 1).contains("over btd's limit"));
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
