//! A fixed-length set of piece indices in the wire layout of BEP 3: the most significant bit of
//! byte 0 is piece 0, and the spare bits after the last piece are always zero.
//!
//! It keeps a count of set bits, so "how many pieces does this peer have" and "is it a seed"
//! cost nothing.

use super::{WireError, u32_saturating, usize_from};

/// A fixed-length bit set, one bit per piece, with a cached count of set bits.
///
/// Invariants: `bytes.len() == ceil(len / 8)`, the spare bits of the last byte are zero, and
/// `ones` is the number of set bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    ones: u32,
}

impl Bitfield {
    /// A bitfield of `len` pieces, all clear.
    #[must_use]
    pub fn new(len: u32) -> Self {
        Self {
            bytes: vec![0; byte_len(len)],
            len,
            ones: 0,
        }
    }

    /// A bitfield of `len` pieces, all set (spare bits clear).
    #[must_use]
    pub fn full(len: u32) -> Self {
        let mut bytes = vec![0xFF; byte_len(len)];
        if let Some(last) = bytes.last_mut() {
            *last &= !spare_mask(len);
        }
        Self {
            bytes,
            len,
            ones: len,
        }
    }

    /// Checks a bitfield message's payload against the torrent's piece count `len`.
    ///
    /// # Errors
    /// - [`WireError::BitfieldLength`] unless `bytes` is exactly `ceil(len / 8)` bytes long;
    /// - [`WireError::SpareBitsSet`] if any bit past the last piece is set.
    pub fn from_wire(bytes: &[u8], len: u32) -> Result<Self, WireError> {
        let expected = byte_len(len);
        if bytes.len() != expected {
            return Err(WireError::BitfieldLength {
                expected: u32_saturating(expected),
                got: u32_saturating(bytes.len()),
            });
        }
        if bytes.last().is_some_and(|last| last & spare_mask(len) != 0) {
            return Err(WireError::SpareBitsSet);
        }
        Ok(Self {
            bytes: bytes.to_vec(),
            len,
            ones: bytes.iter().map(|byte| byte.count_ones()).sum(),
        })
    }

    /// The number of pieces (bits), not of set bits.
    #[must_use]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the bitfield has no pieces at all (not whether no bit is set).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether piece `index` is set; `false` when `index` is out of range.
    #[must_use]
    pub fn get(&self, index: u32) -> bool {
        index < self.len && self.bytes[byte_index(index)] & bit(index) != 0
    }

    /// Sets piece `index`; setting a set bit changes nothing.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn set(&mut self, index: u32) {
        self.assert_in_range(index);
        let byte = &mut self.bytes[byte_index(index)];
        if *byte & bit(index) == 0 {
            *byte |= bit(index);
            self.ones += 1;
        }
    }

    /// Clears piece `index`; clearing a clear bit changes nothing.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn unset(&mut self, index: u32) {
        self.assert_in_range(index);
        let byte = &mut self.bytes[byte_index(index)];
        if *byte & bit(index) != 0 {
            *byte &= !bit(index);
            self.ones -= 1;
        }
    }

    /// The number of set bits, in O(1).
    #[must_use]
    pub fn count_ones(&self) -> u32 {
        self.ones
    }

    /// Whether every piece is set, in O(1). True for a bitfield of no pieces.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// The wire form: `ceil(len / 8)` bytes, spare bits zero, ready for a bitfield message.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The indices of set bits, in ascending order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        // Zipping with a u32 counter avoids casting byte positions; there are at most
        // 2^29 bytes, so `first * 8` cannot overflow.
        (0u32..)
            .zip(self.bytes.iter().copied())
            .flat_map(|(position, byte)| SetBits {
                rest: byte,
                first: position * 8,
            })
    }

    fn assert_in_range(&self, index: u32) {
        assert!(
            index < self.len,
            "piece index {index} out of range for a bitfield of {} pieces",
            self.len
        );
    }
}

/// The set bits of one byte, as piece indices, most significant bit first.
struct SetBits {
    rest: u8,
    first: u32,
}

impl Iterator for SetBits {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.rest == 0 {
            return None;
        }
        let offset = self.rest.leading_zeros();
        self.rest &= !(0x80 >> offset);
        Some(self.first + offset)
    }
}

/// Bytes needed for `len` bits.
fn byte_len(len: u32) -> usize {
    usize_from(len.div_ceil(8))
}

fn byte_index(index: u32) -> usize {
    usize_from(index / 8)
}

/// The bit of piece `index` within its byte.
fn bit(index: u32) -> u8 {
    0x80 >> (index % 8)
}

