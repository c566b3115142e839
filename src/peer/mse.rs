//! Message stream encryption (MSE, also called PE or "protocol obfuscation"), the handshake every
//! major client speaks before the BitTorrent handshake: a Diffie-Hellman exchange over a fixed
//! 768-bit prime, then RC4 keyed from the shared secret and the info hash. This module owns the
//! handshake on both sides ([`initiate`], [`respond`]) and the stream that comes out of it
//! ([`CryptoStream`]), which reads and writes plaintext over any byte stream whatever was
//! negotiated (RC4 for the whole connection, or RC4 for the handshake only).
//!
//! The handshake, A the initiator and B the responder (`S` is the shared secret, `SKEY` the info
//! hash, `HASH` SHA-1 over the concatenation, `ENCRYPT` RC4 with `HASH("keyA", S, SKEY)` from A and
//! `HASH("keyB", S, SKEY)` from B, the first 1024 bytes of each key stream discarded):
//! ```text
//! 1 A->B: Ya, PadA
//! 2 B->A: Yb, PadB
//! 3 A->B: HASH("req1", S), HASH("req2", SKEY) xor HASH("req3", S),
//!         ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! 4 B->A: ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload...)
//! ```
//! Pads are 0-512 random bytes; `VC` is eight zero bytes; each side finds where the other's
//! pad ends by searching for a value it can compute (B for `HASH("req1", S)`, A for `ENCRYPT(VC)`)
//! within the bounds the pads allow, so a peer that never sends it is dropped after a bounded
//! number of bytes. `IA` carries A's BitTorrent handshake, so no round trip is lost.
//!
//! Cost for a hostile initiator: B does one modular exponentiation (a 160-bit exponent, well under
//! a millisecond) per connection after reading 96 bytes, and reads at most
//! [`MAX_RESPONDER_READ`] bytes before it knows the torrent; how many handshakes run at once is the
//! listener's handshake slot limit.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use num_bigint::BigUint;
use rand::RngExt;
use rc4::{KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};

/// The prime of the Diffie-Hellman exchange (768 bits), big-endian.
const PRIME: [u8; 96] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xC9, 0x0F, 0xDA, 0xA2, 0x21, 0x68, 0xC2, 0x34,
    0xC4, 0xC6, 0x62, 0x8B, 0x80, 0xDC, 0x1C, 0xD1, 0x29, 0x02, 0x4E, 0x08, 0x8A, 0x67, 0xCC, 0x74,
    0x02, 0x0B, 0xBE, 0xA6, 0x3B, 0x13, 0x9B, 0x22, 0x51, 0x4A, 0x08, 0x79, 0x8E, 0x34, 0x04, 0xDD,
    0xEF, 0x95, 0x19, 0xB3, 0xCD, 0x3A, 0x43, 0x1B, 0x30, 0x2B, 0x0A, 0x6D, 0xF2, 0x5F, 0x14, 0x37,
    0x4F, 0xE1, 0x35, 0x6D, 0x6D, 0x51, 0xC2, 0x45, 0xE4, 0x85, 0xB5, 0x76, 0x62, 0x5E, 0x7E, 0xC6,
    0xF4, 0x4C, 0x42, 0xE9, 0xA6, 0x3A, 0x36, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x05, 0x63,
];
/// The generator of the exchange.
const GENERATOR: u32 = 2;
/// Bytes of a public key (and of the shared secret) on the wire: the prime's size.
pub const KEY_BYTES: usize = 96;
/// Bytes of a private key: 160 bits, as the spec recommends and libtorrent uses.
const PRIVATE_KEY_BYTES: usize = 20;
/// The verification constant: eight zero bytes, sent encrypted.
const VC: [u8; 8] = [0; 8];
/// The longest pad either side may send (PadA-PadD).
pub const MAX_PAD: usize = 512;
/// Key stream bytes thrown away before the first byte is encrypted.
const DISCARD: usize = 1024;
/// `IA` (the initiator's first payload, its BitTorrent handshake) longer than this is refused:
/// a BitTorrent handshake is 68 bytes; the spec allows more, no client sends more than a few
/// messages' worth.
const MAX_IA: usize = 8 * 1024;
/// The most B reads before it has found `HASH("req1", S)` and the torrent: Ya, PadA and the two
/// hashes.
pub const MAX_RESPONDER_READ: usize = KEY_BYTES + MAX_PAD + 40;

