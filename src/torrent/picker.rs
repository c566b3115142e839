//! The piece picker: which block to request next from which peer. Owned by the torrent's
//! coordinator thread alone (no locks); knows nothing of sockets, threads or clocks.
//!
//! Policy: finish partially downloaded pieces first; start the first few pieces at random (so
//! we soon have something to trade); after that rarest first with a random tie-break; once every
//! missing block is requested somewhere, endgame: request blocks again from other peers.
//!
//! Each piece has a priority level from the file selection (`selection.rs`): 0 is never
//! started, and a new piece is chosen from the highest level the peer can give before rarity
//! counts. A piece already in flight is finished whatever its level.
//!
//! Choosing a new piece costs O(1) amortised for a peer with most pieces: the pieces that may
//! be started (missing and wanted) are kept in buckets by (level, availability), best first,
//! each bucket in random order (`Candidates`), and updated as availability, levels and
//! states change, instead of a scan of every piece per choice.
//!
//! Invariant: each piece is exactly one of missing, in flight (some blocks requested or
//! received), awaiting hash, or verified; a piece is a candidate exactly when it is missing
//! with a nonzero level, in the bucket of its level and availability.

use std::collections::{BTreeMap, HashMap};

use rand::RngExt;

use crate::metainfo::Geometry;
use crate::wire::{BLOCK_LEN, Bitfield, BlockRef};

/// A connected peer, as the coordinator numbers them.
pub type PeerKey = u64;

/// How many pieces are picked at random before rarest first takes over.
const RANDOM_FIRST_PIECES: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceState {
    Missing,
    InFlight,
    AwaitingHash,
    Verified,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockState {
    Missing,
    /// Requested from this many peers (more than one only in endgame).
    Requested(u16),
    Received,
}

#[derive(Debug)]
struct InFlight {
    blocks: Vec<BlockState>,
    /// Set after a hash failure with several contributors: the piece is fetched again from one
    /// peer only, so a second failure names the culprit.
    exclusive: bool,
    owner: Option<PeerKey>,
}

impl InFlight {
    fn is_fully_received(&self) -> bool {
        self.blocks.iter().all(|b| *b == BlockState::Received)
    }
}

/// A candidate's bucket: higher level first, then lower availability (the smallest key wins).
type BucketKey = (u8, u16);

/// `Candidates::pos` of a piece that is no candidate.
const NOT_CANDIDATE: u32 = u32::MAX;

/// The pieces that may be started, by [`BucketKey`], each bucket in random order: inserting
/// puts a piece at a random place of its bucket (the inside-out shuffle), so the first piece of
/// a bucket that a peer has is a random one of the bucket's pieces it has.
#[derive(Debug, Default)]
struct Candidates {
    buckets: BTreeMap<BucketKey, Vec<u32>>,
    /// Each piece's index in its bucket, or [`NOT_CANDIDATE`].
    pos: Vec<u32>,
}

impl Candidates {
    fn new(num_pieces: u32) -> Self {
        Self {
            buckets: BTreeMap::new(),
            pos: vec![NOT_CANDIDATE; num_pieces as usize],
        }
    }

    fn contains(&self, piece: u32) -> bool {
        self.pos[piece as usize] != NOT_CANDIDATE
    }

    fn insert(&mut self, piece: u32, key: BucketKey, rng: &mut rand::rngs::SmallRng) {
        debug_assert!(!self.contains(piece));
        let bucket = self.buckets.entry(key).or_default();
        let at = bucket.len();
        bucket.push(piece);
        let swap_with = rng.random_range(0..=at);
        bucket.swap(at, swap_with);
        let moved = bucket[at];
        self.pos[moved as usize] = saturating_u32(at);
        self.pos[piece as usize] = saturating_u32(swap_with);
    }

    fn remove(&mut self, piece: u32, key: BucketKey) {
        let at = std::mem::replace(&mut self.pos[piece as usize], NOT_CANDIDATE);
        debug_assert_ne!(at, NOT_CANDIDATE);
        let bucket = self.buckets.get_mut(&key).expect("a candidate's bucket");
        bucket.swap_remove(at as usize);
        if let Some(&moved) = bucket.get(at as usize) {
            self.pos[moved as usize] = at;
        }
        if bucket.is_empty() {
            self.buckets.remove(&key);
        }
    }

    /// The best candidate `peer_has` holds.
    fn first_held(&self, peer_has: &Bitfield) -> Option<u32> {
        self.buckets
            .values()
            .flat_map(|bucket| bucket.iter().copied())
            .find(|&piece| peer_has.get(piece))
    }
}

/// What a received block meant to the picker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// We did not need it (never requested, or already received from another peer).
    Unwanted,
    /// New data; the piece still misses blocks.
    Stored,
    /// New data and the last block of its piece: the piece is ready to be hashed.
    PieceComplete,
}

