//! Bencode: measuring where a value ends without decoding it ([`walk`], the one depth walker:
//! iterative, no allocation, so input of any depth is safe to hand it; [`skip_value`] and
//! [`check_one_value`] on top of it for the peer-wire codecs, the tracker client's reply check
//! for lava_torrent), and [`decode`], the metainfo's decoder: byte strings stay bytes (BEP 3 strings are bytes,
//! whatever they happen to look like), every value keeps its exact span in the input (the info
//! hash is taken over it), nesting is bounded by [`MAX_DEPTH`], integers must be canonical,
//! dictionary keys may come unsorted but never twice. Pure.

/// Nesting deeper than this is refused before anything is decoded.
pub const MAX_DEPTH: u32 = 64;

/// Why [`walk`] found no whole value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// The input ended inside the value: between tokens, inside an integer, a string's length
    /// or its bytes. Everything before was well formed and within the nesting limit.
    #[error("bencode ends inside a value")]
    Truncated,
    /// More lists and dictionaries open at once than the limit.
    #[error("bencode nested deeper than {0} levels")]
    TooDeep(u32),
    /// A byte that cannot start a token where it stands (an `e` with nothing open included).
    #[error("unexpected byte {byte:#04x} at byte {at}")]
    Unexpected { byte: u8, at: usize },
    /// A string length that is not digits followed by `:`, or does not fit `usize`.
    #[error("bad string length at byte {0}")]
    BadLength(usize),
}

/// Walks the one bencoded value starting at `pos` and returns the offset just past it, allowing
/// at most `max_nesting` lists and dictionaries open at once. It builds nothing and checks only
/// the structure a decoder recurses on: an integer runs to its `e`, a string by its length
/// prefix, a list or dictionary to the `e` that closes it (keys are not checked to be strings,
/// nor integers to be canonical). Iterative: a megabyte of `l` costs no stack.
///
/// # Errors
/// [`WalkError::Truncated`] when the input ends first (a caller that hands the bytes to a
/// decoder afterwards may let the decoder say so), or what is wrong and where.
pub fn walk(bytes: &[u8], pos: usize, max_nesting: u32) -> Result<usize, WalkError> {
    let mut depth = 0u32;
    let mut i = pos;
    loop {
        let b = *bytes.get(i).ok_or(WalkError::Truncated)?;
        match b {
            b'l' | b'd' => {
                depth += 1;
                if depth > max_nesting {
                    return Err(WalkError::TooDeep(max_nesting));
                }
                i += 1;
                continue;
            }
            b'e' if depth > 0 => {
                depth -= 1;
                i += 1;
            }
            b'i' => {
                let len = bytes[i..]
                    .iter()
                    .position(|&c| c == b'e')
                    .ok_or(WalkError::Truncated)?;
                i += len + 1;
            }
            b'0'..=b'9' => {
                let digits = bytes[i..]
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .ok_or(WalkError::Truncated)?;
                if bytes[i + digits] != b':' {
                    return Err(WalkError::BadLength(i));
                }
                let len: usize = std::str::from_utf8(&bytes[i..i + digits])
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .ok_or(WalkError::BadLength(i))?;
                let end = (i + digits + 1)
                    .checked_add(len)
                    .ok_or(WalkError::BadLength(i))?;
                if end > bytes.len() {
                    return Err(WalkError::Truncated);
                }
                i = end;
            }
            byte => return Err(WalkError::Unexpected { byte, at: i }),
        }
        if depth == 0 {
            return Ok(i);
        }
    }
}

/// Checks that `bytes` is exactly one bencoded value nested at most [`MAX_DEPTH`] deep.
///
/// # Errors
/// A short reason when it is malformed, too deep, or followed by trailing bytes.
pub fn check_one_value(bytes: &[u8]) -> Result<(), &'static str> {
    match walk(bytes, 0, MAX_DEPTH) {
        Ok(end) if end == bytes.len() => Ok(()),
        Ok(_) => Err("trailing bytes after the bencoded value"),
        Err(WalkError::TooDeep(_)) => Err("bencode nested too deeply"),
        Err(_) => Err("malformed bencode"),
    }
}

/// End offset of the bencoded value starting at `pos` (at most [`MAX_DEPTH`] lists and
/// dictionaries open at once), or `None` when it is malformed, too deep or cut short.
pub fn skip_value(bytes: &[u8], pos: usize) -> Option<usize> {
    walk(bytes, pos, MAX_DEPTH).ok()
}

/// One decoded value, borrowing from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value<'a> {
    /// The value's exact bytes in the input.
    pub raw: &'a [u8],
    pub kind: Kind<'a>,
}

/// What a bencoded value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    /// Entries in the order of the input.
    Dict(Vec<(&'a [u8], Value<'a>)>),
}

