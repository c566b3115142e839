//! Parked torrents (issue 16): a seed with nothing going on ends its coordinator thread
//! (`torrent NAME`) and keeps its state; a leecher that dials it brings the thread back, and its
//! totals stay exact through parking and a restart (which starts it parked on its resume data).
//!
//! The daemon is `support::daemon`'s (own directory, loopback address, port 0, no DHT or LSD);
//! the leechers are libtorrent (`scripts/clients/lt_client.py`), which find it by `--peer`.

use crate::support::daemon::{Daemon, DaemonHome, Payload, TorrentEntry, within};
use crate::support::{LtClient, SHORT, TRANSFER, TempDir, assert_same_files, test_seed};
use std::time::Duration;

const KIB: u64 = 1024;
const SIZE: u64 = 4 * 1024 * KIB;
const PIECE: u64 = 256 * KIB;
/// Short enough that the thread's name (`torrent NAME`, at most 15 bytes in /proc) is whole.
const NAME: &str = "parked";

/// Whether the torrent's coordinator thread runs.
fn coordinator_runs(d: &Daemon) -> bool {
    d.thread_names()
        .iter()
        .any(|n| n == &format!("torrent {NAME}"))
}

/// Waits until the torrent's coordinator thread is gone (parked), within `timeout`.
fn wait_parked(d: &mut Daemon, timeout: Duration, what: &str) {
    let deadline = within(timeout);
    while coordinator_runs(d) {
        d.proc.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the coordinator still runs after {timeout:?}; threads: {:?}",
            d.thread_names()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Uploaded bytes of the torrent in a status file this daemon wrote after the call.
fn uploaded(d: &mut Daemon, info_hash: &str) -> u64 {
    let pid = d.pid();
    let first = d.wait_snapshot(SHORT, "a status file with the torrent", |s| {
        s.status.pid == pid && s.status.torrent(info_hash).is_some()
    });
    let s = d.next_snapshot(&first, SHORT);
    s.status.torrent(info_hash).expect("checked").uploaded_bytes
}

#[test]
fn a_parked_seed_serves_a_leecher_that_dials_it_and_its_totals_survive_parking_and_a_restart() {
    let work = TempDir::new("parking");
    let mut home = DaemonHome::new("parking");
    let p = Payload::create(
        &home.download_dir(),
        NAME,
        &[(&format!("{NAME}/data.bin"), SIZE)],
        test_seed(NAME),
        &work.join("parked.torrent"),
        PIECE,
        &[],
    );
    home.add_torrent(TorrentEntry::new(&p.torrent))
        .write_config();
    let mut d = home.start("btd daemon (parking seed)");
    d.wait_seeding(&p.info_hash, SHORT);
    wait_parked(&mut d, SHORT, "after the first start's check");
    assert_eq!(uploaded(&mut d, &p.info_hash), 0);

    // A leecher dials the parked torrent: its connection wakes the coordinator, which serves
    // every byte.
    let out = work.subdir("leecher-1");
    let mut lt = LtClient::leech_from("leecher-1", &p.torrent, &out, d.addr());
    lt.wait_complete(TRANSFER);
    assert_same_files(&p.data(), &out.join(NAME));
    drop(lt);
    let s = d.wait_snapshot(SHORT, "uploaded_bytes of one whole copy", |s| {
        s.status
            .torrent(&p.info_hash)
            .is_some_and(|t| t.uploaded_bytes >= SIZE)
    });
    let served = s
        .status
        .torrent(&p.info_hash)
        .expect("checked")
        .uploaded_bytes;
    assert!(
        served <= SIZE + PIECE,
        "one leecher took {SIZE} bytes but the daemon counted {served}: {}",
        s.text
    );
    // Nobody left: it parks again, and the totals stay as they were.
    wait_parked(&mut d, SHORT, "after the leecher left");
    assert_eq!(
        uploaded(&mut d, &p.info_hash),
        served,
        "parking changed the totals"
    );
    d.stop("TERM");

    // A restart on valid resume data starts it parked; the lifetime total is the same, and a
    // second leecher is served from the parked state.
    let mut d = home.start("btd daemon (parking seed, restarted)");
    d.wait_seeding(&p.info_hash, SHORT);
    wait_parked(&mut d, SHORT, "after the restart");
    assert_eq!(
        uploaded(&mut d, &p.info_hash),
        served,
        "the restart lost the totals"
    );
    let out = work.subdir("leecher-2");
    let mut lt = LtClient::leech_from("leecher-2", &p.torrent, &out, d.addr());
    lt.wait_complete(TRANSFER);
    assert_same_files(&p.data(), &out.join(NAME));
    drop(lt);
    d.wait_snapshot(SHORT, "uploaded_bytes of two whole copies", |s| {
        s.status
            .torrent(&p.info_hash)
            .is_some_and(|t| t.uploaded_bytes >= served + SIZE)
    });
    wait_parked(&mut d, SHORT, "after the second leecher left");
    d.stop("TERM");
}