/// See the module documentation.
pub struct Picker {
    geometry: Geometry,
    state: Vec<PieceState>,
    availability: Vec<u16>,
    in_flight: HashMap<u32, InFlight>,
    /// Pieces in flight in the order they were started: older ones are finished first.
    in_flight_order: Vec<u32>,
    verified: u32,
    /// Each piece's priority level (0: not wanted), from the file selection.
    levels: Vec<u8>,
    /// Pieces with a nonzero level that are not verified yet.
    wanted_missing: u32,
    /// Pieces started at random before rarest first takes over.
    random_first: u32,
    /// The pieces that may be started, by level and availability.
    candidates: Candidates,
    rng: rand::rngs::SmallRng,
}

impl Picker {
    /// A picker for a torrent of which `have` is already verified.
    pub fn new(geometry: Geometry, have: &Bitfield) -> Self {
        let state = (0..geometry.num_pieces)
            .map(|p| {
                if have.get(p) {
                    PieceState::Verified
                } else {
                    PieceState::Missing
                }
            })
            .collect();
        let mut picker = Self {
            geometry,
            state,
            availability: vec![0; geometry.num_pieces as usize],
            in_flight: HashMap::new(),
            in_flight_order: Vec::new(),
            verified: have.count_ones(),
            levels: vec![2; geometry.num_pieces as usize],
            wanted_missing: geometry.num_pieces - have.count_ones(),
            random_first: RANDOM_FIRST_PIECES,
            candidates: Candidates::new(geometry.num_pieces),
            rng: rand::make_rng(),
        };
        picker.rebuild_candidates();
        picker
    }

    /// Piece `piece`'s bucket.
    fn bucket_key(&self, piece: u32) -> BucketKey {
        let p = piece as usize;
        (u8::MAX - self.levels[p], self.availability[p])
    }

    /// True when piece `piece` may be started: missing and wanted.
    fn is_candidate(&self, piece: u32) -> bool {
        let p = piece as usize;
        self.state[p] == PieceState::Missing && self.levels[p] > 0
    }

    /// Puts every candidate in its bucket again (after the levels changed).
    fn rebuild_candidates(&mut self) {
        self.candidates = Candidates::new(self.geometry.num_pieces);
        for piece in 0..self.geometry.num_pieces {
            if self.is_candidate(piece) {
                let key = self.bucket_key(piece);
                self.candidates.insert(piece, key, &mut self.rng);
            }
        }
    }

    /// Sets a piece's state, keeping the candidates in step.
    fn set_state(&mut self, piece: u32, state: PieceState) {
        let was = self.candidates.contains(piece);
        self.state[piece as usize] = state;
        let is = self.is_candidate(piece);
        let key = self.bucket_key(piece);
        if was && !is {
            self.candidates.remove(piece, key);
        } else if is && !was {
            self.candidates.insert(piece, key, &mut self.rng);
        }
    }

