//! What a daemon keeps and shows (issue 12): a torrent's data location and seeding time belong
//! to the torrent and survive restarts and config changes; a reload re-evaluates seeding limits;
//! `status.json` tells queued downloads from queued seeds, shows `stopped` after a clean stop,
//! keeps a `[[torrent]]` whose file is missing (state `error`), shows check progress, an id and
//! the bytes had; the log says why resume data was not used and logs limits only when they change.
//!
//! Every daemon has its own directory, loopback address and port 0 (`support::daemon`).

use crate::support::daemon::{
    DaemonHome, Payload, Snapshot, Status, TorrentEntry, drop_into, files_in, watch_renamed, within,
};
use crate::support::{LtClient, SHORT, TRANSFER, TempDir, test_seed, wait_until};
use sha1::{Digest as _, Sha1};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A complete payload `dir/name/` (a data file of `size` bytes and `notes/readme.txt`) and its
/// torrent `work/<name>.torrent`, no trackers.
fn complete_payload(dir: &Path, work: &TempDir, name: &str, size: u64) -> Payload {
    Payload::create(
        dir,
        name,
        &[
            (&format!("{name}/data.bin"), size),
            (&format!("{name}/notes/readme.txt"), 1000),
        ],
        test_seed(name),
        &work.join(&format!("{name}.torrent")),
        32 * KIB,
        &[],
    )
}

fn state_of(s: &Status, p: &Payload) -> Option<String> {
    s.torrent(&p.info_hash).map(|t| t.state.clone())
}

/// `path` made absolute and free of symlinks, for comparing the paths a daemon reports.
fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|e| panic!("canonicalize {}: {e}", path.display()))
}

// ---- state across restarts ---------------------------------------------------------------

#[test]
fn a_new_download_dir_after_a_restart_leaves_complete_torrents_seeding_from_their_own_dir() {
    let work = TempDir::new("state-dir-change");
    let mut home = DaemonHome::new("state-dir-change");
    // Both complete in the daemon's download directory: one from `[[torrent]]` (no dir of its
    // own), one from the watch directory.
    let a = complete_payload(&home.download_dir(), &work, "dir-from-config", 300 * KIB);
    let b = complete_payload(&home.download_dir(), &work, "dir-from-watch", 200 * KIB);
    home.add_torrent(TorrentEntry::new(&a.torrent))
        .write_config();
    let mut d = home.start("btd daemon (old download_dir)");
    let dropped = drop_into(&home.watch_dir(), "dir-from-watch.torrent", &b.torrent);
    wait_until(within(SHORT), "the watch file renamed *.added", || {
        watch_renamed(&dropped, "added").exists()
    });
    d.wait_seeding(&a.info_hash, SHORT);
    d.wait_seeding(&b.info_hash, SHORT);
    d.stop("TERM");
    drop(d);

    let old_dir = home.download_dir();
    let new_dir = home.path().join("downloads-new");
    fs::create_dir_all(&new_dir).expect("create the new download dir");
    home.set("paths", "download_dir", "downloads-new")
        .write_config();
    let mut d = home.start("btd daemon (new download_dir)");
    let s = d.wait_snapshot(SHORT, "both torrents seeding", |s| {
        [&a, &b].iter().all(|p| {
            s.status
                .torrent(&p.info_hash)
                .is_some_and(|t| t.state == "seeding" && t.progress >= 1.0)
        })
    });
    for p in [&a, &b] {
        let t = s.status.torrent(&p.info_hash).expect("waited for it");
        let dir = t
            .download_dir
            .as_deref()
            .unwrap_or_else(|| panic!("no download_dir in the status: {}", s.text));
        assert_eq!(
            canonical(Path::new(dir)),
            canonical(&old_dir),
            "{} moved to another download_dir: {}",
            p.name,
            s.text
        );
    }
    let in_new = files_in(&new_dir);
    assert!(
        !in_new.contains(&a.name) && !in_new.contains(&b.name),
        "the new download_dir holds data of the old torrents: {in_new:?}"
    );

    // A torrent added now goes to the new directory: its data there seeds.
    let c = complete_payload(&new_dir, &work, "dir-added-later", 100 * KIB);
    drop_into(&home.watch_dir(), "dir-added-later.torrent", &c.torrent);
    let t = d.wait_seeding(&c.info_hash, SHORT);
    let dir = t.download_dir.expect("download_dir in the status");
    assert_eq!(canonical(Path::new(&dir)), canonical(&new_dir));
    assert!(
        !files_in(&old_dir).contains(&c.name),
        "the torrent added after the change went to the old dir"
    );
    d.stop("TERM");
}

