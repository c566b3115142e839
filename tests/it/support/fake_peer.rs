//! A scripted BitTorrent peer for wire-level tests of btd: [`FakePeer`] speaks BEP 3 over a
//! blocking `std` socket on loopback, with every byte it sends written here by hand and every
//! byte btd sends decoded by a small reader here, independent of btd's own `wire` module (a test
//! that used btd's codec on both ends could not catch a bug in it). [`FakeListener`] lets btd
//! dial the fake; [`FakePeer::connect`] dials btd from an address of the fake's own.
//!
//! Also here: [`TorrentMeta`], the few facts of a .torrent the fake needs (info hash, piece
//! length, sizes), read by a hand-written bencode reader, and [`Fixture`], a one-file payload
//! with its torrent made by `btd create`.
//!
//! Every wait takes a deadline; every socket belongs to its value and closes on `Drop`. On a
//! panic, each fake prints what it sent and received.

use super::process::Proc;
use super::{Btd, Rng, SHORT, TempDir, TorrentInfo, hex, test_seed, write_random_file};
use sha1::{Digest as _, Sha1};
use std::ffi::OsString;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A block: the 16 KiB unit of requests (BEP 3).
pub const BLOCK: u32 = 16 * 1024;
/// The largest frame the fake accepts from btd: a bitfield for a few million pieces or a piece
/// message are far below it; anything larger is a bug in btd's framing.
const MAX_FRAME: usize = 2 << 20;
const PSTR: &[u8] = b"BitTorrent protocol";
/// The handshake's length: pstrlen, pstr, 8 reserved bytes, info hash, peer id.
pub const HANDSHAKE_LEN: usize = 1 + 19 + 8 + 20 + 20;
/// Lines of a fake's transcript printed when a test panics.
const TRANSCRIPT_TAIL: usize = 300;

// ---- the torrent ----------------------------------------------------------------------------

/// A bencoded value, with the byte span of each dictionary value (the info hash is the SHA-1 of
/// the `info` value's raw bytes).
#[derive(Debug)]
enum Bencode<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Bencode<'a>>),
    Dict(Vec<(&'a [u8], Bencode<'a>, Range<usize>)>),
}

impl<'a> Bencode<'a> {
    /// Parses the value at `pos`; returns it and the position after it.
    fn parse(buf: &'a [u8], pos: usize, depth: u32) -> Result<(Bencode<'a>, usize), String> {
        if depth > 32 {
            return Err("nested too deep".into());
        }
        let at = |p: usize| {
            buf.get(p)
                .copied()
                .ok_or_else(|| format!("ends inside a value at byte {p}"))
        };
        match at(pos)? {
            b'i' => {
                let end = find(buf, pos + 1, b'e')?;
                let text = std::str::from_utf8(&buf[pos + 1..end]).map_err(|e| e.to_string())?;
                let n = text
                    .parse()
                    .map_err(|e| format!("integer {text:?} at byte {pos}: {e}"))?;
                Ok((Bencode::Int(n), end + 1))
            }
            b'l' => {
                let mut items = Vec::new();
                let mut p = pos + 1;
                while at(p)? != b'e' {
                    let (v, next) = Self::parse(buf, p, depth + 1)?;
                    items.push(v);
                    p = next;
                }
                Ok((Bencode::List(items), p + 1))
            }
            b'd' => {
                let mut entries = Vec::new();
                let mut p = pos + 1;
                while at(p)? != b'e' {
                    let (key, value_start) = Self::parse(buf, p, depth + 1)?;
                    let Bencode::Bytes(key) = key else {
                        return Err(format!("dictionary key at byte {p} is not a string"));
                    };
                    let (value, next) = Self::parse(buf, value_start, depth + 1)?;
                    entries.push((key, value, value_start..next));
                    p = next;
                }
                Ok((Bencode::Dict(entries), p + 1))
            }
            b'0'..=b'9' => {
                let colon = find(buf, pos, b':')?;
                let text = std::str::from_utf8(&buf[pos..colon]).map_err(|e| e.to_string())?;
                let len: usize = text
                    .parse()
                    .map_err(|e| format!("string length {text:?} at byte {pos}: {e}"))?;
                let start = colon + 1;
                let bytes = start
                    .checked_add(len)
                    .and_then(|end| buf.get(start..end))
                    .ok_or_else(|| format!("string at byte {pos} runs past the end"))?;
                Ok((Bencode::Bytes(bytes), start + len))
            }
            other => Err(format!("unexpected byte {other:#04x} at byte {pos}")),
        }
    }

    fn get(&self, key: &str) -> Option<(&Bencode<'a>, &Range<usize>)> {
        match self {
            Bencode::Dict(entries) => entries
                .iter()
                .find(|(k, _, _)| *k == key.as_bytes())
                .map(|(_, v, span)| (v, span)),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            (Bencode::Int(n), _) => Some(*n),
            _ => None,
        }
    }
}

fn find(buf: &[u8], from: usize, byte: u8) -> Result<usize, String> {
    buf.get(from..)
        .and_then(|rest| rest.iter().position(|b| *b == byte))
        .map(|i| from + i)
        .ok_or_else(|| format!("no {:?} after byte {from}", byte as char))
}

