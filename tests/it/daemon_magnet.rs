//! Magnet links in `btd daemon`: a `[[torrent]] magnet = "..."` entry and a `*.magnet` file in
//! the watch directory (written by `btd add MAGNET`) fetch their metadata from a libtorrent
//! seeder, save it as `<state_dir>/torrents/<infohash>.torrent` and download; a restart uses the
//! saved metadata without fetching. A magnet nobody serves waits in state `metadata`; bad magnet
//! links are refused (config: exit 2 naming the key; watch dir: `*.invalid`; `btd add`: exit 2).
//! While it fetches, a magnet takes peers that dial in (a libtorrent seeder nobody tells btd
//! about), and a fetch that is abandoned (removed, daemon stopped) tells its tracker `stopped`.

use crate::support::daemon::{
    DaemonHome, LtSeeder, Payload, TorrentEntry, drop_into, files_in, payload, watch_renamed,
    within,
};
use crate::support::{
    LtClient, PeerSpec, RecordingTracker, SHORT, TRANSFER, TempDir, TorrentInfo, assert_same_files,
    next_ip, wait_until,
};
use std::ffi::OsString;
use std::fs;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// States a torrent passes through from a magnet link to seeding.
const STATES: [&str; 5] = ["metadata", "queued", "checking", "downloading", "seeding"];

fn magnet_of(p: &Payload, seeder: &LtSeeder) -> String {
    format!(
        "magnet:?xt=urn:btih:{}&dn={}&x.pe={}",
        p.info_hash, p.name, seeder.addr
    )
}

/// The metadata the daemon saved is the torrent's: libtorrent reads it with the right hash.
fn assert_saved_metadata(home: &DaemonHome, p: &Payload) {
    let saved = home.saved_torrent(&p.info_hash);
    assert!(saved.exists(), "no saved metadata at {}", saved.display());
    let info = TorrentInfo::read(&saved);
    assert_eq!(
        (info.info_hash.as_str(), info.name.as_str()),
        (p.info_hash.as_str(), p.name.as_str())
    );
}

#[test]
fn a_magnet_entry_downloads_from_libtorrent_and_a_restart_uses_the_saved_metadata() {
    let work = TempDir::new("daemon-magnet-entry");
    let p = payload(&work, "seed", "magnet-entry", 3 * MIB + 7, 32 * KIB, &[]);
    let lt = LtSeeder::start("libtorrent seeder", &[&p.torrent], &p.dir, 0, false);
    let mut home = DaemonHome::new("daemon-magnet-entry");
    home.add_torrent(TorrentEntry::magnet(&magnet_of(&p, &lt)))
        .write_config();
    let mut d = home.start("btd daemon (first run)");

    // In state `metadata` until the metadata arrives (on loopback it may already have).
    let s = d.wait_status(SHORT, "the magnet's torrent", |s| {
        s.torrent(&p.info_hash).is_some()
    });
    let t = s.torrent(&p.info_hash).expect("just checked");
    assert!(STATES.contains(&t.state.as_str()), "{t:?}");
    assert_eq!(t.name, p.name, "{t:?}");
    assert_eq!(t.source, "config", "{t:?}");
    if t.state == "metadata" {
        assert_eq!(t.progress, 0.0, "{t:?}");
    }

    let t = d.wait_seeding(&p.info_hash, TRANSFER);
    assert_eq!(t.size_bytes, 3 * MIB + 7 + 1000);
    d.wait_log_contains(0, SHORT, "magnet-entry: metadata received");
    assert_same_files(&p.data(), &home.download_dir().join(&p.name));
    assert_saved_metadata(&home, &p);
    d.stop("TERM");
    drop(d);
    drop(lt);

    // The seeder is gone: only the saved metadata and the resume data can make it a seed.
    let mut d = home.start("btd daemon (second run)");
    d.wait_log_contains(
        0,
        SHORT,
        &format!(
            "torrent magnet-entry: metadata from {}",
            home.saved_torrent(&p.info_hash).display()
        ),
    );
    d.wait_log_contains(0, SHORT, "torrent magnet-entry: resume data matches");
    let t = d.wait_seeding(&p.info_hash, SHORT);
    assert_eq!(t.name, p.name);
    assert!(
        !d.log_contains("fetching metadata"),
        "the second run fetched the metadata again"
    );
    d.stop("TERM");
}