/// The spare bits of the last byte for `len` pieces (zero when `len` is a multiple of 8).
fn spare_mask(len: u32) -> u8 {
    match len % 8 {
        0 => 0,
        used => 0xFF >> used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator, so random tests need no new dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u32) -> u32 {
            u32::try_from(self.next() % u64::from(n)).unwrap()
        }
    }

    #[test]
    fn new_bitfield_is_all_clear() {
        let field = Bitfield::new(10);
        assert_eq!(field.as_bytes(), [0, 0]);
        assert_eq!((field.len(), field.count_ones()), (10, 0));
        assert!(!field.is_full() && !field.is_empty());
        assert_eq!(field.iter_ones().count(), 0);
    }

    #[test]
    fn full_bitfield_leaves_spare_bits_clear() {
        let field = Bitfield::full(10);
        assert_eq!(field.as_bytes(), [0xFF, 0b1100_0000]);
        assert_eq!(field.count_ones(), 10);
        assert!(field.is_full());
        assert_eq!(
            field.iter_ones().collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );

        assert_eq!(Bitfield::full(16).as_bytes(), [0xFF, 0xFF]);
        assert_eq!(Bitfield::full(1).as_bytes(), [0x80]);
        assert_eq!(Bitfield::full(15).as_bytes(), [0xFF, 0xFE]);
    }

    #[test]
    fn zero_pieces_is_empty_and_full() {
        for field in [Bitfield::new(0), Bitfield::full(0)] {
            assert!(field.is_empty() && field.is_full());
            assert_eq!(field.as_bytes(), [] as [u8; 0]);
            assert!(!field.get(0));
        }
        assert_eq!(Bitfield::from_wire(&[], 0), Ok(Bitfield::new(0)));
    }

    #[test]
    fn set_and_unset_keep_the_count() {
        let mut field = Bitfield::new(10);
        field.set(0);
        field.set(9);
        field.set(9);
        assert_eq!(field.as_bytes(), [0b1000_0000, 0b0100_0000]);
        assert_eq!(field.count_ones(), 2);
        assert!(field.get(0) && field.get(9) && !field.get(1) && !field.get(8));

        field.unset(3);
        assert_eq!(field.count_ones(), 2);
        field.unset(0);
        field.unset(0);
        assert_eq!(field.count_ones(), 1);
        assert_eq!(field.as_bytes(), [0, 0b0100_0000]);

        for index in 0..10 {
            field.set(index);
        }
        assert!(field.is_full());
        assert_eq!(field, Bitfield::full(10));
        field.unset(4);
        assert!(!field.is_full());
        assert_eq!(field.count_ones(), 9);
    }

    #[test]
    fn get_is_false_out_of_range_and_in_spare_bits() {
        let field = Bitfield::full(10);
        assert!(field.get(9));
        assert!(!field.get(10));
        assert!(!field.get(15));
        assert!(!field.get(16));
        assert!(!field.get(u32::MAX));
    }

    #[test]
    #[should_panic(expected = "piece index 10 out of range")]
    fn set_panics_past_the_last_piece() {
        Bitfield::new(10).set(10);
    }

    #[test]
    #[should_panic(expected = "piece index 12 out of range")]
    fn set_panics_in_the_spare_bits() {
        Bitfield::new(10).set(12);
    }

    #[test]
    #[should_panic(expected = "piece index 10 out of range")]
    fn unset_panics_past_the_last_piece() {
        Bitfield::full(10).unset(10);
    }

    #[test]
    fn from_wire_reads_hand_typed_bytes() {
        let field = Bitfield::from_wire(&[0b1000_0001, 0b0100_0000], 10).unwrap();
        assert_eq!(field.iter_ones().collect::<Vec<_>>(), [0, 7, 9]);
        assert_eq!(field.count_ones(), 3);
        assert_eq!(field.as_bytes(), [0b1000_0001, 0b0100_0000]);

        let field = Bitfield::from_wire(&[0xFF], 8).unwrap();
        assert!(field.is_full());
        assert_eq!(field, Bitfield::full(8));
    }

    #[test]
    fn rejects_bitfield_of_the_wrong_length() {
        assert_eq!(
            Bitfield::from_wire(&[0], 10),
            Err(WireError::BitfieldLength {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            Bitfield::from_wire(&[0, 0, 0], 10),
            Err(WireError::BitfieldLength {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            Bitfield::from_wire(&[0, 0], 16 + 1),
            Err(WireError::BitfieldLength {
                expected: 3,
                got: 2
            })
        );
        assert_eq!(
            Bitfield::from_wire(&[], 1),
            Err(WireError::BitfieldLength {
                expected: 1,
                got: 0
            })
        );
        assert_eq!(
            Bitfield::from_wire(&[0], 0),
            Err(WireError::BitfieldLength {
                expected: 0,
                got: 1
            })
        );
    }

    #[test]
    fn rejects_bitfield_with_spare_bits_set() {
        assert_eq!(
            Bitfield::from_wire(&[0, 0b0010_0000], 10),
            Err(WireError::SpareBitsSet)
        );
        // Each spare bit alone, for every length that leaves some.
        for len in 9..16u32 {
            for spare in len..16 {
                let last = 0x80u8 >> (spare - 8);
                assert_eq!(
                    Bitfield::from_wire(&[0, last], len),
                    Err(WireError::SpareBitsSet),
                    "length {len}, spare bit {spare}"
                );
            }
            // The last real piece alone is fine.
            let last = 0x80u8 >> (len - 1 - 8);
            assert!(Bitfield::from_wire(&[0, last], len).is_ok(), "length {len}");
        }
    }

    #[test]
    fn matches_a_model_under_random_set_and_unset() {
        for seed in [1, 7, 0x1234_5678_9ABC_DEF0] {
            let mut rng = XorShift(seed);
            for len in [1u32, 7, 8, 9, 63, 64, 65, 1000] {
                let mut field = Bitfield::new(len);
                let mut model = vec![false; usize_from(len)];
                for _ in 0..500 {
                    let index = rng.below(len);
                    let on = rng.below(2) == 0;
                    if on {
                        field.set(index);
                    } else {
                        field.unset(index);
                    }
                    model[usize_from(index)] = on;
                }
                let expected: Vec<u32> = (0..len).filter(|&i| model[usize_from(i)]).collect();
                let context = format!("seed {seed}, length {len}");
                assert_eq!(field.iter_ones().collect::<Vec<_>>(), expected, "{context}");
                assert_eq!(usize_from(field.count_ones()), expected.len(), "{context}");
                assert_eq!(field.is_full(), expected.len() == model.len(), "{context}");
                for i in 0..len {
                    assert_eq!(field.get(i), model[usize_from(i)], "{context}, index {i}");
                }
                // What we would send is what a peer would accept.
                assert_eq!(
                    Bitfield::from_wire(field.as_bytes(), len).as_ref(),
                    Ok(&field),
                    "{context}"
                );
            }
        }
    }
}
