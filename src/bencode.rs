//! Bencode: measuring where a value ends without decoding it ([`skip_value`], no allocation),
//! and [`decode`], the metainfo's decoder: byte strings stay bytes (BEP 3 strings are bytes,
//! whatever they happen to look like), every value keeps its exact span in the input (the info
//! hash is taken over it), nesting is bounded by [`MAX_DEPTH`], integers must be canonical,
//! dictionary keys may come unsorted but never twice. Pure.

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