#[test]
fn btd_add_magnet_hands_it_to_the_daemon_which_downloads_it_and_a_bad_one_exits_2() {
    let work = TempDir::new("daemon-add-magnet");
    let p = payload(&work, "seed", "added-magnet", 2 * MIB + 3, 16 * KIB, &[]);
    let lt = LtSeeder::start("libtorrent seeder", &[&p.torrent], &p.dir, 0, false);
    let mut home = DaemonHome::new("daemon-add-magnet");
    // Without an RPC, `btd add` goes through the watch directory (tests/it/cli_rpc.rs covers
    // the RPC route).
    home.set("rpc", "enabled", false).write_config();
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "a status", |_| true);

    let uri = magnet_of(&p, &lt);
    let out = home.cli(&["add".into(), uri.clone().into()]);
    out.assert_success();
    let want = format!("added {} ({})", p.name, p.info_hash);
    assert!(
        out.stdout.contains(&want),
        "`btd add` did not say {want:?}: {}",
        out.description
    );
    // The request's own file: `<infohash>-<pid>-<time>.magnet`, renamed by the daemon.
    let added: Vec<String> = files_in(&home.watch_dir())
        .into_iter()
        .filter(|f| f.starts_with(&p.info_hash) && f.ends_with(".magnet.added"))
        .collect();
    let [added] = added.as_slice() else {
        panic!("watch dir: {:?}", files_in(&home.watch_dir()));
    };
    let added = home.watch_dir().join(added);
    let text = fs::read_to_string(&added).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; watch dir: {:?}",
            added.display(),
            files_in(&home.watch_dir())
        )
    });
    assert_eq!(text.trim(), uri);

    let t = d.wait_seeding(&p.info_hash, TRANSFER);
    assert_eq!(t.name, p.name);
    assert_eq!(t.source, added.display().to_string());
    assert_same_files(&p.data(), &home.download_dir().join(&p.name));
    assert_saved_metadata(&home, &p);

    // A magnet link that does not parse is bad input: exit 2 with the reason, nothing written.
    let before = files_in(&home.watch_dir());
    let out = home.cli(&["add".into(), OsString::from("magnet:?xt=urn:btih:zzz")]);
    assert_eq!(out.status.code(), Some(2), "{}", out.description);
    assert!(
        out.stderr.contains("40 hex or 32 base32"),
        "no reason given: {}",
        out.description
    );
    assert_eq!(files_in(&home.watch_dir()), before);

    // Deleting its `.magnet.added` file and sending SIGHUP removes it; the data stays.
    fs::remove_file(&added).expect("remove the .added file");
    d.reload();
    d.wait_status(SHORT, "the torrent removed", |s| {
        s.torrent(&p.info_hash).is_none()
    });
    assert_same_files(&p.data(), &home.download_dir().join(&p.name));
    d.stop("TERM");
}

