//! Peer exchange (BEP 11) with real clients: two libtorrent leechers that only know a btd
//! seeder learn of each other from btd's `ut_pex` messages and connect.

use crate::support::{
    Btd, LtClient, PeerSpec, Rng, SHORT, TempDir, next_ip, test_seed, write_payload,
};
use std::ffi::OsString;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

#[test]
fn libtorrent_leechers_find_each_other_through_btds_pex() {
    let tmp = TempDir::new("pex-lt");
    let mut rng = Rng::new(test_seed(
        "libtorrent_leechers_find_each_other_through_btds_pex",
    ));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, &[("pex-payload.bin", 16 * MIB)], &mut rng);
    let torrent = tmp.path().join("pex.torrent");
    Btd::run([
        OsString::from("create"),
        seed_dir.join("pex-payload.bin").into(),
        "-o".into(),
        torrent.clone().into(),
    ])
    .assert_success();
    // A slow seeder, so the leechers are still at it when the PEX messages arrive.
    let config = tmp.path().join("slow.toml");
    std::fs::write(&config, "[rates]\nupload_kib_per_sec = 512\n").unwrap();
    let ip = next_ip();
    let mut seeder = Btd::spawn(
        "btd seeder",
        Btd::command([
            OsString::from("--config"),
            config.into(),
            "seed".into(),
            torrent.clone().into(),
            "-d".into(),
            seed_dir.clone().into(),
            "--bind".into(),
            ip.to_string().into(),
            "--port".into(),
            "0".into(),
        ]),
    );
    let seeder_addr = seeder.wait_listening();
    let spec = |dir| PeerSpec {
        torrent: &torrent,
        dir,
        ip: next_ip(),
        peers: vec![seeder_addr],
        announce: false,
    };
    let (d1, d2) = (tmp.subdir("l1"), tmp.subdir("l2"));
    let mut l1 = LtClient::leech("libtorrent leecher 1", &spec(&d1));
    let mut l2 = LtClient::leech("libtorrent leecher 2", &spec(&d2));
    for l in [&mut l1, &mut l2] {
        // PROGRESS <fraction> <down> <up> <num_peers>: two peers = btd and the other leecher.
        l.proc.wait_for_line(
            Duration::from_secs(30),
            "a PROGRESS line with 2 peers",
            |line| {
                let peers: u32 = line
                    .strip_prefix("PROGRESS ")?
                    .split_whitespace()
                    .nth(3)?
                    .parse()
                    .ok()?;
                (peers >= 2).then_some(())
            },
        );
    }
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_hears_of_a_libtorrent_leecher_through_libtorrents_pex_and_connects_to_it() {
    use crate::support::daemon::LtSeeder;
    let tmp = TempDir::new("pex-from-lt");
    let mut rng = Rng::new(test_seed("btd_learns_of_a_libtorrent_leecher_through_pex"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, &[("pex-in.bin", 16 * MIB)], &mut rng);
    let torrent = tmp.path().join("pex-in.torrent");
    Btd::run([
        OsString::from("create"),
        seed_dir.join("pex-in.bin").into(),
        "-o".into(),
        torrent.clone().into(),
    ])
    .assert_success();
    let seeder = LtSeeder::start(
        "libtorrent seeder",
        &[&torrent],
        &seed_dir,
        1_000_000,
        false,
    );
    let mut leecher = LtClient::leech_from(
        "libtorrent leecher",
        &torrent,
        &tmp.subdir("lt"),
        seeder.addr,
    );
    let lt_addr = leecher.wait_listening();
    let out_dir = tmp.subdir("btd");
    let out = out_dir.clone();
    let mut cmd = Btd::command([
        OsString::from("download"),
        torrent.clone().into(),
        "-o".into(),
        out.into(),
        "--bind".into(),
        next_ip().to_string().into(),
        "--port".into(),
        "0".into(),
        "--peer".into(),
        seeder.addr.to_string().into(),
    ]);
    cmd.env("RUST_LOG", "info,btd::torrent=debug");
    let mut btd = Btd::spawn("btd leecher", cmd);
    let lt_ip = lt_addr.ip().to_string();
    let lt_listen = lt_addr.to_string();
    btd.proc.wait_for_line(
        Duration::from_secs(30),
        "a PEX message from the seeder naming the libtorrent leecher",
        |l| (l.contains("pex from") && l.contains(&lt_listen)).then_some(()),
    );
    // Whoever dials first (libtorrent learns of btd by PEX too), the two connect.
    btd.proc.wait_for_line(
        Duration::from_secs(30),
        "a connection with the leecher",
        |l| (l.contains(&format!(" {lt_ip}:")) && l.contains(": connected (")).then_some(()),
    );
    btd.assert_exits_ok(Duration::from_secs(60));
    crate::support::assert_same_files(&seed_dir, &out_dir);
}

/// Peers by source: a daemon's torrent gets a btd seeder from its tracker and, through that
/// seeder's PEX, a transmission leecher (which never dials loopback peers itself, so the only
/// way the daemon meets it is by dialling the address PEX gave). `status.json` counts each
/// connected peer under where its address came from.
#[test]
fn a_daemon_counts_its_peers_by_source_tracker_and_pex() {
    use crate::support::daemon::{DaemonHome, TorrentEntry};
    use crate::support::rpc_client::RpcClient;
    use crate::support::{
        RecordingTracker, TorrentInfo, TrackerReply, Transmission, parse_rpc_serving,
    };
    use serde_json::json;
    let tmp = TempDir::new("peer-sources");
    let mut rng = Rng::new(test_seed("a_daemon_counts_its_peers_by_source"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, &[("sources.bin", 4 * MIB)], &mut rng);
    let tracker = RecordingTracker::start();
    let torrent = tmp.path().join("sources.torrent");
    Btd::run([
        OsString::from("create"),
        seed_dir.join("sources.bin").into(),
        "-o".into(),
        torrent.clone().into(),
        "-t".into(),
        tracker.announce_url().into(),
    ])
    .assert_success();
    let info_hash = TorrentInfo::read(&torrent).info_hash;
    let leech_dir = tmp.subdir("transmission");
    let mut transmission = Transmission::leech(
        "transmission leecher",
        &PeerSpec {
            torrent: &torrent,
            dir: &leech_dir,
            ip: next_ip(),
            peers: Vec::new(),
            announce: false,
        },
    );
    let transmission_addr = transmission.wait_listening();
    // A slow seeder that dials the transmission leecher, so both are still at it when the
    // daemon arrives. Both btds encrypt first (the default): transmission closes that, and the
    // seeder connects to it a moment after the daemon connected to the seeder; the seeder's
    // first PEX message to the daemon must still come at its next tick, not a minute later.
    let config = tmp.path().join("slow.toml");
    std::fs::write(&config, "[rates]\nupload_kib_per_sec = 128\n").unwrap();
    let mut seeder = Btd::spawn(
        "btd seeder",
        Btd::command([
            OsString::from("--config"),
            config.into(),
            "seed".into(),
            torrent.clone().into(),
            "-d".into(),
            seed_dir.clone().into(),
            "--bind".into(),
            next_ip().to_string().into(),
            "--port".into(),
            "0".into(),
            "--peer".into(),
            transmission_addr.to_string().into(),
        ]),
    );
    let seeder_addr = seeder.wait_listening();
    tracker.set_reply(TrackerReply {
        peers: vec![seeder_addr],
        ..TrackerReply::default()
    });
    let mut home = DaemonHome::new("peer-sources-daemon");
    home.add_torrent(TorrentEntry::new(&torrent)).write_config();
    let mut daemon = home.start("btd daemon");
    let status = daemon.wait_status(
        Duration::from_secs(60),
        "a peer from the tracker and one from PEX",
        |s| {
            s.torrent(&info_hash)
                .is_some_and(|t| t.peers_by_source.tracker >= 1 && t.peers_by_source.pex >= 1)
        },
    );
    let t = status.torrent(&info_hash).unwrap();
    assert_eq!(
        (
            t.peers_by_source.tracker,
            t.peers_by_source.pex,
            t.peers_by_source.lsd
        ),
        (1, 1, 0),
        "{t:?}"
    );
    // The RPC's peersFrom says the same (Transmission's keys), and flagStr marks the PEX peer.
    let rpc_at = daemon.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving);
    let mut rpc = RpcClient::new(rpc_at);
    let t = rpc.torrents(json!([1]), &["peersFrom", "peers"]).remove(0);
    assert_eq!(t["peersFrom"]["fromTracker"], json!(1), "{t:?}");
    assert_eq!(t["peersFrom"]["fromPex"], json!(1), "{t:?}");
    assert_eq!(t["peersFrom"]["fromLpd"], json!(0), "{t:?}");
    let pex_peer = t["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == json!(transmission_addr.port()))
        .unwrap_or_else(|| panic!("no peer {transmission_addr} in {t:?}"));
    assert!(
        pex_peer["flagStr"].as_str().unwrap().contains('X'),
        "{pex_peer:?}"
    );
    // `btd status` has a line of them under the table.
    let out = home.cli(&["status".into()]);
    out.assert_success();
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("peers: sources.bin: "))
        .unwrap_or_else(|| panic!("no peers line: {}", out.description));
    assert!(line.contains(" tracker") && line.contains(" pex"), "{line}");
    daemon.wait_seeding(&info_hash, Duration::from_secs(120));
    daemon.stop("TERM");
    seeder.terminate_and_assert_ok(SHORT);
    drop(transmission);
}
