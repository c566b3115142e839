//! The one-shot commands (`create`, `download`, `seed`) on top of the engine, and the clients of
//! a running daemon that need no RPC (`status`, and `add`, `remove` when `remote.rs` finds no
//! RPC: its pid file, status file, watch directory and SIGHUP). Runs on the main thread: a
//! transfer starts the engine, waits for completion, a failure or a signal, shows progress, and
//! stops everything in order. Errors are typed by exit status: bad input (2) or a runtime
//! failure (1).

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};
use indicatif::{ProgressBar, ProgressStyle};
use lava_torrent::bencode::BencodeElem;
use lava_torrent::torrent::v1::TorrentBuilder;
use log::info;
use sha1::{Digest, Sha1};

use crate::config::Config;
use crate::engine::{Engine, RunOptions};
use crate::listener::FetchInbox;
use crate::magnet::Magnet;
use crate::metadata_fetch::{self, FetchError, FetchParams};
use crate::metainfo::{InfoHash, MAX_PIECE_LEN, Metainfo};
use crate::status::{DaemonStatus, TorrentStatus};
use crate::storage::{OpenMode, Storage};
use crate::torrent::{TorrentEvent, TorrentHandle, TorrentStats};
use crate::wire::Bitfield;

/// Why a command failed; the kind picks the exit status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad usage or bad input: exit status 2.
    #[error("{0}")]
    BadInput(String),
    /// Failure while running: exit status 1.
    #[error("{0}")]
    Runtime(String),
}

impl CommandError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::BadInput(_) => 2,
            Self::Runtime(_) => 1,
        }
    }
}

/// Options of `btd create`.
pub struct CreateOptions {
    pub path: PathBuf,
    pub output: PathBuf,
    pub trackers: Vec<String>,
    pub piece_length: Option<u32>,
    pub private: bool,
    pub comment: Option<String>,
    /// `url-list` (BEP 19) web seeds, in the order given.
    pub web_seeds: Vec<String>,
}

/// Smallest power of two from 16 KiB to 16 MiB that cuts `total` bytes into at most 2,000
/// pieces (so between 1,000 and 2,000 unless the bounds bite).
pub fn default_piece_length(total: u64) -> u32 {
    let mut len: u32 = 16 * 1024;
    while len < 16 * 1024 * 1024 && total.div_ceil(u64::from(len)) > 2000 {
        len *= 2;
    }
    len
}

fn total_size(path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        total += total_size(&entry?.path())?;
    }
    Ok(total)
}

/// `btd create`: writes a v1 torrent of a file or directory.
///
/// # Errors
/// `BadInput` for an unreadable path or bad option, `Runtime` when hashing or writing fails.
pub fn create(opts: &CreateOptions) -> Result<(), CommandError> {
    let total = total_size(&opts.path)
        .map_err(|e| CommandError::BadInput(format!("{}: {e}", opts.path.display())))?;
    let piece_length = match opts.piece_length {
        Some(len) if len.is_power_of_two() && (16 * 1024..=MAX_PIECE_LEN).contains(&len) => len,
        Some(len) => {
            return Err(CommandError::BadInput(format!(
                "--piece-length {len}: must be a power of two from 16384 to {MAX_PIECE_LEN}"
            )));
        }
        None => default_piece_length(total),
    };
    let mut builder = TorrentBuilder::new(&opts.path, i64::from(piece_length));
    if let Some(first) = opts.trackers.first() {
        builder = builder.set_announce(Some(first.clone()));
        if opts.trackers.len() > 1 {
            // One tier per tracker, in the order given (BEP 12).
            builder =
                builder.set_announce_list(opts.trackers.iter().map(|t| vec![t.clone()]).collect());
        }
    }
    if let Some(comment) = &opts.comment {
        builder = builder.add_extra_field("comment".into(), BencodeElem::String(comment.clone()));
    }
    if let Some(bad) = opts
        .web_seeds
        .iter()
        .find(|url| !crate::tracker::http::is_supported(url))
    {
        return Err(CommandError::BadInput(format!(
            "--web-seed {bad}: not an http:// or https:// URL"
        )));
    }
    if !opts.web_seeds.is_empty() {
        let urls = opts
            .web_seeds
            .iter()
            .map(|url| BencodeElem::String(url.clone()))
            .collect();
        builder = builder.add_extra_field("url-list".into(), BencodeElem::List(urls));
    }
    builder = builder
        .add_extra_field(
            "created by".into(),
            BencodeElem::String(format!("btd/{}", env!("CARGO_PKG_VERSION"))),
        )
        .set_privacy(opts.private);
    let torrent = builder
        .build()
        .map_err(|e| CommandError::BadInput(format!("{}: {e}", opts.path.display())))?;
    torrent
        .write_into_file(&opts.output)
        .map_err(|e| CommandError::Runtime(format!("{}: {e}", opts.output.display())))?;
    let meta =
        Metainfo::from_file(&opts.output).map_err(|e| CommandError::Runtime(e.to_string()))?;
    info!(
        "created {}: {} bytes in {} pieces of {piece_length}, info hash {}",
        opts.output.display(),
        meta.geometry.total_len,
        meta.geometry.num_pieces,
        meta.info_hash
    );
    Ok(())
}

