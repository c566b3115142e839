//! Stopping never blocks the daemon (issue 12): with trackers that accept connections and never
//! answer, SIGTERM exits 0 within 5 s, and removing torrents (by a reload or from the watch
//! directory) does not stall the main loop, so a SIGTERM right after is acted on at once; a
//! `stop_timeout_secs` that cannot fit the 5 s is refused at start.
//!
//! Every daemon has its own directory, loopback address and port 0 (`support::daemon`).

use crate::support::daemon::{
    Daemon, DaemonHome, Payload, STOP_LIMIT, TorrentEntry, drop_into, watch_renamed, within,
};
use crate::support::{RecordingTracker, SHORT, SilentTracker, TempDir, test_seed, wait_until};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;

/// Five complete torrents in `home`'s download directory, each announcing to `tracker_url`.
fn five_torrents(home: &DaemonHome, work: &TempDir, tracker_url: &str) -> Vec<Payload> {
    (1..=5)
        .map(|i| {
            let name = format!("stop-{i}");
            Payload::create(
                &home.download_dir(),
                &name,
                &[(&format!("{name}/data.bin"), 64 * KIB + i)],
                test_seed(&name),
                &work.join(&format!("{name}.torrent")),
                16 * KIB,
                &[tracker_url.to_owned()],
            )
        })
        .collect()
}

/// `stop_timeout_secs = 4`, and announces that wait up to 15 s for an answer: a tracker that
/// never answers holds each one far past the stop budget.
fn patient_home(label: &str) -> DaemonHome {
    let mut home = DaemonHome::new(label);
    home.set("announce", "stop_timeout_secs", 4)
        .set("announce", "timeout_secs", 15);
    home
}

/// Sends SIGTERM and waits (generously) for the exit; asserts status 0 within [`STOP_LIMIT`].
fn term_exits_in_time(d: &mut Daemon, what: &str) {
    d.proc.assert_running();
    let t0 = Instant::now();
    d.proc.signal("TERM");
    let status = d.proc.wait_exit(STOP_LIMIT + Duration::from_secs(40));
    let took = t0.elapsed();
    eprintln!("{what}: exited {took:?} after SIGTERM");
    assert!(
        status.success(),
        "{what}: exited with {status} after SIGTERM"
    );
    assert!(
        took <= STOP_LIMIT,
        "{what}: took {took:?} to exit after SIGTERM, more than {STOP_LIMIT:?}"
    );
}

/// Waits until every torrent of `ps` is seeding.
/// A patient daemon seeding five torrents of `tracker_url` from `[[torrent]]` entries, all
/// seeding; with the directory of their .torrent files.
fn five_seeding(label: &str, tracker_url: &str) -> (TempDir, DaemonHome, Vec<Payload>, Daemon) {
    let work = TempDir::new(label);
    let mut home = patient_home(label);
    let ps = five_torrents(&home, &work, tracker_url);
    for p in &ps {
        home.add_torrent(TorrentEntry::new(&p.torrent));
    }
    home.write_config();
    let mut d = home.start("btd daemon");
    wait_all_seeding(&mut d, &ps);
    (work, home, ps, d)
}

fn wait_all_seeding(d: &mut Daemon, ps: &[Payload]) {
    for p in ps {
        d.wait_seeding(&p.info_hash, SHORT);
    }
}

/// Waits until the log, after `mark`, shows the daemon acting on the removal of one of `ps`.
fn wait_removal_begun(d: &mut Daemon, mark: usize, ps: &[Payload]) {
    d.wait_log_after(mark, SHORT, "a removal under way", |l| {
        let names_one = ps.iter().any(|p| l.contains(&p.name));
        (names_one && (l.contains("stop") || l.contains("remov"))).then_some(())
    });
}

#[test]
fn term_exits_within_5_s_while_five_torrents_wait_on_a_silent_tracker() {
    let silent = SilentTracker::start();
    let (_work, _home, _ps, mut d) = five_seeding("stop-silent-term", &silent.announce_url());
    // Every torrent's `started` is waiting on the tracker.
    silent.wait_connections(5, SHORT);
    term_exits_in_time(&mut d, "five announces hanging");
}

#[test]
fn term_exits_within_5_s_while_five_stopped_announces_get_no_answer() {
    let tracker = RecordingTracker::start();
    let (_work, _home, ps, mut d) = five_seeding("stop-silent-stopped", &tracker.announce_url());
    for p in &ps {
        tracker.wait_event(&p.info_hash, Some("started"), 1, SHORT);
    }
    // The tracker answered `started`; the `stopped` announces get nothing.
    tracker.go_silent();
    term_exits_in_time(&mut d, "five `stopped` announces hanging");
}

#[test]
fn removing_five_torrents_by_a_reload_does_not_hold_up_a_term() {
    let silent = SilentTracker::start();
    let (_work, mut home, ps, mut d) = five_seeding("stop-silent-remove", &silent.announce_url());
    silent.wait_connections(5, SHORT);

    for p in &ps {
        home.remove_torrent(&p.torrent);
    }
    home.write_config();
    let mark = d.log_mark();
    d.signal("HUP");
    wait_removal_begun(&mut d, mark, &ps);
    term_exits_in_time(&mut d, "SIGTERM right after removing five torrents");
}

#[test]
fn removing_five_watched_torrents_does_not_hold_up_a_term() {
    let work = TempDir::new("stop-silent-unwatch");
    let silent = SilentTracker::start();
    let home = patient_home("stop-silent-unwatch");
    home.write_config();
    let ps = five_torrents(&home, &work, &silent.announce_url());
    let mut d = home.start("btd daemon");
    let added: Vec<PathBuf> = ps
        .iter()
        .map(|p| {
            let file = drop_into(
                &home.watch_dir(),
                &format!("{}.torrent", p.name),
                &p.torrent,
            );
            watch_renamed(&file, "added")
        })
        .collect();
    wait_until(within(SHORT), "the watch files renamed *.added", || {
        added.iter().all(|f| f.exists())
    });
    wait_all_seeding(&mut d, &ps);
    silent.wait_connections(5, SHORT);

    let mark = d.log_mark();
    for f in &added {
        fs::remove_file(f).unwrap_or_else(|e| panic!("remove {}: {e}", f.display()));
    }
    wait_removal_begun(&mut d, mark, &ps);
    term_exits_in_time(&mut d, "SIGTERM right after five watch files went away");
}

#[test]
fn a_stop_timeout_that_cannot_fit_the_stop_budget_is_refused_at_start() {
    let mut home = DaemonHome::new("stop-timeout-too-long");
    home.set("announce", "stop_timeout_secs", 10).write_config();
    let mut d = home.spawn("btd daemon (stop_timeout_secs = 10)");
    let deadline = within(SHORT);
    while !d.proc.has_exited() {
        assert!(
            Instant::now() < deadline,
            "the daemon started with announce.stop_timeout_secs = 10, which cannot fit a 5 s stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = d.proc.wait_exit(SHORT);
    assert_eq!(status.code(), Some(2), "{}", d.proc.log_text());
    let stderr: String = d
        .proc
        .log_text()
        .lines()
        .filter(|l| l.starts_with("  [err] "))
        .collect();
    assert!(
        stderr.contains("announce.stop_timeout_secs"),
        "the refusal does not name announce.stop_timeout_secs: {}",
        d.proc.log_text()
    );
    assert!(
        !home.pid_file().exists(),
        "a refused start left {}",
        home.pid_file().display()
    );
}
