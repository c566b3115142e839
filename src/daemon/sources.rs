//! Where torrents come from and go: `[[torrent]]` entries, watch-directory files and magnet
//! links (their metadata fetched on `metadata NAME` threads), adding, removing and the records
//! that go with them.

use super::*;
use crate::listener::{FetchInbox, Incoming};

/// One metadata fetch gives up after this; the next starts after a back-off.
pub(super) const METADATA_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The wait after a failed metadata fetch, doubled per failure up to [`METADATA_RETRY_MAX`].
pub(super) const METADATA_RETRY_BASE: Duration = Duration::from_secs(15);
pub(super) const METADATA_RETRY_MAX: Duration = Duration::from_secs(10 * 60);

/// What a `metadata NAME` thread ends with: the torrent, verified and saved, or why the
/// verified metadata is no usable torrent (fetching it again would not help).
pub(super) struct MetadataFetched {
    pub(super) info_hash: InfoHash,
    pub(super) result: Result<Metainfo, String>,
}

impl Daemon {
    // ---- adding and removing -------------------------------------------------------------

    pub(super) fn add_entry(&mut self, entry: &TorrentEntry) {
        let origin = match &entry.torrent {
            TorrentRef::File(path) => match Metainfo::from_file(path) {
                Ok(meta) => Origin::Meta(meta),
                Err(e) => {
                    error!("config {}: [[torrent]] {e}", self.config_path.display());
                    self.add_unreadable(entry, path, e.to_string());
                    return;
                }
            },
            TorrentRef::Magnet(magnet) => Origin::Magnet(magnet.clone()),
        };
        let _ = self.add(
            origin,
            Source::Config(EntryKey::of(entry)),
            entry.download_dir.clone(),
            entry.peers.clone(),
            entry.paused,
        );
    }

    /// The next torrent id of this daemon run.
    fn new_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Shows a `[[torrent]]` entry whose `.torrent` cannot be read in state error with the
    /// reason (instead of leaving it out); SIGHUP tries the file again.
    pub(super) fn add_unreadable(&mut self, entry: &TorrentEntry, path: &Path, reason: String) {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let download_dir = entry
            .download_dir
            .clone()
            .unwrap_or_else(|| self.config.download_dir.clone());
        let id = self.new_id();
        // Not a torrent's: no record is kept, and nothing else has this key.
        let info_hash = placeholder_hash(path);
        let record = TorrentRecord::new(&info_hash, &download_dir);
        let t = Managed::new(
            id,
            info_hash,
            name,
            Source::Config(EntryKey::of(entry)),
            record,
            Lifecycle::unreadable(reason, entry.paused),
        );
        self.torrents.push(t);
    }