/// `crypto_provide`/`crypto_select` bit: plaintext after the handshake ("header only").
pub const CRYPTO_PLAINTEXT: u32 = 0x01;
/// `crypto_provide`/`crypto_select` bit: RC4 for the whole connection.
pub const CRYPTO_RC4: u32 = 0x02;

/// How btd treats encryption (`[network] encryption`, `--encryption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Plaintext first; encrypted peers are accepted.
    Tolerated,
    /// Encrypted first, plaintext when the peer refuses it; both accepted.
    #[default]
    Preferred,
    /// Encrypted only (RC4 for the whole connection): plaintext peers are closed.
    Required,
}

impl Encryption {
    /// The `crypto_provide` bits btd offers as the initiator.
    pub fn provide(self) -> u32 {
        match self {
            Encryption::Required => CRYPTO_RC4,
            Encryption::Tolerated | Encryption::Preferred => CRYPTO_RC4 | CRYPTO_PLAINTEXT,
        }
    }

    /// The mode to dial one peer in: a peer known to prefer encryption (BEP 11 PEX flag 0x01,
    /// an extended handshake's `e=1`, or an earlier MSE connection) is dialled encrypted first
    /// even in `tolerated` mode, with the same plaintext fallback as `preferred`, as libtorrent
    /// does; `preferred` and `required` stay as they are.
    pub fn for_peer(self, prefers_encryption: bool) -> Encryption {
        match self {
            Encryption::Tolerated if prefers_encryption => Encryption::Preferred,
            mode => mode,
        }
    }

    /// Which of the initiator's `provide` bits btd selects as the responder, `None` when none is
    /// acceptable. RC4 wins whenever both are offered: the initiator chose to encrypt.
    pub fn select(self, provide: u32) -> Option<u32> {
        if provide & CRYPTO_RC4 != 0 {
            Some(CRYPTO_RC4)
        } else if provide & CRYPTO_PLAINTEXT != 0 && self != Encryption::Required {
            Some(CRYPTO_PLAINTEXT)
        } else {
            None
        }
    }

    /// Whether a plaintext BitTorrent handshake is acceptable at all.
    pub fn allows_plaintext(self) -> bool {
        self != Encryption::Required
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Tolerated => "tolerated",
            Encryption::Preferred => "preferred",
            Encryption::Required => "required",
        }
    }
}

impl fmt::Display for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encryption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tolerated" => Ok(Encryption::Tolerated),
            "preferred" => Ok(Encryption::Preferred),
            "required" => Ok(Encryption::Required),
            _ => Err(format!(
                "unknown encryption mode {s:?} (expected tolerated, preferred or required)"
            )),
        }
    }
}

