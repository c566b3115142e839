//! `btd daemon` as a service: a config with a bad key, type or value is refused; torrents come
//! from `[[torrent]]` entries and the watch directory and download from libtorrent (found through
//! opentracker or given as peers); SIGUSR1 logs the status table; SIGTERM stops within 5 s with
//! resume data written, a second one at once; a restart resumes without downloading again and
//! checks data that changed (`kill -9` mid-download is in `faults`); one daemon per state directory;
//! `btd status`; queueing, pausing, the seeding ratio, and the global rate and peer limits.
//!
//! Every daemon has its own directory, loopback address and port 0 (`support::daemon`).

use crate::support::daemon::{
    DaemonHome, LtSeeder, Payload, Snapshot, Status, TorrentEntry, drop_into, is_table_header,
    measure_download_rate, payload, watch_renamed, within,
};
use crate::support::{
    LtClient, OpenTracker, SHORT, SilentTracker, TRANSFER, TempDir, assert_same_files, free_port,
    tree_digest, wait_until,
};
use std::ffi::OsString;
use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

#[test]
fn a_bad_config_is_refused_with_exit_2_naming_the_file_and_the_key() {
    // The base config of a daemon home with one key changed.
    let with = |section: &str, key: &str, value: toml::Value| {
        let mut h = DaemonHome::new("daemon-bad-config-text");
        h.set(section, key, value);
        h.config_text()
    };
    let good = DaemonHome::new("daemon-bad-config-text").config_text();
    let no_threads = with("disk", "hash_threads", 0.into());
    let threads_line = 1 + no_threads
        .lines()
        .position(|l| l.starts_with("hash_threads"))
        .expect("the config sets hash_threads");
    let threads_at = format!("line {threads_line}: disk.hash_threads: must be at least 1");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "an unknown key",
            with("network", "listen_prot", 6881.into()),
            vec!["listen_prot"],
        ),
        (
            "an unknown section",
            format!("{good}\n[netwrok]\nlisten_port = 1\n"),
            vec!["netwrok"],
        ),
        (
            "a wrong type",
            with("peers", "max_global", "many".into()),
            vec!["max_global"],
        ),
        (
            "a port out of range",
            with("network", "listen_port", 70_000.into()),
            vec!["listen_port"],
        ),
        ("no hash threads", no_threads, vec![&threads_at]),
        (
            "a listen address that is none",
            with("network", "listen_address", "x".into()),
            vec!["network.listen_address"],
        ),
        (
            "a TOML syntax error",
            format!("{good}\n[rates\ndownload_kib_per_sec = 1\n"),
            vec!["line "],
        ),
    ];

    for (what, text, needles) in cases {
        let home = DaemonHome::new("daemon-bad-config");
        home.write_config_text(&text);
        let t0 = Instant::now();
        let mut d = home.spawn(&format!("btd daemon with {what}"));
        let status = d.proc.wait_exit(SHORT);
        let took = t0.elapsed();
        let out = d.proc.output();
        assert_eq!(
            status.code(),
            Some(2),
            "{what}: want exit 2, got {status}; config:\n{text}\noutput:\n{out}"
        );
        assert!(
            took < Duration::from_secs(5),
            "{what}: took {took:?} to refuse the config"
        );
        let path = home.config_path().display().to_string();
        for needle in needles.iter().chain([&path.as_str()]) {
            assert!(
                out.contains(needle),
                "{what}: the message does not name {needle:?}:\n{out}\nconfig:\n{text}"
            );
        }
        assert!(
            !home.pid_file().exists(),
            "{what}: a refused start left {}",
            home.pid_file().display()
        );
    }

    // A config file that is not there.
    let home = DaemonHome::new("daemon-no-config");
    let missing = home.path().join("nowhere.toml");
    let out = crate::support::run_to_end(
        "btd daemon --config nowhere.toml",
        crate::support::Btd::command([
            OsString::from("daemon"),
            "--config".into(),
            missing.clone().into(),
        ]),
        SHORT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.description);
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "the message does not name the missing file: {}",
        out.description
    );
}

