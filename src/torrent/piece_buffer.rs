//! Piece buffers: the blocks of pieces in flight, assembled in memory until the piece is whole
//! and goes to a disk thread for hashing. Owned by the coordinator. Remembers who sent each
//! block so a piece that fails its hash names its culprit instead of every contributor.
//! Pieces are assembled in [`PieceData`], whose bytes start on a 4 KiB boundary so the disk
//! threads can write them with `O_DIRECT` ([`crate::storage`]).

use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};

use crate::metainfo::Geometry;
use crate::torrent::picker::PeerKey;
use crate::wire::{BLOCK_LEN, BlockRef};

/// Spare piece buffers kept for reuse: enough for the pieces typically awaiting the disk threads.
const POOL_BUFFERS: usize = 4;

/// The alignment of [`PieceData`]'s bytes: the page size, which is also a multiple of every
/// block device's logical block size, as `O_DIRECT` needs.
pub const PIECE_ALIGN: usize = 4096;

/// A piece's bytes, starting on a [`PIECE_ALIGN`] boundary (when the allocator allows; it does
/// on Linux: the offset is found, not assumed, and a buffer that cannot be aligned still works,
/// only without `O_DIRECT`). Reads as a `[u8]` of the piece's length.
pub struct PieceData {
    /// Never resized once made, so the aligned start stays where it is.
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl PieceData {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        let buf = vec![0u8; len + PIECE_ALIGN - 1];
        let start = buf.as_ptr().align_offset(PIECE_ALIGN);
        let start = if start < PIECE_ALIGN { start } else { 0 };
        Self { buf, start, len }
    }

    /// A copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> Self {
        let mut data = Self::zeroed(bytes.len());
        data.copy_from_slice(bytes);
        data
    }

    /// This buffer made `len` bytes long for reuse, without clearing it (every byte of a piece
    /// is written before the piece is complete); a new one when it is too small.
    fn reuse(mut self, len: usize) -> Self {
        if self.buf.len() - self.start >= len {
            self.len = len;
            self
        } else {
            Self::zeroed(len)
        }
    }
}

impl Deref for PieceData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl DerefMut for PieceData {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

struct Assembly {
    data: PieceData,
    senders: Vec<Option<PeerKey>>,
}

/// A whole piece, ready for hashing, and who sent each block.
pub struct CompletePiece {
    pub data: PieceData,
    pub senders: Vec<Option<PeerKey>>,
}

/// Whom a hash failure points at.
#[derive(Debug, PartialEq, Eq)]
pub enum Blame {
    /// Every block came from this peer.
    One(PeerKey),
    /// Several peers contributed: fetch the piece again from one peer and compare.
    Several,
}

/// See the module documentation.
pub struct PieceBuffers {
    geometry: Geometry,
    assemblies: HashMap<u32, Assembly>,
    /// Spare piece-sized buffers, so steady downloading allocates nothing per piece.
    pool: Vec<PieceData>,
}

impl PieceBuffers {
    pub fn new(geometry: Geometry) -> Self {
        Self {
            geometry,
            assemblies: HashMap::new(),
            pool: Vec::new(),
        }
    }

    /// Copies a received block into its piece. The caller has checked with the picker that the
    /// block is a valid, wanted block of the torrent.
    pub fn store(&mut self, block: &BlockRef, data: &[u8], from: PeerKey) {
        let geometry = self.geometry;
        let pool = &mut self.pool;
        let assembly = self.assemblies.entry(block.piece).or_insert_with(|| {
            let len = geometry.piece_len(block.piece) as usize;
            let data = match pool.pop() {
                Some(spare) => spare.reuse(len),
                None => PieceData::zeroed(len),
            };
            Assembly {
                data,
                senders: vec![None; geometry.blocks_in_piece(block.piece) as usize],
            }
        });
        let start = block.offset as usize;
        assembly.data[start..start + data.len()].copy_from_slice(data);
        assembly.senders[(block.offset / BLOCK_LEN) as usize] = Some(from);
    }

    /// Removes a piece whose last block just arrived.
    ///
    /// # Panics
    /// If no block of the piece was stored.
    pub fn take(&mut self, piece: u32) -> CompletePiece {
        let a = self
            .assemblies
            .remove(&piece)
            .expect("piece has stored blocks");
        CompletePiece {
            data: a.data,
            senders: a.senders,
        }
    }