/// Why an MSE handshake failed. The variants are what callers decide on (retry in plaintext,
/// drop silently, count as hostile); the text is for the log.
#[derive(Debug, thiserror::Error)]
pub enum MseError {
    #[error("i/o during the encryption handshake: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection before the handshake ended: the usual answer of a peer
    /// that does not speak MSE (or refuses it) to an encrypted attempt.
    #[error("the peer closed the connection during the encryption handshake")]
    Closed,
    /// The peer's public key was not a valid element of the group (0, 1 or P-1 and the like).
    #[error("the peer sent an invalid public key")]
    BadPublicKey,
    /// The synchronisation value did not appear within the bytes the pads allow.
    #[error("no encryption handshake found within {0} bytes")]
    NoSync(usize),
    /// The responder found no torrent for the initiator's obfuscated info hash.
    #[error("the peer asked for a torrent btd does not have")]
    UnknownTorrent,
    /// The decrypted verification constant was not zero: wrong keys or garbage.
    #[error("the verification constant did not decrypt to zeros")]
    BadVerification,
    /// A length field was out of its bounds.
    #[error("{what} of {len} bytes is longer than {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// No method both sides accept (e.g. a plaintext-only peer and `required`).
    #[error("no common encryption method (the peer offered {provide:#x}, btd accepts {accept})")]
    NoCommonMethod { provide: u32, accept: Encryption },
    /// The responder selected a method btd did not offer.
    #[error("the peer selected method {0:#x}, which btd did not offer")]
    BadSelect(u32),
}

/// Whether the first bytes of an incoming connection are a plaintext BitTorrent handshake (its
/// length byte 19 and "BitTorrent protocol"); anything else is taken for MSE. `prefix` may be
/// shorter than the 20 bytes compared: what it has must match.
pub fn is_plaintext_handshake(prefix: &[u8]) -> bool {
    const PSTR: &[u8; 20] = b"\x13BitTorrent protocol";
    !prefix.is_empty() && PSTR.starts_with(&prefix[..prefix.len().min(PSTR.len())])
}

/// What was negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// RC4 in both directions for the whole connection.
    Rc4,
    /// RC4 during the handshake only, plaintext after ("header only").
    Plaintext,
}

impl Method {
    fn from_select(select: u32) -> Option<Method> {
        match select {
            CRYPTO_RC4 => Some(Method::Rc4),
            CRYPTO_PLAINTEXT => Some(Method::Plaintext),
            _ => None,
        }
    }

    fn bits(self) -> u32 {
        match self {
            Method::Rc4 => CRYPTO_RC4,
            Method::Plaintext => CRYPTO_PLAINTEXT,
        }
    }
}

/// A byte stream after the MSE handshake: reads give plaintext, writes take plaintext, whatever
/// the negotiated [`Method`]. Bytes read past the handshake (and the initiator's `IA` on the
/// responder's side) are served first.
pub struct CryptoStream<S> {
    inner: S,
    /// Decrypts what the peer sends; `None` once the connection is plaintext.
    reader: Option<Rc4>,
    /// Encrypts what btd sends; `None` once the connection is plaintext.
    writer: Option<Rc4>,
    /// Plaintext already read from `inner`, not yet returned, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
    /// Reused buffer for encrypting writes.
    scratch: Vec<u8>,
    method: Method,
}

/// Writes are encrypted and written whole in pieces of at most this many bytes.
const WRITE_CHUNK: usize = 64 * 1024;

