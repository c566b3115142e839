//! The responder's side of the MSE handshake, against a real initiator whose bytes the input
//! corrupts on their way: `[mode][provide][cut lo][cut hi]` then pairs `[offset][xor]`, each
//! offset counted from the previous one. Whatever arrives, the responder ends with a stream or
//! an error, within the bytes the spec bounds, and never panics.
#![no_main]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use btd::peer::mse::{self, Encryption, MAX_RESPONDER_READ};
use libfuzzer_sys::fuzz_target;

const INFO_HASH: [u8; 20] = [0x42; 20];

/// The responder's end: flips the input's bits in what the initiator sent, ends it at `cut`.
struct Tap {
    inner: UnixStream,
    flips: Vec<(usize, u8)>,
    cut: usize,
    read: usize,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.cut.saturating_sub(self.read).min(buf.len());
        if room == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..room])?;
        for &(at, xor) in &self.flips {
            if (self.read..self.read + n).contains(&at) {
                buf[at - self.read] ^= xor;
            }
        }
        self.read += n;
        Ok(n)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let mode = [Encryption::Tolerated, Encryption::Preferred, Encryption::Required]
        [usize::from(head[0] % 3)];
    let provide = u32::from(head[1] & 0x03);
    let cut = usize::from(u16::from_le_bytes([head[2], head[3]]));
    let mut at = 0;
    let flips = rest
        .chunks_exact(2)
        .map(|p| {
            at += usize::from(p[0]);
            (at, p[1])
        })
        .collect();
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    for s in [&ours, &theirs] {
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    }
    let initiator = thread::spawn(move || {
        let _ = mse::initiate(theirs, &INFO_HASH, provide, b"\x13BitTorrent protocol");
    });
    let tap = Tap {
        inner: ours,
        flips,
        cut,
        read: 0,
    };
    let find = |req2: &[u8; 20]| (*req2 == mse::obfuscated_hash(&INFO_HASH)).then_some(INFO_HASH);
    if let Ok(mut accepted) = mse::respond(tap, &[], find, mode) {
        assert_eq!(accepted.info_hash, INFO_HASH);
        let mut ia = [0u8; 20];
        let _ = accepted.stream.read(&mut ia);
        assert!(accepted.stream.get_ref().read <= MAX_RESPONDER_READ + 14 + 512 + 2 + 8 * 1024);
    }
    initiator.join().expect("the initiator thread");
});