    /// Drops the partial data of a piece (its blocks will be fetched again).
    pub fn discard(&mut self, piece: u32) {
        if let Some(a) = self.assemblies.remove(&piece) {
            self.recycle(a.data);
        }
    }

    /// Returns a buffer to the pool.
    pub fn recycle(&mut self, data: PieceData) {
        if self.pool.len() < POOL_BUFFERS {
            self.pool.push(data);
        }
    }

    /// Frees the spare buffers (the download is complete; a seed needs none).
    pub fn clear_pool(&mut self) {
        self.pool = Vec::new();
    }

    /// Bytes held in partial pieces.
    pub fn bytes_in_flight(&self) -> usize {
        self.assemblies.values().map(|a| a.data.len()).sum()
    }
}

/// Who to blame for a piece that failed its hash.
pub fn blame_on_failure(senders: &[Option<PeerKey>]) -> Blame {
    let distinct: HashSet<PeerKey> = senders.iter().flatten().copied().collect();
    match distinct.len() {
        1 => Blame::One(*distinct.iter().next().expect("one sender")),
        _ => Blame::Several,
    }
}

/// After a piece with several contributors failed and was fetched again and verified: the
/// senders of the blocks that differ from the good copy are the culprits.
pub fn blame_after_refetch(
    bad: &[u8],
    bad_senders: &[Option<PeerKey>],
    good: &[u8],
) -> Vec<PeerKey> {
    let mut culprits: Vec<PeerKey> = bad
        .chunks(BLOCK_LEN as usize)
        .zip(good.chunks(BLOCK_LEN as usize))
        .zip(bad_senders)
        .filter(|((b, g), _)| b != g)
        .filter_map(|(_, sender)| *sender)
        .collect();
    culprits.sort_unstable();
    culprits.dedup();
    culprits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_blocks_from_several_peers_and_remembers_senders() {
        let geometry = Geometry::new(40_000, 32_768);
        let mut buffers = PieceBuffers::new(geometry);
        buffers.store(&BlockRef::new(0, BLOCK_LEN, BLOCK_LEN), &[2; 16384], 8);
        buffers.store(&BlockRef::new(0, 0, BLOCK_LEN), &[1; 16384], 7);
        let piece = buffers.take(0);
        assert_eq!(&piece.data[..16384], &[1; 16384][..]);
        assert_eq!(&piece.data[16384..], &[2; 16384][..]);
        assert_eq!(piece.senders, vec![Some(7), Some(8)]);
        assert_eq!(blame_on_failure(&piece.senders), Blame::Several);
        buffers.store(
            &BlockRef::new(1, 0, 40_000 - 32_768),
            &[3; 40_000 - 32_768],
            9,
        );
        assert_eq!(buffers.take(1).data.len(), 40_000 - 32_768);
    }

    #[test]
    fn piece_data_starts_aligned_and_a_reused_buffer_takes_the_new_length() {
        let mut data = PieceData::zeroed(3 * 16384);
        assert_eq!(data.as_ptr() as usize % PIECE_ALIGN, 0);
        data[5] = 7;
        let shorter = data.reuse(100);
        assert_eq!((shorter.len(), shorter[5]), (100, 7));
        assert_eq!(shorter.as_ptr() as usize % PIECE_ALIGN, 0);
        let longer = shorter.reuse(4 * 16384);
        assert_eq!(longer.len(), 4 * 16384);
        assert_eq!(longer.as_ptr() as usize % PIECE_ALIGN, 0);
        assert_eq!(&*PieceData::copy_of(b"abc"), b"abc");
    }

    #[test]
    fn blames_the_single_sender() {
        assert_eq!(blame_on_failure(&[Some(4), Some(4)]), Blame::One(4));
    }

    #[test]
    fn refetch_comparison_names_only_the_sender_of_the_differing_block() {
        let good = vec![0u8; 3 * 16384];
        let mut bad = good.clone();
        bad[16384 + 5] = 1;
        assert_eq!(
            blame_after_refetch(&bad, &[Some(1), Some(2), Some(3)], &good),
            vec![2]
        );
    }
}
