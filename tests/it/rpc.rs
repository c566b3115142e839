//! The daemon's Transmission RPC driven by a real client, `transmission-remote` (Debian
//! `transmission-cli`): each operation checked against btd's own status file, its state after
//! a restart and its data on disk.

use crate::support::daemon::{
    Daemon, DaemonHome, Payload, Snapshot, TorrentEntry, payload, within,
};
use crate::support::rpc_client::RpcClient;
use crate::support::{
    LtClient, RecordingTracker, SHORT, TempDir, TrackerReply, parse_rpc_serving,
    require_libtorrent, require_program, run_to_end, tree_digest,
};
use std::net::SocketAddr;
use std::process::Command;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A daemon with its RPC (the test homes serve it on their own loopback address, a free
/// port), optionally with credentials.
fn rpc_home(label: &str, auth: Option<(&str, &str)>) -> DaemonHome {
    let mut home = DaemonHome::new(label);
    if let Some((user, pass)) = auth {
        home.set("rpc", "username", user)
            .set("rpc", "password", pass);
    }
    home
}

/// Where the daemon's RPC answers, from its `rpc serving HTTP on ADDR` line.
fn rpc_addr(d: &mut Daemon) -> SocketAddr {
    d.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving)
}

/// Runs `transmission-remote ADDR ARGS...`; returns (success, stdout + stderr).
fn remote(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    require_program("transmission-remote", "transmission-cli");
    let mut cmd = Command::new("transmission-remote");
    cmd.arg(addr.to_string()).args(args);
    let out = run_to_end("transmission-remote", cmd, SHORT);
    let text = format!("{}{}", out.stdout, out.stderr);
    (out.status.success() && !text.contains("Error"), text)
}

fn ok(addr: SocketAddr, args: &[&str]) -> String {
    let (success, text) = remote(addr, args);
    assert!(success, "transmission-remote {args:?} failed: {text}");
    text
}

fn state(d: &Daemon, hash: &str) -> Option<String> {
    d.snapshot()
        .and_then(|s| s.status.torrent(hash).map(|t| t.state.clone()))
}

fn wait_state(d: &mut Daemon, hash: &str, want: &str) {
    let deadline = within(SHORT);
    while state(d, hash).as_deref() != Some(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "torrent {hash} not {want} within {SHORT:?}: {:?}",
            state(d, hash)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn seed_payload(work: &TempDir, name: &str) -> Payload {
    payload(work, "data", name, MIB, 32 * KIB, &[])
}

#[test]
fn transmission_remote_adds_lists_pauses_across_a_restart_resumes_and_removes() {
    let work = TempDir::new("rpc-remote");
    let p = seed_payload(&work, "rpc-remote");
    let home = rpc_home("rpc-remote", None);
    home.write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);

    // Added from a file, into the directory that holds its data: it checks and seeds.
    let dir = p.dir.display().to_string();
    let torrent = p.torrent.display().to_string();
    ok(addr, &["-a", &torrent, "-w", &dir]);
    wait_state(&mut d, &p.info_hash, "seeding");
    let list = ok(addr, &["-l"]);
    let row = list
        .lines()
        .find(|l| l.contains("rpc-remote"))
        .unwrap_or_else(|| panic!("no row for the torrent: {list}"));
    assert!(row.contains("100%"), "{list}");
    let info = ok(addr, &["-t", "1", "-i"]);
    assert!(info.contains(&p.info_hash), "{info}");
    let session = ok(addr, &["-si"]);
    assert!(session.contains("btd"), "{session}");

    // Paused over the RPC, it stays paused across a restart, and is still there.
    ok(addr, &["-t", "1", "-S"]);
    wait_state(&mut d, &p.info_hash, "paused");
    d.stop("TERM");
    drop(d);
    let mut d = home.start("btd daemon (restarted)");
    let addr = rpc_addr(&mut d);
    wait_state(&mut d, &p.info_hash, "paused");
    let list = ok(addr, &["-l"]);
    assert!(
        list.lines()
            .any(|l| l.contains("rpc-remote") && l.contains("Stopped")),
        "{list}"
    );
    ok(addr, &["-t", &p.info_hash, "-s"]);
    wait_state(&mut d, &p.info_hash, "seeding");

    // Removed: gone from the daemon, data kept.
    ok(addr, &["-t", &p.info_hash, "-r"]);
    let deadline = within(SHORT);
    while state(&d, &p.info_hash).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "still listed after -r"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(p.data().join("data.bin").exists(), "-r deleted the data");

    // Added again and removed with its data: its files and directory go, nothing else.
    let neighbour = p.dir.join("keep.txt");
    std::fs::write(&neighbour, "not the torrent's").expect("write a neighbour file");
    ok(addr, &["-a", &torrent, "-w", &dir]);
    wait_state(&mut d, &p.info_hash, "seeding");
    ok(addr, &["-t", &p.info_hash, "--remove-and-delete"]);
    let deadline = within(SHORT);
    while p.data().exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "--remove-and-delete left {}",
            p.data().display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        neighbour.exists(),
        "a file that is not the torrent's was deleted"
    );
    d.stop("TERM");
}