/// Why bytes are not one bencoded value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed bencode at byte {0}")]
    Malformed(usize),
    #[error("bencode nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("integer at byte {0} is not canonical or does not fit 64 bits")]
    BadInt(usize),
    #[error("dictionary key {0:?} appears twice")]
    DuplicateKey(String),
    #[error("{0} trailing bytes after the bencoded value")]
    Trailing(usize),
}

impl<'a> Value<'a> {
    /// The value under `key` when this is a dictionary.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match &self.kind {
            Kind::Dict(entries) => entries
                .iter()
                .find(|(k, _)| *k == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self.kind {
            Kind::Int(n) => Some(n),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.kind {
            Kind::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match &self.kind {
            Kind::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_dict(&self) -> bool {
        matches!(self.kind, Kind::Dict(_))
    }
}

/// Decodes exactly one value filling `bytes`.
///
/// # Errors
/// What is wrong and where, including trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Value<'_>, DecodeError> {
    let (value, end) = decode_prefix(bytes)?;
    match bytes.len() - end {
        0 => Ok(value),
        n => Err(DecodeError::Trailing(n)),
    }
}

/// Decodes the value at the start of `bytes`; returns it and where it ends (bytes after it are
/// the caller's business).
///
/// # Errors
/// What is wrong with the value and where.
pub fn decode_prefix(bytes: &[u8]) -> Result<(Value<'_>, usize), DecodeError> {
    decode_at(bytes, 0, 0)
}

fn decode_at(bytes: &[u8], pos: usize, depth: u32) -> Result<(Value<'_>, usize), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    let malformed = DecodeError::Malformed(pos);
    let (kind, end) = match *bytes.get(pos).ok_or(malformed.clone())? {
        b'i' => {
            let len = bytes[pos..]
                .iter()
                .position(|&b| b == b'e')
                .ok_or(malformed)?;
            let digits = &bytes[pos + 1..pos + len];
            (
                Kind::Int(canonical_int(digits).ok_or(DecodeError::BadInt(pos))?),
                pos + len + 1,
            )
        }
        b'l' => {
            let mut items = Vec::new();
            let mut p = pos + 1;
            while *bytes.get(p).ok_or(DecodeError::Malformed(p))? != b'e' {
                let (item, next) = decode_at(bytes, p, depth + 1)?;
                items.push(item);
                p = next;
            }
            (Kind::List(items), p + 1)
        }
        b'd' => {
            let mut entries: Vec<(&[u8], Value<'_>)> = Vec::new();
            let mut sorted = true;
            let mut p = pos + 1;
            while *bytes.get(p).ok_or(DecodeError::Malformed(p))? != b'e' {
                let (key, next) = decode_at(bytes, p, depth + 1)?;
                let Kind::Bytes(key) = key.kind else {
                    return Err(DecodeError::Malformed(p));
                };
                let (value, next) = decode_at(bytes, next, depth + 1)?;
                if let Some((last, _)) = entries.last() {
                    if *last == key {
                        return Err(duplicate(key));
                    }
                    sorted &= *last < key;
                }
                entries.push((key, value));
                p = next;
            }
            if !sorted {
                let mut keys: Vec<&[u8]> = entries.iter().map(|(k, _)| *k).collect();
                keys.sort_unstable();
                if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
                    return Err(duplicate(pair[0]));
                }
            }
            (Kind::Dict(entries), p + 1)
        }
        b'0'..=b'9' => {
            let colon = pos
                + bytes[pos..]
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or(malformed.clone())?;
            let len: usize = std::str::from_utf8(&bytes[pos..colon])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(malformed.clone())?;
            let end = colon
                .checked_add(1)
                .and_then(|s| s.checked_add(len))
                .filter(|&e| e <= bytes.len())
                .ok_or(malformed)?;
            (Kind::Bytes(&bytes[colon + 1..end]), end)
        }
        _ => return Err(malformed),
    };
    Ok((
        Value {
            raw: &bytes[pos..end],
            kind,
        },
        end,
    ))
}

fn duplicate(key: &[u8]) -> DecodeError {
    DecodeError::DuplicateKey(String::from_utf8_lossy(key).into_owned())
}

/// An integer's digits as BEP 3 has them: no leading zeros, no `-0`, fits `i64`.
fn canonical_int(digits: &[u8]) -> Option<i64> {
    let magnitude = digits.strip_prefix(b"-").unwrap_or(digits);
    let canonical = match magnitude {
        [] => false,
        [b'0'] => magnitude.len() == digits.len(),
        [first, ..] => *first != b'0' && magnitude.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_nested_values() {
        assert_eq!(skip_value(b"d1:ai1e1:bl1:xee", 0), Some(16));
        assert_eq!(skip_value(b"i-5e", 0), Some(4));
        assert_eq!(skip_value(b"4:spam", 0), Some(6));
        assert_eq!(skip_value(b"4:spa", 0), None);
        // From the middle, and only the one value.
        assert_eq!(skip_value(b"d1:ai1ee", 4), Some(7));
        assert_eq!(walk(b"dei1e", 0, 1), Ok(2));
        assert_eq!(walk(b"l0:e", 0, 1), Ok(4));
    }

    #[test]
    fn the_walk_tells_a_cut_short_value_from_a_malformed_one() {
        for cut in [&b""[..], b"d", b"d1:a", b"d1:ai1", b"l4:sp", b"l12", b"ll"] {
            assert_eq!(walk(cut, 0, 16), Err(WalkError::Truncated), "{cut:?}");
        }
        assert_eq!(
            walk(b"l+1:xe", 0, 16),
            Err(WalkError::Unexpected { byte: b'+', at: 1 })
        );
        assert_eq!(
            walk(b"e", 0, 16),
            Err(WalkError::Unexpected { byte: b'e', at: 0 })
        );
        assert_eq!(walk(b"l3x:abce", 0, 16), Err(WalkError::BadLength(1)));
        assert_eq!(
            walk(b"99999999999999999999999:x", 0, 16),
            Err(WalkError::BadLength(0))
        );
        assert_eq!(skip_value(b"li1e", 0), None);
        assert_eq!(check_one_value(b"l"), Err("malformed bencode"));
    }

    #[test]
    fn the_walk_allows_exactly_its_nesting_and_costs_no_stack() {
        let nested = |n: usize| [b"l".repeat(n), b"e".repeat(n)].concat();
        assert_eq!(walk(&nested(16), 0, 16), Ok(32));
        assert_eq!(walk(&nested(17), 0, 16), Err(WalkError::TooDeep(16)));
        // Dictionaries count as lists do, wherever they stand.
        let dicts = [&b"l"[..], &b"1:xd".repeat(20)].concat();
        assert_eq!(walk(&dicts, 0, 16), Err(WalkError::TooDeep(16)));
        // Far deeper than any stack would take recursively: refused at the limit, not crashed.
        assert_eq!(
            walk(&vec![b'l'; 1 << 20], 0, MAX_DEPTH),
            Err(WalkError::TooDeep(MAX_DEPTH))
        );
        assert_eq!(
            check_one_value(&nested(100)),
            Err("bencode nested too deeply")
        );
        assert!(check_one_value(&nested(64)).is_ok());
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

    #[test]
    fn decodes_byte_strings_as_bytes_with_their_spans() {
        let v = decode(b"d1:ai-3e1:b3:\xff\x00xe").unwrap();
        assert_eq!(v.get("a").and_then(Value::as_int), Some(-3));
        let b = v.get("b").unwrap();
        assert_eq!(b.as_bytes(), Some(&b"\xff\x00x"[..]));
        assert_eq!(b.raw, b"3:\xff\x00x");
        assert_eq!(
            decode(b"l4:spami0ee").unwrap().as_list().map(<[_]>::len),
            Some(2)
        );
    }

    #[test]
    fn unsorted_keys_load_duplicates_do_not() {
        let v = decode(b"d1:bi1e1:ai2ee").unwrap();
        assert_eq!(v.get("a").and_then(Value::as_int), Some(2));
        assert_eq!(
            decode(b"d1:ai1e1:ai2ee"),
            Err(DecodeError::DuplicateKey("a".into()))
        );
        assert_eq!(
            decode(b"d1:bi1e1:ai2e1:bi3ee"),
            Err(DecodeError::DuplicateKey("b".into()))
        );
    }

    #[test]
    fn refuses_non_canonical_integers_deep_nesting_and_trailing_bytes() {
        for bad in [
            &b"i03e"[..],
            b"i-0e",
            b"ie",
            b"i-e",
            b"i1x2e",
            b"i99999999999999999999e",
        ] {
            assert!(
                matches!(decode(bad), Err(DecodeError::BadInt(0))),
                "{bad:?}"
            );
        }
        assert_eq!(decode(b"i0e").unwrap().as_int(), Some(0));
        let deep: Vec<u8> = std::iter::repeat_n(b'l', 100)
            .chain(std::iter::repeat_n(b'e', 100))
            .collect();
        assert_eq!(decode(&deep), Err(DecodeError::TooDeep));
        assert_eq!(decode(b"dei1e"), Err(DecodeError::Trailing(3)));
        assert_eq!(decode_prefix(b"de\n").unwrap().1, 2);
        assert!(matches!(
            decode(b"di1ei2ee"),
            Err(DecodeError::Malformed(1))
        ));
        assert!(matches!(decode(b"5:abc"), Err(DecodeError::Malformed(0))));
    }
}
