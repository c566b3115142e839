//! `btd daemon` reloads: SIGHUP re-reads the config (a torrent added starts, one removed stops
//! and keeps its data, a new rate limit holds for a running transfer, a broken config changes
//! nothing), reopens the log file, and leaves the daemon running; `btd add` and `btd remove`
//! (which send SIGHUP) go through the watch directory.
//!
//! Every daemon has its own directory, loopback address and port 0 (`support::daemon`).

use crate::support::daemon::{
    DaemonHome, LtSeeder, Payload, TorrentEntry, files_in, is_table_header, measure_download_rate,
    payload, within,
};
use crate::support::{
    SHORT, TRANSFER, TempDir, assert_same_files, test_seed, tree_digest, wait_until,
};
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

#[test]
fn hup_starts_an_added_torrent_and_stops_a_removed_one_keeping_its_data() {
    let work = TempDir::new("daemon-hup-add");
    let p = payload(&work, "seed", "hup-added", 2 * MIB + 77, 32 * KIB, &[]);
    let lt = LtSeeder::start("libtorrent seeder", &[&p.torrent], &p.dir, 0, false);
    let mut home = DaemonHome::new("daemon-hup-add");
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "a status with no torrent", |s| s.torrents.is_empty());

    home.add_torrent(TorrentEntry::new(&p.torrent).peers(&[lt.addr]))
        .write_config();
    d.reload();
    let t = d.wait_seeding(&p.info_hash, TRANSFER);
    assert_eq!(t.source, "config");
    let out = home.download_dir().join("hup-added");
    assert_same_files(&p.data(), &out);

    home.remove_torrent(&p.torrent).write_config();
    d.reload();
    d.wait_status(SHORT, "the removed torrent gone from the status", |s| {
        s.torrent(&p.info_hash).is_none()
    });
    d.proc.assert_running();
    assert_same_files(&p.data(), &out);
    d.stop("TERM");
}

#[test]
fn hup_lowers_the_download_rate_of_a_running_transfer_to_the_new_limit() {
    const LIMIT_KIB: i64 = 1024;
    let limit = (LIMIT_KIB as u64 * KIB) as f64;
    let work = TempDir::new("daemon-rate");
    let p = payload(&work, "seed", "rate-limited", 32 * MIB, 64 * KIB, &[]);
    // The seeder sends 4 MiB/s at most, so the transfer lasts long enough to be measured.
    let lt = LtSeeder::start(
        "libtorrent seeder (4 MiB/s)",
        &[&p.torrent],
        &p.dir,
        4 * MIB,
        false,
    );
    let mut home = DaemonHome::new("daemon-rate");
    home.add_torrent(TorrentEntry::new(&p.torrent).peers(&[lt.addr]))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_status(TRANSFER, "the download under way", |s| {
        s.torrent(&p.info_hash)
            .is_some_and(|t| t.downloaded_bytes > 0)
    });

    let (before, _) = measure_download_rate(&mut d, &[&p.info_hash], Duration::from_millis(1500));
    eprintln!("unlimited: {before:.0} B/s");
    assert!(
        before > 2.5 * limit,
        "unlimited, btd downloaded at {before:.0} B/s, not well above {limit} B/s (the seeder \
         sends up to 4 MiB/s)"
    );

    home.set("rates", "download_kib_per_sec", LIMIT_KIB)
        .write_config();
    d.reload();
    // Let what was requested before the reload drain: two status writes.
    let s = d.snapshot().expect("status");
    let s = d.next_snapshot(&s, SHORT);
    d.next_snapshot(&s, SHORT);
    let (after, last) = measure_download_rate(&mut d, &[&p.info_hash], Duration::from_secs(3));
    eprintln!("limited to {LIMIT_KIB} KiB/s: {after:.0} B/s");
    assert!(
        after <= 1.5 * limit,
        "after the limit of {LIMIT_KIB} KiB/s came in by SIGHUP, btd still downloaded at \
         {after:.0} B/s (unlimited: {before:.0} B/s)"
    );
    assert!(
        after >= 0.25 * limit,
        "with a limit of {LIMIT_KIB} KiB/s btd downloaded at only {after:.0} B/s: {}",
        last.text
    );
    let peers = last.status.torrent(&p.info_hash).expect("torrent").peers;
    assert!(peers >= 1, "the reload dropped the seeder: {}", last.text);

    // Unlimited again: the download completes, right.
    home.set("rates", "download_kib_per_sec", 0).write_config();
    d.reload();
    d.wait_seeding(&p.info_hash, TRANSFER);
    assert_same_files(&p.data(), &home.download_dir().join("rate-limited"));
    d.stop("TERM");
}

