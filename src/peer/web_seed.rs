//! Web seeds (BEP 19): thread "webseed URL", one per `url-list` URL of a running torrent. It
//! stands in the coordinator's peer table like a peer that has every piece and never chokes
//! us, so the picker, the piece buffers, hash verification and blame serve it unchanged: it
//! obeys `Request`, `Cancel` and `Shutdown` ([`PeerCommand`]) and reports `BlocksReceived`
//! ([`PeerEvent`]). It fetches the requested blocks with HTTP range requests (attohttpc), one
//! request at a time (its concurrency bound), a run of contiguous blocks coalesced into one
//! range per file it touches. A server that ignores `Range` and answers `200` with the whole
//! file still serves: the bytes before the range are read and dropped. Redirects are followed
//! (up to 5). A reply must keep a pace ([`MIN_RATE`] after the read timeout) or it is an
//! error, so a server that trickles cannot hold blocks forever. An HTTP error voids what it was asked for (reported as `Choked`),
//! then it waits a doubling back-off and reports `Unchoked`. It ends on `Shutdown`, when the
//! coordinator closes its [`PeerLink`](super::PeerLink) flag, or when the coordinator is gone;
//! `Disconnected` is sent once as it ends.

use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use attohttpc::{Method, RequestBuilder, StatusCode};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use log::{debug, warn};

use super::session::disconnect_guard;
use super::{MAX_BLOCKS_PER_EVENT, PeerCommand, PeerError, PeerEvent, PeerStats, TorrentContext};
use crate::metainfo::{FileEntry, Metainfo};
use crate::percent;
use crate::profile::{self, Role};
use crate::torrent::picker::PeerKey;
use crate::torrent::piece_buffer::BlockData;
use crate::wire::BlockRef;

/// Most bytes one range request asks for (a run of contiguous blocks is cut here).
pub const MAX_RUN_BYTES: u64 = 4 * 1024 * 1024;
/// Most block requests the coordinator keeps outstanding with one web seed.
pub const WEB_SEED_PIPELINE: usize = 256;
/// First back-off after an HTTP error; it doubles with each error in a row.
const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often an idle web seed thread looks at its close flag.
const POLL: Duration = Duration::from_millis(200);
/// Bytes read from a response at a time (each passes the download rate limits).
const READ_CHUNK: usize = 64 * 1024;

/// What the coordinator keeps of a web seed thread it spawned.
pub struct WebSeedHandle {
    pub commands: Sender<PeerCommand>,
    pub stats: Arc<PeerStats>,
    /// Set to end the thread (checked between requests and while idle).
    pub closed: Arc<AtomicBool>,
}

/// Timeouts of a web seed's HTTP requests.
#[derive(Clone, Copy, Debug)]
pub struct WebSeedTimeouts {
    /// `[network] connect_timeout_secs`.
    pub connect: Duration,
    /// `[network] write_timeout_secs`: how long a response may send nothing.
    pub read: Duration,
}

/// Spawns thread "webseed URL" for peer key `peer`.
///
/// # Errors
/// When the torrent is stopping or the thread cannot be spawned.
pub fn spawn(
    ctx: Arc<TorrentContext>,
    meta: Arc<Metainfo>,
    peer: PeerKey,
    url: String,
    timeouts: WebSeedTimeouts,
) -> std::io::Result<WebSeedHandle> {
    let alive = ctx
        .peer_thread_token()
        .ok_or_else(|| std::io::Error::other("the torrent is stopping"))?;
    let (commands, commands_rx) = crossbeam_channel::bounded(64);
    let stats = Arc::new(PeerStats::default());
    let closed = Arc::new(AtomicBool::new(false));
    let seed = WebSeed {
        ctx,
        meta,
        peer,
        url,
        timeouts,
        commands: commands_rx,
        stats: Arc::clone(&stats),
        closed: Arc::clone(&closed),
        queue: VecDeque::new(),
        failures: 0,
        ignores_ranges: AtomicBool::new(false),
    };
    std::thread::Builder::new()
        .name(format!("webseed {}", seed.url))
        .stack_size(super::PEER_STACK_BYTES)
        .spawn(move || {
            let _alive = alive;
            profile::run_as(Role::Peer, || seed.run());
        })?;
    Ok(WebSeedHandle {
        commands,
        stats,
        closed,
    })
}

