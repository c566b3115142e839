//! Parking an idle torrent: its coordinator thread ends and leaves its whole state behind a
//! [`Doorbell`], and whoever gives the torrent something to do (a peer event, a control
//! message, tracker peers, a changed file) rings it, which starts a new coordinator thread with
//! that state. A seeding torrent with no peer, nothing dialled, written or saved then holds no
//! thread, no stack and no timer: 10,000 of them are 10,000 boxes, not 10,000 threads.
//!
//! The race between a sender and a coordinator that is parking is closed the usual way: the
//! sender queues its message, then looks at the flag; the parking coordinator raises the flag,
//! then looks at its channels (both with a `SeqCst` fence between), under the lock a ringer
//! takes to resume it. Either the coordinator sees the message and stays, or the ringer sees
//! the flag and resumes it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use log::warn;
use parking_lot::{Mutex, MutexGuard};

/// What resumes a parked run: it spawns the run's thread with its state. `Err` gives it back
/// (the thread could not be spawned); it is kept for the next ring.
pub struct Resume(Box<dyn FnOnce() -> Result<(), Resume> + Send>);

impl Resume {
    pub fn new(f: impl FnOnce() -> Result<(), Resume> + Send + 'static) -> Self {
        Self(Box::new(f))
    }
}

/// One torrent's doorbell; see the module documentation.
#[derive(Default)]
pub struct Doorbell {
    parked: AtomicBool,
    resume: Mutex<Option<Resume>>,
    /// Times the run parked and was resumed (for logs and tests).
    parks: AtomicU64,
    resumes: AtomicU64,
}

impl Doorbell {
    /// Call after queueing a message for the run: resumes it if it is parked.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if !self.parked.load(Ordering::SeqCst) {
            return;
        }
        let mut slot = self.resume.lock();
        let Some(resume) = slot.take() else { return };
        self.parked.store(false, Ordering::SeqCst);
        self.resumes.fetch_add(1, Ordering::Relaxed);
        if let Err(resume) = (resume.0)() {
            warn!("cannot start a thread for a parked torrent; it stays parked until rung again");
            *slot = Some(resume);
            self.parked.store(true, Ordering::SeqCst);
        }
    }

    /// The first half of parking, on the run's own thread: raises the flag and holds the lock.
    /// Look at every channel a ringer may have queued on, then [`Parking::park`] or
    /// [`Parking::cancel`].
    pub fn begin_park(&self) -> Parking<'_> {
        let slot = self.resume.lock();
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Parking { bell: self, slot }
    }

    /// Whether the run is parked now.
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }

    /// How many times the run parked, and was resumed.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.parks.load(Ordering::Relaxed),
            self.resumes.load(Ordering::Relaxed),
        )
    }
}

/// A park in progress (see [`Doorbell::begin_park`]); dropping it cancels.
pub struct Parking<'a> {
    bell: &'a Doorbell,
    slot: MutexGuard<'a, Option<Resume>>,
}

impl Parking<'_> {
    /// Leaves `resume` for the next ring; the caller's thread then ends.
    pub fn park(mut self, resume: Resume) {
        *self.slot = Some(resume);
        self.bell.parks.fetch_add(1, Ordering::Relaxed);
    }

    /// Something came in meanwhile: the run goes on.
    pub fn cancel(self) {}
}

impl Drop for Parking<'_> {
    fn drop(&mut self) {
        if self.slot.is_none() {
            self.bell.parked.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ring_resumes_a_parked_run_once_and_a_cancelled_park_needs_none() {
        let bell = Arc::new(Doorbell::default());
        bell.ring(); // not parked: nothing to do
        let (tx, rx) = crossbeam_channel::unbounded();
        let resumed = tx.clone();
        bell.begin_park().park(Resume::new(move || {
            resumed.send("resumed").unwrap();
            Ok(())
        }));
        assert!(bell.is_parked());
        bell.ring();
        bell.ring();
        assert_eq!(rx.try_recv(), Ok("resumed"));
        assert!(rx.try_recv().is_err(), "resumed once");
        assert!(!bell.is_parked());
        assert_eq!(bell.counts(), (1, 1));

        bell.begin_park().cancel();
        assert!(!bell.is_parked());
        bell.ring();
        assert_eq!(bell.counts(), (1, 1));
    }

    #[test]
    fn a_resume_that_cannot_start_stays_for_the_next_ring() {
        let bell = Doorbell::default();
        let tries = Arc::new(AtomicU64::new(0));
        fn attempt(tries: Arc<AtomicU64>) -> Resume {
            Resume::new(move || {
                if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(attempt(tries))
                } else {
                    Ok(())
                }
            })
        }
        bell.begin_park().park(attempt(Arc::clone(&tries)));
        bell.ring();
        assert!(bell.is_parked(), "the first start failed");
        bell.ring();
        assert!(!bell.is_parked());
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_message_queued_while_parking_is_seen_by_one_side() {
        // Many rounds of a sender racing a parker: every message is either seen by the parker
        // (which cancels) or resumes it.
        for _ in 0..200 {
            let bell = Arc::new(Doorbell::default());
            let (tx, rx) = crossbeam_channel::unbounded::<u32>();
            let (resumed_tx, resumed_rx) = crossbeam_channel::unbounded::<()>();
            let sender = {
                let bell = Arc::clone(&bell);
                std::thread::spawn(move || {
                    tx.send(1).unwrap();
                    bell.ring();
                })
            };
            let parking = bell.begin_park();
            let seen = !rx.is_empty();
            if seen {
                parking.cancel();
            } else {
                parking.park(Resume::new(move || {
                    resumed_tx.send(()).unwrap();
                    Ok(())
                }));
            }
            sender.join().unwrap();
            assert!(
                seen || resumed_rx.try_recv().is_ok(),
                "a message neither seen nor resuming"
            );
        }
    }
}