#[test]
fn a_hup_that_changes_download_dir_says_so_in_the_log() {
    let mut home = DaemonHome::new("state-hup-dir");
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "a status", |_| true);
    fs::create_dir_all(home.path().join("elsewhere")).expect("create dir");
    home.set("paths", "download_dir", "elsewhere")
        .write_config();
    let mark = d.log_mark();
    d.reload();
    let line = d.wait_log_contains(mark, SHORT, "download_dir");
    assert!(
        line.contains("elsewhere"),
        "the reload's download_dir line does not name the new dir: {line}"
    );
    d.stop("TERM");
}

#[test]
fn seeding_time_counts_across_restarts_for_the_time_limit() {
    let work = TempDir::new("state-seed-time");
    let mut home = DaemonHome::new("state-seed-time");
    let p = complete_payload(&home.download_dir(), &work, "seed-time", 100 * KIB);
    home.set("seeding", "time_limit_mins", 1)
        .add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();
    let mut d = home.start("btd daemon (first run)");
    d.wait_seeding(&p.info_hash, SHORT);
    let seeding_from = Instant::now();
    // 35 of the 60 seconds in the first run.
    let s = d.wait_snapshot(Duration::from_secs(50), "35 s of seeding", |_| {
        seeding_from.elapsed() >= Duration::from_secs(35)
    });
    let t = s.status.torrent(&p.info_hash).expect("torrent");
    assert_eq!(t.state, "seeding", "{}", s.text);
    let secs = t
        .seeding_secs
        .unwrap_or_else(|| panic!("no seeding_secs in the status: {}", s.text));
    assert!(
        (30..=45).contains(&secs),
        "seeding_secs {secs} after 35 s of seeding: {}",
        s.text
    );
    d.stop("TERM");
    drop(d);

    // 25 s are left: the limit fires well before a minute after the restart.
    let restarted = Instant::now();
    let mut d = home.start("btd daemon (second run)");
    d.wait_snapshot(SHORT, "the earlier seeding time in the status", |s| {
        s.status
            .torrent(&p.info_hash)
            .and_then(|t| t.seeding_secs)
            .is_some_and(|secs| secs >= 30)
    });
    let s = d.wait_snapshot(
        Duration::from_secs(45),
        "the time limit reached about 25 s after the restart",
        |s| {
            s.status
                .torrent(&p.info_hash)
                .is_some_and(|t| t.state == "finished")
        },
    );
    let took = restarted.elapsed();
    assert!(
        took >= Duration::from_secs(15),
        "finished {took:?} after the restart: the first run seeded only 35 of the 60 s: {}",
        s.text
    );
    d.wait_log_contains(0, SHORT, "seeding time limit reached");
    let secs = s
        .status
        .torrent(&p.info_hash)
        .and_then(|t| t.seeding_secs)
        .expect("seeding_secs");
    assert!(secs >= 55, "finished at seeding_secs {secs}: {}", s.text);
    d.stop("TERM");
}

#[test]
fn a_hup_raising_the_ratio_limit_lets_a_finished_torrent_seed_again() {
    let work = TempDir::new("state-raise-limit");
    let mut home = DaemonHome::new("state-raise-limit");
    let p = complete_payload(&home.download_dir(), &work, "raised-limit", 4 * MIB);
    // 1 MiB/s up: the daemon sees the ratio pass 0.5 long before the leecher is done.
    home.set("seeding", "ratio_limit", 0.5)
        .set("rates", "upload_kib_per_sec", 1024)
        .add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&p.info_hash, SHORT);
    let out = work.subdir("leecher");
    let lt = LtClient::leech_from("libtorrent leecher", &p.torrent, &out, d.addr());
    d.wait_status(TRANSFER, "the ratio limit reached", |s| {
        state_of(s, &p).as_deref() == Some("finished")
    });
    drop(lt);

    home.set("seeding", "ratio_limit", 0.0).write_config();
    let mark = d.log_mark();
    d.reload();
    d.wait_status(SHORT, "the torrent seeding again", |s| {
        matches!(state_of(s, &p).as_deref(), Some("seeding" | "queued_seed"))
    });
    d.wait_log_contains(mark, SHORT, "under its seeding limits again");
    d.stop("TERM");
}

// ---- what the admin sees -----------------------------------------------------------------