#[test]
fn hup_with_a_broken_config_keeps_the_daemon_running_on_the_old_one() {
    let work = TempDir::new("daemon-hup-broken");
    let a = payload(&work, "seed", "kept", 300 * KIB, 16 * KIB, &[]);
    let b = payload(&work, "seed", "later", 200 * KIB, 16 * KIB, &[]);
    let mut home = DaemonHome::new("daemon-hup-broken");
    home.add_torrent(TorrentEntry::new(&a.torrent).download_dir(&a.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&a.info_hash, SHORT);

    // Both broken configs also drop torrent `kept`: were any of them applied, it would go.
    let mut without_a = DaemonHome::new("daemon-hup-broken-text");
    without_a.set("network", "listen_address", home.ip.to_string());
    let mut syntax = without_a.config_text();
    syntax.push_str("\n[peers\nmax_global = 5\n");
    without_a.set("disk", "hash_threads", 0);
    let impossible = without_a.config_text();
    for (what, text) in [
        ("a TOML syntax error", syntax),
        ("hash_threads = 0", impossible),
    ] {
        home.write_config_text(&text);
        let mark = d.log_mark();
        d.signal("HUP");
        let line = d.wait_log_contains(mark, SHORT, "config reload failed");
        assert!(
            line.contains("btd.toml"),
            "{what}: the reload error does not name the file: {line}"
        );
        d.proc.assert_running();
        let s = d.snapshot().expect("status");
        let s = d.next_snapshot(&s, SHORT);
        let s = d.next_snapshot(&s, SHORT);
        assert!(
            s.status
                .torrent(&a.info_hash)
                .is_some_and(|t| t.state == "seeding"),
            "{what}: the failed reload changed the torrents: {}",
            s.text
        );
    }

    // A good config again: reloaded, with a new torrent and the old one.
    home.add_torrent(TorrentEntry::new(&b.torrent).download_dir(&b.dir))
        .write_config();
    d.reload();
    d.wait_seeding(&b.info_hash, SHORT);
    let s = d.wait_status(SHORT, "both torrents", |s| s.torrents.len() == 2);
    assert!(s.torrent(&a.info_hash).is_some(), "{s:?}");
    d.stop("TERM");
}

#[test]
fn btd_add_and_btd_remove_go_through_the_watch_dir_and_keep_the_data() {
    let mut home = DaemonHome::new("daemon-add");
    // Without an RPC, `btd add` and `btd remove` go through the watch directory
    // (tests/it/cli_rpc.rs covers the RPC route).
    home.set("rpc", "enabled", false).write_config();
    let work = TempDir::new("daemon-add-work");
    // The data is already in the daemon's download dir: the torrent seeds at once.
    let p = Payload::create(
        &home.download_dir(),
        "added-by-cli",
        &[
            ("added-by-cli/a.bin", 300 * KIB + 1),
            ("added-by-cli/b.bin", 7),
        ],
        test_seed("btd_add_and_btd_remove"),
        &work.join("added-by-cli.torrent"),
        16 * KIB,
        &[],
    );
    let digest = tree_digest(&p.data());
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "a status", |_| true);

    for key in [p.name.clone(), p.info_hash.clone()] {
        let out = home.cli(&["add".into(), p.torrent.clone().into()]);
        out.assert_success();
        let want = format!("added {} ({})", p.name, p.info_hash);
        assert!(
            out.stdout.contains(&want),
            "`btd add` did not say {want:?}: {}",
            out.description
        );
        let added: Vec<String> = files_in(&home.watch_dir())
            .into_iter()
            .filter(|f| f.ends_with(".added"))
            .collect();
        assert_eq!(
            added.len(),
            1,
            "watch dir: {:?}",
            files_in(&home.watch_dir())
        );
        let t = d.wait_seeding(&p.info_hash, SHORT);
        assert_ne!(t.source, "config", "{t:?}");

        let out = home.cli(&["remove".into(), key.clone().into()]);
        out.assert_success();
        let s = home.status().expect("status");
        assert!(
            s.torrent(&p.info_hash).is_none(),
            "`btd remove {key}` returned before the torrent left the status: {s:?}"
        );
        assert!(
            !files_in(&home.watch_dir())
                .iter()
                .any(|f| f.ends_with(".added")),
            "`btd remove {key}` left {:?}",
            files_in(&home.watch_dir())
        );
        assert_eq!(
            tree_digest(&p.data()),
            digest,
            "`btd remove` touched the data"
        );
        d.proc.assert_running();
    }

    // A file that is no torrent is refused, naming the file, and nothing is added.
    let garbage: PathBuf = work.join("garbage.torrent");
    fs::write(&garbage, b"not a torrent").expect("write garbage");
    let out = home.cli(&["add".into(), garbage.clone().into()]);
    assert!(!out.status.success(), "{}", out.description);
    assert!(
        out.stderr.contains(&garbage.display().to_string()),
        "the refusal does not name the file: {}",
        out.description
    );
    assert!(
        !files_in(&home.watch_dir())
            .iter()
            .any(|f| f.ends_with(".added")),
        "watch dir after adding garbage: {:?}",
        files_in(&home.watch_dir())
    );
    d.proc.assert_running();
    d.stop("TERM");
}

#[test]
fn hup_reopens_the_log_file_after_logrotate_moved_it() {
    let mut home = DaemonHome::new("daemon-logfile");
    home.set("log", "file", "btd.log").write_config();
    let mut d = home.start("btd daemon");
    let log = home.path().join("btd.log");
    let rotated = home.path().join("btd.log.1");
    fs::rename(&log, &rotated).expect("rotate the log");
    d.signal("HUP");
    wait_until(within(SHORT), "a new log file after SIGHUP", || {
        log.exists()
    });
    d.signal("USR1");
    d.wait_log_after(0, SHORT, "the status table in the new log file", |l| {
        is_table_header(l).then_some(())
    });
    let old = fs::read_to_string(&rotated).expect("read the rotated log");
    assert!(
        old.contains("listening on"),
        "the rotated log lacks the start: {old}"
    );
    assert!(
        !old.lines().any(is_table_header),
        "the daemon still writes to the rotated file: {old}"
    );
    d.stop("TERM");
}

#[test]
fn sighup_reloads_the_config_and_leaves_the_daemon_running() {
    let home = DaemonHome::new("daemon-hup");
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "a status", |_| true);
    for _ in 0..2 {
        d.reload();
        let s = d.snapshot().expect("status");
        d.next_snapshot(&s, SHORT);
        d.proc.assert_running();
    }
    assert!(
        !d.log_contains("daemon stopping"),
        "SIGHUP began a stop of the daemon"
    );
    d.stop("TERM");
}