/// Options shared by `download` and `seed`.
pub struct TransferOptions {
    pub torrent: PathBuf,
    pub dir: PathBuf,
    pub port: Option<u16>,
    pub bind: Option<IpAddr>,
    pub peers: Vec<String>,
    pub config: Config,
}

fn load_torrent(path: &Path) -> Result<Arc<Metainfo>, CommandError> {
    Metainfo::from_file(path)
        .map(Arc::new)
        .map_err(|e| CommandError::BadInput(e.to_string()))
}

fn resolve_peers(peers: &[String]) -> Result<Vec<SocketAddr>, CommandError> {
    let mut out = Vec::new();
    for peer in peers {
        let addrs = peer
            .to_socket_addrs()
            .map_err(|e| CommandError::BadInput(format!("--peer {peer}: {e}")))?;
        out.extend(addrs);
    }
    Ok(out)
}

/// `btd download`: fetches what is missing into `dir`, then exits (or seeds on with `seed`).
/// `opts.torrent` is a `.torrent` file or a magnet link; for a magnet link the engine starts
/// first (its port goes to peers and trackers), the metadata is fetched from peers and verified
/// against the info hash (giving up after `metadata_timeout`), then the download goes on as for
/// a `.torrent`.
///
/// # Errors
/// `BadInput` for an unreadable torrent, a malformed magnet link, fetched metadata that is not a
/// usable torrent, or a bad peer address; `Runtime` for storage or network failures, and when no
/// verified metadata arrived in time.
pub fn download(
    opts: &TransferOptions,
    keep_seeding: bool,
    metadata_timeout: Duration,
    signals: &Receiver<()>,
) -> Result<(), CommandError> {
    let peers = resolve_peers(&opts.peers)?;
    let magnet = opts.torrent.to_str().filter(|t| Magnet::is_magnet(t));
    let (meta, peers, engine) = match magnet {
        None => (load_torrent(&opts.torrent)?, peers, None),
        Some(uri) => match fetch_magnet(uri, opts, peers, metadata_timeout, signals)? {
            Some((fetched, engine)) => (fetched.meta, fetched.peers, Some(engine)),
            None => return Ok(()),
        },
    };
    let storage = match Storage::open(&opts.dir, &meta, OpenMode::Download) {
        Ok(storage) => storage,
        Err(e) => {
            if let Some(engine) = engine {
                engine.shutdown();
            }
            return Err(CommandError::Runtime(e.to_string()));
        }
    };
    let started = Instant::now();
    let have = storage.verify(
        &meta.piece_hashes,
        opts.config.limits.disk_threads,
        &AtomicU32::new(0),
    );
    info!(
        "torrent {}: {}/{} pieces already on disk (checked in {:.1?})",
        meta.name,
        have.count_ones(),
        meta.geometry.num_pieces,
        started.elapsed()
    );
    let engine = match engine {
        Some(engine) => engine,
        None => Engine::start(opts.config.engine(opts.bind, opts.port))
            .map_err(|e| CommandError::Runtime(format!("listen: {e}")))?,
    };
    let handle = start_one(&engine, &meta, storage, have, peers)?;
    let outcome = wait(&meta, &handle, signals, !keep_seeding);
    let result = match outcome {
        Outcome::Completed if keep_seeding => {
            info!("torrent {}: seeding until SIGINT/SIGTERM", meta.name);
            match wait(&meta, &handle, signals, false) {
                Outcome::Failed(e) => Err(CommandError::Runtime(e)),
                _ => Ok(()),
            }
        }
        Outcome::Completed | Outcome::Signalled => Ok(()),
        Outcome::Failed(e) => Err(CommandError::Runtime(e)),
    };
    engine.remove(handle);
    engine.shutdown();
    crate::profile::log_report();
    result
}