/// The URL of `file` under web seed `base` (BEP 19): for a single-file torrent `base` itself,
/// or `base` + the torrent's name when `base` ends in `/`; for a multi-file torrent `base` is a
/// directory, and the file's path (which starts with the torrent's name) is appended, each
/// component percent-encoded.
pub fn file_url(base: &str, single_file: bool, file: &FileEntry) -> String {
    let mut url = base.to_owned();
    if single_file {
        if url.ends_with('/') {
            percent::encode_into(&mut url, file.path.to_string_lossy().as_bytes());
        }
        return url;
    }
    if !url.ends_with('/') {
        url.push('/');
    }
    for (i, part) in file.path.components().enumerate() {
        if i > 0 {
            url.push('/');
        }
        percent::encode_into(&mut url, part.as_os_str().to_string_lossy().as_bytes());
    }
    url
}

/// A single-file torrent: one file whose path is the torrent's name.
pub fn is_single_file(meta: &Metainfo) -> bool {
    meta.files.len() == 1 && meta.files[0].path == Path::new(&meta.name)
}

/// Why one fetch failed.
#[derive(Debug)]
enum FetchError {
    Http(String),
    /// The torrent is stopping or the coordinator dropped us.
    Closed,
}

struct WebSeed {
    ctx: Arc<TorrentContext>,
    meta: Arc<Metainfo>,
    peer: PeerKey,
    url: String,
    timeouts: WebSeedTimeouts,
    commands: Receiver<PeerCommand>,
    stats: Arc<PeerStats>,
    closed: Arc<AtomicBool>,
    /// Blocks asked for and not yet fetched, in the order asked.
    queue: VecDeque<BlockRef>,
    /// HTTP errors in a row.
    failures: u32,
    /// The server answered a range request with the whole file (logged once).
    ignores_ranges: AtomicBool,
}

impl WebSeed {
    fn run(mut self) {
        let ctx = Arc::clone(&self.ctx);
        let guard = disconnect_guard(&ctx, self.peer);
        let reason = self.serve();
        debug!("webseed {}: ended: {reason}", self.url);
        guard.end(reason);
    }

    fn serve(&mut self) -> PeerError {
        loop {
            if let Err(reason) = self.take_commands() {
                return reason;
            }
            if self.queue.is_empty() {
                continue;
            }
            let run = self.take_run();
            match self.fetch(&run) {
                Ok(data) => {
                    self.failures = 0;
                    // One event per run of at most MAX_BLOCKS_PER_EVENT blocks.
                    let mut at = 0;
                    for chunk in run.chunks(MAX_BLOCKS_PER_EVENT) {
                        let blocks = chunk
                            .iter()
                            .map(|&block| {
                                let len = block.len as usize;
                                let data = BlockData::copy_of(&data[at..at + len]);
                                at += len;
                                (block, data)
                            })
                            .collect();
                        let event = PeerEvent::BlocksReceived {
                            peer: self.peer,
                            blocks,
                        };
                        if self.ctx.events.send(event).is_err() {
                            return PeerError::CoordinatorGone;
                        }
                    }
                }
                Err(FetchError::Closed) => return PeerError::Dropped,
                Err(FetchError::Http(error)) => {
                    self.failures += 1;
                    let backoff =
                        crate::backoff::doubling(BACKOFF_BASE, self.failures, BACKOFF_MAX) / 2;
                    warn!("webseed {}: {error}; trying again in {backoff:?}", self.url);
                    self.queue.clear();
                    // The coordinator voids what it asked of us and asks again after `Unchoked`.
                    if self.report(PeerEvent::Choked { peer: self.peer }).is_err() {
                        return PeerError::CoordinatorGone;
                    }
                    if let Err(reason) = self.wait(Instant::now() + backoff) {
                        return reason;
                    }
                    self.queue.clear();
                    if self
                        .report(PeerEvent::Unchoked { peer: self.peer })
                        .is_err()
                    {
                        return PeerError::CoordinatorGone;
                    }
                }
            }
        }
    }

    fn report(&self, event: PeerEvent) -> Result<(), ()> {
        self.ctx.events.send(event).map_err(|_| ())
    }