/// What the fake needs to know of a torrent, read from the .torrent file by this module.
#[derive(Clone, Debug)]
pub struct TorrentMeta {
    pub info_hash: [u8; 20],
    pub piece_len: u32,
    pub total_len: u64,
    pub num_pieces: u32,
}

impl TorrentMeta {
    /// Reads `torrent`: the info hash is the SHA-1 of the raw `info` value.
    ///
    /// # Panics
    /// When the file cannot be read or is not a v1 torrent this reader understands.
    pub fn read(torrent: &Path) -> TorrentMeta {
        let bytes =
            std::fs::read(torrent).unwrap_or_else(|e| panic!("read {}: {e}", torrent.display()));
        Self::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", torrent.display()))
    }

    fn parse(bytes: &[u8]) -> Result<TorrentMeta, String> {
        let (top, end) = Bencode::parse(bytes, 0, 0)?;
        if end != bytes.len() {
            return Err(format!(
                "{} bytes after the top-level value",
                bytes.len() - end
            ));
        }
        let (info, span) = top.get("info").ok_or("no info dictionary")?;
        let info_hash: [u8; 20] = Sha1::digest(&bytes[span.clone()]).into();
        let piece_len = info.int("piece length").ok_or("no piece length")?;
        let piece_len = u32::try_from(piece_len).map_err(|e| format!("piece length: {e}"))?;
        let pieces = match info.get("pieces") {
            Some((Bencode::Bytes(p), _)) if p.len() % 20 == 0 => p.len() / 20,
            _ => return Err("no pieces string of 20-byte hashes".into()),
        };
        let total_len = match (info.int("length"), info.get("files")) {
            (Some(len), None) => u64::try_from(len).map_err(|e| format!("length: {e}"))?,
            (None, Some((Bencode::List(files), _))) => {
                let mut sum = 0u64;
                for f in files {
                    let len = f.int("length").ok_or("a file without a length")?;
                    sum += u64::try_from(len).map_err(|e| format!("file length: {e}"))?;
                }
                sum
            }
            _ => return Err("neither length nor files".into()),
        };
        let num_pieces = u32::try_from(pieces).map_err(|e| format!("piece count: {e}"))?;
        if total_len.div_ceil(u64::from(piece_len)) != u64::from(num_pieces) {
            return Err(format!(
                "{num_pieces} piece hashes for {total_len} bytes in {piece_len}-byte pieces"
            ));
        }
        Ok(TorrentMeta {
            info_hash,
            piece_len,
            total_len,
            num_pieces,
        })
    }

    /// Bytes in piece `piece` (the last one is usually shorter).
    pub fn piece_size(&self, piece: u32) -> u32 {
        assert!(piece < self.num_pieces, "piece {piece} out of range");
        let start = u64::from(piece) * u64::from(self.piece_len);
        let len = (self.total_len - start).min(u64::from(self.piece_len));
        u32::try_from(len).expect("at most the piece length")
    }

    /// The blocks of a piece, in order: 16 KiB each but maybe the last.
    pub fn blocks_of(&self, piece: u32) -> Vec<Block> {
        let size = self.piece_size(piece);
        (0..size.div_ceil(BLOCK))
            .map(|i| {
                let offset = i * BLOCK;
                Block::new(piece, offset, (size - offset).min(BLOCK))
            })
            .collect()
    }

    /// Every block of the torrent, in order.
    pub fn all_blocks(&self) -> Vec<Block> {
        (0..self.num_pieces)
            .flat_map(|p| self.blocks_of(p))
            .collect()
    }

    /// The torrent's very last block.
    pub fn last_block(&self) -> Block {
        *self
            .blocks_of(self.num_pieces - 1)
            .last()
            .expect("a piece has a block")
    }

    /// ceil(pieces / 8): the only valid bitfield length.
    pub fn bitfield_len(&self) -> usize {
        usize::try_from(self.num_pieces.div_ceil(8)).expect("small")
    }

    /// A bitfield with every piece set and the spare bits clear.
    pub fn full_bitfield(&self) -> Vec<u8> {
        let mut bits = vec![0u8; self.bitfield_len()];
        for p in 0..self.num_pieces {
            bits[(p / 8) as usize] |= 0x80 >> (p % 8);
        }
        bits
    }

    /// Why `b` is not a block of this torrent's grid (16 KiB-aligned, exactly 16 KiB unless it
    /// is the short last block of the last piece), or `Ok`.
    ///
    /// # Errors
    /// A description of what is wrong with the block.
    pub fn check_block(&self, b: Block) -> Result<(), String> {
        if b.piece >= self.num_pieces {
            return Err(format!(
                "{b}: piece out of range ({} pieces)",
                self.num_pieces
            ));
        }
        let size = self.piece_size(b.piece);
        if !b.offset.is_multiple_of(BLOCK) || b.offset >= size {
            return Err(format!(
                "{b}: offset not a block start of a {size}-byte piece"
            ));
        }
        let want = (size - b.offset).min(BLOCK);
        if b.len != want {
            return Err(format!("{b}: length {} where the block is {want}", b.len));
        }
        Ok(())
    }
}