/// What a magnet link turned into: the torrent and the peers to dial (given and learned).
struct FromMagnet {
    meta: Arc<Metainfo>,
    peers: Vec<SocketAddr>,
}

/// Starts the engine and fetches the magnet link's metadata; `None` when a signal came first.
/// The engine is returned listening (or shut down on any other outcome).
fn fetch_magnet(
    uri: &str,
    opts: &TransferOptions,
    peers: Vec<SocketAddr>,
    timeout: Duration,
    signals: &Receiver<()>,
) -> Result<Option<(FromMagnet, Engine)>, CommandError> {
    let magnet = Magnet::parse(uri).map_err(|e| CommandError::BadInput(format!("{uri}: {e}")))?;
    let engine = Engine::start(opts.config.engine(opts.bind, opts.port))
        .map_err(|e| CommandError::Runtime(format!("listen: {e}")))?;
    match magnet_metainfo(&magnet, opts, peers, timeout, &engine, signals) {
        Ok(Some(fetched)) => Ok(Some((fetched, engine))),
        Ok(None) => {
            engine.shutdown();
            Ok(None)
        }
        Err(e) => {
            engine.shutdown();
            Err(e)
        }
    }
}

/// The metadata of `magnet`, fetched from its `x.pe` peers, `peers` and its trackers, checked
/// against its info hash, as a torrent with the magnet's trackers (one tier each).
fn magnet_metainfo(
    magnet: &Magnet,
    opts: &TransferOptions,
    mut peers: Vec<SocketAddr>,
    timeout: Duration,
    engine: &Engine,
    signals: &Receiver<()>,
) -> Result<Option<FromMagnet>, CommandError> {
    let listen = engine.listen_addr();
    let hash = magnet.info_hash;
    for addr in &magnet.peers {
        if !peers.contains(addr) {
            peers.push(*addr);
        }
    }
    let limits = &opts.config.limits;
    // Peers on the local network that announce it (BEP 14), during the fetch.
    let (found_tx, found_rx) = crossbeam_channel::unbounded();
    let lsd = engine.lsd_register(hash, found_tx);
    let params = FetchParams {
        info_hash: hash,
        name: magnet.name.clone(),
        peer_id: engine.peer_id(),
        listen_port: listen.port(),
        // Dial from the listen address, as the engine's peers do.
        bind: Some(listen.ip()),
        peers,
        trackers: magnet.trackers.clone(),
        web_seeds: magnet.web_seeds.clone(),
        connect_timeout: limits.connect_timeout,
        announce_timeout: limits.announce_timeout,
        udp_retransmit_base: limits.udp_retransmit_base,
        numwant: limits.numwant,
        addrs: engine.our_addrs(),
        stop_timeout: limits.stop_timeout,
        timeout,
        discovered: lsd.as_ref().map(|_| found_rx),
        encryption: engine.encryption(),
        dht: engine.dht(),
    };
    // Peers the trackers send us dial in: the listener hands them to the fetch.
    let inbox = engine.fetch_inbox(hash);
    let fetched =
        match metadata_fetch::fetch(&params, signals, inbox.as_ref().map(FetchInbox::receiver)) {
            Ok(fetched) => fetched,
            Err(FetchError::Stopped) => {
                info!("magnet {hash}: signal received; stopping");
                return Ok(None);
            }
            Err(e) => return Err(CommandError::Runtime(format!("magnet {hash}: {e}"))),
        };
    // The fetch verified it; checked here too, so nothing is built from unverified bytes.
    if Sha1::digest(&fetched.info).as_slice() != hash.0 {
        return Err(CommandError::Runtime(format!(
            "magnet {hash}: the fetched metadata does not hash to the info hash"
        )));
    }
    let tiers: Vec<Vec<String>> = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
    let mut meta = Metainfo::from_info_bytes(&fetched.info, &tiers).map_err(|e| {
        CommandError::BadInput(format!(
            "magnet {hash}: the metadata is not a usable torrent: {e}"
        ))
    })?;
    meta.add_web_seeds(&magnet.web_seeds);
    if meta.info_hash != hash {
        return Err(CommandError::Runtime(format!(
            "magnet {hash}: the torrent built from the metadata has info hash {}",
            meta.info_hash
        )));
    }
    let sources: Vec<String> = fetched.sources.iter().map(ToString::to_string).collect();
    info!(
        "metadata received: {}, {} bytes, from {}",
        meta.name,
        fetched.info.len(),
        sources.join(", ")
    );
    Ok(Some(FromMagnet {
        meta: Arc::new(meta),
        peers: fetched.peers,
    }))
}

