//! The channel from a torrent's peer threads to its coordinator. It is unbounded underneath,
//! so a torrent without peers holds no buffer (a bounded crossbeam channel allocates all its
//! slots up front: 48 KiB a torrent for 512 events, which 10,000 idle torrents cannot afford),
//! and bounded on top by a budget of events queued at once, taken by a sender before it sends
//! and given back by the coordinator as it takes each one: a slow coordinator still pushes back
//! on its peers' reads. An event of received blocks takes a unit of the budget per block, so the
//! budget bounds the block bytes queued however they are batched. When the coordinator is gone,
//! a sender waiting for room gets its event back, as with a disconnected channel. Every event
//! sent rings the torrent's doorbell, which resumes a parked coordinator (`torrent/parking.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, SendError, Sender};
use parking_lot::{Condvar, Mutex};

use super::PeerEvent;
use crate::torrent::parking::Doorbell;

/// How long a sender waiting for room sleeps before it looks again (a safety net: a release
/// wakes it at once).
const RECHECK: Duration = Duration::from_millis(50);

/// Events queued at once (see the module docs).
struct Budget {
    capacity: usize,
    queued: AtomicUsize,
    /// The receiver is gone: no more room will be made.
    closed: AtomicBool,
    lock: Mutex<()>,
    freed: Condvar,
}

impl Budget {
    /// Takes room for `n` (an event's weight), waiting while there is none; room for more than
    /// the whole budget is taken once nothing else is queued. False once the receiver is gone.
    fn acquire(&self, n: usize) -> bool {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            let queued = self.queued.load(Ordering::Acquire);
            if queued + n <= self.capacity || queued == 0 {
                if self
                    .queued
                    .compare_exchange_weak(queued, queued + n, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            let mut guard = self.lock.lock();
            if self.queued.load(Ordering::Acquire) + n > self.capacity
                && self.queued.load(Ordering::Acquire) != 0
                && !self.closed.load(Ordering::Acquire)
            {
                self.freed.wait_for(&mut guard, RECHECK);
            }
        }
    }

    fn release(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::AcqRel);
        // A sender may be waiting for room for a batch of blocks, not only for one.
        if before + super::MAX_BLOCKS_PER_EVENT > self.capacity {
            let _guard = self.lock.lock();
            self.freed.notify_all();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _guard = self.lock.lock();
        self.freed.notify_all();
    }
}

/// The peer threads' end (in the torrent's `TorrentContext`).
pub struct EventSender {
    tx: Sender<PeerEvent>,
    budget: Arc<Budget>,
    doorbell: Arc<Doorbell>,
}

impl EventSender {
    /// Sends `event`, waiting while `capacity` events are queued.
    ///
    /// # Errors
    /// The event back when the coordinator is gone.
    pub fn send(&self, event: PeerEvent) -> Result<(), SendError<PeerEvent>> {
        let weight = event.weight();
        if !self.budget.acquire(weight) {
            return Err(SendError(event));
        }
        self.tx
            .send(event)
            .inspect_err(|_| self.budget.release(weight))?;
        self.doorbell.ring();
        Ok(())
    }
}

/// The coordinator's end: receive on `rx` (in a `select!` too), then call
/// [`EventReceiver::taken`] for what was taken. Dropping it frees waiting senders.
pub struct EventReceiver {
    pub rx: Receiver<PeerEvent>,
    budget: Arc<Budget>,
}

impl EventReceiver {
    /// Gives back the room of events taken from `rx` whose weights ([`PeerEvent::weight`]) add
    /// up to `n`.
    pub fn taken(&self, n: usize) {
        self.budget.release(n);
    }

    /// Events queued.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        self.budget.close();
    }
}

/// A channel of at most `capacity` events queued at once.
#[must_use]
pub fn channel(capacity: usize) -> (EventSender, EventReceiver) {
    ringing(capacity, Arc::default())
}

/// [`channel`], whose every event sent rings `doorbell`.
#[must_use]
pub fn ringing(capacity: usize, doorbell: Arc<Doorbell>) -> (EventSender, EventReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let budget = Arc::new(Budget {
        capacity,
        queued: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        lock: Mutex::new(()),
        freed: Condvar::new(),
    });
    (
        EventSender {
            tx,
            budget: Arc::clone(&budget),
            doorbell,
        },
        EventReceiver { rx, budget },
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::torrent::piece_buffer::BlockData;

    fn event(n: u64) -> PeerEvent {
        PeerEvent::Disconnected {
            peer: n,
            reason: super::super::PeerError::CoordinatorGone,
        }
    }

    #[test]
    fn a_full_budget_holds_the_sender_until_the_receiver_takes_one() {
        let (tx, rx) = channel(2);
        tx.send(event(1)).unwrap();
        tx.send(event(2)).unwrap();
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let sender = std::thread::spawn(move || {
            tx.send(event(3)).unwrap();
            done_tx.send(()).unwrap();
            tx
        });
        // Full: the third send waits.
        assert!(done_rx.recv_timeout(Duration::from_millis(200)).is_err());
        rx.rx.recv().unwrap();
        rx.taken(1);
        let started = Instant::now();
        done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // Woken by the release, not by the recheck's clock alone.
        assert!(started.elapsed() < Duration::from_secs(1));
        let _tx = sender.join().unwrap();
        assert_eq!(rx.len(), 2);
    }

    #[test]
    fn a_sender_waiting_for_room_gets_its_event_back_when_the_receiver_goes() {
        let (tx, rx) = channel(1);
        tx.send(event(1)).unwrap();
        let sender = std::thread::spawn(move || tx.send(event(2)).is_err());
        std::thread::sleep(Duration::from_millis(100));
        drop(rx);
        assert!(
            sender.join().unwrap(),
            "the send failed once the receiver was gone"
        );
    }

    fn blocks(n: u32) -> PeerEvent {
        PeerEvent::BlocksReceived {
            peer: 1,
            blocks: (0..n)
                .map(|i| {
                    let block = crate::wire::BlockRef::new(0, i * 16384, 16384);
                    (block, BlockData::copy_of(&[0u8; 16]))
                })
                .collect(),
        }
    }

    #[test]
    fn received_blocks_take_a_unit_each_and_a_batch_waits_for_room_for_all_of_them() {
        let (tx, rx) = channel(4);
        tx.send(blocks(3)).unwrap();
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let sender = std::thread::spawn(move || {
            tx.send(blocks(2)).unwrap();
            done_tx.send(()).unwrap();
            tx
        });
        // 3 of 4 units queued: a batch of 2 waits, though one event is all that is queued.
        assert!(done_rx.recv_timeout(Duration::from_millis(200)).is_err());
        let first = rx.rx.recv().unwrap();
        rx.taken(first.weight());
        done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let tx = sender.join().unwrap();
        // A batch larger than the whole budget still goes when nothing else is queued.
        let second = rx.rx.recv().unwrap();
        rx.taken(second.weight());
        tx.send(blocks(9)).unwrap();
        assert_eq!(rx.rx.recv().unwrap().weight(), 9);
    }
}
