//! Trackers: a libtorrent seeder and a btd leecher find each other through opentracker alone;
//! a torrent whose tracker is down or answers garbage still downloads from a `--peer`.

use crate::support::{
    Btd, FakeTracker, LtClient, OpenTracker, SHORT, TRANSFER, TempDir, TorrentInfo,
    assert_same_files, closed_port, free_port, mktorrent, next_ip, seed_payload, wait_until,
};
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

const MIB: u64 = 1024 * 1024;

const FILES: &[(&str, u64)] = &[
    ("tracked/x.bin", 3 * MIB + 12),
    ("tracked/y.bin", 1234),
    ("tracked/z/w.bin", MIB + 99),
];

#[test]
fn btd_and_a_libtorrent_seeder_find_each_other_through_opentracker() {
    let tmp = TempDir::new("opentracker");
    let seed_dir = seed_payload(&tmp, "find_each_other_through_opentracker", FILES);
    let port = free_port(Ipv4Addr::LOCALHOST);
    let torrent = tmp.path().join("tracked.torrent");
    mktorrent(
        &seed_dir.join("tracked"),
        &torrent,
        15,
        &[OpenTracker::url_for(port)],
    );
    let info = TorrentInfo::read(&torrent);
    let tracker = OpenTracker::start(port, &[&info.info_hash]);

    let (mut lt, _) =
        LtClient::ready_seeder("libtorrent seeder", &torrent, &seed_dir, next_ip(), true);
    // opentracker's announce interval is 30 minutes: btd must find the seeder on its first
    // announce, so the seeder has to be registered before btd starts.
    wait_until(
        Instant::now() + SHORT,
        "opentracker to count the libtorrent seeder",
        || tracker.seeders(&info.info_hash) >= 1,
    );

    let out = tmp.subdir("out");
    let mut btd = Btd::download("btd leecher", &torrent, &out, next_ip(), &[], false);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("tracked"), &out.join("tracked"));
    lt.terminate_and_assert_ok(SHORT);
}

/// A btd seeder and a btd leecher given each other by `--peer`, with a torrent announcing to
/// `url`: the download completes whatever the tracker does.
fn download_with_tracker(tmp: &TempDir, seed_dir: &Path, url: &str) {
    let torrent = tmp.path().join("tracked.torrent");
    Btd::run([
        OsString::from("create"),
        seed_dir.join("tracked").into(),
        "-o".into(),
        torrent.clone().into(),
        "-t".into(),
        url.into(),
    ])
    .assert_success();
    let mut seeder = Btd::seed("btd seeder", &torrent, seed_dir, next_ip(), &[]);
    let seeder_addr = seeder.wait_listening();
    let out = tmp.subdir("out");
    let mut leecher = Btd::download(
        "btd leecher",
        &torrent,
        &out,
        next_ip(),
        &[seeder_addr],
        false,
    );
    leecher.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("tracked"), &out.join("tracked"));
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn download_completes_from_a_peer_when_the_tracker_port_is_closed() {
    let tmp = TempDir::new("dead-tracker");
    let seed_dir = seed_payload(&tmp, "tracker_port_is_closed", FILES);
    let url = format!("http://127.0.0.1:{}/announce", closed_port());
    download_with_tracker(&tmp, &seed_dir, &url);
}

#[test]
fn download_completes_from_a_peer_when_the_tracker_answers_garbage() {
    let tmp = TempDir::new("garbage-tracker");
    let seed_dir = seed_payload(&tmp, "tracker_answers_garbage", FILES);
    let fake = FakeTracker::garbage();
    download_with_tracker(&tmp, &seed_dir, &fake.announce_url());
    assert!(
        fake.requests() >= 1,
        "btd never announced to the torrent's tracker {}",
        fake.announce_url()
    );
}