#[test]
fn the_rpc_asks_for_credentials_when_they_are_set_and_refuses_wrong_ones() {
    let work = TempDir::new("rpc-auth");
    let p = seed_payload(&work, "rpc-auth");
    let mut home = rpc_home("rpc-auth", Some(("admin", "s3cret")));
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);
    d.wait_seeding(&p.info_hash, SHORT);

    let (success, text) = remote(addr, &["-l"]);
    assert!(!success, "listed without credentials: {text}");
    let (success, text) = remote(addr, &["--auth", "admin:wrong", "-l"]);
    assert!(!success, "listed with a wrong password: {text}");
    let list = ok(addr, &["--auth", "admin:s3cret", "-l"]);
    assert!(list.contains("rpc-auth"), "{list}");
    assert!(
        !d.log_lines().iter().any(|l| l.contains("s3cret")),
        "the password went into the log"
    );

    // A torrent of a [[torrent]] entry is not removed over the RPC: the answer says why.
    let (success, text) = remote(addr, &["--auth", "admin:s3cret", "-t", "1", "-r"]);
    assert!(!success, "a config torrent was removed: {text}");
    assert!(text.contains("[[torrent]]"), "{text}");
    assert!(state(&d, &p.info_hash).is_some(), "it went anyway");
    d.stop("TERM");
}

#[test]
fn a_torrents_own_ratio_limit_set_over_the_rpc_finishes_it_and_unlimited_seeds_it_again() {
    let work = TempDir::new("rpc-set");
    let p = seed_payload(&work, "rpc-set");
    let mut home = rpc_home("rpc-set", None);
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);
    d.wait_seeding(&p.info_hash, SHORT);

    // Its own limit of 0: done at once (as Transmission means it), with the limit in the log.
    ok(addr, &["-t", "1", "-sr", "0"]);
    wait_state(&mut d, &p.info_hash, "finished");
    d.wait_log_contains(0, SHORT, "torrent rpc-set: ratio limit reached");
    let info = ok(addr, &["-t", "1", "-i"]);
    assert!(info.contains("Ratio Limit: 0.0\n"), "{info}");

    // No limit for it: it seeds again, and stays so across a restart.
    ok(addr, &["-t", "1", "-SR", "-pr", "7"]);
    wait_state(&mut d, &p.info_hash, "seeding");
    d.stop("TERM");
    drop(d);
    let mut d = home.start("btd daemon (restarted)");
    let addr = rpc_addr(&mut d);
    d.wait_seeding(&p.info_hash, SHORT);
    let info = ok(addr, &["-t", "1", "-i"]);
    assert!(info.contains("Ratio Limit: Unlimited"), "{info}");
    assert!(info.contains("Peer limit: 7"), "{info}");

    // Back to the session's limit (none here): still seeding.
    ok(addr, &["-t", "1", "-srd"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(state(&d, &p.info_hash).as_deref(), Some("seeding"));
    d.stop("TERM");
}

#[test]
fn session_set_speed_limits_apply_survive_a_restart_and_yield_to_a_changed_config_file() {
    let mut home = rpc_home("rpc-session", None);
    home.write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);
    let limits = |addr| {
        let si = ok(addr, &["-si"]);
        let line = |what: &str| {
            si.lines()
                .find(|l| l.contains(what))
                .unwrap_or_else(|| panic!("no {what:?} in {si}"))
                .trim()
                .to_owned()
        };
        (line("Download speed limit"), line("Upload speed limit"))
    };
    let (down, up) = limits(addr);
    assert!(
        down.contains("Unlimited") && up.contains("Unlimited"),
        "{down} / {up}"
    );

    ok(addr, &["-d", "300", "-u", "40"]);
    let (down, up) = limits(addr);
    assert!(down.contains("300 kB/s"), "{down}");
    assert!(up.contains("40 kB/s"), "{up}");
    d.wait_log_contains(0, SHORT, "session-set over the RPC: speed-limit-down = 300");

    // Kept across a restart; the config file was not rewritten.
    let text = home.config_text();
    d.stop("TERM");
    drop(d);
    assert_eq!(std::fs::read_to_string(home.config_path()).ok(), Some(text));
    let mut d = home.start("btd daemon (restarted)");
    let addr = rpc_addr(&mut d);
    let (down, up) = limits(addr);
    assert!(
        down.contains("300 kB/s") && up.contains("40 kB/s"),
        "{down} / {up}"
    );

    // The admin edits the file's download rate: the file wins; the upload limit stays.
    home.set("rates", "download_kib_per_sec", 2000)
        .write_config();
    let mark = d.log_mark();
    d.reload();
    d.wait_log_contains(mark, SHORT, "speed-limit-down");
    let (down, up) = limits(addr);
    // 2048 KiB/s from the file, shown in Transmission's units.
    assert!(down.contains("(Enabled limit: 2.05 MB/s"), "{down}");
    assert!(up.contains("40 kB/s"), "{up}");

    // What btd does not do is refused by name, not silently taken.
    let (success, text) = remote(addr, &["--alt-speed"]);
    assert!(!success && text.contains("alt-speed-enabled"), "{text}");
    d.stop("TERM");
}

