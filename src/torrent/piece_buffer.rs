//! Piece buffers: the blocks of pieces in flight, kept in memory until the piece is whole and
//! goes to a disk thread for hashing. Owned by the coordinator. Remembers who sent each block so
//! a piece that fails its hash names its culprit instead of every contributor.
//!
//! A block's bytes are copied once in user space: the peer thread copies them from its read
//! buffer into a [`BlockData`], which travels in a `BlocksReceived` event, waits here, and goes
//! to the disk thread in its piece's [`PieceData`] as it is: hashed in order, written with one
//! `pwritev` per file ([`crate::storage`]). Each block starts on a 4 KiB boundary, so the disk
//! threads can write the pieces with `O_DIRECT`. Memory follows the bytes received, not the
//! pieces started: a piece of 4 MiB with one block in holds 16 KiB. A block's buffer goes back
//! to the process's pool of spare buffers when the block is dropped, wherever that is (a disk
//! thread, the coordinator), and the next block received anywhere takes it: steady downloading
//! neither allocates nor faults in fresh pages per block.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;

use crate::metainfo::Geometry;
use crate::torrent::picker::PeerKey;
use crate::wire::{BLOCK_LEN, BlockRef};

/// The alignment of [`BlockData`]'s bytes: the page size, which is also a multiple of every
/// block device's logical block size, as `O_DIRECT` needs.
pub const PIECE_ALIGN: usize = 4096;

/// Spare block buffers the process keeps (about 5 MiB): beyond that, a dropped block's buffer is
/// freed.
const POOL_BLOCKS: usize = 256;

/// Capacity of every block buffer: a whole block, and room to align its start.
const BLOCK_BUF_CAPACITY: usize = BLOCK_LEN as usize + PIECE_ALIGN - 1;

/// The process's spare block buffers, each truncated to its aligned start (see [`BlockData`]).
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    POOL.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One block's bytes, starting on a [`PIECE_ALIGN`] boundary (when the allocator allows; it
/// does on Linux: the offset is found, not assumed, and a block that cannot be aligned still
/// works, only without `O_DIRECT`). Reads as a `[u8]` of the block's length.
pub struct BlockData {
    /// Allocated with room for the alignment and never grown, so the start stays where it is.
    buf: Vec<u8>,
    start: usize,
}

impl BlockData {
    /// A copy of `bytes`, aligned: the one copy a received block gets. In a spare buffer from
    /// the pool when there is one.
    pub fn copy_of(bytes: &[u8]) -> Self {
        let spare = if bytes.len() <= BLOCK_LEN as usize {
            pool().pop()
        } else {
            None
        };
        let mut buf = spare.unwrap_or_else(|| {
            Vec::with_capacity(bytes.len().max(BLOCK_LEN as usize) + PIECE_ALIGN - 1)
        });
        let start = buf.as_ptr().align_offset(PIECE_ALIGN);
        let start = if start < PIECE_ALIGN { start } else { 0 };
        // A spare buffer is already `start` long: nothing to write again.
        buf.resize(start, 0);
        buf.extend_from_slice(bytes);
        Self { buf, start }
    }
}

impl BlockData {
    /// Gives the buffer to `pool` (when it has room and the buffer is a standard one),
    /// leaving this block empty.
    fn recycle_into(&mut self, pool: &mut Vec<Vec<u8>>) {
        if self.buf.capacity() != BLOCK_BUF_CAPACITY || pool.len() >= POOL_BLOCKS {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.truncate(self.start);
        pool.push(buf);
    }
}

impl Drop for BlockData {
    fn drop(&mut self) {
        if self.buf.capacity() == BLOCK_BUF_CAPACITY {
            self.recycle_into(&mut pool());
        }
    }
}

impl std::fmt::Debug for BlockData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockData({} bytes)", self.len())
    }
}

impl Deref for BlockData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// A whole piece: its blocks in order.
pub struct PieceData {
    blocks: Vec<BlockData>,
    len: usize,
}

impl Drop for PieceData {
    /// The blocks' buffers go back to the pool under one lock, not one each.
    fn drop(&mut self) {
        let mut pool = pool();
        for block in &mut self.blocks {
            block.recycle_into(&mut pool);
        }
    }
}

impl PieceData {
    /// A piece made of these blocks, in order.
    pub fn from_blocks(blocks: Vec<BlockData>) -> Self {
        let len = blocks.iter().map(|b| b.len()).sum();
        Self { blocks, len }
    }

    /// A copy of `bytes`, cut into blocks.
    pub fn copy_of(bytes: &[u8]) -> Self {
        Self::from_blocks(
            bytes
                .chunks(BLOCK_LEN as usize)
                .map(BlockData::copy_of)
                .collect(),
        )
    }

    /// The piece's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a piece of no bytes (never one of a torrent).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[BlockData] {
        &self.blocks
    }

    /// The blocks' bytes, in order, as a vectored write takes them.
    pub fn parts(&self) -> Vec<&[u8]> {
        self.blocks.iter().map(|b| &**b).collect()
    }
}

struct Assembly {
    blocks: Vec<Option<BlockData>>,
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
    /// Bytes of the blocks held in `assemblies`.
    held_bytes: usize,
}