    /// Adds a torrent: queued, or paused, or (a magnet link whose metadata is not saved in the
    /// state directory) fetching its metadata. Returns its index, or for a duplicate info hash
    /// the index of the torrent already there. A pause or start over the RPC (in the record)
    /// wins over `paused`.
    /// Its record in the state directory, when there is one, says where its data is;
    /// `download_dir` (an entry's own) overrides that, and otherwise applies to a new torrent,
    /// as `[paths] download_dir` does.
    pub(super) fn add(
        &mut self,
        origin: Origin,
        source: Source,
        download_dir: Option<PathBuf>,
        mut peers: Vec<SocketAddr>,
        paused: bool,
    ) -> Result<usize, usize> {
        let info_hash = origin.info_hash();
        if let Some(index) = self.index_of(&info_hash) {
            let other = &self.torrents[index];
            warn!(
                "torrent {}: already present (from {}); ignoring {}",
                other.name(),
                other.source.describe(),
                source.describe()
            );
            return Err(index);
        }
        let (meta, magnet) = match origin {
            Origin::Meta(meta) => (Some(meta), None),
            Origin::Magnet(magnet) => {
                merge_peers(&mut peers, &magnet.peers);
                (self.saved_metadata(&magnet), Some(magnet))
            }
        };
        let name = match (&meta, &magnet) {
            (Some(meta), _) => meta.name.clone(),
            (None, Some(magnet)) => display_name(magnet),
            (None, None) => info_hash.to_hex(), // not reached: `Origin::Meta` has the metadata
        };
        let record_path = TorrentRecord::path_in(&self.config.state_dir, &info_hash);
        let record = match TorrentRecord::load(&record_path, &info_hash) {
            Ok(record) => record,
            Err(e) => {
                warn!("torrent {name}: {e}; starting a new record");
                None
            }
        };
        let on_disk = record.clone();
        let record = match (record, download_dir) {
            (Some(mut record), Some(dir)) if record.download_dir != dir => {
                warn!(
                    "torrent {name}: download_dir {} asked for, it was in {}; using {} (data \
                     is not moved)",
                    dir.display(),
                    record.download_dir.display(),
                    dir.display()
                );
                record.download_dir = dir;
                record
            }
            (Some(record), _) => record,
            (None, dir) => TorrentRecord::new(
                &info_hash,
                &dir.unwrap_or_else(|| self.config.download_dir.clone()),
            ),
        };
        info!(
            "torrent {name}: added from {}, data in {}",
            source.describe(),
            record.download_dir.display()
        );
        let id = self.new_id();
        let paused = record.paused.unwrap_or(paused);
        let unfinished_move = record.moving_to.clone();
        if let Some(to) = &unfinished_move {
            warn!(
                "torrent {name}: its move to {} did not finish; finishing it",
                to.display()
            );
        }
        let life = Lifecycle::new(meta.is_some(), record.completed_unix.is_some());
        let mut t = Managed::new(id, info_hash, name, source, record, life);
        if let Some(meta) = meta {
            t.set_meta(meta);
        }
        t.magnet = magnet;
        // What is on disk counts as saved now: its clocks are due for a save one interval on.
        t.saved_at = on_disk.as_ref().map(|_| Instant::now());
        t.saved = on_disk;
        t.peers = peers;
        if self.queue_restored {
            if t.record.queue_position.is_none() {
                t.record.queue_position = Some(self.next_queue_position());
            }
            t.save_record(&self.config.state_dir, &self.writer);
        }
        // At start the record is saved once the queue order is restored, with every other
        // (`restore_queue_order`), not once here and again there.
        self.torrents.push(t);
        let index = self.torrents.len() - 1;
        let actions = self.torrents[index].life.on_added(paused, unfinished_move);
        self.apply(index, actions);
        Ok(index)
    }

    /// Adds again, at start, the torrents added over the RPC (their records say so), oldest
    /// first: from the `.torrent` saved beside the record, or from the magnet link.
    pub(super) fn add_rpc_torrents(&mut self) {
        let dir = self.config.state_dir.join("torrents");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut found: Vec<(u64, Origin)> = Vec::new();
        for path in entries.flatten().map(|e| e.path()) {
            let Some(hash) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(InfoHash::from_hex)
            else {
                continue;
            };
            let record = match TorrentRecord::load(&path, &hash) {
                Ok(Some(record)) if record.added_over_rpc => record,
                Ok(_) => continue,
                Err(e) => {
                    warn!("{e}");
                    continue;
                }
            };
            let saved = saved_torrent_path(&self.config.state_dir, &hash);
            let origin = if saved.exists() {
                Metainfo::from_file(&saved)
                    .map(Origin::Meta)
                    .map_err(|e| e.to_string())
            } else if let Some(uri) = &record.magnet {
                Magnet::parse(uri)
                    .map(Origin::Magnet)
                    .map_err(|e| e.to_string())
            } else {
                Err(format!("{}: missing", saved.display()))
            };
            match origin {
                Ok(origin) if origin.info_hash() == hash => found.push((record.added_unix, origin)),
                Ok(_) => warn!(
                    "{}: not the torrent of its record; skipped",
                    saved.display()
                ),
                Err(e) => error!("torrent {hash} (added over the RPC): {e}; skipped"),
            }
        }
        found.sort_by_key(|(added, _)| *added);
        for (_, origin) in found {
            let _ = self.add(origin, Source::Rpc, None, Vec::new(), false);
        }
    }

