//! What a daemon counts and tells its trackers (issue 12): every payload byte sent or received,
//! by any peer, counted once in `uploaded_bytes`/`downloaded_bytes` (lifetime totals, kept across
//! restarts), the ratio limit that those totals drive, and the announces a recording tracker
//! receives: `started` with the exact `left`, `completed` only for a download that completes
//! while the daemon runs, `stopped` with this session's amounts; tracker warnings name the
//! torrent.
//!
//! Every daemon has its own directory, loopback address and port 0 (`support::daemon`); the
//! leechers and seeders are libtorrent (`scripts/clients/lt_client.py`, no DHT, LSD, UPnP or
//! NAT-PMP) and find the daemon by `--peer`.

use crate::support::daemon::{
    Daemon, DaemonHome, LtSeeder, Payload, Snapshot, TorrentEntry, TorrentStatus, within,
};
use crate::support::{
    Announce, Btd, LtClient, RecordingTracker, SHORT, ScriptClient, TRANSFER, TempDir, TorrentInfo,
    TrackerReply, assert_same_files, describe_announces, test_seed, write_payload,
};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// The payload of the byte-counting tests: 8 MiB in 32 pieces.
const SIZE: u64 = 8 * MIB;
const PIECE: u64 = 256 * KIB;

/// A payload of one file of `size` bytes, written into the daemon's download directory (so a
/// daemon with `home` seeds it at once), and its torrent announcing to `trackers`.
fn seed_in_home(
    home: &DaemonHome,
    work: &TempDir,
    name: &str,
    size: u64,
    trackers: &[String],
) -> Payload {
    Payload::create(
        &home.download_dir(),
        name,
        &[(&format!("{name}/data.bin"), size)],
        test_seed(name),
        &work.join(&format!("{name}.torrent")),
        PIECE,
        trackers,
    )
}

/// Like [`seed_in_home`], but a private torrent (BEP 27): leechers that meet at the daemon cannot
/// tell each other about themselves (no PEX), so every byte they get comes from the daemon.
fn private_seed_in_home(home: &DaemonHome, work: &TempDir, name: &str, size: u64) -> Payload {
    let mut rng = crate::support::Rng::new(test_seed(name));
    write_payload(
        &home.download_dir(),
        &[(&format!("{name}/data.bin"), size)],
        &mut rng,
    );
    let torrent = work.join(&format!("{name}.torrent"));
    Btd::run([
        OsString::from("create"),
        home.download_dir().join(name).into(),
        "-o".into(),
        torrent.clone().into(),
        "--piece-length".into(),
        PIECE.to_string().into(),
        "--private".into(),
    ])
    .assert_success();
    let info = TorrentInfo::read(&torrent);
    assert!(info.private, "btd create --private made a public torrent");
    Payload {
        dir: home.download_dir(),
        name: name.to_owned(),
        torrent,
        info_hash: info.info_hash,
    }
}

/// A libtorrent leecher of `p` that dials only `seed`, downloading into `work/<label>`.
fn leecher(label: &str, p: &Payload, seed: SocketAddr, work: &TempDir) -> ScriptClient {
    let out = work.subdir(label);
    LtClient::leech_from(label, &p.torrent, &out, seed)
}

/// Runs a libtorrent leecher of `p` from `seed` to its end and checks what it got.
fn leech_all(label: &str, p: &Payload, seed: SocketAddr, work: &TempDir) {
    let mut lt = leecher(label, p, seed, work);
    lt.wait_complete(TRANSFER);
    assert_same_files(&p.data(), &work.path().join(label).join(&p.name));
}

/// The torrent `info_hash` in a snapshot; panics with the snapshot when it is missing.
fn torrent<'a>(s: &'a Snapshot, info_hash: &str) -> &'a TorrentStatus {
    s.status
        .torrent(info_hash)
        .unwrap_or_else(|| panic!("{info_hash} not in the status: {}", s.text))
}

/// A daemon seeding `p` from its download directory (status every second).
fn start_seeding(home: &DaemonHome, name: &str, p: &Payload) -> Daemon {
    let mut d = home.start(name);
    d.wait_seeding(&p.info_hash, SHORT);
    d
}