#[test]
fn a_magnet_nobody_serves_waits_in_state_metadata_and_survives_a_restart() {
    let work = TempDir::new("daemon-magnet-waits");
    let home = DaemonHome::new("daemon-magnet-waits");
    let named = "0123456789abcdef0123456789abcdef01234567";
    let unnamed = "89abcdef0123456789abcdef0123456789abcdef";
    // Saved metadata that is another torrent's is not taken.
    let other = payload(&work, "other", "other", 50 * KIB, 16 * KIB, &[]);
    let saved = home.saved_torrent(named);
    fs::create_dir_all(saved.parent().expect("a parent")).expect("create state/torrents");
    fs::copy(&other.torrent, &saved).expect("copy a torrent into state/torrents");
    let mut d = home.start("btd daemon (first run)");
    let src = work.join("named");
    // Surrounding whitespace is not part of the link.
    fs::write(
        &src,
        format!("  magnet:?xt=urn:btih:{named}&dn=Lonely+one \n"),
    )
    .expect("write");
    let named_file = drop_into(&home.watch_dir(), "named.magnet", &src);
    fs::write(&src, format!("magnet:?xt=urn:btih:{unnamed}\n")).expect("write");
    drop_into(&home.watch_dir(), "unnamed.magnet", &src);
    fs::write(&src, "magnet:?xt=urn:btih:zzz").expect("write");
    let garbage = drop_into(&home.watch_dir(), "garbage.magnet", &src);

    let invalid = watch_renamed(&garbage, "invalid");
    wait_until(within(SHORT), "garbage.magnet renamed *.invalid", || {
        invalid.exists() && !garbage.exists()
    });
    d.wait_log_contains(0, SHORT, "garbage.magnet: xt=urn:btih:zzz");
    let waiting = |s: &crate::support::daemon::Status, hash: &str, name: &str| {
        s.torrent(hash).is_some_and(|t| {
            t.state == "metadata" && t.name == name && t.progress == 0.0 && t.size_bytes == 0
        })
    };
    d.wait_status(SHORT, "both magnets in state metadata", |s| {
        waiting(s, named, "Lonely one") && waiting(s, unnamed, unnamed)
    });
    assert!(watch_renamed(&named_file, "added").exists());
    assert!(
        d.log_contains(&format!(
            "info hash {}, not the magnet link's",
            other.info_hash
        )),
        "the wrong saved metadata was not refused"
    );
    d.stop("TERM");
    drop(d);

    // The `.magnet.added` files bring both back; deleting one and SIGHUP removes that one.
    let mut d = home.start("btd daemon (second run)");
    d.wait_status(SHORT, "both magnets back in state metadata", |s| {
        waiting(s, named, "Lonely one") && waiting(s, unnamed, unnamed)
    });
    fs::remove_file(watch_renamed(&named_file, "added")).expect("remove named.magnet.added");
    d.reload();
    d.wait_status(SHORT, "the named magnet removed", |s| {
        s.torrent(named).is_none() && waiting(s, unnamed, unnamed)
    });
    d.stop("TERM");
}

#[test]
fn a_torrent_entry_with_both_path_and_magnet_or_neither_or_a_bad_magnet_exits_2() {
    let good = DaemonHome::new("daemon-magnet-config-text").config_text();
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let cases = [
        (
            "both path and magnet",
            format!("path = \"a.torrent\"\nmagnet = \"magnet:?xt=urn:btih:{hash}\"\n"),
            "torrent[0].magnet",
            "not both",
        ),
        (
            "neither path nor magnet",
            "paused = true\n".to_string(),
            "torrent[0].path",
            "magnet",
        ),
        (
            "a magnet link that does not parse",
            "magnet = \"magnet:?xt=urn:btih:zzz\"\n".to_string(),
            "torrent[0].magnet",
            "40 hex or 32 base32",
        ),
    ];
    for (what, entry, key, reason) in cases {
        let home = DaemonHome::new("daemon-magnet-config");
        let text = format!("{good}\n[[torrent]]\n{entry}");
        home.write_config_text(&text);
        let mut d = home.spawn(&format!("btd daemon with {what}"));
        let status = d.proc.wait_exit(SHORT);
        let out = d.proc.output();
        assert_eq!(
            status.code(),
            Some(2),
            "{what}: want exit 2, got {status}; config:\n{text}\noutput:\n{out}"
        );
        for needle in [key, reason] {
            assert!(
                out.contains(needle),
                "{what}: the message does not say {needle:?}:\n{out}"
            );
        }
        assert!(
            !home.pid_file().exists(),
            "{what}: a refused start left a pid file"
        );
    }
}