    /// The metadata of a magnet link saved by an earlier fetch
    /// (`<state_dir>/torrents/<infohash>.torrent`), when it is a usable torrent with the link's
    /// info hash.
    pub(super) fn saved_metadata(&self, magnet: &Magnet) -> Option<Metainfo> {
        let path = saved_torrent_path(&self.config.state_dir, &magnet.info_hash);
        if !path.exists() {
            return None;
        }
        match Metainfo::from_file(&path) {
            Ok(meta) if meta.info_hash == magnet.info_hash => {
                info!("torrent {}: metadata from {}", meta.name, path.display());
                Some(meta)
            }
            Ok(meta) => {
                warn!(
                    "{}: info hash {}, not the magnet link's; fetching the metadata again",
                    path.display(),
                    meta.info_hash
                );
                None
            }
            Err(e) => {
                warn!("{e}; fetching the metadata again");
                None
            }
        }
    }

    /// Starts a `metadata NAME` thread for a magnet link: it asks the torrent's peers (its own
    /// and the link's `x.pe`) and the link's trackers, with our peer id and listen address, and
    /// tries again after each failure until the metadata arrives or the torrent leaves state
    /// metadata (which drops its `stop`).
    pub(super) fn start_fetching(&mut self, index: usize) {
        let listen = self.engine.listen_addr();
        // Peers on the local network that announce it (BEP 14), while the thread runs.
        let (found_tx, found_rx) = crossbeam_channel::unbounded();
        let lsd = self
            .engine
            .lsd_register(self.torrents[index].info_hash, found_tx);
        let limits = &self.config.limits;
        let t = &mut self.torrents[index];
        let saved = saved_torrent_path(&self.config.state_dir, &t.info_hash);
        let params = FetchParams {
            info_hash: t.info_hash,
            name: t.magnet.as_ref().and_then(|m| m.name.clone()),
            peer_id: self.engine.peer_id(),
            listen_port: listen.port(),
            // Dial from the listen address, as the engine's peers do.
            bind: Some(listen.ip()),
            peers: t.peers.clone(),
            trackers: t
                .magnet
                .as_ref()
                .map(|m| m.trackers.clone())
                .unwrap_or_default(),
            web_seeds: t
                .magnet
                .as_ref()
                .map(|m| m.web_seeds.clone())
                .unwrap_or_default(),
            connect_timeout: limits.connect_timeout,
            announce_timeout: limits.announce_timeout,
            udp_retransmit_base: limits.udp_retransmit_base,
            numwant: limits.numwant,
            addrs: self.engine.our_addrs(),
            stop_timeout: limits.stop_timeout,
            timeout: METADATA_TIMEOUT,
            discovered: lsd.as_ref().map(|_| found_rx),
            encryption: self.engine.encryption(),
            dht: self.engine.dht(),
        };
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let done = self.fetched_tx.clone();
        // Peers the trackers send us dial in: the listener hands them to the fetch until the
        // thread ends.
        let inbox = self.engine.fetch_inbox(t.info_hash);
        let spawned = watched::spawn(
            std::thread::Builder::new().name(format!("metadata {}", t.name)),
            move || {
                let _lsd = lsd;
                let incoming = inbox.as_ref().map(FetchInbox::receiver);
                if let Some(result) = fetch_metadata(&params, &saved, &stop_rx, incoming) {
                    let _ = done.send(MetadataFetched {
                        info_hash: params.info_hash,
                        result,
                    });
                }
            },
        );
        match spawned {
            Ok(thread) => {
                t.fetching = Some(Fetching {
                    _stop: stop,
                    thread,
                });
            }
            Err(e) => {
                let actions = t
                    .life
                    .on_failed_to_start(format!("cannot spawn metadata thread: {e}"));
                self.apply(index, actions);
            }
        }
    }