#[test]
fn a_reannounce_over_the_rpc_announces_again_once_min_interval_allows() {
    let work = TempDir::new("rpc-reannounce");
    let tracker = RecordingTracker::with_reply(TrackerReply {
        min_interval: Some(5),
        ..TrackerReply::default()
    });
    let p = payload(
        &work,
        "data",
        "rpc-reannounce",
        MIB,
        32 * KIB,
        &[tracker.announce_url()],
    );
    let mut home = rpc_home("rpc-reannounce", None);
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);
    d.wait_seeding(&p.info_hash, SHORT);
    tracker.wait_event(&p.info_hash, Some("started"), 1, SHORT);
    // Without asking, the next announce is 30 minutes away.
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(tracker.announces_for(&p.info_hash).len(), 1);
    ok(addr, &["-t", "1", "--reannounce"]);
    tracker.wait_event(&p.info_hash, None, 1, SHORT);
    d.stop("TERM");
}

#[test]
fn a_torrents_own_upload_limit_set_over_the_rpc_holds_its_uploads_to_it() {
    require_libtorrent();
    let work = TempDir::new("rpc-rate");
    let p = payload(&work, "data", "rpc-rate", 8 * MIB, 64 * KIB, &[]);
    let mut home = rpc_home("rpc-rate", None);
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);
    d.wait_seeding(&p.info_hash, SHORT);

    // 200 kB/s for this torrent alone (the session has no limit).
    ok(addr, &["-t", "1", "-u", "200"]);
    let info = ok(addr, &["-t", "1", "-i"]);
    assert!(info.contains("200 kB/s"), "{info}");
    let out = work.subdir("leecher");
    let _lt = LtClient::leech_from("libtorrent leecher", &p.torrent, &out, d.addr());
    let uploaded = |s: &Snapshot| {
        s.status
            .torrent(&p.info_hash)
            .map_or(0, |t| t.uploaded_bytes)
    };
    let first = d.wait_snapshot(SHORT, "uploads under way", |s| uploaded(s) > 0);
    let mut last = first.clone();
    for _ in 0..4 {
        last = d.next_snapshot(&last, SHORT);
    }
    let secs = last
        .written
        .duration_since(first.written)
        .expect("snapshots in order")
        .as_secs_f64();
    let rate = (uploaded(&last) - uploaded(&first)) as f64 / secs;
    // The limit, with room for one burst of the bucket; unlimited, loopback moves the whole
    // 8 MiB in well under a second.
    assert!(
        rate < 300_000.0,
        "{rate:.0} B/s over {secs:.1} s with a 200 kB/s limit"
    );
    assert!(uploaded(&last) < 8 * MIB, "the whole torrent went up");

    // The upload is activity: its time is recent, and the torrent never downloaded.
    let mut rpc = RpcClient::new(addr);
    let t = &rpc.torrents(
        serde_json::json!([1]),
        &["activityDate", "secondsDownloading"],
    )[0];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let active = t["activityDate"].as_u64().expect("a number");
    assert!(now - active < 10, "activityDate {active}, now {now}");
    assert_eq!(t["secondsDownloading"], 0);
    d.stop("TERM");
}