#[test]
fn a_torrent_dropped_into_the_watch_dir_downloads_from_a_libtorrent_seeder_via_opentracker() {
    let work = TempDir::new("daemon-watch");
    let port = free_port(Ipv4Addr::LOCALHOST);
    let p = payload(
        &work,
        "seed",
        "watched",
        3 * MIB + 5,
        32 * KIB,
        &[OpenTracker::url_for(port)],
    );
    let tracker = OpenTracker::start(port, &[&p.info_hash]);
    let _lt = LtSeeder::start("libtorrent seeder", &[&p.torrent], &p.dir, 0, true);
    // opentracker's interval is 30 minutes: the seeder must be known before btd's first announce.
    wait_until(within(SHORT), "opentracker to count the seeder", || {
        tracker.seeders(&p.info_hash) >= 1
    });

    let home = DaemonHome::new("daemon-watch");
    let mut d = home.start("btd daemon");
    let dropped = drop_into(&home.watch_dir(), "watched.torrent", &p.torrent);
    let added = watch_renamed(&dropped, "added");
    wait_until(within(SHORT), "the watch file renamed *.added", || {
        added.exists() && !dropped.exists()
    });

    let t = d.wait_seeding(&p.info_hash, TRANSFER);
    assert_eq!(t.name, "watched");
    assert_ne!(t.source, "config", "a watch-dir torrent: {t:?}");
    assert!(t.source.contains("watched.torrent"), "source: {t:?}");
    assert_eq!(t.size_bytes, 3 * MIB + 5 + 1000);
    d.wait_log_contains(0, SHORT, "torrent watched: download complete");
    assert_same_files(&p.data(), &home.download_dir().join("watched"));

    // SIGTERM announces `stopped`: opentracker forgets btd and keeps the seeder.
    wait_until(within(SHORT), "opentracker to count btd too", || {
        tracker.seeders(&p.info_hash) + tracker.leechers(&p.info_hash) >= 2
    });
    // The swarm as opentracker counts it reaches the status file (and `btd status`).
    d.wait_status(SHORT, "swarm counts from the tracker", |s| {
        s.torrent(&p.info_hash)
            .and_then(|t| t.swarm)
            .is_some_and(|sw| sw.seeders >= 1)
    });
    d.stop("TERM");
    wait_until(
        within(SHORT),
        "opentracker to drop btd after its stopped announce",
        || tracker.seeders(&p.info_hash) + tracker.leechers(&p.info_hash) == 1,
    );
}

#[test]
fn a_garbage_torrent_in_the_watch_dir_is_renamed_invalid_and_the_daemon_keeps_going() {
    let work = TempDir::new("daemon-invalid");
    let home = DaemonHome::new("daemon-invalid");
    let mut d = home.start("btd daemon");
    let src = work.join("garbage");
    fs::write(&src, b"d8:announce this is not bencode").expect("write garbage");
    let garbage = drop_into(&home.watch_dir(), "garbage.torrent", &src);
    let invalid = watch_renamed(&garbage, "invalid");
    wait_until(within(SHORT), "garbage.torrent renamed *.invalid", || {
        invalid.exists() && !garbage.exists()
    });
    d.wait_log_contains(0, SHORT, "garbage.torrent");
    d.proc.assert_running();
    let s = d.snapshot().expect("a status file");
    let s = d.next_snapshot(&s, SHORT);
    assert!(s.status.torrents.is_empty(), "{}", s.text);

    // The watcher still works: a good torrent after the bad one is taken.
    let p = payload(&work, "seed", "after-garbage", 100 * KIB, 16 * KIB, &[]);
    let good = drop_into(&home.watch_dir(), "good.torrent", &p.torrent);
    let added = watch_renamed(&good, "added");
    wait_until(within(SHORT), "good.torrent renamed *.added", || {
        added.exists()
    });
    d.wait_status(SHORT, "the good torrent in the status", |s| {
        s.torrent(&p.info_hash).is_some()
    });
    assert!(invalid.exists(), "the *.invalid file went away");
    d.stop("TERM");
}