/// `btd seed`: verifies complete data in `dir`, then serves it until a signal.
///
/// # Errors
/// `BadInput` for an unreadable torrent; `Runtime` when data is missing or corrupt (naming the
/// files and how many pieces failed) or the port cannot be bound.
pub fn seed(opts: &TransferOptions, signals: &Receiver<()>) -> Result<(), CommandError> {
    let meta = load_torrent(&opts.torrent)?;
    let peers = resolve_peers(&opts.peers)?;
    let storage = Storage::open(&opts.dir, &meta, OpenMode::Seed)
        .map_err(|e| CommandError::Runtime(format!("torrent {}: {e}", meta.name)))?;
    let have = storage.verify(
        &meta.piece_hashes,
        opts.config.limits.disk_threads,
        &AtomicU32::new(0),
    );
    if !have.is_full() {
        let failed = meta.geometry.num_pieces - have.count_ones();
        let files =
            storage.files_of_pieces((0..meta.geometry.num_pieces).filter(|p| !have.get(*p)));
        let names: Vec<String> = files
            .iter()
            .map(|f| opts.dir.join(f).display().to_string())
            .collect();
        return Err(CommandError::Runtime(format!(
            "torrent {}: {failed} of {} pieces failed verification, in: {}",
            meta.name,
            meta.geometry.num_pieces,
            names.join(", ")
        )));
    }
    info!(
        "torrent {}: all {} pieces verified; seeding",
        meta.name, meta.geometry.num_pieces
    );
    let engine = Engine::start(opts.config.engine(opts.bind, opts.port))
        .map_err(|e| CommandError::Runtime(format!("listen: {e}")))?;
    let handle = start_one(&engine, &meta, storage, have, peers)?;
    let outcome = wait(&meta, &handle, signals, false);
    engine.remove(handle);
    engine.shutdown();
    crate::profile::log_report();
    match outcome {
        Outcome::Failed(e) => Err(CommandError::Runtime(e)),
        _ => Ok(()),
    }
}

enum Outcome {
    Completed,
    Signalled,
    Failed(String),
}

/// Waits for the torrent to complete (when `until_complete`), fail, or for a signal, showing
/// progress meanwhile.
fn wait(
    meta: &Metainfo,
    handle: &TorrentHandle,
    signals: &Receiver<()>,
    until_complete: bool,
) -> Outcome {
    let mut progress = Progress::new(meta, &handle.stats);
    if until_complete && handle.stats.complete.load(Ordering::Relaxed) {
        return Outcome::Completed;
    }
    let ticker = crossbeam_channel::tick(Duration::from_millis(250));
    loop {
        select! {
            recv(signals) -> _ => {
                progress.finish();
                info!("torrent {}: signal received; stopping", meta.name);
                return Outcome::Signalled;
            }
            recv(handle.events) -> event => match event {
                Ok(TorrentEvent::Completed) if until_complete => {
                    progress.finish();
                    return Outcome::Completed;
                }
                Ok(TorrentEvent::Completed | TorrentEvent::Incomplete) => {}
                Ok(TorrentEvent::Failed(e)) => {
                    progress.finish();
                    return Outcome::Failed(e);
                }
                Ok(TorrentEvent::RecheckNeeded(e)) => {
                    progress.finish();
                    return Outcome::Failed(format!("{e}; run again to check the data"));
                }
                Err(_) => return Outcome::Failed(format!("torrent {}: coordinator stopped", meta.name)),
            },
            recv(ticker) -> _ => progress.update(),
        }
    }
}