#[test]
fn set_location_with_move_moves_the_data_and_seeds_from_there_without_hashing_again() {
    let work = TempDir::new("rpc-move");
    let p = seed_payload(&work, "rpc-move");
    let digest = tree_digest(&p.data());
    let mut home = rpc_home("rpc-move", None);
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);
    d.wait_seeding(&p.info_hash, SHORT);

    let new_dir = work.subdir("moved-here");
    let mark = d.log_mark();
    ok(addr, &["-t", "1", "--move", &new_dir.display().to_string()]);
    d.wait_log_contains(mark, SHORT, "torrent rpc-move: data moved to");
    let moved_to = new_dir.to_str().expect("UTF-8").to_owned();
    d.wait_snapshot(SHORT, "seeding from the new directory", |s| {
        s.status.torrent(&p.info_hash).is_some_and(|t| {
            t.state == "seeding" && t.download_dir.as_deref() == Some(moved_to.as_str())
        })
    });
    assert_eq!(
        tree_digest(&new_dir.join("rpc-move")),
        digest,
        "moved data differs"
    );
    assert!(!p.data().exists(), "the old copy is still there");
    let line = d.wait_log_contains(mark, SHORT, "torrent rpc-move: resume data");
    assert!(
        line.contains("matches"),
        "hashed again after the move: {line}"
    );

    // --find: only where to look; it is checked there and found complete.
    let mark = d.log_mark();
    ok(addr, &["-t", "1", "--find", &p.dir.display().to_string()]);
    d.wait_log_contains(mark, SHORT, "checking data");
    let deadline = within(SHORT);
    loop {
        let s = d.snapshot().expect("a status file");
        let t = s.status.torrent(&p.info_hash).expect("the torrent");
        if t.state == "downloading" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not downloading: {}",
            s.text
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    d.stop("TERM");
}