#[test]
fn usr1_writes_the_status_table_to_the_log() {
    let work = TempDir::new("daemon-usr1");
    let p = payload(&work, "seed", "usr1-table", 500 * KIB, 16 * KIB, &[]);
    let mut home = DaemonHome::new("daemon-usr1");
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&p.info_hash, SHORT);
    let mark = d.log_mark();
    d.signal("USR1");
    d.wait_log_after(mark, SHORT, "the status table header", |l| {
        is_table_header(l).then_some(())
    });
    let lines = d.log_lines();
    let at = lines
        .iter()
        .skip(mark)
        .position(|l| is_table_header(l))
        .expect("just seen")
        + mark;
    d.wait_log_after(at + 1, SHORT, "the torrent's row in the table", |l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        (words.contains(&"usr1-table") && words.contains(&"seeding")).then_some(())
    });
    d.proc.assert_running();
    d.stop("TERM");
}

#[test]
fn term_exits_0_within_5_s_with_resume_data_for_every_torrent_and_no_pid_file() {
    let work = TempDir::new("daemon-term");
    // A tracker that accepts connections and never answers: the `stopped` announce must not hold
    // the daemon up past its stop timeout.
    let silent = SilentTracker::start();
    let silent_url = silent.announce_url();
    let seeding = payload(&work, "seed", "term-seeding", MIB + 3, 16 * KIB, &[]);
    let leeching = payload(
        &work,
        "seed2",
        "term-leeching",
        MIB + 4,
        16 * KIB,
        &[silent_url],
    );
    let mut home = DaemonHome::new("daemon-term");
    // The default: the first announce to the silent tracker is still waiting at SIGTERM.
    home.set("announce", "timeout_secs", 15);
    home.add_torrent(TorrentEntry::new(&seeding.torrent).download_dir(&seeding.dir))
        .add_torrent(TorrentEntry::new(&leeching.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "one torrent seeding, one downloading", |s| {
        s.torrent(&seeding.info_hash)
            .is_some_and(|t| t.state == "seeding")
            && s.torrent(&leeching.info_hash)
                .is_some_and(|t| t.state == "downloading")
    });
    let pid_text = fs::read_to_string(home.pid_file()).expect("a pid file while running");
    assert_eq!(pid_text.trim(), d.pid().to_string());

    d.stop("TERM");
    for p in [&seeding, &leeching] {
        let f = home.resume_file(&p.info_hash);
        let text = fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("no resume data for {} ({}): {e}", p.name, f.display()));
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", f.display()));
        assert!(v.is_object(), "{}: {text}", f.display());
    }
    assert!(
        !home.pid_file().exists(),
        "{} left after a clean stop",
        home.pid_file().display()
    );
    assert!(home.status_file().exists(), "no status file at shutdown");
    drop(silent);
}

