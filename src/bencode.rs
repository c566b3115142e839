//! Bencode spans: measuring where a value ends, without decoding it. lava_torrent does all the
//! decoding; these walkers exist because its decoder recurses once per nesting level (hostile
//! input could overflow a thread's stack) and because the info hash needs the raw byte span of
//! the `info` value. Pure, no allocation.

/// Nesting deeper than this is refused before anything is decoded.
pub const MAX_DEPTH: u32 = 64;

/// Checks that `bytes` is exactly one bencoded value nested at most `MAX_DEPTH` deep.
///
/// # Errors
/// A short reason when it is malformed, too deep, or followed by trailing bytes.
pub fn check_one_value(bytes: &[u8]) -> Result<(), &'static str> {
    match skip_value(bytes, 0, 0) {
        Some(end) if end == bytes.len() => Ok(()),
        Some(_) => Err("trailing bytes after the bencoded value"),
        None => Err("malformed or too deeply nested bencode"),
    }
}

/// End offset of the bencoded value starting at `pos`, or None when malformed.
pub fn skip_value(bytes: &[u8], pos: usize, depth: u32) -> Option<usize> {
    if depth > 64 {
        return None;
    }
    match *bytes.get(pos)? {
        b'i' => Some(pos + bytes.get(pos..)?.iter().position(|&b| b == b'e')? + 1),
        b'l' | b'd' => {
            let mut p = pos + 1;
            while *bytes.get(p)? != b'e' {
                p = skip_value(bytes, p, depth + 1)?;
            }
            Some(p + 1)
        }
        b'0'..=b'9' => {
            let colon = pos + bytes.get(pos..)?.iter().position(|&b| b == b':')?;
            let len: usize = std::str::from_utf8(bytes.get(pos..colon)?)
                .ok()?
                .parse()
                .ok()?;
            let end = colon.checked_add(1)?.checked_add(len)?;
            (end <= bytes.len()).then_some(end)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_nested_values() {
        assert_eq!(skip_value(b"d1:ai1e1:bl1:xee", 0, 0), Some(16));
        assert_eq!(skip_value(b"i-5e", 0, 0), Some(4));
        assert_eq!(skip_value(b"4:spam", 0, 0), Some(6));
        assert_eq!(skip_value(b"4:spa", 0, 0), None);
    }

    #[test]
    fn refuses_deep_nesting_and_trailing_bytes() {
        let deep: Vec<u8> = std::iter::repeat_n(b'l', 100)
            .chain(std::iter::repeat_n(b'e', 100))
            .collect();
        assert!(check_one_value(&deep).is_err());
        assert!(check_one_value(b"lee").is_err());
        assert!(check_one_value(b"le").is_ok());
    }
}