    /// Applies the queued commands; with nothing to fetch, waits up to [`POLL`] for one.
    fn take_commands(&mut self) -> Result<(), PeerError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PeerError::Dropped);
        }
        if self.queue.is_empty() {
            match self.commands.recv_timeout(POLL) {
                Ok(cmd) => self.apply(cmd)?,
                Err(RecvTimeoutError::Timeout) => return Ok(()),
                Err(RecvTimeoutError::Disconnected) => return Err(PeerError::CoordinatorGone),
            }
        }
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.apply(cmd)?,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(PeerError::CoordinatorGone),
            }
        }
    }

    /// Waits until `until`, applying commands (requests are dropped: the coordinator voided
    /// them when we reported `Choked`).
    fn wait(&mut self, until: Instant) -> Result<(), PeerError> {
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Err(PeerError::Dropped);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.commands.recv_timeout(left.min(POLL)) {
                Ok(cmd) => self.apply(cmd)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(PeerError::CoordinatorGone),
            }
        }
    }

    fn apply(&mut self, cmd: PeerCommand) -> Result<(), PeerError> {
        match cmd {
            PeerCommand::Request(blocks) => {
                let geometry = &self.ctx.geometry;
                self.queue
                    .extend(blocks.into_iter().filter(|b| geometry.is_valid_block(b)));
            }
            PeerCommand::Cancel(blocks) => self.queue.retain(|b| !blocks.contains(b)),
            PeerCommand::Shutdown => return Err(PeerError::Dropped),
            // A web seed takes nothing from us and chokes nobody.
            PeerCommand::Start { .. }
            | PeerCommand::Have(_)
            | PeerCommand::Choke
            | PeerCommand::Unchoke
            | PeerCommand::Interested
            | PeerCommand::NotInterested
            | PeerCommand::Pex(_) => {}
        }
        Ok(())
    }

    /// The first queued block and the ones queued after it that continue it byte for byte,
    /// up to [`MAX_RUN_BYTES`].
    fn take_run(&mut self) -> Vec<BlockRef> {
        let geometry = self.ctx.geometry;
        let start = |b: &BlockRef| geometry.piece_offset(b.piece) + u64::from(b.offset);
        let mut run = vec![self.queue.pop_front().expect("caller checked")];
        let mut end = start(&run[0]) + u64::from(run[0].len);
        let mut bytes = u64::from(run[0].len);
        while let Some(next) = self.queue.front() {
            if start(next) != end || bytes + u64::from(next.len) > MAX_RUN_BYTES {
                break;
            }
            end += u64::from(next.len);
            bytes += u64::from(next.len);
            run.push(self.queue.pop_front().expect("front was there"));
        }
        run
    }

    /// The bytes of `run` (contiguous blocks), one range request per file they touch; pad
    /// files are zeros and fetched from nowhere.
    fn fetch(&self, run: &[BlockRef]) -> Result<Vec<u8>, FetchError> {
        let geometry = self.ctx.geometry;
        let from = geometry.piece_offset(run[0].piece) + u64::from(run[0].offset);
        let len: u64 = run.iter().map(|b| u64::from(b.len)).sum();
        let to = from + len;
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        let single = is_single_file(&self.meta);
        for file in &self.meta.files {
            let (start, end) = (file.offset, file.offset + file.len);
            if end <= from || start >= to || file.len == 0 {
                continue;
            }
            let (a, b) = (from.max(start) - start, to.min(end) - start);
            if !file.on_disk() {
                data.resize(data.len() + usize::try_from(b - a).unwrap_or(0), 0);
                continue;
            }
            let url = file_url(&self.url, single, file);
            self.get_range(&url, a, b, file.len, &mut data)?;
        }
        if data.len() as u64 != len {
            return Err(FetchError::Http(format!(
                "got {} bytes for {len} asked",
                data.len()
            )));
        }
        Ok(data)
    }

    /// Appends bytes `a..b` of the file at `url` (`file_len` long) to `out`.
    fn get_range(
        &self,
        url: &str,
        a: u64,
        b: u64,
        file_len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), FetchError> {
        let http = |e: String| FetchError::Http(format!("{url}: {e}"));
        let response = RequestBuilder::try_new(Method::GET, url)
            .map_err(|e| http(e.to_string()))?
            .connect_timeout(self.timeouts.connect)
            .read_timeout(self.timeouts.read)
            .allow_compression(false)
            .max_redirections(5)
            .header(attohttpc::header::RANGE, format!("bytes={a}-{}", b - 1))
            .header(
                attohttpc::header::USER_AGENT,
                concat!("btd/", env!("CARGO_PKG_VERSION")),
            )
            .send()
            .map_err(|e| http(e.to_string()))?;
        let (status, headers, reader) = response.split();
        let skip = match check_reply(status, &headers, a, b, file_len) {
            Ok(skip) => skip,
            Err(e) => return Err(http(e)),
        };
        if skip > 0 && !self.ignores_ranges.swap(true, Ordering::Relaxed) {
            debug!(
                "webseed {}: the server ignores Range; skipping to each range",
                self.url
            );
        }
        let mut reader = reader.take(skip + (b - a));
        let mut pace = Pace::new(Instant::now(), self.timeouts.read, skip + (b - a));
        let mut chunk = vec![0; READ_CHUNK];
        let mut skipped = 0;
        while skipped < skip {
            let want = usize::try_from(skip - skipped)
                .unwrap_or(usize::MAX)
                .min(READ_CHUNK);
            let n = self.read_some(&mut reader, &mut chunk[..want], &mut pace)?;
            if n == 0 {
                return Err(http(format!("reply ended {} bytes short", skip - skipped)));
            }
            skipped += n as u64;
        }
        let want = usize::try_from(b - a).map_err(|_| http("range too long".into()))?;
        let mut got = 0;
        while got < want {
            let len = chunk.len().min(want - got);
            let n = match self.read_some(&mut reader, &mut chunk[..len], &mut pace) {
                Ok(n) => n,
                Err(FetchError::Http(e)) => {
                    return Err(http(format!("{e} after {got} of {want} bytes")));
                }
                Err(closed) => return Err(closed),
            };
            if n == 0 {
                return Err(http(format!("reply ended after {got} of {want} bytes")));
            }
            out.extend_from_slice(&chunk[..n]);
            got += n;
            self.stats.add_downloaded(n as u64);
            self.ctx
                .stats
                .downloaded
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One read into `buf` through the download rate limits (0: the reply ended); an error
    /// when the torrent closes us, the read fails, or the reply is behind its [`Pace`].
    fn read_some(
        &self,
        reader: &mut impl Read,
        buf: &mut [u8],
        pace: &mut Pace,
    ) -> Result<usize, FetchError> {
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Err(FetchError::Closed);
            }
            let now = Instant::now();
            if let Some(e) = pace.late(now) {
                return Err(FetchError::Http(e));
            }
            let limits = self.ctx.download_limits();
            let allowed = limits.take_up_to(buf.len(), now);
            if allowed == 0 {
                let nap = limits.wait_hint(buf.len()).min(POLL);
                std::thread::sleep(nap);
                pace.held_back(nap);
                continue;
            }
            let read = reader.read(&mut buf[..allowed]);
            limits.give_back(allowed - *read.as_ref().unwrap_or(&0));
            return match read {
                Ok(n) => {
                    pace.got(n);
                    Ok(n)
                }
                Err(e) => Err(FetchError::Http(format!("reading: {e}"))),
            };
        }
    }
}