#[test]
fn a_restart_after_a_clean_stop_resumes_without_hashing_or_downloading_again() {
    let work = TempDir::new("daemon-restart");
    let p = payload(&work, "seed", "resumed", 3 * MIB + 1, 32 * KIB, &[]);
    let lt = LtSeeder::start("libtorrent seeder", &[&p.torrent], &p.dir, 0, false);
    let mut home = DaemonHome::new("daemon-restart");
    home.add_torrent(TorrentEntry::new(&p.torrent).peers(&[lt.addr]))
        .write_config();
    let mut d = home.start("btd daemon (first run)");
    d.wait_seeding(&p.info_hash, TRANSFER);
    d.wait_log_contains(0, SHORT, "torrent resumed: download complete");
    d.stop("INT");
    let at_stop = home
        .status()
        .expect("a status file written at shutdown")
        .torrent(&p.info_hash)
        .expect("the torrent in the final status")
        .downloaded_bytes;
    drop(d);

    // The seeder is still there: anything btd thought it lacked, it would download again.
    let mut d = home.start("btd daemon (second run)");
    let line = d.wait_log_contains(0, SHORT, "torrent resumed: resume data matches");
    let counts = line
        .rsplit("matches, ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|nm| nm.split_once('/'))
        .unwrap_or_else(|| panic!("no N/M pieces in {line:?}"));
    assert_eq!(counts.0, counts.1, "not every piece resumed: {line}");
    let t = d.wait_seeding(&p.info_hash, SHORT);
    assert!(
        !d.log_contains("torrent resumed: checking data"),
        "the data was hashed again although its resume data matched"
    );
    let mut s: Snapshot = d.snapshot().expect("status");
    for _ in 0..3 {
        let got = s
            .status
            .torrent(&p.info_hash)
            .expect("torrent")
            .downloaded_bytes;
        assert!(
            got == 0 || got == at_stop,
            "downloaded_bytes went from {at_stop} at the stop to {got} after the restart: {}",
            s.text
        );
        s = d.next_snapshot(&s, SHORT);
    }
    assert_eq!(t.progress, 1.0);
    assert_same_files(&p.data(), &home.download_dir().join("resumed"));
    d.stop("TERM");
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_and_a_stale_pid_file_is_not() {
    let home = DaemonHome::new("daemon-twice");
    let mut first = home.start("first btd daemon");
    first.wait_status(SHORT, "the first daemon's status", |_| true);

    let mut second = home.spawn("second btd daemon");
    let status = second.proc.wait_exit(SHORT);
    assert!(
        !status.success(),
        "a second daemon on the same state dir started"
    );
    let out = second.proc.output();
    assert!(
        out.contains(&home.pid_file().display().to_string()),
        "the refusal does not name the pid file {}: {out}",
        home.pid_file().display()
    );
    first.proc.assert_running();
    let s = first.snapshot().expect("status");
    let s = first.next_snapshot(&s, SHORT);
    assert_eq!(s.status.pid, first.pid());
    assert_eq!(
        fs::read_to_string(home.pid_file())
            .expect("pid file")
            .trim(),
        first.pid().to_string()
    );

    first.kill9();
    assert!(home.pid_file().exists(), "no stale pid file after kill -9");
    let mut third = home.start("btd daemon after the crash");
    third.wait_status(SHORT, "the new daemon's status", |_| true);
    assert_eq!(
        fs::read_to_string(home.pid_file())
            .expect("pid file")
            .trim(),
        third.pid().to_string()
    );
    third.stop("TERM");
}

#[test]
fn btd_status_prints_the_table_of_a_running_daemon_and_fails_when_none_runs() {
    let work = TempDir::new("daemon-status");
    let p = payload(&work, "seed", "status-shown", 400 * KIB, 16 * KIB, &[]);
    let mut home = DaemonHome::new("daemon-status");
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();

    let none = home.cli(&["status".into()]);
    assert_eq!(none.status.code(), Some(1), "{}", none.description);
    assert!(
        format!("{}{}", none.stdout, none.stderr)
            .to_lowercase()
            .contains("daemon"),
        "no clear message without a daemon: {}",
        none.description
    );

    let mut d = home.start("btd daemon");
    d.wait_seeding(&p.info_hash, SHORT);
    let out = home.cli(&["status".into()]);
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| is_table_header(l))
        .unwrap_or_else(|| panic!("no table header in: {}", out.description));
    assert!(
        lines[header + 1..].iter().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.get(1) == Some(&"status-shown") && words.contains(&"seeding")
        }),
        "no row for the torrent: {}",
        out.description
    );

    d.stop("TERM");
    // The status file outlives the daemon; `btd status` must not take it for a live one.
    assert!(home.status_file().exists());
    let after = home.cli(&["status".into()]);
    assert_eq!(after.status.code(), Some(1), "{}", after.description);
}