// ---- messages -------------------------------------------------------------------------------

/// A block reference as in request, cancel and (with data) piece messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    pub piece: u32,
    pub offset: u32,
    pub len: u32,
}

impl Block {
    pub const fn new(piece: u32, offset: u32, len: u32) -> Block {
        Block { piece, offset, len }
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}({})", self.piece, self.offset, self.len)
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A message btd sent, as this module's reader understands it.
#[derive(Clone, PartialEq, Eq)]
pub enum Msg {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(Vec<u8>),
    Request(Block),
    Piece {
        piece: u32,
        offset: u32,
        data: Vec<u8>,
    },
    Cancel(Block),
    Port(u16),
    Other {
        id: u8,
        payload: Vec<u8>,
    },
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::KeepAlive => write!(f, "keep-alive"),
            Msg::Choke => write!(f, "choke"),
            Msg::Unchoke => write!(f, "unchoke"),
            Msg::Interested => write!(f, "interested"),
            Msg::NotInterested => write!(f, "not interested"),
            Msg::Have(p) => write!(f, "have {p}"),
            Msg::Bitfield(b) => write!(f, "bitfield [{}]", hex(b)),
            Msg::Request(b) => write!(f, "request {b}"),
            Msg::Piece {
                piece,
                offset,
                data,
            } => write!(f, "piece {piece}+{offset} ({} bytes)", data.len()),
            Msg::Cancel(b) => write!(f, "cancel {b}"),
            Msg::Port(p) => write!(f, "port {p}"),
            Msg::Other { id, payload } => write!(f, "id {id} ({} bytes)", payload.len()),
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("four bytes"))
}

/// Decodes the payload of one frame (everything after the length prefix).
fn decode(frame: &[u8]) -> Result<Msg, String> {
    let Some((&id, rest)) = frame.split_first() else {
        return Ok(Msg::KeepAlive);
    };
    let want = |n: usize| {
        if rest.len() == n {
            Ok(())
        } else {
            Err(format!(
                "message id {id} with {} payload bytes, want {n}",
                rest.len()
            ))
        }
    };
    let block = |r: &[u8]| Block::new(be32(&r[0..4]), be32(&r[4..8]), be32(&r[8..12]));
    Ok(match id {
        0 => want(0).map(|()| Msg::Choke)?,
        1 => want(0).map(|()| Msg::Unchoke)?,
        2 => want(0).map(|()| Msg::Interested)?,
        3 => want(0).map(|()| Msg::NotInterested)?,
        4 => want(4).map(|()| Msg::Have(be32(rest)))?,
        5 => Msg::Bitfield(rest.to_vec()),
        6 => want(12).map(|()| Msg::Request(block(rest)))?,
        7 => {
            if rest.len() < 8 {
                return Err(format!("piece message of {} payload bytes", rest.len()));
            }
            Msg::Piece {
                piece: be32(&rest[0..4]),
                offset: be32(&rest[4..8]),
                data: rest[8..].to_vec(),
            }
        }
        8 => want(12).map(|()| Msg::Cancel(block(rest)))?,
        9 => want(2).map(|()| Msg::Port(u16::from_be_bytes([rest[0], rest[1]])))?,
        _ => Msg::Other {
            id,
            payload: rest.to_vec(),
        },
    })
}

/// A frame: 4-byte big-endian length (id + payload), id, payload.
pub fn frame(id: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(1 + payload.len()).expect("frame fits a length prefix");
    let mut out = Vec::with_capacity(5 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.push(id);
    out.extend_from_slice(payload);
    out
}

fn block_payload(b: Block) -> Vec<u8> {
    [b.piece, b.offset, b.len]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect()
}

/// The 68-byte handshake: pstrlen 19, "BitTorrent protocol", 8 zero reserved bytes, info hash,
/// peer id.
pub fn handshake_bytes(info_hash: &[u8; 20], peer_id: &[u8; 20]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HANDSHAKE_LEN);
    out.push(19);
    out.extend_from_slice(PSTR);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(info_hash);
    out.extend_from_slice(peer_id);
    out
}

/// A peer id no other fake of this test process uses: btd refuses a second connection with a
/// peer id it is already connected to.
fn fresh_peer_id() -> [u8; 20] {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let text = format!(
        "-FK0001-{:06}{:06}",
        std::process::id() % 1_000_000,
        n % 1_000_000
    );
    text.as_bytes().try_into().expect("20 bytes")
}

// ---- the fake peer --------------------------------------------------------------------------

/// What one read of the fake brought.
#[derive(Debug)]
pub enum Recv {
    Msg(Msg),
    /// The deadline passed first.
    Timeout,
    /// End of stream or a reset (the text says which).
    Closed(String),
}

/// One connection to btd, driven step by step by a test.
pub struct FakePeer {
    name: String,
    stream: TcpStream,
    buf: Vec<u8>,
    closed: Option<String>,
    peer_id: [u8; 20],
    started: Instant,
    transcript: Vec<String>,
}