#[test]
fn uploaded_bytes_count_every_leecher_also_after_it_disconnected() {
    let work = TempDir::new("acct-sequential");
    let mut home = DaemonHome::new("acct-sequential");
    let p = seed_in_home(&home, &work, "sequential-up", SIZE, &[]);
    home.add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();
    let mut d = start_seeding(&home, "btd daemon (seed)", &p);
    let size = SIZE;

    // One after the other: each takes the whole torrent from the daemon, then exits.
    for i in 1..=3 {
        leech_all(&format!("leecher-{i}"), &p, d.addr(), &work);
    }
    let s = d.wait_snapshot(SHORT, "uploaded_bytes of three whole copies", |s| {
        s.status
            .torrent(&p.info_hash)
            .is_some_and(|t| t.uploaded_bytes >= 3 * size)
    });
    // Nobody is connected any more: the next status has the final count.
    let s = d.next_snapshot(&s, SHORT);
    let t = torrent(&s, &p.info_hash);
    assert!(
        t.uploaded_bytes <= 3 * size + 3 * PIECE,
        "three leechers took {} bytes, but the daemon counted {} uploaded: {}",
        3 * size,
        t.uploaded_bytes,
        s.text
    );
    let want_ratio = t.uploaded_bytes as f64 / t.size_bytes as f64;
    assert!(
        (t.ratio - want_ratio).abs() < 0.01,
        "ratio {} is not uploaded_bytes / size_bytes = {want_ratio}: {}",
        t.ratio,
        s.text
    );
    d.stop("TERM");
}

