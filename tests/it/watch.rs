//! The watch directory and `btd add`, as an admin uses them: a `.torrent` uploaded slowly (in
//! parts, seconds apart) is added once whole, never refused half-written; a file that stays
//! broken is refused only after it has not changed for the settle time (5 s). `btd add` reports
//! the daemon's own answer to this request: a duplicate is exit 1 naming the torrent already
//! there, and leftover `*.added`/`*.invalid` files of earlier requests do not count.
//!
//! Each daemon has its own directory and scans its watch directory every second
//! (`support::daemon`).

use crate::support::daemon::{DaemonHome, TorrentEntry, files_in, payload, watch_renamed, within};
use crate::support::{SHORT, TempDir};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;

/// The daemon's settle time for a watch-dir file that does not parse (`WATCH_SETTLE`).
const SETTLE: Duration = Duration::from_secs(5);

/// Panics if `file` exists, naming what the watch directory holds.
fn assert_absent(file: &Path, watch_dir: &Path, when: &str) {
    assert!(
        !file.exists(),
        "{} exists {when}; watch dir: {:?}",
        file.display(),
        files_in(watch_dir)
    );
}

#[test]
fn a_torrent_written_in_two_parts_4_s_apart_is_added_once_whole_and_never_refused() {
    let work = TempDir::new("watch-slow");
    let p = payload(&work, "seed", "slow-upload", 200 * KIB, 16 * KIB, &[]);
    let bytes = fs::read(&p.torrent).expect("read the torrent");
    let home = DaemonHome::new("watch-slow");
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "a status", |_| true);

    // An upload in progress: the first half lands in the watch directory itself, as SFTP or a
    // web form writes it, and the rest 4 s later.
    let file = home.watch_dir().join("slow.torrent");
    let invalid = watch_renamed(&file, "invalid");
    let added = watch_renamed(&file, "added");
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    let mut f = fs::File::create(&file).expect("create the watch file");
    f.write_all(first).expect("write the first part");
    f.flush().expect("flush");
    let pause_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < pause_until {
        assert_absent(&invalid, &home.watch_dir(), "while the upload pauses");
        assert_absent(&added, &home.watch_dir(), "with half a torrent written");
        std::thread::sleep(Duration::from_millis(50));
    }
    f.write_all(rest).expect("write the rest");
    drop(f);

    let deadline = within(SHORT);
    while !added.exists() {
        assert_absent(&invalid, &home.watch_dir(), "after the upload finished");
        assert!(
            Instant::now() < deadline,
            "{} not added within {SHORT:?}; watch dir: {:?}",
            file.display(),
            files_in(&home.watch_dir())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = d.wait_status(SHORT, "the slowly written torrent in the status", |s| {
        s.torrent(&p.info_hash).is_some()
    });
    let t = s.torrent(&p.info_hash).expect("just checked");
    assert_eq!(t.name, "slow-upload");
    assert_eq!(t.source, added.display().to_string());
    assert_absent(&invalid, &home.watch_dir(), "at the end");
    d.stop("TERM");
}

#[test]
fn a_broken_or_empty_watch_file_is_refused_after_the_settle_time_not_before() {
    let home = DaemonHome::new("watch-settle");
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "a status", |_| true);

    let garbage = home.watch_dir().join("garbage.torrent");
    let empty = home.watch_dir().join("empty.magnet");
    let t0 = Instant::now();
    fs::write(&garbage, b"d8:announce this is not bencode").expect("write garbage");
    fs::write(&empty, b"").expect("write an empty file");
    let pending = [&garbage, &empty];
    let mut refused_after = [None; 2];
    while refused_after.iter().any(Option::is_none) {
        for (file, after) in pending.iter().zip(refused_after.iter_mut()) {
            if after.is_none() && watch_renamed(file, "invalid").exists() {
                *after = Some(t0.elapsed());
                assert!(!file.exists(), "{} still there", file.display());
            }
        }
        assert!(
            t0.elapsed() < SHORT,
            "not refused within {SHORT:?}: {refused_after:?}; watch dir: {:?}",
            files_in(&home.watch_dir())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (file, after) in pending.iter().zip(refused_after) {
        let after = after.expect("the loop ends when both are refused");
        eprintln!("{} refused after {after:?}", file.display());
        assert!(
            after >= SETTLE,
            "{} refused after {after:?}, before it had been unchanged for {SETTLE:?}",
            file.display()
        );
        let name = file.file_name().and_then(|n| n.to_str()).expect("a name");
        d.wait_log_after(0, SHORT, &format!("the refusal of {name}"), |l| {
            (l.contains(name) && l.contains("renamed to")).then_some(())
        });
    }
    assert!(
        !files_in(&home.watch_dir())
            .iter()
            .any(|f| f.ends_with(".added")),
        "watch dir: {:?}",
        files_in(&home.watch_dir())
    );
    d.proc.assert_running();
    d.stop("TERM");
}

#[test]
fn btd_add_of_a_torrent_already_in_the_daemon_exits_1_naming_it() {
    let work = TempDir::new("watch-add-duplicate");
    let by_cli = payload(&work, "a", "dup-by-cli", 100 * KIB, 16 * KIB, &[]);
    let by_config = payload(&work, "b", "dup-by-config", 100 * KIB, 16 * KIB, &[]);
    let mut home = DaemonHome::new("watch-add-duplicate");
    home.add_torrent(TorrentEntry::new(&by_config.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "the configured torrent", |s| {
        s.torrent(&by_config.info_hash).is_some()
    });

    let first = home.cli(&["add".into(), by_cli.torrent.clone().into()]);
    first.assert_success();
    d.wait_status(SHORT, "the added torrent", |s| {
        s.torrent(&by_cli.info_hash).is_some()
    });

    for p in [&by_cli, &by_config] {
        let before = files_in(&home.watch_dir());
        let out = home.cli(&["add".into(), p.torrent.clone().into()]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "`btd add` of {}, already in the daemon: {}",
            p.name,
            out.description
        );
        let want = format!("already in the daemon as {}", p.name);
        assert!(
            out.stderr.contains(&want),
            "`btd add` of {} did not say {want:?}: {}",
            p.name,
            out.description
        );
        assert!(
            !out.stdout.contains("added"),
            "`btd add` of a duplicate said it was added: {}",
            out.description
        );
        assert_eq!(
            files_in(&home.watch_dir()),
            before,
            "`btd add` of a duplicate changed the watch dir"
        );
    }
    let s = d.wait_status(SHORT, "a status", |_| true);
    assert_eq!(s.torrents.len(), 2, "{s:?}");
    d.stop("TERM");
}

#[test]
fn btd_add_after_leftover_added_and_invalid_files_of_the_same_torrent_adds_it() {
    let work = TempDir::new("watch-add-leftovers");
    let p = payload(&work, "seed", "add-leftovers", 100 * KIB, 16 * KIB, &[]);
    let mut home = DaemonHome::new("watch-add-leftovers");
    // Only SIGHUP (which `btd add` sends) makes this daemon scan its watch directory.
    home.set("watch", "scan_interval_secs", 3600).write_config();
    // What the old `btd add` left of earlier requests: it wrote `<hash>.torrent`.
    let old_request = home.watch_dir().join(format!("{}.torrent", p.info_hash));
    fs::copy(&p.torrent, watch_renamed(&old_request, "invalid")).expect("leftover *.invalid");
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "a status", |_| true);

    let add = |home: &DaemonHome| {
        let out = home.cli(&["add".into(), OsString::from(&p.torrent)]);
        out.assert_success();
        let want = format!("added {} ({})", p.name, p.info_hash);
        assert!(
            out.stdout.contains(&want),
            "`btd add` did not say {want:?}: {}",
            out.description
        );
    };
    add(&home);
    // It runs: no peer has the data, so it stays downloading.
    let running = |s: &crate::support::daemon::Status| {
        s.torrent(&p.info_hash)
            .is_some_and(|t| t.state == "downloading")
    };
    let s = d.wait_status(SHORT, "the torrent downloading", running);
    let t = s.torrent(&p.info_hash).expect("just checked");
    assert_eq!(t.name, p.name);

    // Removed again; now a leftover `*.added` of the same hash sits in the watch directory too.
    let out = home.cli(&["remove".into(), p.info_hash.clone().into()]);
    out.assert_success();
    fs::write(
        watch_renamed(&old_request, "added"),
        b"an earlier request's leftover",
    )
    .expect("leftover *.added");
    add(&home);
    let s = d.wait_status(SHORT, "the torrent downloading again", running);
    let t = s.torrent(&p.info_hash).expect("just checked");
    assert!(
        !t.source.contains(&format!("{}.torrent.added", p.info_hash)),
        "the daemon runs the leftover, not this request: {t:?}"
    );
    d.proc.assert_running();
    d.stop("TERM");
}

#[test]
fn two_btd_adds_of_one_torrent_at_once_one_adds_it_and_the_other_names_it() {
    let work = TempDir::new("watch-add-race");
    let p = payload(&work, "seed", "add-race", 100 * KIB, 16 * KIB, &[]);
    let home = DaemonHome::new("watch-add-race");
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "a status", |_| true);

    let outs = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| home.cli(&["add".into(), OsString::from(&p.torrent)])))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("the btd add thread"))
            .collect::<Vec<_>>()
    });
    let added: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    let refused: Vec<_> = outs.iter().filter(|o| !o.status.success()).collect();
    let all: Vec<&str> = outs.iter().map(|o| o.description.as_str()).collect();
    assert_eq!((added.len(), refused.len()), (1, 1), "{all:#?}");
    assert!(
        added[0]
            .stdout
            .contains(&format!("added {} ({})", p.name, p.info_hash)),
        "{all:#?}"
    );
    assert_eq!(refused[0].status.code(), Some(1), "{all:#?}");
    assert!(
        refused[0]
            .stderr
            .contains(&format!("already in the daemon as {}", p.name)),
        "{all:#?}"
    );
    let s = d.wait_status(SHORT, "the torrent in the status", |s| {
        s.torrent(&p.info_hash).is_some()
    });
    assert_eq!(s.torrents.len(), 1, "{s:?}");
    // Whether the loser was refused by the daemon (its file `*.invalid`) or saw the winner in the
    // status file before writing anything, its answer is the same.
    eprintln!("watch dir: {:?}", files_in(&home.watch_dir()));
    d.stop("TERM");
}