#[test]
fn rename_path_renames_on_disk_survives_a_restart_without_hashing_and_serves_peers() {
    let work = TempDir::new("rpc-rename");
    let p = seed_payload(&work, "rpc-rename");
    let big = crate::support::sha1_file(&p.data().join("data.bin")).expect("hash data.bin");
    let mut home = rpc_home("rpc-rename", None);
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);
    d.wait_seeding(&p.info_hash, SHORT);

    // A file of the seeding torrent, with the Python library transmission-rpc
    // (transmission-remote 3.00 has no --rename; 4.0 added it): its run stops, the file is
    // renamed, and it seeds again from its resume data.
    let mark = d.log_mark();
    let renamed = crate::rpc_clients::trpc(
        addr,
        &["rename", &p.info_hash, "rpc-rename/data.bin", "movie.bin"],
    );
    assert_eq!(
        renamed,
        serde_json::json!({"path": "rpc-rename/data.bin", "name": "movie.bin"})
    );
    d.wait_log_contains(
        mark,
        SHORT,
        "renamed rpc-rename/data.bin to rpc-rename/movie.bin",
    );
    let line = d.wait_log_contains(mark, SHORT, "torrent rpc-rename: resume data");
    assert!(
        line.contains("matches"),
        "hashed again after the rename: {line}"
    );
    d.wait_seeding(&p.info_hash, SHORT);
    let renamed_big = p.data().join("movie.bin");
    assert_eq!(
        crate::support::sha1_file(&renamed_big).ok(),
        Some(big.clone())
    );
    assert!(
        !p.data().join("data.bin").exists(),
        "the old name is still there"
    );

    // The top, over the RPC itself: the torrent's name follows.
    let mut rpc = RpcClient::new(addr);
    let answer = rpc.ok(
        "torrent-rename-path",
        serde_json::json!({"ids": [1], "path": "rpc-rename", "name": "top"}),
    );
    assert_eq!(
        serde_json::Value::Object(answer),
        serde_json::json!({"path": "rpc-rename", "name": "top", "id": 1})
    );
    let top = p.dir.join("top");
    let deadline = within(SHORT);
    while !top.join("movie.bin").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "top not renamed on disk"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    d.wait_seeding(&p.info_hash, SHORT);
    let files = ok(addr, &["-t", "1", "-f"]);
    assert!(
        files.contains("top/movie.bin") && files.contains("top/notes/readme.txt"),
        "{files}"
    );

    // Refusals, each saying why; nothing changes.
    std::fs::write(top.join("notes/stray.txt"), "not the torrent's").expect("a stray file");
    for (path, name, says) in [
        ("top/movie.bin", "a/b", "contains a separator"),
        ("top/movie.bin", "..", "path traversal"),
        ("top/movie.bin", ".", "path component `.`"),
        ("top/movie.bin", "", "empty path component"),
        ("top/nothing.bin", "x", "neither a file nor a directory"),
        ("rpc-rename/data.bin", "x", "neither a file nor a directory"),
        (
            "top/movie.bin",
            "notes",
            "\"top/notes\" already exists in this torrent",
        ),
        (
            "top/notes/readme.txt",
            "stray.txt",
            "already exists on disk",
        ),
    ] {
        let result = rpc.result(
            "torrent-rename-path",
            serde_json::json!({"ids": [1], "path": path, "name": name}),
        );
        assert!(result.contains(says), "{path} -> {name:?}: {result}");
    }
    let result = rpc.result(
        "torrent-rename-path",
        serde_json::json!({"ids": [], "path": "top", "name": "x"}),
    );
    assert!(result.contains("exactly one torrent"), "{result}");
    assert!(top.join("notes/readme.txt").exists() && top.join("notes/stray.txt").exists());

    // A restart keeps the names, and the torrent seeds without hashing again.
    d.stop("TERM");
    drop(d);
    let mut d = home.start("btd daemon (restarted)");
    let addr = rpc_addr(&mut d);
    let line = d.wait_log_contains(0, SHORT, "torrent top: resume data");
    assert!(
        line.contains("matches"),
        "hashed again after the restart: {line}"
    );
    d.wait_seeding(&p.info_hash, SHORT);
    let mut rpc = RpcClient::new(addr);
    let t = &rpc.torrents(serde_json::json!([1]), &["name", "files"])[0];
    assert_eq!(t["name"], "top");
    let names: Vec<&str> = t["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["top/movie.bin", "top/notes/readme.txt"]);

    // A leecher (which knows the torrent's own names) gets the data from the renamed files.
    let out = work.subdir("leecher");
    let mut lt = LtClient::leech_from("libtorrent leecher", &p.torrent, &out, d.addr());
    lt.wait_complete(crate::support::TRANSFER);
    assert_eq!(
        crate::support::sha1_file(&out.join("rpc-rename/data.bin")).ok(),
        Some(big)
    );
    d.stop("TERM");
}