/// A progress bar on a terminal, else a log line every few seconds.
struct Progress<'a> {
    name: String,
    stats: &'a TorrentStats,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl<'a> Progress<'a> {
    fn new(meta: &Metainfo, stats: &'a TorrentStats) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(meta.geometry.total_len);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            name: meta.name.clone(),
            stats,
            bar,
            last_line: Instant::now(),
        }
    }

    fn update(&mut self) {
        let done = self.stats.verified_bytes.load(Ordering::Relaxed);
        let total = self.stats.total_bytes.load(Ordering::Relaxed);
        let peers = self.stats.peers.load(Ordering::Relaxed);
        let web_seeds = match self.stats.web_seeds.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(", {n} web seeds"),
        };
        let down = self.stats.download_rate.load(Ordering::Relaxed);
        let up = self.stats.upload_rate.load(Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(format!("{} {peers} peers{web_seeds}", self.name));
        } else if self.last_line.elapsed() >= LOG_EVERY {
            self.last_line = Instant::now();
            let eta = if down > 0 && done < total {
                format!("{}s", (total - done) / down)
            } else {
                "-".into()
            };
            info!(
                "torrent {}: {:.1}% ({done}/{total} bytes), down {:.1} MB/s, up {:.1} MB/s, {peers} peers{web_seeds}, eta {eta}",
                self.name,
                if total == 0 {
                    100.0
                } else {
                    done as f64 * 100.0 / total as f64
                },
                down as f64 / 1e6,
                up as f64 / 1e6,
            );
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.set_position(self.stats.verified_bytes.load(Ordering::Relaxed));
            bar.finish();
        }
    }
}

/// The pid of the daemon running on `state_dir` (of the config file `source`, `None` for the
/// built-in defaults), or a `Runtime` error saying none runs.
fn running_daemon(state_dir: &Path, source: Option<&Path>) -> Result<u32, CommandError> {
    let pid_path = state_dir.join("btd.pid");
    let shown = source.map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
    match crate::pidfile::running_pid(&pid_path) {
        Ok(Some(pid)) => Ok(pid),
        Ok(None) => Err(CommandError::Runtime(format!(
            "no btd daemon is running for config {shown} (no live pid in {})",
            pid_path.display()
        ))),
        Err(e) => Err(CommandError::Runtime(format!(
            "{}: {e}",
            pid_path.display()
        ))),
    }
}

fn load_status(state_dir: &Path) -> Result<DaemonStatus, CommandError> {
    let path = DaemonStatus::path_in(state_dir);
    DaemonStatus::load(&path).map_err(|e| CommandError::Runtime(e.to_string()))
}

fn send_hangup(pid: u32) -> Result<(), CommandError> {
    let pid = i32::try_from(pid).map_err(|_| CommandError::Runtime(format!("bad pid {pid}")))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| CommandError::Runtime(format!("cannot signal daemon (pid {pid}): {e}")))
}

/// How long `add` and `remove` wait for the daemon to act on their SIGHUP.
const DAEMON_REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts a one-shot command's torrent (no resume data, no seeding limit) and logs
/// `listening on`, which scripts take to mean a peer can connect.
fn start_one(
    engine: &Engine,
    meta: &Arc<Metainfo>,
    storage: Storage,
    have: Bitfield,
    peers: Vec<SocketAddr>,
) -> Result<TorrentHandle, CommandError> {
    let handle = engine
        .add(
            Arc::clone(meta),
            Arc::new(storage),
            have,
            peers,
            RunOptions::default(),
        )
        .map_err(|e| CommandError::Runtime(e.to_string()))?;
    engine.log_listening();
    Ok(handle)
}

/// `btd status`: prints the torrents of the daemon running on `state_dir` (of the config file
/// `source`, `None` for the built-in defaults) from its status file. It needs no more of the
/// config, so it works while the rest of the file is broken.
///
/// # Errors
/// `Runtime` when no daemon runs for this config or its status file cannot be read.
pub fn status(state_dir: &Path, source: Option<&Path>) -> Result<(), CommandError> {
    running_daemon(state_dir, source)?;
    let status = load_status(state_dir)?;
    emit(&status.table())
}

