//! The watch directory and `btd add`, as an admin uses them: a `.torrent` uploaded slowly (in
//! parts, seconds apart) is added once whole, never refused half-written; a file that stays
//! broken is refused only after it has not changed for the settle time (5 s).
//!
//! Each daemon has its own directory and scans its watch directory every second
//! (`support::daemon`).

use crate::support::daemon::{DaemonHome, files_in, payload, watch_renamed, within};
use crate::support::{SHORT, TempDir};
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