    /// Sets a piece's availability, moving it to its new bucket if it is a candidate.
    fn set_availability(&mut self, piece: u32, availability: u16) {
        if self.availability[piece as usize] == availability {
            return;
        }
        let candidate = self.candidates.contains(piece);
        if candidate {
            self.candidates.remove(piece, self.bucket_key(piece));
        }
        self.availability[piece as usize] = availability;
        if candidate {
            let key = self.bucket_key(piece);
            self.candidates.insert(piece, key, &mut self.rng);
        }
    }

    /// True once every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.verified == self.geometry.num_pieces
    }

    /// True once every wanted piece (nonzero level) is verified: the download is done, though
    /// pieces of unwanted files may be missing.
    pub fn is_done(&self) -> bool {
        self.wanted_missing == 0
    }

    /// Number of verified pieces.
    pub fn verified_count(&self) -> u32 {
        self.verified
    }

    /// New priority levels, one per piece (from [`crate::selection::Selection::piece_levels`]).
    /// Pieces in flight are finished whatever their new level.
    pub fn set_levels(&mut self, levels: Vec<u8>) {
        assert_eq!(levels.len(), self.state.len(), "one level per piece");
        self.wanted_missing = saturating_u32(
            levels
                .iter()
                .zip(&self.state)
                .filter(|(level, state)| **level > 0 && **state != PieceState::Verified)
                .count(),
        );
        self.levels = levels;
        self.rebuild_candidates();
    }

    /// Piece `piece`'s priority level (0: not wanted).
    pub fn level(&self, piece: u32) -> u8 {
        self.levels[piece as usize]
    }

    /// Bytes of wanted pieces not verified yet.
    pub fn left_bytes(&self) -> u64 {
        self.levels
            .iter()
            .zip(&self.state)
            .zip(0u32..)
            .filter(|((level, state), _)| **level > 0 && **state != PieceState::Verified)
            .map(|(_, piece)| u64::from(self.geometry.piece_len(piece)))
            .sum()
    }

    /// True when we need piece `piece`: wanted and not verified, or already in flight.
    fn needs(&self, piece: u32) -> bool {
        let p = piece as usize;
        match self.state[p] {
            PieceState::Verified => false,
            PieceState::InFlight | PieceState::AwaitingHash => true,
            PieceState::Missing => self.levels[p] > 0,
        }
    }

    /// True when the peer has a piece we need.
    pub fn is_interesting(&self, peer_has: &Bitfield) -> bool {
        peer_has.iter_ones().any(|p| self.needs(p))
    }

    /// True when we would want piece `piece` from a peer that just announced it.
    pub fn wants(&self, piece: u32) -> bool {
        piece < self.geometry.num_pieces && self.needs(piece)
    }

    /// A peer announced `piece` (a `have` message).
    pub fn on_have(&mut self, piece: u32) {
        let availability = self.availability[piece as usize].saturating_add(1);
        self.set_availability(piece, availability);
    }

    /// A peer's pieces join the swarm's availability (its bitfield, or all of them).
    pub fn on_peer_pieces(&mut self, pieces: &Bitfield) {
        for p in pieces.iter_ones() {
            self.on_have(p);
        }
    }

    /// A peer left (or replaced its bitfield): its pieces leave the availability count.
    pub fn on_peer_gone(&mut self, pieces: &Bitfield) {
        for p in pieces.iter_ones() {
            let availability = self.availability[p as usize].saturating_sub(1);
            self.set_availability(p, availability);
        }
    }

    /// Up to `max` blocks to request from `peer`, which has `peer_has`. `already_asked` tells
    /// whether this peer already has a request out for a block (consulted in endgame).
    /// Marks the returned blocks requested.
    pub fn pick(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        max: usize,
        already_asked: impl Fn(&BlockRef) -> bool,
    ) -> Vec<BlockRef> {
        self.pick_from(peer, peer_has, max, already_asked, true)
    }

    /// Like [`Picker::pick`], but only blocks of pieces already in flight: no new piece is
    /// started and no endgame duplicate asked for (the coordinator holds as many bytes as it
    /// may; finishing what it started frees them).
    pub fn pick_started(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        max: usize,
    ) -> Vec<BlockRef> {
        self.pick_from(peer, peer_has, max, |_| true, false)
    }

    fn pick_from(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        max: usize,
        already_asked: impl Fn(&BlockRef) -> bool,
        start_new: bool,
    ) -> Vec<BlockRef> {
        let mut out = Vec::new();
        // 1. Pieces already in flight, oldest first.
        for i in 0..self.in_flight_order.len() {
            if out.len() >= max {
                return out;
            }
            let piece = self.in_flight_order[i];
            if peer_has.get(piece) {
                self.take_missing_blocks(piece, peer, max, &mut out);
            }
        }
        // 2. New pieces: random at first, then rarest first.
        while start_new && out.len() < max {
            let Some(piece) = self.choose_new_piece(peer_has) else {
                break;
            };
            self.start_piece(piece);
            self.take_missing_blocks(piece, peer, max, &mut out);
        }
        // 3. Endgame: nothing left to start, so duplicate requests still outstanding elsewhere.
        if start_new && out.is_empty() {
            self.pick_endgame(peer_has, max, &already_asked, &mut out);
        }
        #[cfg(debug_assertions)]
        self.check_invariants();
        out
    }

    fn take_missing_blocks(
        &mut self,
        piece: u32,
        peer: PeerKey,
        max: usize,
        out: &mut Vec<BlockRef>,
    ) {
        let flight = self.in_flight.get_mut(&piece).expect("in-flight piece");
        if flight.exclusive && flight.owner.is_some_and(|o| o != peer) {
            return;
        }
        for (index, block) in flight.blocks.iter_mut().enumerate() {
            if out.len() >= max {
                break;
            }
            if *block == BlockState::Missing {
                *block = BlockState::Requested(1);
                flight.owner = Some(peer);
                let index = u32::try_from(index).expect("block index fits u32");
                out.push(self.geometry.block(piece, index));
            }
        }
    }

    fn pick_endgame(
        &mut self,
        peer_has: &Bitfield,
        max: usize,
        already_asked: &impl Fn(&BlockRef) -> bool,
        out: &mut Vec<BlockRef>,
    ) {
        for &piece in &self.in_flight_order {
            if !peer_has.get(piece) {
                continue;
            }
            let flight = self.in_flight.get_mut(&piece).expect("in-flight piece");
            if flight.exclusive {
                continue;
            }
            for (index, block) in flight.blocks.iter_mut().enumerate() {
                if out.len() >= max {
                    return;
                }
                if let BlockState::Requested(n) = *block {
                    let index = u32::try_from(index).expect("block index fits u32");
                    let block_ref = self.geometry.block(piece, index);
                    if !already_asked(&block_ref) {
                        *block = BlockState::Requested(n.saturating_add(1));
                        out.push(block_ref);
                    }
                }
            }
        }
    }

    fn choose_new_piece(&mut self, peer_has: &Bitfield) -> Option<u32> {
        let random_phase =
            (self.verified as usize + self.in_flight.len()) < self.random_first as usize;
        if !random_phase {
            return self.candidates.first_held(peer_has);
        }
        // The first few pieces: any the peer has, of the best level, whatever its
        // availability (a scan, but only for these few).
        let mut best: Option<u32> = None;
        // Higher level first, then lower availability: the smallest key wins.
        let mut best_key = (u8::MAX, u16::MAX);
        let mut ties = 0u32;
        for piece in peer_has.iter_ones() {
            let level = self.levels[piece as usize];
            if self.state[piece as usize] != PieceState::Missing || level == 0 {
                continue;
            }
            let key = (u8::MAX - level, 0);
            if key < best_key {
                best = Some(piece);
                best_key = key;
                ties = 1;
            } else if key == best_key {
                // Reservoir sampling: each tied piece ends up chosen with equal chance.
                ties += 1;
                if self.rng.random_range(0..ties) == 0 {
                    best = Some(piece);
                }
            }
        }
        best
    }

    fn start_piece(&mut self, piece: u32) {
        let blocks = self.geometry.blocks_in_piece(piece) as usize;
        self.set_state(piece, PieceState::InFlight);
        self.in_flight.insert(
            piece,
            InFlight {
                blocks: vec![BlockState::Missing; blocks],
                exclusive: false,
                owner: None,
            },
        );
        self.in_flight_order.push(piece);
    }

    /// A request we sent will not be answered (choke, disconnect, timeout, reject): the block
    /// may be requested again.
    pub fn on_request_voided(&mut self, block: &BlockRef) {
        if let Some(state) = self.block_state_mut(block)
            && let BlockState::Requested(n) = *state
        {
            *state = if n > 1 {
                BlockState::Requested(n - 1)
            } else {
                BlockState::Missing
            };
        }
    }

    /// A block arrived from `peer`.
    pub fn on_block_received(&mut self, block: &BlockRef) -> Received {
        let Some(state) = self.block_state_mut(block) else {
            return Received::Unwanted;
        };
        if *state == BlockState::Received {
            return Received::Unwanted;
        }
        *state = BlockState::Received;
        let piece = block.piece;
        if self.in_flight[&piece].is_fully_received() {
            self.set_state(piece, PieceState::AwaitingHash);
            self.in_flight.remove(&piece);
            self.in_flight_order.retain(|&p| p != piece);
            Received::PieceComplete
        } else {
            Received::Stored
        }
    }

    /// The piece's hash matched and it is on disk.
    pub fn on_piece_verified(&mut self, piece: u32) {
        debug_assert_eq!(self.state[piece as usize], PieceState::AwaitingHash);
        self.set_state(piece, PieceState::Verified);
        self.verified += 1;
        if self.levels[piece as usize] > 0 {
            self.wanted_missing -= 1;
        }
    }

    /// The piece's hash did not match: download it again. With `exclusive`, from one peer only.
    pub fn on_piece_failed(&mut self, piece: u32, exclusive: bool) {
        debug_assert_eq!(self.state[piece as usize], PieceState::AwaitingHash);
        self.set_state(piece, PieceState::Missing);
        if exclusive {
            self.start_piece(piece);
            self.in_flight
                .get_mut(&piece)
                .expect("just started")
                .exclusive = true;
        }
    }

    /// The owner of an exclusive piece left: let another peer take it.
    pub fn on_peer_disconnected(&mut self, peer: PeerKey) {
        for flight in self.in_flight.values_mut() {
            if flight.owner == Some(peer) {
                flight.owner = None;
            }
        }
    }

    fn block_state_mut(&mut self, block: &BlockRef) -> Option<&mut BlockState> {
        if !self.geometry.is_valid_block(block) {
            return None;
        }
        self.in_flight
            .get_mut(&block.piece)?
            .blocks
            .get_mut((block.offset / BLOCK_LEN) as usize)
    }

    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        assert_eq!(
            self.wanted_missing as usize,
            self.levels
                .iter()
                .zip(&self.state)
                .filter(|(l, s)| **l > 0 && **s != PieceState::Verified)
                .count(),
            "wanted_missing disagrees with the levels"
        );
        for (piece, state) in self.state.iter().enumerate() {
            let piece = u32::try_from(piece).expect("piece index fits u32");
            assert_eq!(
                *state == PieceState::InFlight,
                self.in_flight.contains_key(&piece),
                "piece {piece}: state {state:?} disagrees with the in-flight set"
            );
        }
        assert_eq!(self.in_flight.len(), self.in_flight_order.len());
        for piece in 0..self.geometry.num_pieces {
            let at = self.candidates.pos[piece as usize];
            assert_eq!(
                at != NOT_CANDIDATE,
                self.is_candidate(piece),
                "piece {piece}: candidate or not"
            );
            if at != NOT_CANDIDATE {
                assert_eq!(
                    self.candidates.buckets[&self.bucket_key(piece)][at as usize],
                    piece,
                    "piece {piece}: in the bucket of its level and availability"
                );
            }
        }
        let bucketed: usize = self.candidates.buckets.values().map(Vec::len).sum();
        assert!(self.candidates.buckets.values().all(|b| !b.is_empty()));
        assert_eq!(
            bucketed,
            self.candidates
                .pos
                .iter()
                .filter(|&&at| at != NOT_CANDIDATE)
                .count()
        );
    }
}