impl FakePeer {
    fn new(name: &str, stream: TcpStream) -> FakePeer {
        stream
            .set_nodelay(true)
            .unwrap_or_else(|e| panic!("{name}: nodelay: {e}"));
        stream
            .set_write_timeout(Some(SHORT))
            .unwrap_or_else(|e| panic!("{name}: write timeout: {e}"));
        let mut p = FakePeer {
            name: name.to_string(),
            stream,
            buf: Vec::new(),
            closed: None,
            peer_id: fresh_peer_id(),
            started: Instant::now(),
            transcript: Vec::new(),
        };
        let (local, remote) = (p.local_addr(), p.stream.peer_addr());
        p.note(format!("connected {local} <-> {remote:?}"));
        p
    }

    /// Dials `to` from `from` (port chosen by the kernel), within [`SHORT`].
    ///
    /// # Panics
    /// When the connection cannot be made.
    pub fn connect(name: &str, from: Ipv4Addr, to: SocketAddr) -> FakePeer {
        let stream = super::connect_from(from, to)
            .unwrap_or_else(|e| panic!("{name}: connect {from} -> {to}: {e}"));
        FakePeer::new(name, stream)
    }

    /// Dials btd at `to` and exchanges handshakes (ours first), dialling again from a fresh
    /// port every 20 ms while btd closes the connection before its handshake, until `deadline`.
    /// For the first connection to a btd that just logged `listening on`: it logs that before
    /// its torrent is registered with the listener, and a handshake that arrives in between is
    /// dropped as one "for unknown torrent".
    ///
    /// # Panics
    /// When there is still no handshake at `deadline`, or btd answers with something else.
    pub fn connect_when_ready(
        name: &str,
        from: Ipv4Addr,
        to: SocketAddr,
        info_hash: &[u8; 20],
        deadline: Instant,
    ) -> FakePeer {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut fake = FakePeer::connect(name, from, to);
            fake.send_handshake(info_hash);
            if fake.handshake_or_closed(info_hash, deadline).is_some() {
                if attempts > 1 {
                    fake.note(format!("btd answered on attempt {attempts}"));
                }
                return fake;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: btd at {to} closed {attempts} connections before its handshake\n{}",
                fake.transcript()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn peer_id(&self) -> [u8; 20] {
        self.peer_id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    fn note(&mut self, line: String) {
        let ms = self.started.elapsed().as_millis();
        self.transcript.push(format!("{ms:>6} ms  {line}"));
    }

    /// The last lines of what the fake sent (`->`) and received (`<-`).
    pub fn transcript(&self) -> String {
        let skip = self.transcript.len().saturating_sub(TRANSCRIPT_TAIL);
        let mut out = format!("--- fake peer {}", self.name);
        if skip > 0 {
            out.push_str(&format!(" ({skip} earlier lines left out)"));
        }
        out.push('\n');
        for line in &self.transcript[skip..] {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    // ---- sending ----

    /// Writes `bytes`; the error is the caller's (for a peer btd may already have dropped).
    ///
    /// # Errors
    /// The socket's write error.
    pub fn try_send_raw(&mut self, what: &str, bytes: &[u8]) -> std::io::Result<()> {
        let result = self.stream.write_all(bytes);
        match &result {
            Ok(()) => self.note(format!("-> {what}")),
            Err(e) => self.note(format!("-> {what}: write failed: {e}")),
        }
        result
    }

    /// Writes `bytes`, labelled `what` in the transcript.
    ///
    /// # Panics
    /// When the write fails.
    pub fn send_raw(&mut self, what: &str, bytes: &[u8]) {
        if let Err(e) = self.try_send_raw(what, bytes) {
            panic!("{}: write {what}: {e}\n{}", self.name, self.transcript());
        }
    }

    pub fn send_handshake(&mut self, info_hash: &[u8; 20]) {
        let bytes = handshake_bytes(info_hash, &self.peer_id);
        self.send_raw("handshake", &bytes);
    }

    pub fn send_keep_alive(&mut self) {
        self.send_raw("keep-alive", &[0, 0, 0, 0]);
    }

    pub fn send_choke(&mut self) {
        self.send_raw("choke", &frame(0, &[]));
    }

    pub fn send_unchoke(&mut self) {
        self.send_raw("unchoke", &frame(1, &[]));
    }

    pub fn send_interested(&mut self) {
        self.send_raw("interested", &frame(2, &[]));
    }

    pub fn send_not_interested(&mut self) {
        self.send_raw("not interested", &frame(3, &[]));
    }

    pub fn send_have(&mut self, piece: u32) {
        self.send_raw(&format!("have {piece}"), &frame(4, &piece.to_be_bytes()));
    }

    pub fn send_bitfield(&mut self, bits: &[u8]) {
        self.send_raw(&format!("bitfield [{}]", hex(bits)), &frame(5, bits));
    }

    pub fn send_request(&mut self, b: Block) {
        self.send_raw(&format!("request {b}"), &frame(6, &block_payload(b)));
    }

    /// A piece message carrying `data` as block `piece`+`offset`; the error is the caller's.
    ///
    /// # Errors
    /// The socket's write error.
    pub fn try_send_piece(&mut self, piece: u32, offset: u32, data: &[u8]) -> std::io::Result<()> {
        let mut payload = Vec::with_capacity(8 + data.len());
        payload.extend_from_slice(&piece.to_be_bytes());
        payload.extend_from_slice(&offset.to_be_bytes());
        payload.extend_from_slice(data);
        let what = format!("piece {piece}+{offset} ({} bytes)", data.len());
        self.try_send_raw(&what, &frame(7, &payload))
    }

    pub fn send_piece(&mut self, piece: u32, offset: u32, data: &[u8]) {
        if let Err(e) = self.try_send_piece(piece, offset, data) {
            panic!(
                "{}: write piece {piece}+{offset}: {e}\n{}",
                self.name,
                self.transcript()
            );
        }
    }

    pub fn send_cancel(&mut self, b: Block) {
        self.send_raw(&format!("cancel {b}"), &frame(8, &block_payload(b)));
    }

    /// Ends our half of the connection (a FIN): btd reads end of stream, and can still write.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.note("-> end of stream (shutdown write)".into());
    }

    // ---- receiving ----

    /// Reads more bytes into the buffer, waiting at most until `deadline`. False when nothing
    /// came (timeout or closed; `self.closed` tells which).
    fn read_more(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(Some(wait))
            .unwrap_or_else(|e| panic!("{}: read timeout: {e}", self.name));
        let mut chunk = [0u8; 32 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = Some("end of stream".into());
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                false
            }
            Err(e) => {
                self.closed = Some(format!("{e} ({:?})", e.kind()));
                false
            }
        }
    }

    fn closed_reason(&mut self) -> String {
        let reason = self.closed.clone().unwrap_or_default();
        if self.buf.is_empty() {
            reason
        } else {
            format!(
                "{reason}, {} bytes of a message left unread",
                self.buf.len()
            )
        }
    }

    /// The next 68 bytes as a handshake, or why there is none.
    fn read_handshake(
        &mut self,
        info_hash: &[u8; 20],
        deadline: Instant,
    ) -> Result<[u8; 20], String> {
        while self.buf.len() < HANDSHAKE_LEN {
            if !self.read_more(deadline) {
                return Err(match &self.closed {
                    Some(_) => format!("closed before a handshake: {}", self.closed_reason()),
                    None => format!(
                        "no handshake before the deadline ({} bytes)",
                        self.buf.len()
                    ),
                });
            }
        }
        let h: Vec<u8> = self.buf.drain(..HANDSHAKE_LEN).collect();
        if h[0] != 19 || &h[1..20] != PSTR {
            return Err(format!("not a BitTorrent handshake: {}", hex(&h[..20])));
        }
        if &h[28..48] != info_hash {
            return Err(format!(
                "handshake for info hash {}, want {}",
                hex(&h[28..48]),
                hex(info_hash)
            ));
        }
        let id: [u8; 20] = h[48..68].try_into().expect("20 bytes");
        self.note(format!(
            "<- handshake, reserved {}, peer id {}",
            hex(&h[20..28]),
            String::from_utf8_lossy(&id)
        ));
        Ok(id)
    }

    /// Reads btd's handshake and checks its protocol string and info hash; returns its peer id.
    ///
    /// # Panics
    /// On anything else, or nothing by `deadline`.
    pub fn expect_handshake(&mut self, info_hash: &[u8; 20], deadline: Instant) -> [u8; 20] {
        self.read_handshake(info_hash, deadline)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", self.name, self.transcript()))
    }

    /// Like [`FakePeer::expect_handshake`], but a close before the handshake is an answer:
    /// `None`.
    pub fn handshake_or_closed(
        &mut self,
        info_hash: &[u8; 20],
        deadline: Instant,
    ) -> Option<[u8; 20]> {
        match self.read_handshake(info_hash, deadline) {
            Ok(id) => Some(id),
            Err(_) if self.closed.is_some() => None,
            Err(e) => panic!("{}: {e}\n{}", self.name, self.transcript()),
        }
    }

    /// One message from the buffer, if a whole one is there.
    fn take_buffered(&mut self) -> Option<Msg> {
        let prefix: [u8; 4] = self.buf.get(..4)?.try_into().expect("four bytes");
        let len = usize::try_from(u32::from_be_bytes(prefix)).expect("usize holds u32");
        if len > MAX_FRAME {
            panic!(
                "{}: btd sent a length prefix of {len} bytes\n{}",
                self.name,
                self.transcript()
            );
        }
        if self.buf.len() < 4 + len {
            return None;
        }
        let frame: Vec<u8> = self.buf.drain(..4 + len).collect();
        match decode(&frame[4..]) {
            Ok(msg) => Some(msg),
            Err(e) => panic!(
                "{}: btd sent a malformed message: {e}\n{}",
                self.name,
                self.transcript()
            ),
        }
    }

    /// The next message (keep-alives included), a timeout, or the end of the connection.
    pub fn recv(&mut self, deadline: Instant) -> Recv {
        loop {
            if let Some(msg) = self.take_buffered() {
                self.note(format!("<- {msg:?}"));
                return Recv::Msg(msg);
            }
            if !self.read_more(deadline) {
                if self.closed.is_some() {
                    let reason = self.closed_reason();
                    self.note(format!("<- closed: {reason}"));
                    return Recv::Closed(reason);
                }
                if Instant::now() >= deadline {
                    return Recv::Timeout;
                }
            }
        }
    }

    /// The next message other than a keep-alive.
    ///
    /// # Panics
    /// When the deadline passes or the connection ends first.
    pub fn next_message(&mut self, deadline: Instant) -> Msg {
        loop {
            match self.recv(deadline) {
                Recv::Msg(Msg::KeepAlive) => {}
                Recv::Msg(m) => return m,
                Recv::Timeout => panic!(
                    "{}: timed out waiting for a message from btd\n{}",
                    self.name,
                    self.transcript()
                ),
                Recv::Closed(why) => panic!(
                    "{}: btd closed the connection ({why}) while a message was expected\n{}",
                    self.name,
                    self.transcript()
                ),
            }
        }
    }

    /// Reads until `f` accepts a message (returned); the messages before it are returned too.
    ///
    /// # Panics
    /// With `what` when the deadline passes or the connection ends first.
    pub fn wait_for(
        &mut self,
        deadline: Instant,
        what: &str,
        mut f: impl FnMut(&Msg) -> bool,
    ) -> (Msg, Vec<Msg>) {
        let mut before = Vec::new();
        loop {
            match self.recv(deadline) {
                Recv::Msg(m) if f(&m) => return (m, before),
                Recv::Msg(m) => before.push(m),
                Recv::Timeout => panic!(
                    "{}: timed out waiting for {what}\n{}",
                    self.name,
                    self.transcript()
                ),
                Recv::Closed(why) => panic!(
                    "{}: btd closed the connection ({why}) before {what}\n{}",
                    self.name,
                    self.transcript()
                ),
            }
        }
    }

    /// Everything btd sends until `deadline` (keep-alives left out), and whether (and why) the
    /// connection ended before it.
    pub fn collect_until(&mut self, deadline: Instant) -> (Vec<Msg>, Option<String>) {
        let mut got = Vec::new();
        loop {
            match self.recv(deadline) {
                Recv::Msg(Msg::KeepAlive) => {}
                Recv::Msg(m) => got.push(m),
                Recv::Timeout => return (got, None),
                Recv::Closed(why) => return (got, Some(why)),
            }
        }
    }

    /// Reads until btd closes the connection (end of stream or reset); returns what came
    /// before (keep-alives left out).
    ///
    /// # Panics
    /// When the connection is still open at `deadline`.
    pub fn expect_closed(&mut self, deadline: Instant) -> Vec<Msg> {
        let (got, closed) = self.collect_until(deadline);
        if closed.is_none() {
            panic!(
                "{}: btd did not close the connection in time\n{}",
                self.name,
                self.transcript()
            );
        }
        got
    }

    /// True once a read has seen the end of the connection.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.transcript());
        }
    }
}

/// A listening socket on a loopback address of the fake's own, for btd to dial (`--peer`).
pub struct FakeListener {
    name: String,
    listener: TcpListener,
    addr: SocketAddr,
}

/// Whether the first bytes on `stream` (peeked, not consumed) are the start of a plaintext
/// handshake: its length byte and "BitTorrent protocol". False on anything else, on end of
/// stream, and when fewer than 20 bytes came by `deadline`.
fn starts_plaintext(stream: &TcpStream, deadline: Instant) -> bool {
    const PSTR: &[u8; 20] = b"\x13BitTorrent protocol";
    let mut buf = [0u8; 20];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.peek(&mut buf) {
            Ok(0) => return false,
            Ok(n) if n >= PSTR.len() => return buf == *PSTR,
            Ok(n) if buf[..n] != PSTR[..n] => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

impl FakeListener {
    /// Listens on `ip`, port chosen by the kernel.
    ///
    /// # Panics
    /// When the address cannot be bound.
    pub fn bind(name: &str, ip: Ipv4Addr) -> FakeListener {
        let listener =
            TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("{name}: bind {ip}: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{name}: nonblocking: {e}"));
        let addr = listener.local_addr().expect("local address");
        FakeListener {
            name: name.to_string(),
            listener,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next incoming connection, blocking, or `None` at `deadline`. Polls every 10 ms.
    fn next_stream(&self, deadline: Instant) -> Option<TcpStream> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .unwrap_or_else(|e| panic!("{}: blocking: {e}", self.name));
                    return Some(stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("{}: accept: {e}", self.name),
            }
        }
    }

    /// The next incoming connection that starts with a plaintext BitTorrent handshake, or
    /// `None` at `deadline`. Like a client without message stream encryption, the fake closes
    /// a connection that starts otherwise (btd's encrypted first attempt), and btd dials again
    /// in plaintext.
    pub fn try_accept(&self, deadline: Instant) -> Option<FakePeer> {
        while let Some(stream) = self.next_stream(deadline) {
            if starts_plaintext(&stream, deadline) {
                return Some(FakePeer::new(&self.name, stream));
            }
        }
        None
    }

    /// Whether anyone connects by `deadline` (the connection is closed at once).
    pub fn dialled_by(&self, deadline: Instant) -> bool {
        self.next_stream(deadline).is_some()
    }

    /// Whether the next incoming connection starts with a plaintext BitTorrent handshake
    /// (`false`: an MSE one, or it closed first); the connection is closed after.
    ///
    /// # Panics
    /// When none comes by `deadline`.
    pub fn next_opens_in_plaintext(&self, deadline: Instant) -> bool {
        let stream = self.next_stream(deadline).unwrap_or_else(|| {
            panic!(
                "{}: btd did not connect to {} in time",
                self.name, self.addr
            )
        });
        starts_plaintext(&stream, deadline)
    }

    /// The next incoming connection.
    ///
    /// # Panics
    /// When none comes by `deadline`.
    pub fn accept(&self, deadline: Instant) -> FakePeer {
        self.try_accept(deadline).unwrap_or_else(|| {
            panic!(
                "{}: btd did not connect to {} in time",
                self.name, self.addr
            )
        })
    }
}

// ---- peer exchange ---------------------------------------------------------------------------

/// An IPv4 address as a compact peer (BEP 23): 4 address bytes, then the port, big-endian.
pub fn compact_v4(addr: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 expected: {addr}")
    };
    let mut out = v4.ip().octets().to_vec();
    out.extend(v4.port().to_be_bytes());
    out
}

/// For a fake btd dialled (its handshake already read): answers with a handshake with the
/// BEP 10 bit, waits for btd's extended handshake and sends `ours` as the fake's (the
/// dictionary after the extended id).
pub fn extend_with_btd(fake: &mut FakePeer, info_hash: &[u8; 20], ours: &[u8]) {
    let mut hs = handshake_bytes(info_hash, &fake.peer_id());
    hs[20 + 5] |= 0x10;
    fake.send_raw("handshake with the extension bit", &hs);
    fake.wait_for(
        Instant::now() + SHORT,
        "btd's extended handshake",
        |m| matches!(m, Msg::Other { id: 20, payload } if payload.first() == Some(&0)),
    );
    let mut ext = vec![0u8];
    ext.extend_from_slice(ours);
    fake.send_raw("extended handshake", &frame(20, &ext));
}

/// [`extend_with_btd`] offering `ut_pex` under id 5. `ut_pex` messages to btd then go under
/// btd's id 2 (its `m`).
pub fn take_pex_from_btd(fake: &mut FakePeer, info_hash: &[u8; 20]) {
    extend_with_btd(fake, info_hash, b"d1:md6:ut_pexi5eee");
}

/// The `added` IPv4 peers of a `ut_pex` dictionary (the payload after the extended id), each
/// with its `added.f` flag byte (BEP 11; 0 when `added.f` is short), read by this module's own
/// bencode reader.
///
/// # Errors
/// When the bytes are not a bencoded dictionary or `added` is not whole 6-byte entries.
pub fn pex_added_v4(dict: &[u8]) -> Result<Vec<(SocketAddr, u8)>, String> {
    let (value, _) = Bencode::parse(dict, 0, 0)?;
    let bytes = |key: &str| match value.get(key) {
        Some((Bencode::Bytes(b), _)) => Ok(*b),
        None => Ok(&[][..]),
        Some(other) => Err(format!("{key} is not a string: {other:?}")),
    };
    let (added, flags) = (bytes("added")?, bytes("added.f")?);
    if added.len() % 6 != 0 {
        return Err(format!("added is {} bytes", added.len()));
    }
    Ok(added
        .chunks_exact(6)
        .enumerate()
        .map(|(i, c)| {
            let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
            let port = u16::from_be_bytes([c[4], c[5]]);
            (
                SocketAddr::from((ip, port)),
                flags.get(i).copied().unwrap_or(0),
            )
        })
        .collect())
}

// ---- payload, torrent and btd -------------------------------------------------------------

/// A one-file payload of pseudo-random bytes under `<tmp>/seed/<name>`, its torrent made by
/// `btd create` with the given piece length, and the bytes themselves for the fake to serve.
pub struct Fixture {
    pub tmp: TempDir,
    pub seed_dir: PathBuf,
    pub name: String,
    pub torrent: PathBuf,
    pub meta: TorrentMeta,
    pub data: Vec<u8>,
}

impl Fixture {
    /// # Panics
    /// When `btd create` fails or this module reads the torrent differently from libtorrent.
    pub fn new(test: &str, len: u64, piece_len: u32) -> Fixture {
        let tmp = TempDir::new(test);
        let mut rng = Rng::new(test_seed(test));
        let seed_dir = tmp.subdir("seed");
        let name = format!("{test}.bin");
        let payload = seed_dir.join(&name);
        write_random_file(&payload, len, &mut rng);
        let torrent = tmp.path().join(format!("{test}.torrent"));
        Btd::run([
            OsString::from("create"),
            payload.clone().into(),
            "-o".into(),
            torrent.clone().into(),
            "--piece-length".into(),
            piece_len.to_string().into(),
        ])
        .assert_success();
        let meta = TorrentMeta::read(&torrent);
        // The fake reads torrents with its own bencode reader; libtorrent must agree with it.
        let lt = TorrentInfo::read(&torrent);
        assert_eq!(hex(&meta.info_hash), lt.info_hash, "info hash of {test}");
        assert_eq!(u64::from(meta.piece_len), lt.piece_length);
        assert_eq!(meta.total_len, lt.total_size);
        assert_eq!(u64::from(meta.num_pieces), lt.num_pieces);
        let data =
            std::fs::read(&payload).unwrap_or_else(|e| panic!("read {}: {e}", payload.display()));
        Fixture {
            tmp,
            seed_dir,
            name,
            torrent,
            meta,
            data,
        }
    }