#[test]
fn a_magnet_being_fetched_takes_a_seeder_that_only_dials_in() {
    let work = TempDir::new("daemon-magnet-dialled-in");
    let p = payload(&work, "seed", "dialled-in", 2 * MIB + 5, 16 * KIB, &[]);
    // It answers with no peers: the metadata can only come from a peer that dials in.
    let tracker = RecordingTracker::start();
    let home = DaemonHome::new("daemon-magnet-dialled-in");
    let mut d = home.start("btd daemon");
    let btd_addr = d.wait_listening();
    let src = work.join("dialled-in.magnet");
    fs::write(
        &src,
        format!(
            "magnet:?xt=urn:btih:{}&dn={}&tr={}",
            p.info_hash,
            p.name,
            tracker.announce_url()
        ),
    )
    .expect("write the magnet");
    drop_into(&home.watch_dir(), "dialled-in.magnet", &src);
    let started = tracker.wait_event(&p.info_hash, Some("started"), 1, SHORT);
    assert_eq!(
        started.port,
        btd_addr.port(),
        "the fetch announces our port"
    );
    let lt_ip = next_ip();
    let mut lt = LtClient::seed(
        "libtorrent seeder (dials in)",
        &PeerSpec {
            torrent: &p.torrent,
            dir: &p.dir,
            ip: lt_ip,
            peers: vec![btd_addr],
            announce: false,
        },
    );
    let t = d.wait_seeding(&p.info_hash, TRANSFER);
    assert_eq!(t.name, p.name);
    assert_same_files(&p.data(), &home.download_dir().join(&p.name));
    d.wait_log_contains(0, SHORT, &format!("bytes from {lt_ip}:"));
    d.stop("TERM");
    lt.terminate_and_assert_ok(SHORT);
}

#[test]
fn an_abandoned_metadata_fetch_tells_its_tracker_stopped() {
    let work = TempDir::new("daemon-magnet-stopped");
    let tracker = RecordingTracker::start();
    let home = DaemonHome::new("daemon-magnet-stopped");
    let mut d = home.start("btd daemon");
    let removed = "1111111111111111111111111111111111111111";
    let at_stop = "2222222222222222222222222222222222222222";
    let mut files = Vec::new();
    for hash in [removed, at_stop] {
        let src = work.join(hash);
        fs::write(
            &src,
            format!("magnet:?xt=urn:btih:{hash}&tr={}", tracker.announce_url()),
        )
        .expect("write the magnet");
        files.push(drop_into(
            &home.watch_dir(),
            &format!("{hash}.magnet"),
            &src,
        ));
    }
    for hash in [removed, at_stop] {
        tracker.wait_event(hash, Some("started"), 1, SHORT);
    }
    // Removed: deleting its `.magnet.added` file and SIGHUP.
    fs::remove_file(watch_renamed(&files[0], "added")).expect("remove the .magnet.added file");
    d.reload();
    d.wait_status(SHORT, "the removed magnet gone", |s| {
        s.torrent(removed).is_none() && s.torrent(at_stop).is_some()
    });
    let stopped = tracker.wait_event(removed, Some("stopped"), 1, SHORT);
    let started = &tracker.announces_for(removed)[0];
    assert_eq!(
        (&stopped.peer_id, stopped.port),
        (&started.peer_id, started.port)
    );
    assert!(
        tracker
            .announces_for(at_stop)
            .iter()
            .all(|a| !a.is(Some("stopped"))),
        "the other fetch goes on"
    );
    // The daemon stops: the other fetch says `stopped` within the stop budget.
    let took = d.stop("TERM");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    tracker.wait_event(at_stop, Some("stopped"), 1, SHORT);
}