/// `n`, or `u32::MAX` when it does not fit.
pub(super) fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One-line scenario: availability digits per piece, and `#` for pieces we have.
    fn picker_from(availability: &str, have: &str) -> Picker {
        let n = u32::try_from(availability.len()).unwrap();
        let geometry = Geometry::new(u64::from(n) * 2 * u64::from(BLOCK_LEN), 2 * BLOCK_LEN);
        let mut have_bits = Bitfield::new(n);
        for (i, c) in have.chars().enumerate() {
            if c == '#' {
                have_bits.set(u32::try_from(i).unwrap());
            }
        }
        let mut picker = Picker::new(geometry, &have_bits);
        for (i, c) in availability.chars().enumerate() {
            for _ in 0..c.to_digit(10).unwrap() {
                picker.on_have(u32::try_from(i).unwrap());
            }
        }
        // Skip the random-first phase so rarest first is what the tests see.
        picker.random_first = 0;
        picker
    }

    fn all(n: u32) -> Bitfield {
        Bitfield::full(n)
    }

    #[test]
    fn picks_the_rarest_piece_the_peer_has() {
        let mut picker = picker_from("3213", "....");
        let blocks = picker.pick(1, &all(4), 2, |_| false);
        assert_eq!(
            blocks,
            vec![
                BlockRef::new(2, 0, BLOCK_LEN),
                BlockRef::new(2, BLOCK_LEN, BLOCK_LEN)
            ]
        );
    }

    #[test]
    fn skips_pieces_we_have_and_pieces_the_peer_lacks() {
        let mut picker = picker_from("3112", ".#..");
        let mut peer = Bitfield::new(4);
        peer.set(0);
        peer.set(1);
        peer.set(3);
        let blocks = picker.pick(1, &peer, 2, |_| false);
        assert!(blocks.iter().all(|b| b.piece == 3), "{blocks:?}");
    }

    #[test]
    fn finishes_partial_pieces_before_starting_new_ones() {
        let mut picker = picker_from("5511", "....");
        let first = picker.pick(1, &all(4), 1, |_| false);
        let rare_piece = first[0].piece;
        assert!(rare_piece >= 2);
        let second = picker.pick(2, &all(4), 1, |_| false);
        assert_eq!(
            second,
            vec![BlockRef::new(rare_piece, BLOCK_LEN, BLOCK_LEN)]
        );
    }

    #[test]
    fn starts_the_first_pieces_at_random_whatever_their_availability() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut picker = picker_from("1999", "....");
            picker.random_first = RANDOM_FIRST_PIECES;
            seen.insert(picker.pick(1, &all(4), 1, |_| false)[0].piece);
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn breaks_ties_at_random() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut picker = picker_from("2222", "....");
            seen.insert(picker.pick(1, &all(4), 1, |_| false)[0].piece);
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn breaks_ties_at_random_among_the_rarest_only() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut picker = picker_from("31213", "....");
            seen.insert(picker.pick(1, &all(5), 1, |_| false)[0].piece);
        }
        assert_eq!(seen, [1, 3].into(), "{seen:?}");
    }

    #[test]
    fn a_piece_that_turns_rare_is_picked_first() {
        let mut picker = picker_from("2222", "....");
        let mut gone = Bitfield::new(4);
        gone.set(2);
        picker.on_peer_gone(&gone);
        assert_eq!(picker.pick(1, &all(4), 1, |_| false)[0].piece, 2);
        picker.on_have(0);
        picker.on_have(0);
        let mut peer = Bitfield::new(4);
        peer.set(0);
        peer.set(3);
        assert_eq!(picker.pick(2, &peer, 1, |_| false)[0].piece, 3);
    }

    #[test]
    fn a_higher_level_comes_before_rarity() {
        let mut picker = picker_from("9111", "....");
        picker.set_levels(vec![3, 2, 2, 1]);
        let order: Vec<u32> = (0..4)
            .map(|_| picker.pick(1, &all(4), 2, |_| false)[0].piece)
            .collect();
        assert_eq!(order[0], 0);
        assert_eq!(order[3], 3);
    }

    #[test]
    fn a_failed_piece_is_a_candidate_again() {
        let mut picker = picker_from("21", "..");
        let first = picker.pick(1, &all(2), 2, |_| false);
        assert!(first.iter().all(|b| b.piece == 1));
        for b in &first {
            picker.on_block_received(b);
        }
        picker.on_piece_failed(1, false);
        let again = picker.pick(1, &all(2), 2, |_| false);
        assert!(again.iter().all(|b| b.piece == 1), "{again:?}");
    }

    /// Against a scan of every piece: the choice has the best (level, availability) among the
    /// candidates the peer has, through random availability, levels and states.
    #[test]
    fn the_buckets_choose_what_a_full_scan_would() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(16);
        let n = 64u32;
        let geometry = Geometry::new(u64::from(n) * u64::from(BLOCK_LEN), BLOCK_LEN);
        let mut picker = Picker::new(geometry, &Bitfield::new(n));
        picker.random_first = 0;
        for round in 0..2000 {
            let mut peer = Bitfield::new(n);
            for p in 0..n {
                if rng.random_range(0..4) > 0 {
                    peer.set(p);
                }
            }
            match rng.random_range(0..10) {
                0..=3 => picker.on_peer_pieces(&peer),
                4..=5 => picker.on_peer_gone(&peer),
                6 if round % 50 == 0 => {
                    picker.set_levels((0..n).map(|_| rng.random_range(0..4)).collect());
                }
                _ => {}
            }
            let best = (0..n)
                .filter(|&p| peer.get(p) && picker.is_candidate(p))
                .map(|p| picker.bucket_key(p))
                .min();
            let chosen = picker.choose_new_piece(&peer);
            assert_eq!(chosen.map(|p| picker.bucket_key(p)), best, "round {round}");
            if let Some(p) = chosen {
                picker.start_piece(p);
                let block = picker.geometry.block(p, 0);
                assert_eq!(picker.on_block_received(&block), Received::PieceComplete);
                if rng.random_range(0..3) == 0 {
                    picker.on_piece_failed(p, false);
                } else {
                    picker.on_piece_verified(p);
                }
            }
            picker.check_invariants();
        }
    }

    #[test]
    fn pick_started_finishes_pieces_in_flight_and_starts_none() {
        let mut picker = picker_from("11", "..");
        let first = picker.pick(1, &all(2), 1, |_| false);
        let started = first[0].piece;
        let rest = picker.pick_started(2, &all(2), 4);
        assert_eq!(rest, vec![BlockRef::new(started, BLOCK_LEN, BLOCK_LEN)]);
        assert!(
            picker.pick_started(2, &all(2), 4).is_empty(),
            "no new piece, no endgame"
        );
        assert_eq!(
            picker.pick(2, &all(2), 4, |_| false).len(),
            2,
            "the other piece"
        );
    }

    #[test]
    fn requeues_voided_requests() {
        let mut picker = picker_from("1", ".");
        let blocks = picker.pick(1, &all(1), 2, |_| false);
        assert_eq!(blocks.len(), 2);
        picker.on_request_voided(&blocks[1]);
        assert_eq!(picker.pick(2, &all(1), 2, |_| true), vec![blocks[1]]);
    }

    #[test]
    fn endgame_duplicates_requests_only_to_peers_not_yet_asked() {
        let mut picker = picker_from("1", ".");
        let blocks = picker.pick(1, &all(1), 2, |_| false);
        let asked_by_1 = blocks.clone();
        let dup = picker.pick(2, &all(1), 2, |b| !asked_by_1.contains(b));
        assert_eq!(dup, blocks, "peer 2 gets both blocks again");
        assert!(
            picker
                .pick(1, &all(1), 2, |b| asked_by_1.contains(b))
                .is_empty()
        );
    }

    #[test]
    fn completes_piece_and_counts_it_verified() {
        let mut picker = picker_from("1", ".");
        let blocks = picker.pick(1, &all(1), 2, |_| false);
        assert_eq!(picker.on_block_received(&blocks[0]), Received::Stored);
        assert_eq!(picker.on_block_received(&blocks[0]), Received::Unwanted);
        assert_eq!(
            picker.on_block_received(&blocks[1]),
            Received::PieceComplete
        );
        picker.on_piece_verified(0);
        assert!(picker.is_complete());
        assert!(!picker.is_interesting(&all(1)));
    }

    #[test]
    fn failed_exclusive_piece_goes_to_one_peer_only() {
        let mut picker = picker_from("1", ".");
        for b in picker.pick(1, &all(1), 2, |_| false) {
            picker.on_block_received(&b);
        }
        picker.on_piece_failed(0, true);
        assert_eq!(picker.pick(7, &all(1), 1, |_| false).len(), 1);
        assert!(
            picker.pick(8, &all(1), 2, |_| true).is_empty(),
            "owned by peer 7"
        );
        assert_eq!(picker.pick(7, &all(1), 2, |_| false).len(), 1);
        picker.on_peer_disconnected(7);
    }

    #[test]
    fn rejects_blocks_that_are_not_blocks_of_the_torrent() {
        let mut picker = picker_from("1", ".");
        picker.pick(1, &all(1), 2, |_| false);
        assert_eq!(
            picker.on_block_received(&BlockRef::new(0, 5, 100)),
            Received::Unwanted
        );
        assert_eq!(
            picker.on_block_received(&BlockRef::new(9, 0, BLOCK_LEN)),
            Received::Unwanted
        );
    }

    #[test]
    fn unwanted_pieces_are_never_started_and_urgent_ones_come_first() {
        let mut picker = picker_from("1111", "....");
        picker.set_levels(vec![2, 0, 3, 0]);
        assert!(!picker.is_done());
        let mut peer = Bitfield::new(4);
        peer.set(1);
        peer.set(3);
        assert!(!picker.is_interesting(&peer), "it has only unwanted pieces");
        assert!(!picker.wants(1));
        assert!(picker.pick(1, &peer, 4, |_| false).is_empty());
        let first = picker.pick(1, &all(4), 2, |_| false);
        assert!(first.iter().all(|b| b.piece == 2), "high first: {first:?}");
        let next = picker.pick(1, &all(4), 2, |_| false);
        assert!(next.iter().all(|b| b.piece == 0), "{next:?}");
        for b in first.iter().chain(&next) {
            picker.on_block_received(b);
        }
        picker.on_piece_verified(2);
        assert!(!picker.is_done());
        picker.on_piece_verified(0);
        assert!(picker.is_done(), "the wanted pieces are verified");
        assert!(!picker.is_complete());
        assert!(picker.pick(1, &all(4), 4, |_| false).is_empty());
        picker.set_levels(vec![2, 1, 3, 0]);
        assert!(!picker.is_done(), "piece 1 is wanted now");
        assert!(
            picker
                .pick(1, &all(4), 4, |_| false)
                .iter()
                .all(|b| b.piece == 1)
        );
    }

    #[test]
    fn a_piece_in_flight_is_finished_after_its_file_is_unwanted() {
        let mut picker = picker_from("1", ".");
        let blocks = picker.pick(1, &all(1), 1, |_| false);
        picker.set_levels(vec![0]);
        assert!(picker.is_done());
        assert!(
            picker.is_interesting(&all(1)),
            "its other block is still needed"
        );
        let rest = picker.pick(1, &all(1), 2, |_| false);
        assert_eq!(rest.len(), 1);
        assert_ne!(rest, blocks);
    }
}
