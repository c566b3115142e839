//! One torrent at run time: its coordinator thread (which owns the picker, the piece buffers,
//! the choker and the peer table), its disk threads and its announcer thread. This module holds
//! the handle the engine keeps and the shared counters it reads.

pub mod choker;
mod coordinator;
pub mod disk;
pub mod picker;
pub mod piece_buffer;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::metainfo::Metainfo;
use crate::peer::TorrentContext;
use crate::ratelimit::Limits;
use crate::storage::Storage;
use crate::wire::Bitfield;

/// Orders from the engine to a coordinator.
#[derive(Debug)]
pub enum Control {
    /// Announce `stopped`, drop every peer, finish pending disk writes, flush, exit.
    Stop,
    /// Connect to these peers (from the command line or another source).
    AddPeers(Vec<SocketAddr>),
    /// New per-torrent limits (config reload); peers stay connected.
    SetLimits(TorrentLimits),
}

/// What a torrent tells the engine, in the past tense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorrentEvent {
    /// Every piece is verified and flushed to disk.
    Completed,
    /// The torrent stopped transferring because of a storage error (named in the message).
    Failed(String),
    /// Data we had verified is gone or changed on disk (a file deleted, replaced or truncated,
    /// or a read failed): stop this torrent and hash its data again. Until it stops it serves
    /// nothing and saves no resume data.
    RecheckNeeded(String),
}

/// Counters the coordinator publishes for progress displays and the announcer.
#[derive(Debug, Default)]
pub struct TorrentStats {
    pub total_bytes: AtomicU64,
    pub verified_bytes: AtomicU64,
    /// Payload bytes received from peers (including waste).
    pub downloaded: AtomicU64,
    pub uploaded: AtomicU64,
    pub download_rate: AtomicU64,
    pub upload_rate: AtomicU64,
    pub peers: AtomicU32,
    pub complete: AtomicBool,
    /// Seeders, leechers and completed downloads as the trackers report them (the announcer
    /// writes them).
    pub swarm: Arc<crate::tracker::SwarmStats>,
}

impl TorrentStats {
    /// Bytes still missing.
    pub fn left(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed) - self.verified_bytes.load(Ordering::Relaxed)
    }
}

/// Limits and knobs of one torrent, from the config file and the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorrentLimits {
    pub max_peers: usize,
    pub upload_slots: usize,
    pub connect_timeout: Duration,
    /// A peer socket write that makes no progress this long drops the peer (it stopped reading).
    pub write_timeout: Duration,
    pub disk_threads: usize,
    pub numwant: u32,
    pub announce_timeout: Duration,
    pub stop_timeout: Duration,
    /// UDP trackers: retransmit after `udp_retransmit_base * 2^n` (BEP 15).
    pub udp_retransmit_base: Duration,
}

/// Everything a torrent needs to start.
pub struct TorrentParams {
    pub meta: Arc<Metainfo>,
    pub storage: Arc<Storage>,
    /// Pieces already verified on disk.
    pub have: Bitfield,
    pub peer_id: [u8; 20],
    /// Our listening port, for trackers.
    pub listen_port: u16,
    /// Source address of outgoing connections.
    pub bind: Option<IpAddr>,
    pub peers: Vec<SocketAddr>,
    pub limits: TorrentLimits,
    /// The process-wide rate limits and peer budget.
    pub global: Arc<Limits>,
    /// Where to keep resume data (the daemon); None for one-shot commands.
    pub resume: Option<ResumeTarget>,
    /// The process's disk threads.
    pub disk: disk::DiskPoolHandle,
}

/// Where and how a torrent saves its resume data.
#[derive(Clone, Debug)]
pub struct ResumeTarget {
    pub path: PathBuf,
    /// The download directory (files are under `root/<name>`).
    pub root: PathBuf,
    /// Payload bytes moved in earlier runs, carried into the saved totals.
    pub uploaded_before: u64,
    pub downloaded_before: u64,
    /// When the torrent first completed, if it did in an earlier run.
    pub completed_unix: Option<u64>,
}

/// The engine's grip on a running torrent.
pub struct TorrentHandle {
    pub context: Arc<TorrentContext>,
    pub stats: Arc<TorrentStats>,
    pub events: Receiver<TorrentEvent>,
    control: Sender<Control>,
    thread: Option<JoinHandle<()>>,
}

impl TorrentHandle {
    /// Starts the coordinator (which starts the disk and announcer threads).
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(params: TorrentParams) -> std::io::Result<Self> {
        coordinator::start(params)
    }

    /// Sends a control message; ignored if the coordinator already stopped.
    pub fn send(&self, control: Control) {
        let _ = self.control.send(control);
    }

    /// Stops the torrent gracefully and waits for its coordinator to finish.
    pub fn stop(mut self) {
        self.send(Control::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