    /// The payload file in the seed directory.
    pub fn payload(&self) -> PathBuf {
        self.seed_dir.join(&self.name)
    }

    /// A fresh directory for a downloader.
    pub fn out_dir(&self, label: &str) -> PathBuf {
        self.tmp.subdir(label)
    }

    /// The payload's bytes of block `b`.
    pub fn block_data(&self, b: Block) -> &[u8] {
        let start = u64::from(b.piece) * u64::from(self.meta.piece_len) + u64::from(b.offset);
        let start = usize::try_from(start).expect("small payload");
        &self.data[start..start + b.len as usize]
    }
}

/// `btd ARGS... --bind IP --port 0 [--peer ADDR]...`, logging at `debug` (per-peer lifecycle:
/// the evidence when a wire test fails) unless `RUST_LOG` says otherwise.
fn btd(name: &str, mut args: Vec<OsString>, ip: Ipv4Addr, peers: &[SocketAddr]) -> Btd {
    args.extend([
        "--bind".into(),
        ip.to_string().into(),
        "--port".into(),
        "0".into(),
    ]);
    for p in peers {
        args.extend(["--peer".into(), p.to_string().into()]);
    }
    let mut cmd = Btd::command(args);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "btd=debug");
    }
    Btd {
        proc: Proc::spawn(name, cmd),
    }
}