/// Slowest a web seed may send a reply, on average, before the request is given up as an
/// error (a server that trickles a byte now and then never trips the read timeout).
pub const MIN_RATE: u64 = 8 * 1024;

/// The deadline of one reply: the read timeout plus its length at [`MIN_RATE`], pushed back
/// by the time our own rate limits held the reading back.
#[derive(Debug)]
struct Pace {
    start: Instant,
    deadline: Instant,
    total: u64,
    got: u64,
}

impl Pace {
    fn new(now: Instant, read_timeout: Duration, total: u64) -> Pace {
        let allowance = Duration::from_secs_f64(total as f64 / MIN_RATE as f64);
        Pace {
            start: now,
            deadline: now + read_timeout + allowance,
            total,
            got: 0,
        }
    }

    fn held_back(&mut self, by: Duration) {
        self.deadline += by;
    }

    fn got(&mut self, n: usize) {
        self.got += n as u64;
    }

    /// The error to report when the reply is past its deadline at `now`.
    fn late(&self, now: Instant) -> Option<String> {
        (now > self.deadline).then(|| {
            format!(
                "too slow: {} of {} bytes in {:.0?} (under {} KiB/s)",
                self.got,
                self.total,
                now - self.start,
                MIN_RATE / 1024
            )
        })
    }
}

