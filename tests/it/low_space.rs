//! The free-space guard (`[disk] min_free_mib`, issue 15): a torrent whose file system fills up
//! pauses in state `low-space` with the free and needed figures, no error, while a torrent on
//! another file system carries on; once space is freed it resumes by itself (no SIGHUP) and
//! completes with the right data. The small file system is a tmpfs mounted in the daemon's own
//! mount namespace (`DaemonHome::start_with_tmpfs`), so it goes away with the daemon.

use crate::support::daemon::{DaemonHome, LtSeeder, TorrentEntry, TorrentStatus, payload};
use crate::support::{SHORT, TRANSFER, TempDir, assert_same_files};
use std::fs;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

#[test]
fn a_torrent_pauses_in_low_space_while_another_file_system_carries_on_and_resumes_by_itself() {
    let work = TempDir::new("low-space");
    // Both payloads in one directory, served by one libtorrent seeder at 1 MiB/s per torrent,
    // so the small file system's torrent is caught half way.
    let small_fs = payload(&work, "seed", "low-space-tmpfs", 8 * MIB, 64 * KIB, &[]);
    let other_fs = payload(&work, "seed", "low-space-other", 4 * MIB, 64 * KIB, &[]);
    let lt = LtSeeder::start(
        "libtorrent seeder (1 MiB/s)",
        &[&small_fs.torrent, &other_fs.torrent],
        &small_fs.dir,
        MIB,
        false,
    );
    let mut home = DaemonHome::new("low-space");
    let tmpfs = home.path().join("tmpfs");
    home.set("disk", "min_free_mib", 8)
        .add_torrent(
            TorrentEntry::new(&small_fs.torrent)
                .download_dir(&tmpfs)
                .peers(&[lt.addr]),
        )
        .add_torrent(TorrentEntry::new(&other_fs.torrent).peers(&[lt.addr]))
        .write_config();
    // 32 MiB: the torrent (8 MiB) fits with 8 MiB to spare until the ballast comes.
    let mut d = home.start_with_tmpfs("btd daemon", &tmpfs, 32);
    let of = |t: &[TorrentStatus], hash: &str| -> TorrentStatus {
        t.iter()
            .find(|t| t.info_hash == hash)
            .cloned()
            .expect("the torrent in the status")
    };
    d.wait_status(TRANSFER, "the tmpfs torrent downloading, 1 MiB in", |s| {
        let t = of(&s.torrents, &small_fs.info_hash);
        t.state == "downloading" && t.have_bytes.unwrap_or(0) >= MIB
    });

    // 18 MiB of ballast: free = 14 MiB - have, and it still needs 8 MiB - have, so free is
    // below 8 MiB + needed whatever it had by now.
    let ballast = d.ns_path(&tmpfs.join("ballast"));
    fs::write(&ballast, vec![0xa5u8; 18 << 20])
        .unwrap_or_else(|e| panic!("write {}: {e}", ballast.display()));
    let s = d.wait_status(SHORT, "the tmpfs torrent in low-space", |s| {
        of(&s.torrents, &small_fs.info_hash).state == "low-space"
    });
    let low = of(&s.torrents, &small_fs.info_hash);
    assert_eq!(low.error, None, "low space is no error: {low:?}");
    // A few looks later the figures are those of a torrent that no longer writes.
    let mut last = d.snapshot().expect("a status file");
    let until = Instant::now() + Duration::from_secs(3);
    let first_have = low.have_bytes.expect("have_bytes");
    while Instant::now() < until {
        last = d.next_snapshot(&last, SHORT);
        let t = of(&last.status.torrents, &small_fs.info_hash);
        assert_eq!(
            t.state, "low-space",
            "it resumed with the ballast still there: {t:?}"
        );
        assert_eq!(
            t.have_bytes,
            Some(first_have),
            "it kept downloading in low-space: {t:?}"
        );
    }
    let t = of(&last.status.torrents, &small_fs.info_hash);
    let (free, needed) = (
        t.free_bytes.expect("free_bytes while low-space"),
        t.needed_bytes.expect("needed_bytes while low-space"),
    );
    assert_eq!(needed, t.size_bytes - first_have, "{}", last.text);
    assert!(free < 8 * MIB + needed, "not low at all: {}", last.text);
    assert!(
        free <= 14 * MIB,
        "more free than the tmpfs can have: {}",
        last.text
    );
    let table = home.cli(&["status".into()]);
    table.assert_success();
    assert!(
        table.stdout.contains("low-space: low-space-tmpfs: ") && table.stdout.contains(" to write"),
        "btd status does not say why it waits:\n{}",
        table.stdout
    );
    d.wait_log_contains(0, SHORT, "torrent low-space-tmpfs: low on space");

    // The torrent on the other file system completes meanwhile, while the first still waits.
    let s = d.wait_status(TRANSFER, "the other torrent seeding", |s| {
        of(&s.torrents, &other_fs.info_hash).state == "seeding"
    });
    assert_eq!(of(&s.torrents, &small_fs.info_hash).state, "low-space");
    assert_same_files(&other_fs.data(), &home.download_dir().join(&other_fs.name));

    // Space back: it resumes by itself and completes with the right data.
    fs::remove_file(&ballast).unwrap_or_else(|e| panic!("remove {}: {e}", ballast.display()));
    d.wait_log_contains(0, SHORT, "torrent low-space-tmpfs: space is back");
    d.wait_status(TRANSFER, "the tmpfs torrent seeding", |s| {
        let t = of(&s.torrents, &small_fs.info_hash);
        assert_eq!(t.error, None, "{t:?}");
        t.state == "seeding"
    });
    assert_same_files(&small_fs.data(), &d.ns_path(&tmpfs.join(&small_fs.name)));
    assert!(
        !d.log_contains("retry in"),
        "a storage error stopped a torrent: the guard came too late"
    );
    d.stop("TERM");
}