    /// A `metadata NAME` thread is done: the torrent goes on to the queue (unless it was paused
    /// meanwhile), or into error when the metadata is no usable torrent.
    pub(super) fn on_metadata(&mut self, fetched: MetadataFetched) {
        let Some(index) = self.index_of(&fetched.info_hash) else {
            return; // removed meanwhile
        };
        let t = &mut self.torrents[index];
        if t.meta.is_some() {
            return; // from an earlier fetch, stopped too late
        }
        t.fetching = None;
        let result = match fetched.result {
            Ok(meta) => {
                t.set_meta(meta);
                Ok(())
            }
            Err(reason) => {
                error!("torrent {}: {reason}", t.name);
                Err(reason)
            }
        };
        let actions = t.life.on_metadata(result);
        self.apply(index, actions);
    }

    pub(super) fn find(&self, info_hash: &InfoHash) -> Option<&Managed> {
        self.torrents.iter().find(|t| t.info_hash == *info_hash)
    }

    pub(super) fn index_of(&self, info_hash: &InfoHash) -> Option<usize> {
        self.torrents.iter().position(|t| t.info_hash == *info_hash)
    }

    /// Stops (if running) and forgets a torrent, its record included (as transmission forgets
    /// a removed torrent's resume file). Its data and resume data stay on disk.
    pub(super) fn remove(&mut self, index: usize) {
        let actions = self.torrents[index].life.on_removed();
        self.apply(index, actions);
        let t = self.torrents.remove(index);
        let mut forget = Vec::new();
        if t.has_record() {
            forget.push(TorrentRecord::path_in(&self.config.state_dir, &t.info_hash));
        }
        if t.source == Source::Rpc {
            forget.push(saved_torrent_path(&self.config.state_dir, &t.info_hash));
        }
        for path in forget {
            self.writer.remove(path);
        }
        info!(
            "torrent {}: removed (data kept in {})",
            t.name(),
            t.download_dir().display()
        );
    }

    /// Takes in the runs that have ended since the last call: their totals go into their
    /// torrents' records.
    pub(super) fn reap_stopped(&mut self) {
        for index in self.reap_stopped_unsaved() {
            self.torrents[index].save_record(&self.config.state_dir, &self.writer);
        }
    }

    /// [`Daemon::reap_stopped`] without saving their records (the caller saves them all at
    /// once); returns the indices of their torrents.
    pub(super) fn reap_stopped_unsaved(&mut self) -> Vec<usize> {
        let mut reaped = Vec::new();
        let mut index = 0;
        while index < self.stopping.len() {
            if !self.stopping[index].1.thread.is_done() {
                index += 1;
                continue;
            }
            let (info_hash, stopping) = self.stopping.swap_remove(index);
            if let Some(i) = self.index_of(&info_hash) {
                let t = &mut self.torrents[i];
                t.life.on_run_ended();
                t.end_run(&stopping.stats);
                reaped.push(i);
            }
        }
        reaped
    }

    /// The queue position of a torrent added now: after every torrent there is.
    pub(super) fn next_queue_position(&self) -> u64 {
        self.torrents
            .iter()
            .filter_map(|t| t.record.queue_position)
            .max()
            .map_or(0, |p| p + 1)
    }

    /// Moves the torrents at `selected` as `how` says and keeps the new order in every
    /// torrent's record, so the next start restores it.
    pub(super) fn reorder_queue(&mut self, how: QueueMove, selected: &[usize]) {
        let torrents = std::mem::take(&mut self.torrents);
        self.torrents = moved(torrents, selected, how);
        self.number_queue();
        self.save_records();
    }

    /// Keeps each torrent's place in the queue in its record (saved by the caller, or by the
    /// sweeps: `save_due_records`).
    fn number_queue(&mut self) {
        for (position, t) in (0u64..).zip(&mut self.torrents) {
            t.record.queue_position = Some(position);
        }
    }