/// Whether a reply to `Range: bytes=a-(b-1)` of a file of `file_len` bytes carries that range,
/// and how many bytes come before it: 0 for a `206` whose `Content-Range` (when given) starts
/// at `a`; `a` for a `200` (a server that ignores `Range` sends the whole file, whose length
/// must then be `file_len`). Anything else is the error to report.
fn check_reply(
    status: StatusCode,
    headers: &attohttpc::header::HeaderMap,
    a: u64,
    b: u64,
    file_len: u64,
) -> Result<u64, String> {
    let header = |name: attohttpc::header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    match status {
        StatusCode::PARTIAL_CONTENT => {
            if let Some(range) = header(attohttpc::header::CONTENT_RANGE) {
                let first = range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(first, _)| first.trim().parse::<u64>().ok());
                if first != Some(a) {
                    return Err(format!("Content-Range {range:?} for bytes {a}-{}", b - 1));
                }
            }
            Ok(0)
        }
        StatusCode::OK => {
            let len = header(attohttpc::header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok());
            match len {
                Some(len) if len != file_len => Err(format!(
                    "HTTP status 200 with {len} bytes for a file of {file_len}"
                )),
                _ => Ok(a),
            }
        }
        status => Err(format!("HTTP status {status} for bytes {a}-{}", b - 1)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::metainfo::FileAttr;

    fn file(path: &str) -> FileEntry {
        FileEntry {
            path: PathBuf::from(path),
            len: 1,
            offset: 0,
            attr: FileAttr::default(),
        }
    }

    #[test]
    fn single_file_url_is_the_url_or_the_directory_plus_the_name() {
        let f = file("a b.iso");
        assert_eq!(file_url("http://h/x/a.iso", true, &f), "http://h/x/a.iso");
        assert_eq!(file_url("http://h/x/", true, &f), "http://h/x/a%20b.iso");
    }

    #[test]
    fn multi_file_url_appends_the_encoded_path_under_the_directory() {
        let f = file("name/sub dir/ü.txt");
        assert_eq!(
            file_url("http://h/x", false, &f),
            "http://h/x/name/sub%20dir/%C3%BC.txt"
        );
        assert_eq!(
            file_url("http://h/x/", false, &f),
            "http://h/x/name/sub%20dir/%C3%BC.txt"
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> attohttpc::header::HeaderMap {
        let mut map = attohttpc::header::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_partial_reply_must_start_where_we_asked() {
        let ok = headers(&[("content-range", "bytes 100-199/1000")]);
        assert_eq!(
            check_reply(StatusCode::PARTIAL_CONTENT, &ok, 100, 200, 1000),
            Ok(0)
        );
        assert_eq!(
            check_reply(StatusCode::PARTIAL_CONTENT, &headers(&[]), 100, 200, 1000),
            Ok(0)
        );
        let wrong = headers(&[("content-range", "bytes 0-99/1000")]);
        let err = check_reply(StatusCode::PARTIAL_CONTENT, &wrong, 100, 200, 1000).unwrap_err();
        assert!(err.contains("Content-Range"), "{err}");
    }

    #[test]
    fn a_whole_file_reply_is_skipped_into_when_its_length_is_the_files() {
        let whole = headers(&[("content-length", "1000")]);
        assert_eq!(check_reply(StatusCode::OK, &whole, 100, 200, 1000), Ok(100));
        assert_eq!(
            check_reply(StatusCode::OK, &headers(&[]), 0, 1000, 1000),
            Ok(0)
        );
        let other = headers(&[("content-length", "999")]);
        assert!(check_reply(StatusCode::OK, &other, 100, 200, 1000).is_err());
        let err = check_reply(StatusCode::NOT_FOUND, &headers(&[]), 0, 10, 1000).unwrap_err();
        assert_eq!(err, "HTTP status 404 Not Found for bytes 0-9");
    }

    #[test]
    fn a_reply_is_late_after_the_read_timeout_plus_its_length_at_the_minimum_rate() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0, Duration::from_secs(60), 4 * MIN_RATE);
        assert_eq!(pace.late(t0 + Duration::from_secs(64)), None);
        pace.got(3);
        let late = pace.late(t0 + Duration::from_secs(65)).expect("late");
        assert!(late.starts_with("too slow: 3 of 32768 bytes"), "{late}");
        // Time our own rate limits held the reading back is not the server's fault.
        pace.held_back(Duration::from_secs(10));
        assert_eq!(pace.late(t0 + Duration::from_secs(74)), None);
        assert!(pace.late(t0 + Duration::from_secs(75)).is_some());
    }
}