#[test]
fn a_complete_torrent_waiting_for_a_seed_slot_is_queued_seed() {
    let work = TempDir::new("state-queued-seed");
    let mut home = DaemonHome::new("state-queued-seed");
    let a = complete_payload(&home.download_dir(), &work, "seed-slot-one", 100 * KIB);
    let b = complete_payload(&home.download_dir(), &work, "seed-slot-two", 100 * KIB);
    home.set("queue", "max_active_seeds", 1)
        .add_torrent(TorrentEntry::new(&a.torrent))
        .add_torrent(TorrentEntry::new(&b.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    let s = d.wait_status(SHORT, "one seeding, one queued_seed", |s| {
        let mut states = [state_of(s, &a), state_of(s, &b)];
        states.sort();
        states == [Some("queued_seed".to_owned()), Some("seeding".to_owned())]
    });
    assert_eq!(s.torrents.len(), 2, "{s:?}");
    d.stop("TERM");
}

#[test]
fn every_torrent_is_stopped_in_the_status_after_a_clean_stop() {
    let work = TempDir::new("state-stopped");
    let mut home = DaemonHome::new("state-stopped");
    let seeding = complete_payload(&home.download_dir(), &work, "stop-seeding", 100 * KIB);
    // No peer has it: it downloads nothing and stays `downloading`.
    let missing = complete_payload(
        &work.subdir("elsewhere"),
        &work,
        "stop-downloading",
        100 * KIB,
    );
    home.add_torrent(TorrentEntry::new(&seeding.torrent))
        .add_torrent(TorrentEntry::new(&missing.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_status(SHORT, "one seeding, one downloading", |s| {
        state_of(s, &seeding).as_deref() == Some("seeding")
            && state_of(s, &missing).as_deref() == Some("downloading")
    });
    d.stop("TERM");
    let s = home.status().expect("a status file written at the stop");
    assert_eq!(s.torrents.len(), 2, "{s:?}");
    for t in &s.torrents {
        assert_eq!(t.state, "stopped", "after a clean stop: {s:?}");
    }
}

#[test]
fn a_torrent_entry_whose_file_is_missing_shows_as_an_error() {
    let work = TempDir::new("state-missing-file");
    let mut home = DaemonHome::new("state-missing-file");
    let good = complete_payload(&home.download_dir(), &work, "present", 100 * KIB);
    let gone = work.path().join("vanished.torrent");
    home.add_torrent(TorrentEntry::new(&gone))
        .add_torrent(TorrentEntry::new(&good.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&good.info_hash, SHORT);
    let s = d.wait_status(SHORT, "the missing torrent in state error", |s| {
        s.torrents.iter().any(|t| t.state == "error")
    });
    assert_eq!(s.torrents.len(), 2, "{s:?}");
    let t = s
        .torrents
        .iter()
        .find(|t| t.state == "error")
        .expect("waited for it");
    let why = t.error.as_deref().unwrap_or_default();
    assert!(
        why.contains("vanished.torrent"),
        "the error does not name the missing file: {t:?}"
    );
    d.stop("TERM");
}

#[test]
fn a_hup_without_changes_logs_no_limits_changed() {
    let work = TempDir::new("state-hup-quiet");
    let mut home = DaemonHome::new("state-hup-quiet");
    let a = complete_payload(&home.download_dir(), &work, "quiet-one", 100 * KIB);
    let b = complete_payload(&home.download_dir(), &work, "quiet-two", 100 * KIB);
    home.add_torrent(TorrentEntry::new(&a.torrent))
        .add_torrent(TorrentEntry::new(&b.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&a.info_hash, SHORT);
    d.wait_seeding(&b.info_hash, SHORT);
    let mark = d.log_mark();
    d.reload();
    // Time for the running torrents to take in the (unchanged) limits.
    let s = d.snapshot().expect("status");
    let s = d.next_snapshot(&s, SHORT);
    d.next_snapshot(&s, SHORT);
    let noisy: Vec<String> = d
        .log_lines()
        .into_iter()
        .skip(mark)
        .filter(|l| l.contains("limits changed"))
        .collect();
    assert!(
        noisy.is_empty(),
        "a SIGHUP that changed nothing logged:\n{}",
        noisy.join("\n")
    );
    d.stop("TERM");
}

/// A torrent of one file of `size` zero bytes in `piece` pieces, made by hand (every piece has
/// the same hash, so nothing is read to make it); returns its bytes and info hash.
fn zero_torrent(name: &str, size: u64, piece: u64) -> (Vec<u8>, String) {
    assert_eq!(size % piece, 0, "whole pieces only");
    let hash = Sha1::digest(vec![
        0u8;
        usize::try_from(piece).expect("a piece fits memory")
    ]);
    let count = usize::try_from(size / piece).expect("piece count");
    let mut info = format!(
        "d6:lengthi{size}e4:name{}:{name}12:piece lengthi{piece}e6:pieces{}:",
        name.len(),
        20 * count
    )
    .into_bytes();
    for _ in 0..count {
        info.extend_from_slice(&hash);
    }
    info.push(b'e');
    let info_hash = crate::support::hex(&Sha1::digest(&info));
    let mut torrent = b"d4:info".to_vec();
    torrent.extend_from_slice(&info);
    torrent.push(b'e');
    (torrent, info_hash)
}

#[test]
fn checking_shows_its_progress_in_the_status() {
    const SIZE: u64 = 4 * 1024 * MIB;
    let work = TempDir::new("state-check-progress");
    let mut home = DaemonHome::new("state-check-progress");
    // A sparse file of zeros: nothing on disk, but every byte is hashed when there is no resume
    // data (4 GiB: seconds even for the fastest SHA-1 on one thread).
    let data = work.subdir("data");
    let file = fs::File::create(data.join("big-zeros.bin")).expect("create the big file");
    file.set_len(SIZE).expect("make it sparse, 4 GiB");
    drop(file);
    let (bytes, info_hash) = zero_torrent("big-zeros.bin", SIZE, 4 * MIB);
    let torrent = work.join("big-zeros.torrent");
    fs::write(&torrent, bytes).expect("write the torrent");
    home.set("disk", "hash_threads", 1)
        .add_torrent(TorrentEntry::new(&torrent).download_dir(&data))
        .write_config();
    let mut d = home.start("btd daemon");
    let mut seen: Vec<(String, Option<f64>)> = Vec::new();
    d.wait_snapshot(TRANSFER, "a status showing the check under way", |s| {
        let Some(t) = s.status.torrent(&info_hash) else {
            return false;
        };
        if seen.last() != Some(&(t.state.clone(), t.check_progress)) {
            seen.push((t.state.clone(), t.check_progress));
        }
        assert!(
            t.state != "checking" || t.check_progress.is_some(),
            "state checking without check_progress: {}",
            s.text
        );
        assert!(
            matches!(t.state.as_str(), "queued" | "checking"),
            "the check ended with no status showing 0 < check_progress < 1; states and \
             check_progress seen: {seen:?}; status: {}",
            s.text
        );
        t.state == "checking" && t.check_progress.is_some_and(|p| p > 0.0 && p < 1.0)
    });
    d.stop("TERM");
}

#[test]
fn a_first_start_logs_no_resume_data() {
    let work = TempDir::new("state-no-resume");
    let mut home = DaemonHome::new("state-no-resume");
    let p = complete_payload(&home.download_dir(), &work, "first-start", 100 * KIB);
    home.add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&p.info_hash, SHORT);
    let line = d.wait_log_contains(0, SHORT, "no resume data");
    assert!(line.contains(&p.name), "which torrent? {line}");
    d.stop("TERM");
}

#[test]
fn a_touched_file_is_named_when_resume_data_is_not_used() {
    let work = TempDir::new("state-touched");
    let mut home = DaemonHome::new("state-touched");
    let p = complete_payload(&home.download_dir(), &work, "touched", 200 * KIB);
    home.add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();
    let mut d = home.start("btd daemon (first run)");
    d.wait_seeding(&p.info_hash, SHORT);
    d.stop("TERM");
    drop(d);
    assert!(home.resume_file(&p.info_hash).exists(), "no resume data");

    // Same bytes, another mtime.
    let touched = p.data().join("notes/readme.txt");
    let f = fs::File::options()
        .write(true)
        .open(&touched)
        .expect("open the file");
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("set its mtime");
    drop(f);

    let mut d = home.start("btd daemon (second run)");
    let line = d.wait_log_contains(0, SHORT, "resume data not used");
    assert!(
        line.contains("readme.txt"),
        "the log does not name the file that changed: {line}"
    );
    d.wait_seeding(&p.info_hash, SHORT);
    d.stop("TERM");
}

#[test]
fn the_status_shows_an_id_and_the_bytes_had_of_each_torrent_and_no_check_progress_when_not_checking()
 {
    let work = TempDir::new("state-fields");
    let mut home = DaemonHome::new("state-fields");
    let a = complete_payload(&home.download_dir(), &work, "fields-one", 100 * KIB);
    let b = complete_payload(&home.download_dir(), &work, "fields-two", 150 * KIB);
    home.add_torrent(TorrentEntry::new(&a.torrent))
        .add_torrent(TorrentEntry::new(&b.torrent))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&a.info_hash, SHORT);
    d.wait_seeding(&b.info_hash, SHORT);
    let s: Snapshot = d.snapshot().expect("status");
    let ids: Vec<Option<u32>> = s.status.torrents.iter().map(|t| t.id).collect();
    assert!(ids.iter().all(Option::is_some), "no id: {}", s.text);
    assert_ne!(ids[0], ids[1], "two torrents, one id: {}", s.text);
    for t in &s.status.torrents {
        assert_eq!(
            t.have_bytes,
            Some(t.size_bytes),
            "a complete torrent: {}",
            s.text
        );
        assert_eq!(t.check_progress, None, "not checking: {}", s.text);
    }
    d.stop("TERM");
}