    /// Restores the queue order the records keep, once every torrent is added at start: those
    /// without a position (new, or from an older btd) come after the others, in the order
    /// added. From then on an added torrent joins at the end.
    pub(super) fn restore_queue_order(&mut self) {
        self.torrents
            .sort_by_key(|t| t.record.queue_position.unwrap_or(u64::MAX));
        self.number_queue();
        self.queue_restored = true;
    }

    /// One sweep's share of saving records: of those not looked at for `RECORD_SAVE_INTERVAL`
    /// (or never), at most [`SAVE_ROUND`], in queue order; of these it saves the
    /// ones changed in more than their clocks (totals, settings, position), and the ones whose
    /// clocks alone moved once their last save is `RECORD_CLOCK_SAVE_INTERVAL` old. So the
    /// main loop never stalls on thousands of files (a first start's 10,000 new records are
    /// saved 100 a second), and an idle daemon rewrites none. Whether it saved any.
    pub(super) fn save_due_records(&mut self) -> bool {
        let now = Instant::now();
        let older = |at: Option<Instant>, interval| at.is_none_or(|at| now - at >= interval);
        let due: Vec<usize> = (0..self.torrents.len())
            .filter(|&i| {
                let t = &self.torrents[i];
                t.has_record() && older(t.looked_at, RECORD_SAVE_INTERVAL)
            })
            .take(SAVE_ROUND)
            .collect();
        if due.is_empty() {
            return false;
        }
        let save: Vec<usize> = due
            .iter()
            .copied()
            .filter(|&i| {
                let t = &self.torrents[i];
                older(t.saved_at, RECORD_CLOCK_SAVE_INTERVAL) || t.record_changed_beyond_clocks()
            })
            .collect();
        let saved = !save.is_empty();
        self.save_records_of(save);
        for i in due {
            self.torrents[i].looked_at = Some(now);
        }
        saved
    }

    /// Saves every record that changed since its last save, clocks included.
    pub(super) fn save_records(&mut self) {
        self.save_records_of(0..self.torrents.len());
    }

    /// Saves the records at `indices` that changed since their last save.
    fn save_records_of(&mut self, indices: impl IntoIterator<Item = usize>) {
        for index in indices {
            self.torrents[index].save_record(&self.config.state_dir, &self.writer);
        }
    }

    /// Marks the records whose write failed as unsaved, so a later sweep saves them again.
    pub(super) fn take_failed_saves(&mut self) {
        let failed: Vec<AtomicFileError> = self.writer.failed().collect();
        if failed.is_empty() {
            return;
        }
        let state_dir = &self.config.state_dir;
        for t in &mut self.torrents {
            let path = TorrentRecord::path_in(state_dir, &t.info_hash);
            if failed.iter().any(|e| e.names(&path)) {
                t.saved = None;
                t.looked_at = None;
            }
        }
    }

    /// At stop: the records that changed in more than their clocks, then those whose clocks
    /// alone moved, while `until` allows (rewriting thousands of files takes longer than the
    /// stop budget on some disks); the rest keep what their last save says (clocks at most
    /// `RECORD_CLOCK_SAVE_INTERVAL` old).
    pub(super) fn save_records_at_stop(&mut self, until: Instant) {
        let (beyond, clocks): (Vec<usize>, Vec<usize>) = (0..self.torrents.len())
            .filter(|&i| self.torrents[i].has_record())
            .partition(|&i| self.torrents[i].record_changed_beyond_clocks());
        // The state writer takes them in this order.
        self.save_records_of(beyond);
        self.save_records_of(clocks);
        if !self.writer.flush(until) {
            warn!(
                "daemon: stop budget spent; {} torrent records and files are left unwritten, \
                 each keeping what its last save says (seeding time at most {} min old)",
                self.writer.pending(),
                RECORD_CLOCK_SAVE_INTERVAL.as_secs() / 60
            );
        }
    }
}

/// Records looked at in one sweep (`save_due_records`).
const SAVE_ROUND: usize = 100;