#[test]
fn ratio_limit_stops_a_seed_within_one_piece_of_it_however_many_leechers_came_and_it_stays_finished_after_a_restart()
 {
    let work = TempDir::new("acct-ratio");
    let mut home = DaemonHome::new("acct-ratio");
    let p = seed_in_home(&home, &work, "ratio-sequential", SIZE, &[]);
    home.set("seeding", "ratio_limit", 1.5)
        .add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();
    let mut d = start_seeding(&home, "btd daemon (seed, ratio 1.5)", &p);
    let size = SIZE;

    // Leechers one after the other until the daemon stops the torrent: the first takes it all
    // (ratio 1), the second reaches 1.5 halfway. Four whole copies without a stop is a failure.
    let mut finished: Option<Snapshot> = None;
    'leechers: for i in 1..=4 {
        let mut lt = leecher(&format!("leecher-{i}"), &p, d.addr(), &work);
        let deadline = within(TRANSFER);
        loop {
            if let Some(s) = d.snapshot().filter(|s| {
                s.status.pid == d.pid()
                    && s.status
                        .torrent(&p.info_hash)
                        .is_some_and(|t| t.state == "finished")
            }) {
                finished = Some(s);
                break 'leechers;
            }
            if lt.proc.has_exited() {
                let status = lt.proc.wait_exit(SHORT);
                assert!(status.success(), "leecher {i} failed ({status})");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "leecher {i} neither completed nor saw the torrent finished within {TRANSFER:?}; \
                 status: {}",
                d.snapshot().map_or(String::new(), |s| s.text)
            );
            d.proc.assert_running();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let s = finished.unwrap_or_else(|| {
        panic!(
            "four leechers took the whole torrent each and ratio_limit = 1.5 never stopped it: {}",
            d.snapshot().map_or(String::new(), |s| s.text)
        )
    });
    let uploaded = torrent(&s, &p.info_hash).uploaded_bytes;
    let target = size + size / 2;
    assert!(
        uploaded >= target,
        "finished at {uploaded} bytes uploaded, short of 1.5 x {size} = {target}: {}",
        s.text
    );
    assert!(
        uploaded <= target + PIECE,
        "finished at {uploaded} bytes uploaded, more than one piece ({PIECE}) past 1.5 x {size} \
         = {target}: {}",
        s.text
    );
    d.wait_log_contains(0, SHORT, "ratio limit reached");
    let mut s = s;
    for _ in 0..2 {
        s = d.next_snapshot(&s, SHORT);
        let t = torrent(&s, &p.info_hash);
        assert_eq!(t.state, "finished", "{}", s.text);
        assert_eq!(
            t.uploaded_bytes, uploaded,
            "uploading after the ratio limit: {}",
            s.text
        );
    }
    d.stop("TERM");
    drop(d);

    // A restart does not forget it: finished, with the same total, in every status.
    let mut d = home.start("btd daemon (restarted)");
    let mut s = d.wait_snapshot(SHORT, "the torrent in the restarted daemon's status", |s| {
        s.status.torrent(&p.info_hash).is_some()
    });
    for _ in 0..4 {
        let t = torrent(&s, &p.info_hash);
        assert_eq!(
            t.state, "finished",
            "a torrent finished by its ratio limit is not finished after a restart: {}",
            s.text
        );
        assert_eq!(
            t.uploaded_bytes, uploaded,
            "uploaded_bytes changed across the restart: {}",
            s.text
        );
        s = d.next_snapshot(&s, SHORT);
    }
    d.stop("TERM");
}

#[test]
fn uploaded_bytes_count_two_leechers_at_once() {
    let work = TempDir::new("acct-concurrent");
    let mut home = DaemonHome::new("acct-concurrent");
    let p = private_seed_in_home(&home, &work, "concurrent-up", SIZE);
    home.add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();
    let mut d = start_seeding(&home, "btd daemon (seed)", &p);
    let size = SIZE;

    let mut a = leecher("leecher-a", &p, d.addr(), &work);
    let mut b = leecher("leecher-b", &p, d.addr(), &work);
    a.wait_complete(TRANSFER);
    b.wait_complete(TRANSFER);
    for label in ["leecher-a", "leecher-b"] {
        assert_same_files(&p.data(), &work.path().join(label).join(&p.name));
    }
    let s = d.wait_snapshot(SHORT, "uploaded_bytes of two whole copies", |s| {
        s.status
            .torrent(&p.info_hash)
            .is_some_and(|t| t.uploaded_bytes >= 2 * size)
    });
    let s = d.next_snapshot(&s, SHORT);
    let uploaded = torrent(&s, &p.info_hash).uploaded_bytes;
    assert!(
        uploaded <= 2 * size + 2 * PIECE,
        "two leechers took {} bytes, but the daemon counted {uploaded} uploaded: {}",
        2 * size,
        s.text
    );
    d.stop("TERM");
}

#[test]
fn downloaded_bytes_count_a_whole_download_and_survive_a_restart() {
    let work = TempDir::new("acct-download");
    let p = Payload::create(
        &work.subdir("seed"),
        "download-counted",
        &[("download-counted/data.bin", SIZE)],
        test_seed("download-counted"),
        &work.join("download-counted.torrent"),
        PIECE,
        &[],
    );
    let lt = LtSeeder::start("libtorrent seeder", &[&p.torrent], &p.dir, 0, false);
    let mut home = DaemonHome::new("acct-download");
    home.add_torrent(TorrentEntry::new(&p.torrent).peers(&[lt.addr]))
        .write_config();
    let mut d = home.start("btd daemon (first run)");
    d.wait_seeding(&p.info_hash, TRANSFER);
    assert_same_files(&p.data(), &home.download_dir().join(&p.name));
    let s = d.wait_snapshot(SHORT, "downloaded_bytes of the whole torrent", |s| {
        s.status
            .torrent(&p.info_hash)
            .is_some_and(|t| t.downloaded_bytes >= SIZE)
    });
    let s = d.next_snapshot(&s, SHORT);
    let downloaded = torrent(&s, &p.info_hash).downloaded_bytes;
    assert!(
        downloaded <= SIZE + 4 * PIECE,
        "{SIZE} bytes came in, but the daemon counted {downloaded}: {}",
        s.text
    );
    d.stop("TERM");
    drop(d);

    // The seeder is still there; nothing is downloaded again, and the total is kept.
    let mut d = home.start("btd daemon (second run)");
    d.wait_seeding(&p.info_hash, SHORT);
    let mut s = d.snapshot().expect("a status file");
    for _ in 0..3 {
        let t = torrent(&s, &p.info_hash);
        assert_eq!(
            t.downloaded_bytes, downloaded,
            "downloaded_bytes was {downloaded} at the stop: {}",
            s.text
        );
        s = d.next_snapshot(&s, SHORT);
    }
    d.stop("TERM");
}

// ---- announces ---------------------------------------------------------------------------

/// The announces from `started` to the end of the list, split into sessions (each starting with
/// a `started`).
fn sessions(announces: &[Announce]) -> Vec<Vec<Announce>> {
    let mut out: Vec<Vec<Announce>> = Vec::new();
    for a in announces {
        if a.is(Some("started")) || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().expect("pushed").push(a.clone());
    }
    out
}

#[test]
fn a_torrent_complete_at_start_announces_started_with_left_0_and_never_completed() {
    let work = TempDir::new("acct-announce-complete");
    let tracker = RecordingTracker::start();
    let mut home = DaemonHome::new("acct-announce-complete");
    let p = seed_in_home(
        &home,
        &work,
        "complete-at-start",
        MIB + 5,
        &[tracker.announce_url()],
    );
    home.add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();

    for run in 1..=2 {
        let mut d = start_seeding(&home, &format!("btd daemon (run {run})"), &p);
        tracker.wait_event(&p.info_hash, Some("started"), run, SHORT);
        // A `completed` would follow the `started` at once; give it time to show.
        let s = d.snapshot().expect("status");
        let s = d.next_snapshot(&s, SHORT);
        d.next_snapshot(&s, SHORT);
        d.stop("TERM");
        tracker.wait_event(&p.info_hash, Some("stopped"), run, SHORT);
    }
    let all = tracker.announces_for(&p.info_hash);
    let listing = describe_announces(&all);
    assert!(
        !all.iter().any(|a| a.is(Some("completed"))),
        "a torrent complete from the start announced `completed` (a false snatch):\n{listing}"
    );
    for a in &all {
        assert_eq!(
            a.left, 0,
            "a complete torrent announced left != 0:\n{listing}"
        );
    }
    for session in sessions(&all) {
        let started = &session[0];
        assert!(started.is(Some("started")), "{listing}");
        assert_eq!(
            (started.uploaded, started.downloaded),
            (0, 0),
            "a session's `started` must report nothing moved yet:\n{listing}"
        );
    }
}

#[test]
fn a_download_completing_while_the_daemon_runs_announces_completed_once() {
    let work = TempDir::new("acct-announce-download");
    let tracker = RecordingTracker::start();
    let size = 2 * MIB + 3;
    let p = Payload::create(
        &work.subdir("seed"),
        "completes-here",
        &[("completes-here/data.bin", size)],
        test_seed("completes-here"),
        &work.join("completes-here.torrent"),
        PIECE,
        &[tracker.announce_url()],
    );
    // The libtorrent seeder does not announce: the daemon finds it by `peers`.
    let lt = LtSeeder::start("libtorrent seeder", &[&p.torrent], &p.dir, 0, false);
    let mut home = DaemonHome::new("acct-announce-download");
    home.add_torrent(TorrentEntry::new(&p.torrent).peers(&[lt.addr]))
        .write_config();

    let mut d = home.start("btd daemon (downloads)");
    d.wait_seeding(&p.info_hash, TRANSFER);
    let completed = tracker.wait_event(&p.info_hash, Some("completed"), 1, SHORT);
    d.stop("TERM");
    tracker.wait_event(&p.info_hash, Some("stopped"), 1, SHORT);
    drop(d);
    // The next run starts complete: no second `completed`.
    let mut d = home.start("btd daemon (restarted)");
    d.wait_seeding(&p.info_hash, SHORT);
    tracker.wait_event(&p.info_hash, Some("started"), 2, SHORT);
    let s = d.snapshot().expect("status");
    d.next_snapshot(&s, SHORT);
    d.stop("TERM");
    tracker.wait_event(&p.info_hash, Some("stopped"), 2, SHORT);

    let all = tracker.announces_for(&p.info_hash);
    let listing = describe_announces(&all);
    assert_eq!(
        all.iter().filter(|a| a.is(Some("completed"))).count(),
        1,
        "one download, one `completed`:\n{listing}"
    );
    assert_eq!(completed.left, 0, "`completed` with data left:\n{listing}");
    assert!(
        completed.downloaded >= size,
        "`completed` reports {} bytes downloaded of {size}:\n{listing}",
        completed.downloaded
    );
    let runs = sessions(&all);
    assert_eq!(runs.len(), 2, "two runs, two `started`:\n{listing}");
    assert_eq!(
        runs[0][0].left, size,
        "the first `started` (no data yet) must say left = the size:\n{listing}"
    );
    let stopped = runs[0]
        .iter()
        .find(|a| a.is(Some("stopped")))
        .expect("waited for it");
    assert_eq!(stopped.left, 0, "{listing}");
    assert!(stopped.downloaded >= size, "{listing}");
    let restarted = &runs[1][0];
    assert_eq!(
        (restarted.left, restarted.uploaded, restarted.downloaded),
        (0, 0, 0),
        "the second run's `started`: complete, nothing moved in this session yet:\n{listing}"
    );
}

#[test]
fn the_stopped_announce_reports_what_this_session_uploaded() {
    let work = TempDir::new("acct-announce-stopped");
    let tracker = RecordingTracker::start();
    let mut home = DaemonHome::new("acct-announce-stopped");
    let p = seed_in_home(
        &home,
        &work,
        "stopped-counts",
        SIZE,
        &[tracker.announce_url()],
    );
    home.add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();
    let size = SIZE;

    let mut d = start_seeding(&home, "btd daemon (seed)", &p);
    tracker.wait_event(&p.info_hash, Some("started"), 1, SHORT);
    leech_all("leecher", &p, d.addr(), &work);
    // Let the daemon take in the leecher's departure before it stops.
    let s = d.snapshot().expect("status");
    d.next_snapshot(&s, SHORT);
    d.stop("TERM");
    let stopped = tracker.wait_event(&p.info_hash, Some("stopped"), 1, SHORT);
    let listing = describe_announces(&tracker.announces_for(&p.info_hash));
    assert!(
        stopped.uploaded >= size,
        "a leecher took all {size} bytes, the `stopped` announce says uploaded={}:\n{listing}",
        stopped.uploaded
    );
    assert!(
        stopped.uploaded <= size + PIECE,
        "one leecher took {size} bytes, the `stopped` announce says uploaded={}:\n{listing}",
        stopped.uploaded
    );
    assert_eq!((stopped.downloaded, stopped.left), (0, 0), "{listing}");
    drop(d);

    // A new session counts from 0 again.
    let mut d = start_seeding(&home, "btd daemon (restarted)", &p);
    let started = tracker.wait_event(&p.info_hash, Some("started"), 2, SHORT);
    d.stop("TERM");
    let stopped = tracker.wait_event(&p.info_hash, Some("stopped"), 2, SHORT);
    let listing = describe_announces(&tracker.announces_for(&p.info_hash));
    for a in [&started, &stopped] {
        assert_eq!(
            (a.uploaded, a.downloaded, a.left),
            (0, 0, 0),
            "the second session moved nothing; its announces must say so:\n{listing}"
        );
    }
}

#[test]
fn a_tracker_warning_is_logged_with_the_torrents_name() {
    let work = TempDir::new("acct-warning");
    let warning = "your client is making too many requests";
    let tracker = RecordingTracker::with_reply(TrackerReply {
        warning: Some(warning.to_owned()),
        ..TrackerReply::default()
    });
    let mut home = DaemonHome::new("acct-warning");
    let p = seed_in_home(
        &home,
        &work,
        "warned-one",
        100 * KIB,
        &[tracker.announce_url()],
    );
    let quiet = seed_in_home(&home, &work, "quiet-other", 100 * KIB, &[]);
    home.add_torrent(TorrentEntry::new(&p.torrent))
        .add_torrent(TorrentEntry::new(&quiet.torrent))
        .write_config();
    let mut d = start_seeding(&home, "btd daemon", &p);
    tracker.wait_event(&p.info_hash, Some("started"), 1, SHORT);
    let line = d.wait_log_contains(0, SHORT, warning);
    assert!(
        line.contains("warned-one"),
        "the tracker's warning does not say which torrent it is about: {line}"
    );
    d.stop("TERM");
}