impl<S> CryptoStream<S> {
    pub fn method(&self) -> Method {
        self.method
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The same stream over `f(inner)`: the handshake runs over a wrapper (a deadline on
    /// reads) that the connection then drops.
    pub fn map_inner<T>(self, f: impl FnOnce(S) -> T) -> CryptoStream<T> {
        CryptoStream {
            inner: f(self.inner),
            reader: self.reader,
            writer: self.writer,
            pending: self.pending,
            pending_at: self.pending_at,
            scratch: self.scratch,
            method: self.method,
        }
    }
}

impl<S: Read> Read for CryptoStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending_at < self.pending.len() {
            let n = buf.len().min(self.pending.len() - self.pending_at);
            buf[..n].copy_from_slice(&self.pending[self.pending_at..self.pending_at + n]);
            self.pending_at += n;
            if self.pending_at == self.pending.len() {
                self.pending = Vec::new();
                self.pending_at = 0;
            }
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        if let Some(cipher) = &mut self.reader {
            cipher.apply_keystream(&mut buf[..n]);
        }
        Ok(n)
    }
}

impl<S: Write> Write for CryptoStream<S> {
    /// Encrypts and writes all of (a chunk of) `buf` before returning: once the key stream has
    /// moved past a byte, that byte must reach the wire, so a short write is never reported.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(cipher) = &mut self.writer else {
            return self.inner.write(buf);
        };
        let n = buf.len().min(WRITE_CHUNK);
        self.scratch.clear();
        self.scratch.extend_from_slice(&buf[..n]);
        cipher.apply_keystream(&mut self.scratch);
        self.inner.write_all(&self.scratch)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// RC4 keyed with `HASH(name, S, SKEY)`, its first [`DISCARD`] bytes thrown away.
fn cipher(name: &[u8], secret: &[u8; KEY_BYTES], skey: &[u8; 20]) -> Rc4 {
    let key = hash(&[name, secret, skey]);
    let mut rc4 = Rc4::new_from_slice(&key).expect("RC4 takes a 20-byte key");
    let mut discard = [0u8; DISCARD];
    rc4.apply_keystream(&mut discard);
    rc4
}

fn hash(parts: &[&[u8]]) -> [u8; 20] {
    let mut sha = Sha1::new();
    for part in parts {
        sha.update(part);
    }
    sha.finalize().into()
}

/// One side's Diffie-Hellman key pair.
struct KeyPair {
    private: BigUint,
    public: [u8; KEY_BYTES],
}

impl KeyPair {
    fn generate() -> KeyPair {
        let bytes: [u8; PRIVATE_KEY_BYTES] = rand::rng().random();
        let private = BigUint::from_bytes_be(&bytes);
        let public = BigUint::from(GENERATOR).modpow(&private, &prime());
        KeyPair {
            private,
            public: to_key_bytes(&public),
        }
    }

    /// The shared secret from the peer's public key; refuses keys outside 2..P-2, which would
    /// make the secret predictable.
    fn secret(&self, peer_public: &[u8]) -> Result<[u8; KEY_BYTES], MseError> {
        let p = prime();
        let y = BigUint::from_bytes_be(peer_public);
        if y < BigUint::from(2u32) || y >= &p - 1u32 {
            return Err(MseError::BadPublicKey);
        }
        Ok(to_key_bytes(&y.modpow(&self.private, &p)))
    }
}

fn prime() -> BigUint {
    BigUint::from_bytes_be(&PRIME)
}

/// A number below the prime as 96 big-endian bytes, zero-padded on the left.
fn to_key_bytes(n: &BigUint) -> [u8; KEY_BYTES] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; KEY_BYTES];
    out[KEY_BYTES - bytes.len()..].copy_from_slice(&bytes);
    out
}

fn random_pad(max: usize) -> Vec<u8> {
    let mut rng = rand::rng();
    let len = rng.random_range(0..=max);
    (0..len).map(|_| rng.random()).collect()
}

/// Reads until `buf` holds at least `len` bytes.
fn fill<S: Read>(stream: &mut S, buf: &mut Vec<u8>, len: usize) -> Result<(), MseError> {
    let mut chunk = [0u8; 1024];
    while buf.len() < len {
        let want = (len - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Err(MseError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(MseError::Closed),
            Err(e) => return Err(MseError::Io(e)),
        }
    }
    Ok(())
}

/// Reads from `stream` into `buf` (which holds what was read so far, starting at `from`) until
/// `needle` appears starting at most `max_offset` bytes after `from`; returns where it starts.
/// Each read asks for at most `needle.len()` more bytes, so it reads less than a needle's length
/// past the match: bytes the peer sends after the needle in any case (the handshake goes on).
fn find<S: Read>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    from: usize,
    needle: &[u8],
    max_offset: usize,
) -> Result<usize, MseError> {
    let limit = from + max_offset + needle.len();
    loop {
        let searchable = buf.len().min(limit);
        if searchable >= from + needle.len()
            && let Some(i) = buf[from..searchable]
                .windows(needle.len())
                .position(|w| w == needle)
        {
            return Ok(from + i);
        }
        if buf.len() >= limit {
            return Err(MseError::NoSync(max_offset + needle.len()));
        }
        // The needle cannot end before buf.len() + 1: ask for at least one more byte, at most
        // what keeps the search within its bound.
        let next = (buf.len() + needle.len()).min(limit).max(buf.len() + 1);
        fill(stream, buf, next)?;
    }
}

