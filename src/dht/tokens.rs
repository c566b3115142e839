//! Write tokens for `announce_peer` (BEP 5): a `get_peers` answer carries a token bound to the
//! querier's IP address, and only an `announce_peer` from that address with that token is
//! stored. A token is the first 8 bytes of SHA-1(secret, IP); the secret changes every
//! [`ROTATE_EVERY`] and the previous one is still accepted, so a token lives 5 to 10 minutes.
//! Pure: time and the new secrets come in as arguments.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

pub const ROTATE_EVERY: Duration = Duration::from_secs(5 * 60);
pub const TOKEN_LEN: usize = 8;

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct Tokens {
    current: [u8; 16],
    previous: [u8; 16],
    rotated: Instant,
}

fn token(secret: &[u8; 16], ip: IpAddr) -> Vec<u8> {
    let mut h = Sha1::new();
    h.update(secret);
    match ip {
        IpAddr::V4(a) => h.update(a.octets()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => h.update(v4.octets()),
            None => h.update(a.octets()),
        },
    }
    h.finalize()[..TOKEN_LEN].to_vec()
}

impl Tokens {
    pub fn new(secret: [u8; 16], now: Instant) -> Self {
        Self {
            current: secret,
            previous: secret,
            rotated: now,
        }
    }

    /// Moves to `fresh` when the current secret is [`ROTATE_EVERY`] old.
    pub fn rotate_if_due(&mut self, now: Instant, fresh: impl FnOnce() -> [u8; 16]) {
        if now.saturating_duration_since(self.rotated) >= ROTATE_EVERY {
            self.previous = self.current;
            self.current = fresh();
            self.rotated = now;
        }
    }

    /// The token to give `ip` now.
    pub fn issue(&self, ip: IpAddr) -> Vec<u8> {
        token(&self.current, ip)
    }

    /// Whether `ip` may announce with `given`.
    pub fn is_valid(&self, ip: IpAddr, given: &[u8]) -> bool {
        given == token(&self.current, ip).as_slice()
            || given == token(&self.previous, ip).as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_binds_the_address_and_survives_one_rotation_only() {
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut tokens = Tokens::new([1; 16], now);
        let t = tokens.issue(a);
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(tokens.is_valid(a, &t));
        assert!(!tokens.is_valid(b, &t));
        tokens.rotate_if_due(now + ROTATE_EVERY / 2, || [2; 16]);
        assert_eq!(tokens.issue(a), t, "not due yet");
        tokens.rotate_if_due(now + ROTATE_EVERY, || [2; 16]);
        assert_ne!(tokens.issue(a), t);
        assert!(tokens.is_valid(a, &t), "the previous secret still counts");
        tokens.rotate_if_due(now + ROTATE_EVERY * 2, || [3; 16]);
        assert!(!tokens.is_valid(a, &t), "two rotations later it is gone");
    }

    #[test]
    fn mapped_ipv4_gets_the_same_token() {
        let tokens = Tokens::new([7; 16], Instant::now());
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(tokens.is_valid(mapped, &tokens.issue(v4)));
    }
}