/// Writes a command's output to stdout. A reader that has gone (`btd list | head`) ends the
/// output quietly, as Unix tools do, where `print!` would panic; another failure to write is
/// an error.
///
/// # Errors
/// `Runtime` when stdout cannot be written for another reason (a full disk).
pub fn emit(text: &str) -> Result<(), CommandError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CommandError::Runtime(format!("writing to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// A torrent named on `btd add`'s command line, read and checked before the daemon is asked:
/// the `.torrent` file's bytes or the magnet link, its info hash, and how it is shown
/// (`NAME (HASH)`).
pub struct ToAdd {
    /// The `.torrent` file's bytes, or the magnet link and a newline.
    pub bytes: Vec<u8>,
    /// The magnet link, when it is one.
    pub magnet: Option<String>,
    pub info_hash: InfoHash,
    /// `NAME (HASH)`: the torrent's name, a magnet's `dn`, or its info hash.
    pub shown: String,
}

impl ToAdd {
    /// Reads a `.torrent` file or parses a magnet link.
    ///
    /// # Errors
    /// `BadInput` for an unreadable or invalid torrent or a malformed magnet link, naming it.
    pub fn read(torrent: &str) -> Result<ToAdd, CommandError> {
        if Magnet::is_magnet(torrent) {
            let magnet = Magnet::parse(torrent)
                .map_err(|e| CommandError::BadInput(format!("{torrent}: {e}")))?;
            let hash = magnet.info_hash;
            let name = magnet.name.unwrap_or_else(|| hash.to_hex());
            let uri = torrent.trim().to_owned();
            Ok(ToAdd {
                bytes: format!("{uri}\n").into_bytes(),
                magnet: Some(uri),
                info_hash: hash,
                shown: format!("{name} ({hash})"),
            })
        } else {
            let meta = load_torrent(Path::new(torrent))?;
            let bytes = std::fs::read(torrent)
                .map_err(|e| CommandError::BadInput(format!("{torrent}: {e}")))?;
            Ok(ToAdd {
                bytes,
                magnet: None,
                info_hash: meta.info_hash,
                shown: format!("{} ({})", meta.name, meta.info_hash),
            })
        }
    }

    /// The refusal of a torrent the daemon has already, as `name` (exit 1).
    pub fn already(&self, name: &str) -> CommandError {
        CommandError::Runtime(format!("{}: already in the daemon as {name}", self.shown))
    }
}

/// `btd add` without the RPC: puts a torrent (a copy of the `.torrent` file, or the magnet
/// link in a `.magnet` file) in the daemon's watch directory under a name of its own (info
/// hash, pid, time), sends SIGHUP, and reports the daemon's answer to this request: that file
/// renamed `*.added`, or `*.invalid`. Files left by earlier requests never count. A torrent the
/// daemon already has is refused before anything is written, and named (from the status
/// file); so is one the daemon refused because it got the same torrent meanwhile.
///
/// # Errors
/// `Runtime` when no daemon runs, the config has no watch directory, the daemon has the
/// torrent already or refused it.
pub fn add(config: &Config, torrent: &ToAdd) -> Result<(), CommandError> {
    let extension = if torrent.magnet.is_some() {
        "magnet"
    } else {
        "torrent"
    };
    let (bytes, hash, shown) = (&torrent.bytes, torrent.info_hash, &torrent.shown);
    let pid = running_daemon(&config.state_dir, config.source.as_deref())?;
    let Some(watch_dir) = &config.watch_dir else {
        return Err(CommandError::Runtime(
            "the config has no [watch] dir: add the torrent as a [[torrent]] entry instead".into(),
        ));
    };
    let already = |name: &str| torrent.already(name);
    if let Some(name) = name_in_daemon(config, &hash) {
        return Err(already(&name));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let file_name = format!("{hash}-{}-{nanos}.{extension}", std::process::id());
    let target = watch_dir.join(&file_name);
    // Not ending in .torrent or .magnet: the daemon takes the file only once it is whole.
    let temp = watch_dir.join(format!(".{file_name}.partial"));
    std::fs::write(&temp, bytes)
        .and_then(|()| std::fs::rename(&temp, &target))
        .map_err(|e| CommandError::Runtime(format!("{}: {e}", target.display())))?;
    send_hangup(pid)?;
    let added = PathBuf::from(format!("{}.added", target.display()));
    let invalid = PathBuf::from(format!("{}.invalid", target.display()));
    let deadline = Instant::now() + DAEMON_REPLY_TIMEOUT;
    while Instant::now() < deadline {
        if added.exists() {
            println!("added {shown}");
            return Ok(());
        }
        if invalid.exists() {
            // A duplicate that arrived meanwhile shows in the status file the daemon writes
            // after the scan (at once after a SIGHUP, else within its interval).
            let until = Instant::now() + config.status_interval + Duration::from_secs(1);
            while Instant::now() < until {
                if let Some(name) = name_in_daemon(config, &hash) {
                    return Err(already(&name));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let log = config
                .log_file
                .as_ref()
                .map_or_else(String::new, |f| format!(" ({})", f.display()));
            return Err(CommandError::Runtime(format!(
                "the daemon refused {shown}, renaming {} to {}; its log{log} says why",
                target.display(),
                invalid.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(CommandError::Runtime(format!(
        "the daemon (pid {pid}) did not pick up {} within {DAEMON_REPLY_TIMEOUT:?}",
        target.display()
    )))
}

/// The name of the daemon's torrent with `info_hash`, per its status file; `None` when it has
/// none (or the file cannot be read yet).
fn name_in_daemon(config: &Config, info_hash: &InfoHash) -> Option<String> {
    let hex = info_hash.to_hex();
    load_status(&config.state_dir)
        .ok()?
        .torrents
        .into_iter()
        .find(|t| t.info_hash.eq_ignore_ascii_case(&hex))
        .map(|t| t.name)
}

/// `btd remove`: stops and forgets a torrent added through the watch directory (its data
/// stays), by name or info hash.
///
/// # Errors
/// `Runtime` when no daemon runs, no torrent matches, or it came from a `[[torrent]]` entry.
pub fn remove(config: &Config, what: &str) -> Result<(), CommandError> {
    let pid = running_daemon(&config.state_dir, config.source.as_deref())?;
    let status = load_status(&config.state_dir)?;
    let matches: Vec<&TorrentStatus> = status
        .torrents
        .iter()
        .filter(|t| t.name == what || t.info_hash.eq_ignore_ascii_case(what))
        .collect();
    let torrent = match matches.as_slice() {
        [one] => *one,
        [] => {
            return Err(CommandError::Runtime(format!(
                "no torrent named {what:?} in the daemon"
            )));
        }
        _ => {
            return Err(CommandError::Runtime(format!(
                "{what:?} names several torrents: use the info hash"
            )));
        }
    };
    if torrent.source == "config" {
        return Err(CommandError::Runtime(format!(
            "torrent {} comes from a [[torrent]] entry of the config: remove it there and send SIGHUP",
            torrent.name
        )));
    }
    std::fs::remove_file(&torrent.source)
        .map_err(|e| CommandError::Runtime(format!("{}: {e}", torrent.source)))?;
    send_hangup(pid)?;
    let deadline = Instant::now() + DAEMON_REPLY_TIMEOUT;
    while Instant::now() < deadline {
        let gone = load_status(&config.state_dir)
            .map(|s| !s.torrents.iter().any(|t| t.info_hash == torrent.info_hash))
            .unwrap_or(false);
        if gone {
            println!(
                "removed {} ({}); its data stays",
                torrent.name, torrent.info_hash
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(CommandError::Runtime(format!(
        "the daemon (pid {pid}) did not remove {} within {DAEMON_REPLY_TIMEOUT:?}",
        torrent.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_piece_length_gives_one_to_two_thousand_pieces() {
        assert_eq!(default_piece_length(1 << 30), 1 << 20);
        assert_eq!(default_piece_length(1000), 16 * 1024);
        assert_eq!(default_piece_length(1 << 40), 16 * 1024 * 1024);
        for total in [40_000_000u64, 300_000_000, 5_000_000_000] {
            let pieces = total.div_ceil(u64::from(default_piece_length(total)));
            assert!((1000..=2000).contains(&pieces), "{total}: {pieces}");
        }
    }
}