/// The initiator's side (A): runs the handshake for the torrent `info_hash` offering `provide`
/// ([`CRYPTO_RC4`] and/or [`CRYPTO_PLAINTEXT`]), sends `initial` (btd's BitTorrent handshake)
/// as `IA`, and returns the stream with the method the responder selected.
pub fn initiate<S: Read + Write>(
    mut stream: S,
    info_hash: &[u8; 20],
    provide: u32,
    initial: &[u8],
) -> Result<CryptoStream<S>, MseError> {
    if initial.len() > MAX_IA {
        return Err(MseError::TooLong {
            what: "IA",
            len: initial.len(),
            max: MAX_IA,
        });
    }
    let keys = KeyPair::generate();
    let mut out = keys.public.to_vec();
    out.extend(random_pad(MAX_PAD));
    stream.write_all(&out)?;

    let mut buf = Vec::with_capacity(KEY_BYTES + MAX_PAD + 64);
    fill(&mut stream, &mut buf, KEY_BYTES)?;
    let secret = keys.secret(&buf[..KEY_BYTES])?;
    let mut encrypt = cipher(b"keyA", &secret, info_hash);
    let mut decrypt = cipher(b"keyB", &secret, info_hash);

    // Step 3, in one write.
    let mut msg = Vec::with_capacity(40 + 14 + initial.len());
    msg.extend_from_slice(&hash(&[b"req1", &secret]));
    let req2 = hash(&[b"req2", info_hash]);
    let req3 = hash(&[b"req3", &secret]);
    msg.extend(req2.iter().zip(req3).map(|(a, b)| a ^ b));
    let start = msg.len();
    msg.extend_from_slice(&VC);
    msg.extend_from_slice(&provide.to_be_bytes());
    msg.extend_from_slice(&0u16.to_be_bytes()); // len(PadC): btd sends none.
    let ia_len = u16::try_from(initial.len()).expect("IA is bounded by MAX_IA");
    msg.extend_from_slice(&ia_len.to_be_bytes());
    msg.extend_from_slice(initial);
    encrypt.apply_keystream(&mut msg[start..]);
    stream.write_all(&msg)?;

    // Step 4: find ENCRYPT(VC) after PadB.
    let mut vc = VC;
    cipher(b"keyB", &secret, info_hash).apply_keystream(&mut vc);
    let at = find(&mut stream, &mut buf, KEY_BYTES, &vc, MAX_PAD)?;
    fill(&mut stream, &mut buf, at + 8 + 4 + 2)?;
    let mut head = [0u8; 14];
    head.copy_from_slice(&buf[at..at + 14]);
    decrypt.apply_keystream(&mut head);
    let select = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
    let pad_len = usize::from(u16::from_be_bytes([head[12], head[13]]));
    let method = Method::from_select(select)
        .filter(|m| provide & m.bits() != 0)
        .ok_or(MseError::BadSelect(select))?;
    if pad_len > MAX_PAD {
        return Err(MseError::TooLong {
            what: "PadD",
            len: pad_len,
            max: MAX_PAD,
        });
    }
    let body = at + 14;
    fill(&mut stream, &mut buf, body + pad_len)?;
    decrypt.apply_keystream(&mut buf[body..body + pad_len]);
    let rest = buf.split_off(body + pad_len);
    Ok(finish(stream, method, encrypt, decrypt, rest))
}