#[test]
fn paused_torrents_stay_paused_and_queued_ones_start_in_order_when_a_slot_frees() {
    let work = TempDir::new("daemon-queue");
    let first = payload(&work, "seed", "queue-first", MIB, 16 * KIB, &[]);
    let paused = payload(&work, "a", "queue-paused", 100 * KIB, 16 * KIB, &[]);
    let second = payload(&work, "b", "queue-second", 100 * KIB, 16 * KIB, &[]);
    let third = payload(&work, "c", "queue-third", 100 * KIB, 16 * KIB, &[]);
    // Only the first torrent has a peer, at 256 KiB/s: it holds the one download slot for a
    // few seconds, then seeds and frees it.
    let lt = LtSeeder::start(
        "libtorrent seeder (256 KiB/s)",
        &[&first.torrent],
        &first.dir,
        256 * KIB,
        false,
    );
    let mut home = DaemonHome::new("daemon-queue");
    home.set("queue", "max_active_downloads", 1);
    let mut entry = TorrentEntry::new(&paused.torrent);
    entry.paused = true;
    home.add_torrent(TorrentEntry::new(&first.torrent).peers(&[lt.addr]))
        .add_torrent(entry)
        .add_torrent(TorrentEntry::new(&second.torrent))
        .add_torrent(TorrentEntry::new(&third.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    let state = |s: &Status, p: &Payload| s.torrent(&p.info_hash).map(|t| t.state.clone());
    let s = d.wait_status(SHORT, "one downloading, two queued, one paused", |s| {
        state(s, &first).as_deref() == Some("downloading")
            && state(s, &paused).as_deref() == Some("paused")
            && state(s, &second).as_deref() == Some("queued")
            && state(s, &third).as_deref() == Some("queued")
    });
    assert_eq!(s.torrents.len(), 4, "{s:?}");

    // The first completes: the next in config order takes its slot, the last still waits.
    d.wait_status(TRANSFER, "the second torrent in the freed slot", |s| {
        let second_state = state(s, &second);
        assert_ne!(
            state(s, &third).as_deref(),
            Some("downloading"),
            "the third torrent started before the second: {s:?}"
        );
        second_state.as_deref() == Some("downloading")
    });
    let s = d.wait_status(SHORT, "the first seeding", |s| {
        state(s, &first).as_deref() == Some("seeding")
    });
    assert_eq!(state(&s, &paused).as_deref(), Some("paused"), "{s:?}");
    assert_eq!(state(&s, &third).as_deref(), Some("queued"), "{s:?}");
    assert_same_files(&first.data(), &home.download_dir().join("queue-first"));
    d.stop("TERM");
}

#[test]
fn a_seed_stops_uploading_at_its_ratio_limit_and_keeps_its_data() {
    let work = TempDir::new("daemon-ratio");
    let p = payload(&work, "seed", "ratio-capped", 4 * MIB, 32 * KIB, &[]);
    let size = 4 * MIB + 1000;
    let mut home = DaemonHome::new("daemon-ratio");
    // 1 MiB/s up, so that the daemon sees the ratio pass 0.5 long before the leecher is done.
    home.set("seeding", "ratio_limit", 0.5)
        .set("rates", "upload_kib_per_sec", 1024)
        .add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&p.info_hash, SHORT);
    let digest = tree_digest(&p.data());

    let out = work.subdir("leecher");
    let _lt = LtClient::leech_from("libtorrent leecher", &p.torrent, &out, d.addr());
    let s = d.wait_snapshot(TRANSFER, "the seeding limit reached", |s| {
        s.status
            .torrent(&p.info_hash)
            .is_some_and(|t| t.state == "finished")
    });
    d.wait_log_contains(0, SHORT, "torrent ratio-capped: ratio limit reached");
    let uploaded = s
        .status
        .torrent(&p.info_hash)
        .expect("torrent")
        .uploaded_bytes;
    assert!(
        uploaded >= size / 2,
        "finished after uploading only {uploaded} of {size} bytes: {}",
        s.text
    );
    assert!(
        uploaded < size,
        "the whole torrent went up before the ratio limit of 0.5 stopped it: {}",
        s.text
    );
    let mut s = s;
    for _ in 0..2 {
        s = d.next_snapshot(&s, SHORT);
        let t = s.status.torrent(&p.info_hash).expect("torrent");
        assert_eq!(t.state, "finished", "{}", s.text);
        assert_eq!(
            t.uploaded_bytes, uploaded,
            "still uploading after the ratio limit: {}",
            s.text
        );
    }
    assert_eq!(
        tree_digest(&p.data()),
        digest,
        "the finished seed's data changed"
    );
    d.stop("TERM");
}

#[test]
fn the_download_rate_limit_is_shared_by_all_torrents() {
    const LIMIT_KIB: i64 = 1024;
    let limit = (LIMIT_KIB as u64 * KIB) as f64;
    let work = TempDir::new("daemon-shared-rate");
    let p1 = payload(&work, "seed", "shared-one", 8 * MIB, 64 * KIB, &[]);
    let p2 = payload(&work, "seed", "shared-two", 8 * MIB, 64 * KIB, &[]);
    // Each torrent could come at 4 MiB/s: a limit per torrent would let 2 MiB/s through.
    let lt = LtSeeder::start(
        "libtorrent seeder (4 MiB/s per torrent)",
        &[&p1.torrent, &p2.torrent],
        &work.path().join("seed"),
        4 * MIB,
        false,
    );
    let mut home = DaemonHome::new("daemon-shared-rate");
    home.set("rates", "download_kib_per_sec", LIMIT_KIB)
        .add_torrent(TorrentEntry::new(&p1.torrent).peers(&[lt.addr]))
        .add_torrent(TorrentEntry::new(&p2.torrent).peers(&[lt.addr]))
        .write_config();
    let mut d = home.start("btd daemon");
    let s = d.wait_snapshot(TRANSFER, "both downloads under way", |s| {
        [&p1, &p2].iter().all(|p| {
            s.status
                .torrent(&p.info_hash)
                .is_some_and(|t| t.downloaded_bytes > 0)
        })
    });
    // The limiter's first burst passes.
    d.next_snapshot(&s, SHORT);
    let (rate, last) = measure_download_rate(
        &mut d,
        &[&p1.info_hash, &p2.info_hash],
        Duration::from_secs(3),
    );
    eprintln!("two torrents, {LIMIT_KIB} KiB/s in all: {rate:.0} B/s");
    assert!(
        rate <= 1.5 * limit,
        "two torrents downloaded {rate:.0} B/s together under a global limit of {LIMIT_KIB} \
         KiB/s: {}",
        last.text
    );
    assert!(
        rate >= 0.25 * limit,
        "two torrents downloaded only {rate:.0} B/s together under a limit of {LIMIT_KIB} KiB/s: \
         {}",
        last.text
    );
    d.stop("TERM");
}

#[test]
fn the_global_peer_limit_holds_across_torrents() {
    let work = TempDir::new("daemon-peer-limit");
    let p1 = payload(&work, "seed", "limited-one", 2 * MIB, 32 * KIB, &[]);
    let p2 = payload(&work, "seed", "limited-two", 2 * MIB, 32 * KIB, &[]);
    // 1 MiB/s per torrent, so that each download spans several status writes.
    let lt = LtSeeder::start(
        "libtorrent seeder (1 MiB/s per torrent)",
        &[&p1.torrent, &p2.torrent],
        &work.path().join("seed"),
        MIB,
        false,
    );
    let mut home = DaemonHome::new("daemon-peer-limit");
    home.set("peers", "max_global", 1)
        .add_torrent(TorrentEntry::new(&p1.torrent).peers(&[lt.addr]))
        .add_torrent(TorrentEntry::new(&p2.torrent).peers(&[lt.addr]))
        .write_config();
    let mut d = home.start("btd daemon");
    let mut most = 0;
    d.wait_snapshot(
        TRANSFER,
        "both torrents complete, one peer at a time",
        |s| {
            let peers: u64 = s.status.torrents.iter().map(|t| t.peers).sum();
            assert!(
                peers <= 1,
                "{peers} peers with peers.max_global = 1: {}",
                s.text
            );
            most = most.max(peers);
            [&p1, &p2].iter().all(|p| {
                s.status
                    .torrent(&p.info_hash)
                    .is_some_and(|t| t.state == "seeding")
            })
        },
    );
    assert_eq!(most, 1, "no status showed the one peer allowed");
    assert_same_files(&p1.data(), &home.download_dir().join("limited-one"));
    assert_same_files(&p2.data(), &home.download_dir().join("limited-two"));
    d.stop("TERM");
}

#[test]
fn a_paused_torrent_gives_its_peer_slots_back_and_dials_again_when_resumed() {
    // peers.max_global = 1 and the one slot is the download's. Its peers' ends come after its
    // run has stopped: the slot must come back all the same (and status.json say so), or the
    // resumed torrent can never dial again.
    let work = TempDir::new("daemon-pause-slots");
    let p = payload(&work, "seed", "pause-slots", 4 * MIB, 32 * KIB, &[]);
    let lt = LtSeeder::start(
        "libtorrent seeder (512 KiB/s)",
        &[&p.torrent],
        &work.path().join("seed"),
        512 * KIB,
        false,
    );
    let mut home = DaemonHome::new("daemon-pause-slots");
    home.set("peers", "max_global", 1)
        .add_torrent(TorrentEntry::new(&p.torrent).peers(&[lt.addr]))
        .write_config();
    let mut d = home.start("btd daemon");
    let peers_of = |s: &Snapshot| {
        s.status
            .torrent(&p.info_hash)
            .map(|t| (t.state.clone(), t.peers))
    };
    let slots = |s: &Snapshot| (s.status.peer_slots.used, s.status.peer_slots.max);
    d.wait_snapshot(
        SHORT,
        "the download with its one peer in the one slot",
        |s| peers_of(s) == Some(("downloading".into(), 1)) && slots(s) == (1, 1),
    );
    let out = home.cli(&["pause".into(), p.info_hash.clone().into()]);
    assert!(out.status.success(), "btd pause: {}", out.description);
    d.wait_snapshot(SHORT, "paused, its slot free", |s| {
        peers_of(s).is_some_and(|(state, _)| state == "paused") && slots(s) == (0, 1)
    });
    let out = home.cli(&["resume".into(), p.info_hash.clone().into()]);
    assert!(out.status.success(), "btd resume: {}", out.description);
    d.wait_snapshot(SHORT, "the resumed download with its peer again", |s| {
        peers_of(s).is_some_and(|(state, peers)| state == "seeding" || peers == 1)
    });
    d.wait_seeding(&p.info_hash, TRANSFER);
    assert_same_files(&p.data(), &home.download_dir().join("pause-slots"));
    d.stop("TERM");
}

#[test]
fn a_restart_after_the_data_changed_checks_it_again_and_repairs_it() {
    let work = TempDir::new("daemon-changed");
    let p = payload(&work, "seed", "changed", 2 * MIB, 32 * KIB, &[]);
    let lt = LtSeeder::start("libtorrent seeder", &[&p.torrent], &p.dir, 0, false);
    let mut home = DaemonHome::new("daemon-changed");
    home.add_torrent(TorrentEntry::new(&p.torrent).peers(&[lt.addr]))
        .write_config();
    let mut d = home.start("btd daemon (first run)");
    d.wait_seeding(&p.info_hash, TRANSFER);
    d.stop("TERM");
    drop(d);

    // One byte changes while the daemon is down (and with it the file's mtime).
    let file = home.download_dir().join("changed/data.bin");
    let mut bytes = fs::read(&file).expect("read the downloaded file");
    bytes[100_000] ^= 0xff;
    fs::write(&file, &bytes).expect("damage the downloaded file");

    let mut d = home.start("btd daemon (second run)");
    // The log names the file and why its resume data was not trusted.
    let line = d.wait_log_contains(0, SHORT, "torrent changed: resume data not used: ");
    assert!(
        line.contains("changed/data.bin: size or modification time changed; checking data"),
        "{line}"
    );
    d.wait_seeding(&p.info_hash, TRANSFER);
    assert!(
        !d.log_contains("torrent changed: resume data matches"),
        "resume data was trusted for a file that changed"
    );
    assert_same_files(&p.data(), &home.download_dir().join("changed"));
    d.stop("TERM");
}

#[test]
fn a_second_sigterm_during_a_slow_stop_exits_at_once() {
    let work = TempDir::new("daemon-term-twice");
    // A tracker that never answers: the graceful stop waits for the `stopped` announce, up to
    // announce.stop_timeout_secs (3 s by default).
    let silent = SilentTracker::start();
    let url = silent.announce_url();
    let p = payload(&work, "seed", "term-twice", MIB, 16 * KIB, &[url]);
    let mut home = DaemonHome::new("daemon-term-twice");
    home.add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "the torrent downloading", |s| {
        s.torrent(&p.info_hash)
            .is_some_and(|t| t.state == "downloading")
    });
    let mark = d.log_mark();
    d.signal("TERM");
    d.wait_log_contains(mark, SHORT, "daemon stopping");
    let t0 = Instant::now();
    d.proc.signal("TERM");
    d.proc.wait_exit(SHORT);
    let took = t0.elapsed();
    assert!(
        !d.log_contains("daemon stopped"),
        "the graceful stop ended before the second SIGTERM; nothing to cut short"
    );
    assert!(
        took < Duration::from_secs(1),
        "the second SIGTERM took {took:?} to end the daemon"
    );
    drop(silent);
}
