//! Threads whose end can be waited for with a deadline: the thread holds the only sender of a
//! channel, so its end (return or panic) disconnects the receiver, and `recv_deadline` gives a
//! stop budget a real bound without polling `is_finished` on a clock. Used for the threads an
//! owner must stop within a budget: coordinators, announcers, metadata fetches and their peer
//! threads.

use std::thread::{Builder, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

/// A spawned thread and the channel that tells when it ended.
pub struct Watched<T> {
    thread: Option<JoinHandle<T>>,
    ended: Receiver<()>,
    panicked: bool,
}

/// Spawns `f` with `builder` (name, stack size), watched.
///
/// # Errors
/// When the thread cannot be spawned.
pub fn spawn<T, F>(builder: Builder, f: F) -> std::io::Result<Watched<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (alive, ended) = crossbeam_channel::bounded::<()>(0);
    let thread = builder.spawn(move || {
        // Dropped when the thread ends, however it ends.
        let _alive = alive;
        f()
    })?;
    Ok(Watched {
        thread: Some(thread),
        ended,
        panicked: false,
    })
}

/// A run that may move from thread to thread (a parked torrent's coordinator): it ends when
/// the returned token, which the run carries along, is dropped. Nothing is joined.
pub fn token() -> (crossbeam_channel::Sender<()>, Watched<()>) {
    let (alive, ended) = crossbeam_channel::bounded::<()>(0);
    (
        alive,
        Watched {
            thread: None,
            ended,
            panicked: false,
        },
    )
}

impl<T> Watched<T> {
    /// The thread has ended (it is then joined; its result is dropped).
    pub fn is_done(&mut self) -> bool {
        matches!(self.ended.try_recv(), Err(TryRecvError::Disconnected)) && self.join()
    }

    /// Waits for the thread's end until `deadline`; true if it ended (and was joined).
    pub fn wait_until(&mut self, deadline: Instant) -> bool {
        matches!(
            self.ended.recv_deadline(deadline),
            Err(RecvTimeoutError::Disconnected)
        ) && self.join()
    }

    /// The thread's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.thread.as_ref().and_then(|t| t.thread().name())
    }

    /// The thread ended in a panic (known once it was joined).
    pub fn panicked(&self) -> bool {
        self.panicked
    }

    fn join(&mut self) -> bool {
        if let Some(thread) = self.thread.take() {
            self.panicked = thread.join().is_err();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_wait_ends_at_the_threads_end_or_at_the_deadline() {
        let (go, wait) = crossbeam_channel::bounded::<()>(0);
        let mut t = spawn(Builder::new().name("watched".into()), move || {
            let _ = wait.recv();
        })
        .unwrap();
        assert_eq!(t.name(), Some("watched"));
        assert!(!t.is_done());
        let started = Instant::now();
        assert!(!t.wait_until(Instant::now() + Duration::from_millis(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(go);
        assert!(t.wait_until(Instant::now() + Duration::from_secs(10)));
        assert!(t.is_done(), "stays done");
    }

    #[test]
    fn a_panicking_thread_counts_as_ended() {
        let mut t = spawn(Builder::new(), || panic!("on purpose")).unwrap();
        assert!(t.wait_until(Instant::now() + Duration::from_secs(10)));
        assert!(t.panicked());
    }
}