/// The stream after the handshake; `rest` is what was read past it, still as it came off the
/// wire.
fn finish<S>(
    stream: S,
    method: Method,
    encrypt: Rc4,
    mut decrypt: Rc4,
    mut rest: Vec<u8>,
) -> CryptoStream<S> {
    let (reader, writer) = match method {
        Method::Rc4 => {
            decrypt.apply_keystream(&mut rest);
            (Some(decrypt), Some(encrypt))
        }
        Method::Plaintext => (None, None),
    };
    CryptoStream {
        inner: stream,
        reader,
        writer,
        pending: rest,
        pending_at: 0,
        scratch: Vec::new(),
        method,
    }
}

/// What the responder learnt: the torrent the initiator asked for, and the stream, whose first
/// bytes are the initiator's `IA` (its BitTorrent handshake, usually).
pub struct Accepted<S> {
    pub info_hash: [u8; 20],
    pub stream: CryptoStream<S>,
}

/// The responder's side (B). `prefix` holds the bytes the listener already read to tell MSE
/// from plaintext (the start of `Ya`). `find_torrent` maps `HASH("req2", info_hash)` to the info
/// hash of a torrent btd serves. `mode` chooses the method from what the initiator offers.
pub fn respond<S: Read + Write>(
    mut stream: S,
    prefix: &[u8],
    find_torrent: impl Fn(&[u8; 20]) -> Option<[u8; 20]>,
    mode: Encryption,
) -> Result<Accepted<S>, MseError> {
    let mut buf = Vec::with_capacity(MAX_RESPONDER_READ);
    buf.extend_from_slice(prefix);
    fill(&mut stream, &mut buf, KEY_BYTES)?;
    let keys = KeyPair::generate();
    let secret = keys.secret(&buf[..KEY_BYTES])?;
    let mut out = keys.public.to_vec();
    out.extend(random_pad(MAX_PAD));
    stream.write_all(&out)?;

    let req1 = hash(&[b"req1", &secret]);
    let at = find(&mut stream, &mut buf, KEY_BYTES, &req1, MAX_PAD)?;
    fill(&mut stream, &mut buf, at + 40)?;
    let req3 = hash(&[b"req3", &secret]);
    let mut req2 = [0u8; 20];
    for (i, b) in req2.iter_mut().enumerate() {
        *b = buf[at + 20 + i] ^ req3[i];
    }
    let info_hash = find_torrent(&req2).ok_or(MseError::UnknownTorrent)?;
    let mut decrypt = cipher(b"keyA", &secret, &info_hash);
    let mut encrypt = cipher(b"keyB", &secret, &info_hash);

    let start = at + 40;
    fill(&mut stream, &mut buf, start + 14)?;
    decrypt.apply_keystream(&mut buf[start..start + 14]);
    if buf[start..start + 8] != VC {
        return Err(MseError::BadVerification);
    }
    let provide = u32::from_be_bytes(buf[start + 8..start + 12].try_into().expect("4 bytes"));
    let pad_len = usize::from(u16::from_be_bytes([buf[start + 12], buf[start + 13]]));
    if pad_len > MAX_PAD {
        return Err(MseError::TooLong {
            what: "PadC",
            len: pad_len,
            max: MAX_PAD,
        });
    }
    let pad_end = start + 14 + pad_len;
    fill(&mut stream, &mut buf, pad_end + 2)?;
    decrypt.apply_keystream(&mut buf[start + 14..pad_end + 2]);
    let ia_len = usize::from(u16::from_be_bytes([buf[pad_end], buf[pad_end + 1]]));
    if ia_len > MAX_IA {
        return Err(MseError::TooLong {
            what: "IA",
            len: ia_len,
            max: MAX_IA,
        });
    }
    let ia_start = pad_end + 2;
    fill(&mut stream, &mut buf, ia_start + ia_len)?;
    decrypt.apply_keystream(&mut buf[ia_start..ia_start + ia_len]);
    let select = mode.select(provide).ok_or(MseError::NoCommonMethod {
        provide,
        accept: mode,
    })?;
    let method = Method::from_select(select).expect("select returns one known bit");

    let mut reply = Vec::with_capacity(14);
    reply.extend_from_slice(&VC);
    reply.extend_from_slice(&select.to_be_bytes());
    reply.extend_from_slice(&0u16.to_be_bytes()); // len(PadD): btd sends none.
    encrypt.apply_keystream(&mut reply);
    stream.write_all(&reply)?;

    // IA was encrypted whatever the method; what follows it is per the method.
    let ia = buf[ia_start..ia_start + ia_len].to_vec();
    let rest = buf.split_off(ia_start + ia_len);
    let mut crypto = finish(stream, method, encrypt, decrypt, rest);
    let mut pending = ia;
    pending.extend_from_slice(&crypto.pending);
    crypto.pending = pending;
    Ok(Accepted {
        info_hash,
        stream: crypto,
    })
}

