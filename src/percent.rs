//! Percent-encoding (RFC 3986 `%XX`), the one copy used by the announce URLs we build
//! (`tracker`), the announce queries our tracker reads (`tracker_server`) and magnet links
//! (`magnet`). Pure functions.

use std::fmt::Write;

use crate::hex;

/// Appends `bytes` percent-encoded byte by byte: RFC 3986 unreserved characters stay as they are,
/// every other byte becomes `%XX`.
pub fn encode_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            write!(out, "%{b:02X}").expect("writing to a String cannot fail");
        }
    }
}

/// Decodes `%XX` escapes (either case), and `+` as a space when `plus_is_space` (form encoding);
/// every other byte stands for itself. `None` for a `%` not followed by two hex digits.
pub fn decode(input: &[u8], plus_is_space: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        match b {
            b'%' => {
                let hi = hex::digit(*input.get(i + 1)?)?;
                let lo = hex::digit(*input.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_survives_a_round_trip() {
        let all: Vec<u8> = (0..=255).collect();
        let mut encoded = String::new();
        encode_into(&mut encoded, &all);
        assert!(encoded.starts_with("%00%01"), "{encoded}");
        assert!(encoded.contains("-.") && encoded.contains("AB") && encoded.contains("_"));
        assert_eq!(decode(encoded.as_bytes(), false), Some(all.clone()));
        // Lower-case hex digits decode the same.
        let lower: String = all.iter().map(|b| format!("%{b:02x}")).collect();
        assert_eq!(decode(lower.as_bytes(), true), Some(all));
    }

    #[test]
    fn plus_is_a_space_only_when_asked_and_bad_escapes_are_refused() {
        assert_eq!(decode(b"a+b%2B", true), Some(b"a b+".to_vec()));
        assert_eq!(decode(b"a+b%2B", false), Some(b"a+b+".to_vec()));
        for bad in [&b"%"[..], b"%4", b"%4g", b"%G0", b"%%41", b"abc%"] {
            assert_eq!(decode(bad, false), None, "{bad:?}");
        }
    }
}