#[test]
fn torrent_get_peers_shows_a_connected_libtorrent_leecher_as_transmission_remote_prints_it() {
    require_libtorrent();
    let work = TempDir::new("rpc-peers");
    let p = payload(&work, "data", "rpc-peers", 4 * MIB, 64 * KIB, &[]);
    let mut home = rpc_home("rpc-peers", None);
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);
    d.wait_seeding(&p.info_hash, SHORT);
    let mut rpc = RpcClient::new(addr);
    let peers = |rpc: &mut RpcClient| {
        rpc.torrents(serde_json::json!([1]), &["peers", "peersFrom"])[0].clone()
    };
    assert_eq!(peers(&mut rpc)["peers"], serde_json::json!([]));

    // 100 kB/s for this torrent: the 4 MiB take the leecher about 40 s, so it stays connected.
    ok(addr, &["-t", "1", "-u", "100"]);
    let ip = crate::support::next_ip();
    let out = work.subdir("leecher");
    let _lt = LtClient::leech(
        "libtorrent leecher",
        &crate::support::PeerSpec {
            torrent: &p.torrent,
            dir: &out,
            ip,
            peers: vec![d.addr()],
            announce: false,
        },
    );
    let deadline = within(SHORT);
    let t = loop {
        let t = peers(&mut rpc);
        let uploading = t["peers"]
            .as_array()
            .and_then(|l| l.first())
            .is_some_and(|p| p["progress"].as_f64() > Some(0.0) && p["rateToPeer"] != 0);
        if uploading {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leecher in peers: {t:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let list = t["peers"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{list:?}");
    let peer = &list[0];
    assert_eq!(peer["address"], ip.to_string());
    assert!(peer["port"].as_u64().is_some_and(|port| port > 0), "{peer}");
    let progress = peer["progress"].as_f64().expect("a number");
    assert!(progress > 0.0 && progress < 1.0, "{peer}");
    let client = peer["clientName"].as_str().expect("a string");
    assert!(client.to_lowercase().contains("libtorrent"), "{peer}");
    assert_eq!(peer["isIncoming"], true, "{peer}");
    assert_eq!(peer["isUploadingTo"], true, "{peer}");
    assert_eq!(peer["peerIsInterested"], true, "{peer}");
    assert_eq!(peer["peerIsChoked"], false, "{peer}");
    assert_eq!(peer["isDownloadingFrom"], false, "{peer}");
    let flags = peer["flagStr"].as_str().expect("a string");
    assert!(flags.contains('U') && flags.contains('I'), "{peer}");
    assert_eq!(t["peersFrom"]["fromIncoming"], 1, "{t:?}");

    // transmission-remote's peer table: its address, its progress, its client.
    let table = ok(addr, &["-t", "1", "-pi"]);
    let row = table
        .lines()
        .find(|l| l.starts_with(&ip.to_string()))
        .unwrap_or_else(|| panic!("no row for {ip}: {table}"));
    assert!(
        row.contains("UI") && row.to_lowercase().contains("libtorrent"),
        "{row}"
    );
    d.stop("TERM");
}

/// The idle limit's unit over the RPC and in the config is the minute, so this test waits one
/// (about 65 s in all): the shortest honest run of the real rule.
#[test]
fn an_idle_seeding_limit_finishes_a_torrent_nobody_downloads_and_unlimited_keeps_seeding() {
    let work = TempDir::new("rpc-idle");
    let idle = seed_payload(&work, "rpc-idle");
    let busy = seed_payload(&work, "rpc-idle-unlimited");
    let mut home = rpc_home("rpc-idle", None);
    home.set("seeding", "idle_limit_mins", 1)
        .add_torrent(TorrentEntry::new(&idle.torrent).download_dir(&idle.dir))
        .add_torrent(TorrentEntry::new(&busy.torrent).download_dir(&busy.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);
    d.wait_seeding(&idle.info_hash, SHORT);
    let seeding_seen = std::time::Instant::now();
    d.wait_seeding(&busy.info_hash, SHORT);
    let mut rpc = RpcClient::new(addr);
    let session = rpc.ok(
        "session-get",
        serde_json::json!({"fields": ["idle-seeding-limit", "idle-seeding-limit-enabled"]}),
    );
    assert_eq!(
        serde_json::Value::Object(session),
        serde_json::json!({"idle-seeding-limit": 1, "idle-seeding-limit-enabled": true})
    );
    rpc.ok(
        "torrent-set",
        serde_json::json!({"ids": [2], "seedIdleMode": 2, "seedIdleLimit": 5}),
    );
    let limits = rpc.torrents(
        serde_json::json!([1, 2]),
        &["id", "seedIdleMode", "seedIdleLimit"],
    );
    assert_eq!(
        serde_json::Value::from(limits),
        serde_json::json!([
            {"id": 1, "seedIdleMode": 0, "seedIdleLimit": 1},
            {"id": 2, "seedIdleMode": 2, "seedIdleLimit": 1}
        ])
    );

    // A minute of seeding without an upload, counted from when it started seeding.
    let deadline = within(std::time::Duration::from_secs(80));
    while state(&d, &idle.info_hash).as_deref() != Some("finished") {
        assert!(
            std::time::Instant::now() < deadline,
            "not finished by its idle limit: {:?}",
            state(&d, &idle.info_hash)
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let waited = seeding_seen.elapsed().as_secs_f64();
    assert!(
        waited > 55.0,
        "finished after {waited:.1} s, the limit is 60 s"
    );
    d.wait_log_contains(0, SHORT, "torrent rpc-idle: idle seeding limit reached");
    assert_eq!(state(&d, &busy.info_hash).as_deref(), Some("seeding"));

    // The idle time is in its record: after a restart it stays finished, the other seeds.
    d.stop("TERM");
    drop(d);
    let mut d = home.start("btd daemon (restarted)");
    d.wait_log_contains(0, SHORT, "torrent rpc-idle: idle seeding limit reached");
    d.wait_seeding(&busy.info_hash, SHORT);
    assert_eq!(state(&d, &idle.info_hash).as_deref(), Some("finished"));
    d.stop("TERM");
}

/// A daemon with its RPC and no torrents, and where the RPC answers.
fn bare_rpc_daemon(label: &str) -> (DaemonHome, Daemon, SocketAddr) {
    let home = rpc_home(label, None);
    home.write_config();
    let mut d = home.start("btd daemon");
    let addr = rpc_addr(&mut d);
    (home, d, addr)
}

#[test]
fn alternative_speeds_are_refused_saying_so_and_their_off_values_are_taken() {
    let (_home, mut d, addr) = bare_rpc_daemon("rpc-alt-speed");
    // Turtle mode with transmission-remote: the daemon's refusal is what it prints.
    let (success, text) = remote(addr, &["--alt-speed"]);
    assert!(
        !success && text.contains("alt-speed-enabled: not supported"),
        "{text}"
    );
    let (success, text) = remote(addr, &["--alt-speed-downlimit", "50"]);
    assert!(
        !success && text.contains("alt-speed-down: not supported"),
        "{text}"
    );
    let mut rpc = RpcClient::new(addr);
    let result = rpc.result(
        "session-set",
        serde_json::json!({"alt-speed-up": 20, "alt-speed-time-enabled": true}),
    );
    assert!(
        result.contains("alt-speed-up: not supported")
            && result.contains("alt-speed-time-enabled: not supported"),
        "{result}"
    );
    // What session-get shows (off, nothing) is true, so setting it is no refusal.
    ok(addr, &["--no-alt-speed"]);
    let session = rpc.ok(
        "session-get",
        serde_json::json!({"fields": ["alt-speed-enabled", "alt-speed-down", "alt-speed-up"]}),
    );
    assert_eq!(
        serde_json::Value::Object(session),
        serde_json::json!({"alt-speed-enabled": false, "alt-speed-down": 0, "alt-speed-up": 0})
    );
    d.stop("TERM");
}

#[test]
fn blocklist_update_is_refused_saying_btd_has_no_blocklist() {
    let (_home, mut d, addr) = bare_rpc_daemon("rpc-blocklist");
    let (success, text) = remote(addr, &["--blocklist-update"]);
    assert!(!success && text.contains("btd has no blocklist"), "{text}");
    d.stop("TERM");
}

#[test]
fn port_test_is_refused_saying_btd_cannot_tell() {
    let (_home, mut d, addr) = bare_rpc_daemon("rpc-port-test");
    let (success, text) = remote(addr, &["--port-test"]);
    assert!(
        !success && text.contains("port-test: btd does not ask"),
        "{text}"
    );
    d.stop("TERM");
}

#[test]
fn start_paused_adds_torrents_paused_across_a_restart_until_turned_off() {
    let work = TempDir::new("rpc-start-paused");
    let first = seed_payload(&work, "rpc-start-paused-a");
    let second = seed_payload(&work, "rpc-start-paused-b");
    let (home, mut d, addr) = bare_rpc_daemon("rpc-start-paused");
    // transmission-remote --start-paused is session-set start-added-torrents false.
    ok(addr, &["--start-paused"]);
    let dir = first.dir.display().to_string();
    ok(
        addr,
        &["-a", &first.torrent.display().to_string(), "-w", &dir],
    );
    wait_state(&mut d, &first.info_hash, "paused");
    // The setting is kept across a restart, and the torrent stays paused.
    d.stop("TERM");
    let mut d = home.start("btd daemon again");
    let addr = rpc_addr(&mut d);
    wait_state(&mut d, &first.info_hash, "paused");
    let session = ok(addr, &["-si"]);
    assert!(
        std::fs::read_to_string(home.state_dir().join("session.json"))
            .is_ok_and(|s| s.contains("start-added-torrents")),
        "{session}"
    );
    // Turned off again: the next one starts at once.
    ok(addr, &["--no-start-paused"]);
    ok(
        addr,
        &["-a", &second.torrent.display().to_string(), "-w", &dir],
    );
    wait_state(&mut d, &second.info_hash, "seeding");
    assert_eq!(state(&d, &first.info_hash).as_deref(), Some("paused"));
    d.stop("TERM");
}