/// `HASH("req2", info_hash)`: what a responder indexes its torrents by to answer
/// `find_torrent`.
pub fn obfuscated_hash(info_hash: &[u8; 20]) -> [u8; 20] {
    hash(&[b"req2", info_hash])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::thread;
    use std::time::Duration;

    const HASH_A: [u8; 20] = [7; 20];
    const HANDSHAKE: &[u8] = b"\x13BitTorrent protocol........initiator's handshake";

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        (a, b)
    }

    fn lookup(known: [u8; 20]) -> impl Fn(&[u8; 20]) -> Option<[u8; 20]> {
        move |req2| (*req2 == obfuscated_hash(&known)).then_some(known)
    }

    /// Runs both sides; each then sends a message the other must read back in plaintext.
    fn handshake(
        provide: u32,
        mode: Encryption,
    ) -> (Result<Method, MseError>, Result<Method, MseError>) {
        let (a, b) = pair();
        let responder = thread::spawn(move || -> Result<Method, MseError> {
            // As the listener does: read 20 bytes, tell MSE from plaintext, pass them on.
            let mut first = [0u8; 20];
            (&b).read_exact(&mut first)?;
            assert!(!is_plaintext_handshake(&first));
            let mut acc = respond(&b, &first, lookup(HASH_A), mode)?;
            let mut ia = vec![0u8; HANDSHAKE.len()];
            acc.stream.read_exact(&mut ia)?;
            assert_eq!(ia, HANDSHAKE);
            assert_eq!(acc.info_hash, HASH_A);
            acc.stream.write_all(b"from B")?;
            let mut got = [0u8; 6];
            acc.stream.read_exact(&mut got)?;
            assert_eq!(&got, b"from A");
            Ok(acc.stream.method())
        });
        let initiator = (|| -> Result<Method, MseError> {
            let mut s = initiate(&a, &HASH_A, provide, HANDSHAKE)?;
            let mut got = [0u8; 6];
            s.read_exact(&mut got)?;
            assert_eq!(&got, b"from B");
            s.write_all(b"from A")?;
            Ok(s.method())
        })();
        drop(a);
        (initiator, responder.join().unwrap())
    }

    #[test]
    fn a_peer_that_prefers_encryption_is_dialled_encrypted_first_unless_required() {
        use Encryption::{Preferred, Required, Tolerated};
        assert_eq!(Tolerated.for_peer(true), Preferred);
        assert_eq!(Tolerated.for_peer(false), Tolerated);
        assert_eq!(Preferred.for_peer(false), Preferred);
        assert_eq!(Required.for_peer(true), Required);
        assert_eq!(Required.for_peer(false), Required);
        // The fallback of `preferred` keeps plaintext on offer, as `tolerated` did.
        assert_eq!(Tolerated.for_peer(true).provide(), Tolerated.provide());
    }

    #[test]
    fn both_sides_agree_on_rc4_when_it_is_offered() {
        let (a, b) = handshake(CRYPTO_RC4 | CRYPTO_PLAINTEXT, Encryption::Preferred);
        assert_eq!(a.unwrap(), Method::Rc4);
        assert_eq!(b.unwrap(), Method::Rc4);
    }

    #[test]
    fn header_only_encryption_leaves_the_rest_in_plaintext() {
        let (a, b) = handshake(CRYPTO_PLAINTEXT, Encryption::Tolerated);
        assert_eq!(a.unwrap(), Method::Plaintext);
        assert_eq!(b.unwrap(), Method::Plaintext);
    }

    #[test]
    fn required_refuses_a_plaintext_only_initiator() {
        let (a, b) = handshake(CRYPTO_PLAINTEXT, Encryption::Required);
        assert!(matches!(b, Err(MseError::NoCommonMethod { .. })), "{b:?}");
        assert!(a.is_err());
    }

    #[test]
    fn an_unknown_torrent_is_refused() {
        let (a, b) = pair();
        let responder = thread::spawn(move || {
            respond(&b, &[], lookup([9; 20]), Encryption::Preferred).map(|_| ())
        });
        let init = initiate(&a, &HASH_A, CRYPTO_RC4, HANDSHAKE);
        let res = responder.join().unwrap();
        assert!(matches!(res, Err(MseError::UnknownTorrent)), "{res:?}");
        drop(init);
    }

    #[test]
    fn garbage_instead_of_a_handshake_is_dropped_within_the_bound() {
        let (a, b) = pair();
        let writer = thread::spawn(move || {
            // A valid-looking public key, then noise that never contains req1.
            let mut noise = vec![0x55u8; KEY_BYTES + 4 * MAX_PAD];
            noise[0] = 0x12;
            let _ = (&a).write_all(&noise);
            thread::sleep(Duration::from_millis(200));
        });
        let res = respond(&b, &[], lookup(HASH_A), Encryption::Preferred).map(|_| ());
        assert!(matches!(res, Err(MseError::NoSync(_))), "{res:?}");
        writer.join().unwrap();
    }

    #[test]
    fn weak_public_keys_are_refused() {
        let keys = KeyPair::generate();
        let mut one = [0u8; KEY_BYTES];
        one[KEY_BYTES - 1] = 1;
        assert!(matches!(keys.secret(&one), Err(MseError::BadPublicKey)));
        let mut p_minus_1 = PRIME;
        p_minus_1[KEY_BYTES - 1] -= 1;
        assert!(matches!(
            keys.secret(&p_minus_1),
            Err(MseError::BadPublicKey)
        ));
        assert!(matches!(keys.secret(&PRIME), Err(MseError::BadPublicKey)));
    }

    #[test]
    fn both_sides_compute_the_same_secret() {
        let a = KeyPair::generate();
        let b = KeyPair::generate();
        assert_eq!(a.secret(&b.public).unwrap(), b.secret(&a.public).unwrap());
    }

    #[test]
    fn the_plaintext_handshake_is_told_from_mse() {
        assert!(is_plaintext_handshake(b"\x13BitTorrent protocol\0\0"));
        assert!(is_plaintext_handshake(b"\x13Bit"));
        assert!(!is_plaintext_handshake(b"\x13BitTorrent Protocol"));
        assert!(!is_plaintext_handshake(&[0x8f, 0x13]));
        assert!(!is_plaintext_handshake(b""));
    }

    #[test]
    fn modes_select_as_documented() {
        use Encryption::*;
        assert_eq!(Required.select(CRYPTO_PLAINTEXT), None);
        assert_eq!(
            Required.select(CRYPTO_RC4 | CRYPTO_PLAINTEXT),
            Some(CRYPTO_RC4)
        );
        assert_eq!(Tolerated.select(CRYPTO_PLAINTEXT), Some(CRYPTO_PLAINTEXT));
        assert_eq!(Preferred.select(0), None);
        assert_eq!("required".parse::<Encryption>(), Ok(Required));
        assert!("forced".parse::<Encryption>().is_err());
    }
}