/// The key of a `[[torrent]]` entry whose file could not be read: the SHA-1 of its path, so it
/// never clashes with a real torrent's info hash.
pub(super) fn placeholder_hash(path: &Path) -> InfoHash {
    use sha1::{Digest, Sha1};
    InfoHash(Sha1::digest(path.as_os_str().as_encoded_bytes()).into())
}

/// Appends the addresses of `more` that `peers` lacks.
pub(super) fn merge_peers(peers: &mut Vec<SocketAddr>, more: &[SocketAddr]) {
    for addr in more {
        if !peers.contains(addr) {
            peers.push(*addr);
        }
    }
}

/// A magnet link's name until its metadata arrives: its `dn` without control characters (it
/// names a thread, and goes into the log), else the info hash.
pub(super) fn display_name(magnet: &Magnet) -> String {
    let dn: String = magnet
        .name
        .as_deref()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if dn.trim().is_empty() {
        magnet.info_hash.to_hex()
    } else {
        dn
    }
}

/// Where a magnet link's fetched metadata is kept: `<state_dir>/torrents/<infohash>.torrent`.
pub(super) fn saved_torrent_path(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
    state_dir
        .join("torrents")
        .join(format!("{}.torrent", info_hash.to_hex()))
}

/// Fetches a magnet link's metadata (see [`metadata_fetch::fetch`]), again after each failure
/// (waiting [`METADATA_RETRY_BASE`], doubled per failure up to [`METADATA_RETRY_MAX`]), makes it
/// a torrent with the link's trackers and saves it as `saved`. `None` when `stop` fired (or was
/// dropped) first. Runs on a `metadata NAME` thread.
pub(super) fn fetch_metadata(
    params: &FetchParams,
    saved: &Path,
    stop: &Receiver<()>,
    incoming: Option<&Receiver<Incoming>>,
) -> Option<Result<Metainfo, String>> {
    let mut wait = METADATA_RETRY_BASE;
    loop {
        match metadata_fetch::fetch(params, stop, incoming) {
            Ok(fetched) => return Some(torrent_from_metadata(params, &fetched, saved)),
            Err(FetchError::Stopped) => return None,
            Err(e) => warn!("magnet {}: {e}; trying again in {wait:?}", params.info_hash),
        }
        if !matches!(stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout)) {
            return None;
        }
        wait = crate::backoff::doubling(wait, 1, METADATA_RETRY_MAX);
    }
}

/// The torrent of verified metadata, with the magnet link's trackers (one tier each), saved
/// as `saved` (a failed save is logged: the next start fetches it again).
pub(super) fn torrent_from_metadata(
    params: &FetchParams,
    fetched: &metadata_fetch::Fetched,
    saved: &Path,
) -> Result<Metainfo, String> {
    let tiers: Vec<Vec<String>> = params.trackers.iter().map(|t| vec![t.clone()]).collect();
    let mut meta = Metainfo::from_info_bytes(&fetched.info, &tiers)
        .map_err(|e| format!("the metadata is not a usable torrent: {e}"))?;
    meta.add_web_seeds(&params.web_seeds);
    // `fetch` verified the bytes; checked again on what the torrent is built from.
    if meta.info_hash != params.info_hash {
        return Err(format!(
            "the metadata hashes to {}, not to the magnet link's info hash {}",
            meta.info_hash, params.info_hash
        ));
    }
    let sources: Vec<String> = fetched.sources.iter().map(ToString::to_string).collect();
    info!(
        "torrent {}: metadata received, {} bytes from {}",
        meta.name,
        fetched.info.len(),
        sources.join(", ")
    );
    match crate::atomic_file::write(saved, &meta.to_torrent_bytes()) {
        Ok(()) => info!(
            "torrent {}: metadata saved to {}",
            meta.name,
            saved.display()
        ),
        Err(e) => warn!(
            "torrent {}: cannot save the metadata: {e}; the next start fetches it again",
            meta.name
        ),
    }
    Ok(meta)
}