impl PieceBuffers {
    pub fn new(geometry: Geometry) -> Self {
        Self {
            geometry,
            assemblies: HashMap::new(),
            held_bytes: 0,
        }
    }

    /// Keeps a received block for its piece. The caller has checked with the picker that the
    /// block is a valid, wanted block of the torrent, not received before.
    pub fn store(&mut self, block: &BlockRef, data: BlockData, from: PeerKey) {
        let geometry = self.geometry;
        let assembly = self.assemblies.entry(block.piece).or_insert_with(|| {
            let blocks = geometry.blocks_in_piece(block.piece) as usize;
            Assembly {
                blocks: std::iter::repeat_with(|| None).take(blocks).collect(),
                senders: vec![None; blocks],
            }
        });
        let index = (block.offset / BLOCK_LEN) as usize;
        self.held_bytes += data.len();
        if let Some(old) = assembly.blocks[index].replace(data) {
            self.held_bytes -= old.len();
        }
        assembly.senders[index] = Some(from);
    }

    /// Removes a piece whose last block just arrived.
    ///
    /// # Panics
    /// If no block of the piece was stored, or one is missing.
    pub fn take(&mut self, piece: u32) -> CompletePiece {
        let a = self
            .assemblies
            .remove(&piece)
            .expect("piece has stored blocks");
        let data = PieceData::from_blocks(
            a.blocks
                .into_iter()
                .map(|b| b.expect("every block of a complete piece is stored"))
                .collect(),
        );
        self.held_bytes -= data.len();
        CompletePiece {
            data,
            senders: a.senders,
        }
    }

    /// Drops the partial data of a piece (its blocks will be fetched again).
    pub fn discard(&mut self, piece: u32) {
        if let Some(a) = self.assemblies.remove(&piece) {
            let bytes: usize = a.blocks.iter().flatten().map(|b| b.len()).sum();
            self.held_bytes -= bytes;
        }
    }

    /// Bytes held in partial pieces.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
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
    bad: &PieceData,
    bad_senders: &[Option<PeerKey>],
    good: &PieceData,
) -> Vec<PeerKey> {
    let mut culprits: Vec<PeerKey> = bad
        .blocks()
        .iter()
        .zip(good.blocks())
        .zip(bad_senders)
        .filter(|((b, g), _)| ***b != ***g)
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
        let block = |byte: u8, len: usize| BlockData::copy_of(&vec![byte; len]);
        buffers.store(&BlockRef::new(0, BLOCK_LEN, BLOCK_LEN), block(2, 16384), 8);
        assert_eq!(
            buffers.held_bytes(),
            16384,
            "a block holds its own bytes only"
        );
        buffers.store(&BlockRef::new(0, 0, BLOCK_LEN), block(1, 16384), 7);
        assert_eq!(buffers.held_bytes(), 32768);
        let piece = buffers.take(0);
        assert_eq!(buffers.held_bytes(), 0);
        assert_eq!(piece.data.len(), 32768);
        assert_eq!(piece.data.parts(), [&[1; 16384][..], &[2; 16384][..]]);
        assert_eq!(piece.senders, vec![Some(7), Some(8)]);
        assert_eq!(blame_on_failure(&piece.senders), Blame::Several);
        buffers.store(
            &BlockRef::new(1, 0, 40_000 - 32_768),
            block(3, 40_000 - 32_768),
            9,
        );
        assert_eq!(buffers.take(1).data.len(), 40_000 - 32_768);
        buffers.store(&BlockRef::new(0, 0, BLOCK_LEN), block(1, 16384), 7);
        buffers.discard(0);
        assert_eq!(buffers.held_bytes(), 0);
    }

    #[test]
    fn blocks_start_aligned_and_a_piece_is_its_blocks_in_order() {
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let piece = PieceData::copy_of(&bytes);
        assert_eq!(piece.len(), 40_000);
        assert_eq!(piece.blocks().len(), 3);
        for block in piece.blocks() {
            assert_eq!(block.as_ptr() as usize % PIECE_ALIGN, 0);
        }
        assert_eq!(piece.parts().concat(), bytes);
        assert_eq!(&*BlockData::copy_of(b"abc"), b"abc");
    }

    #[test]
    fn a_dropped_block_lends_its_buffer_to_the_next_one() {
        let dropped: Vec<BlockData> = (0..32).map(|_| BlockData::copy_of(&[7; 16384])).collect();
        let addresses: Vec<*const u8> = dropped.iter().map(|b| b.as_ptr()).collect();
        drop(dropped);
        // Other tests share the pool and may take some of them meanwhile, not all 32.
        let blocks: Vec<BlockData> = (0..32).map(|_| BlockData::copy_of(&[9; 100])).collect();
        assert!(
            blocks.iter().any(|b| addresses.contains(&b.as_ptr())),
            "the buffers came back"
        );
        for block in &blocks {
            assert_eq!((block.len(), block[99]), (100, 9));
            assert_eq!(block.as_ptr() as usize % PIECE_ALIGN, 0);
        }
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
            blame_after_refetch(
                &PieceData::copy_of(&bad),
                &[Some(1), Some(2), Some(3)],
                &PieceData::copy_of(&good)
            ),
            vec![2]
        );
    }
}