/// `btd download TORRENT -o OUT --bind IP --port 0 [--peer ADDR]...` at debug level.
pub fn btd_download(
    name: &str,
    torrent: &Path,
    out: &Path,
    ip: Ipv4Addr,
    peers: &[SocketAddr],
) -> Btd {
    let args = vec!["download".into(), torrent.into(), "-o".into(), out.into()];
    btd(name, args, ip, peers)
}

/// `btd download TORRENT -o OUT EXTRA... --bind IP --port 0 [--peer ADDR]...` at debug level:
/// [`btd_download`] with more options (`--metadata-timeout 3`). `torrent` may be a magnet link.
pub fn btd_download_with(
    name: &str,
    torrent: &str,
    out: &Path,
    extra: &[&str],
    ip: Ipv4Addr,
    peers: &[SocketAddr],
) -> Btd {
    let mut args: Vec<OsString> = vec!["download".into(), torrent.into(), "-o".into(), out.into()];
    args.extend(extra.iter().map(OsString::from));
    btd(name, args, ip, peers)
}

/// `btd seed TORRENT -d DIR --bind IP --port 0 [--peer ADDR]...` at debug level.
pub fn btd_seed(name: &str, torrent: &Path, dir: &Path, ip: Ipv4Addr, peers: &[SocketAddr]) -> Btd {
    let args = vec!["seed".into(), torrent.into(), "-d".into(), dir.into()];
    btd(name, args, ip, peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_reader_finds_the_info_span_and_sizes() {
        let torrent = b"d8:announce3:url4:infod6:lengthi40000e4:name1:x12:piece lengthi32768e\
                        6:pieces40:0123456789012345678901234567890123456789ee";
        let meta = TorrentMeta::parse(torrent).expect("parses");
        let start = torrent
            .windows(5)
            .position(|w| w == b"infod")
            .expect("info")
            + 4;
        let info = &torrent[start..torrent.len() - 1];
        let want: [u8; 20] = Sha1::digest(info).into();
        assert_eq!(meta.info_hash, want);
        assert_eq!(
            (meta.piece_len, meta.total_len, meta.num_pieces),
            (32768, 40000, 2)
        );
        assert_eq!(meta.blocks_of(1), vec![Block::new(1, 0, 40000 - 32768)]);
        assert_eq!(meta.full_bitfield(), vec![0xc0]);
        assert!(meta.check_block(Block::new(0, 16384, 16384)).is_ok());
        assert!(meta.check_block(Block::new(1, 0, 16384)).is_err());
        assert!(meta.check_block(Block::new(0, 8192, 16384)).is_err());
    }

    #[test]
    fn frames_are_decoded_as_written() {
        let b = Block::new(7, 16384, 16384);
        assert_eq!(
            decode(&frame(6, &block_payload(b))[4..]),
            Ok(Msg::Request(b))
        );
        assert_eq!(
            decode(&frame(4, &9u32.to_be_bytes())[4..]),
            Ok(Msg::Have(9))
        );
        assert!(decode(&frame(1, &[0])[4..]).is_err());
        assert_eq!(
            frame(8, &block_payload(b)),
            [0, 0, 0, 13, 8, 0, 0, 0, 7, 0, 0, 0x40, 0, 0, 0, 0x40, 0]
        );
    }
}
