//! Peer exchange (BEP 11) with real clients: two libtorrent leechers that only know a btd
//! seeder learn of each other from btd's `ut_pex` messages and connect; btd learns of peers from
//! libtorrent's; and the `added.f` "prefers encryption" flag both ways: btd sets it for a peer
//! that reached it over MSE, and dials a peer flagged so encrypted first even in `tolerated`;
//! a private torrent (BEP 27) neither offers `ut_pex` nor acts on a PEX message.

use crate::support::{
    Btd, LtClient, PeerSpec, Rng, SHORT, TempDir, download_args, next_ip, test_seed, write_payload,
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
    let mut args = download_args(torrent.clone(), &out, &next_ip().to_string());
    args.extend(["--peer".into(), seeder.addr.to_string().into()]);
    let mut cmd = Btd::command(args);
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

/// Our handshake with the BEP 10 bit set, then an extended handshake offering `ut_pex` (id 5)
/// with `listen_port` as `p` (none when 0): a fake peer that takes btd's PEX messages.
fn fake_pex_peer(
    name: &str,
    btd: std::net::SocketAddr,
    meta: &crate::support::fake_peer::TorrentMeta,
    listen_port: u16,
) -> crate::support::fake_peer::FakePeer {
    use crate::support::fake_peer::{FakePeer, frame, handshake_bytes};
    let mut fake = FakePeer::connect(name, next_ip(), btd);
    let mut hs = handshake_bytes(&meta.info_hash, &fake.peer_id());
    hs[20 + 5] |= 0x10;
    fake.send_raw("handshake with the extension bit", &hs);
    fake.expect_handshake(&meta.info_hash, within(SHORT));
    let mut ext = vec![0u8];
    if listen_port == 0 {
        ext.extend_from_slice(b"d1:md6:ut_pexi5eee");
    } else {
        ext.extend_from_slice(format!("d1:md6:ut_pexi5ee1:pi{listen_port}ee").as_bytes());
    }
    fake.send_raw("extended handshake with ut_pex", &frame(20, &ext));
    fake
}

/// `btd download --encryption tolerated` into `out` with `peer` as its only `--peer`, and the
/// fake's side of btd's first connection (which `accept` takes only when it opens in plaintext),
/// btd's handshake read.
fn tolerated_leecher_of(
    fx: &crate::support::fake_peer::Fixture,
    label: &str,
    peer: &crate::support::fake_peer::FakeListener,
    out: &std::path::Path,
) -> (Btd, crate::support::fake_peer::FakePeer) {
    let btd = crate::support::fake_peer::btd_download_with(
        &format!("btd leecher (tolerated, {label})"),
        fx.torrent.to_str().unwrap(),
        out,
        &["--encryption", "tolerated"],
        next_ip(),
        &[peer.addr()],
    );
    let mut fake = peer.accept(within(SHORT));
    fake.expect_handshake(&fx.meta.info_hash, within(SHORT));
    (btd, fake)
}

fn within(d: Duration) -> std::time::Instant {
    std::time::Instant::now() + d
}

/// BEP 11 `added.f` 0x01 out: a btd seeder tells a peer about a libtorrent leecher that reached
/// it over MSE (RC4, `pe_forced`) with the "prefers encryption" flag, and about a plaintext
/// peer without it; neither is a seed (0x02 clear).
#[test]
fn btd_flags_a_peer_that_connected_over_mse_as_preferring_encryption_in_its_pex() {
    use crate::support::fake_peer::{FakeListener, Fixture, Msg, pex_added_v4};
    let fx = Fixture::new("pex-flag-out", 8 * MIB, 32 * 1024);
    // A slow seeder, so the libtorrent leecher is still a leecher when the PEX goes out.
    let config = fx.tmp.path().join("slow.toml");
    std::fs::write(&config, "[rates]\nupload_kib_per_sec = 256\n").unwrap();
    let mut cmd = Btd::command([
        OsString::from("--config"),
        config.into(),
        "seed".into(),
        fx.torrent.clone().into(),
        "-d".into(),
        fx.seed_dir.clone().into(),
        "--bind".into(),
        next_ip().to_string().into(),
        "--port".into(),
        "0".into(),
    ]);
    cmd.env("RUST_LOG", "info,btd::torrent=debug,btd::peer::conn=debug");
    let mut seeder = Btd::spawn("btd seeder (preferred)", cmd);
    let addr = seeder.wait_listening();
    let lt_dir = fx.out_dir("lt");
    let mut lt = LtClient::forced_rc4("leech", &fx.torrent, &lt_dir, vec![addr], &[]);
    let lt_addr = lt.wait_listening();
    let rc4 = lt.proc.wait_for_line(SHORT, "a PEER line for btd", |l| {
        let rest = l.strip_prefix("PEER ")?;
        Some(rest.split(' ').any(|f| f == "rc4=1"))
    });
    assert!(rc4, "libtorrent's connection to btd is not RC4");
    // The plaintext peer, then the one that hears of both in btd's first PEX message to it.
    let plain_listener = FakeListener::bind("plaintext peer's listener", next_ip());
    let plain = fake_pex_peer(
        "plaintext peer",
        addr,
        &fx.meta,
        plain_listener.addr().port(),
    );
    let plain_at = std::net::SocketAddr::new(plain.local_addr().ip(), plain_listener.addr().port());
    let mut probe = fake_pex_peer("pex probe", addr, &fx.meta, 0);
    let (msg, _) = probe.wait_for(
        within(SHORT),
        "a ut_pex message naming the libtorrent leecher and the plaintext peer",
        |m| match m {
            Msg::Other { id: 20, payload } if payload.first() == Some(&5) => {
                pex_added_v4(&payload[1..]).is_ok_and(|added| {
                    added.iter().any(|(a, _)| *a == lt_addr)
                        && added.iter().any(|(a, _)| *a == plain_at)
                })
            }
            _ => false,
        },
    );
    let Msg::Other { payload, .. } = msg else {
        unreachable!()
    };
    let added = pex_added_v4(&payload[1..]).unwrap();
    let flags_of = |at| added.iter().find(|(a, _)| *a == at).unwrap().1;
    assert_eq!(flags_of(lt_addr), 0x01, "the MSE peer's flags in {added:?}");
    assert_eq!(
        flags_of(plain_at),
        0x00,
        "the plaintext peer's flags in {added:?}"
    );
    drop((plain, probe));
    seeder.terminate_and_assert_ok(SHORT);
    lt.proc.terminate_and_assert_ok(SHORT);
}

/// BEP 11 `added.f` 0x01 in: btd in `tolerated` mode (plaintext first) learns of a libtorrent
/// seeder that refuses plaintext (`pe_forced`) only through PEX. Flagged 0x01, its first dial
/// is encrypted (no refused plaintext attempt in btd's log); unflagged, btd tries plaintext
/// first and falls back, which is what the flag saves. Both download the whole file.
#[test]
fn btd_in_tolerated_mode_dials_a_pex_peer_flagged_encrypted_encrypted_first() {
    use crate::support::fake_peer::{FakeListener, Fixture, compact_v4, frame, take_pex_from_btd};
    let fx = Fixture::new("pex-flag-in", 2 * MIB, 32 * 1024);
    let mut lt = LtClient::forced_rc4("seed", &fx.torrent, &fx.seed_dir, vec![], &[]);
    let lt_addr = lt.wait_listening();
    lt.wait_seeding();
    for flags in [0x01u8, 0x00] {
        let source = FakeListener::bind("pex source", next_ip());
        let out = fx.out_dir(&format!("out-{flags}"));
        let (mut btd, mut fake) =
            tolerated_leecher_of(&fx, &format!("flag {flags:#04x}"), &source, &out);
        take_pex_from_btd(&mut fake, &fx.meta.info_hash);
        let mut pex = vec![2u8];
        pex.extend_from_slice(b"d5:added6:");
        pex.extend(compact_v4(lt_addr));
        pex.extend_from_slice(b"7:added.f1:");
        pex.push(flags);
        pex.push(b'e');
        fake.send_raw("ut_pex naming the libtorrent seeder", &frame(20, &pex));
        btd.assert_exits_ok(crate::support::TRANSFER);
        crate::support::assert_same_files(&fx.payload(), &out.join(&fx.name));
        let log = btd.proc.output();
        let refused = format!("peer {lt_addr}: plaintext handshake refused");
        let preferred = format!("peer {lt_addr}: it prefers encryption: dialling encrypted first");
        if flags & 0x01 != 0 {
            assert!(log.contains(&preferred), "no '{preferred}' in:\n{log}");
            assert!(!log.contains(&refused), "a plaintext attempt first:\n{log}");
        } else {
            assert!(!log.contains(&preferred), "flag 0 taken as 0x01:\n{log}");
            assert!(log.contains(&refused), "no plaintext attempt first:\n{log}");
        }
        drop(fake);
    }
    let peers = lt.proc.output();
    assert!(
        peers
            .lines()
            .filter(|l| l.starts_with("PEER "))
            .all(|l| l.contains("rc4=1")),
        "libtorrent saw an unencrypted peer:\n{peers}"
    );
    lt.proc.terminate_and_assert_ok(SHORT);
}

/// BEP 11 `added.f` 0x02 with 0x01: a btd leecher downloading from a libtorrent seeder over RC4
/// tells a peer about it as a seed that prefers encryption (0x03).
#[test]
fn btd_flags_a_seed_it_reached_over_mse_as_a_seed_preferring_encryption() {
    use crate::support::fake_peer::{Fixture, Msg, btd_download_with, pex_added_v4};
    let fx = Fixture::new("pex-flag-seed", 4 * MIB, 32 * 1024);
    // A slow seeder, so btd is still downloading when its PEX goes out.
    let slow = ["--upload-limit", "262144"];
    let mut lt = LtClient::forced_rc4("seed", &fx.torrent, &fx.seed_dir, vec![], &slow);
    let lt_addr = lt.wait_listening();
    lt.wait_seeding();
    let out = fx.out_dir("out");
    let mut btd = btd_download_with(
        "btd leecher (preferred)",
        fx.torrent.to_str().unwrap(),
        &out,
        &[],
        next_ip(),
        &[lt_addr],
    );
    let addr = btd.wait_listening();
    let mut probe = fake_pex_peer("pex probe", addr, &fx.meta, 0);
    let (msg, _) = probe.wait_for(
        within(SHORT),
        "a ut_pex message naming the libtorrent seeder",
        |m| match m {
            Msg::Other { id: 20, payload } if payload.first() == Some(&5) => {
                pex_added_v4(&payload[1..]).is_ok_and(|a| a.iter().any(|(a, _)| *a == lt_addr))
            }
            _ => false,
        },
    );
    let Msg::Other { payload, .. } = msg else {
        unreachable!()
    };
    let added = pex_added_v4(&payload[1..]).unwrap();
    assert_eq!(added, vec![(lt_addr, 0x03)], "btd's PEX");
    drop(probe);
    btd.assert_exits_ok(crate::support::TRANSFER);
    crate::support::assert_same_files(&fx.payload(), &out.join(&fx.name));
    lt.proc.terminate_and_assert_ok(SHORT);
}

/// The extended handshake's `e=1` is remembered: btd in `tolerated` mode dials a peer in
/// plaintext, hears `e=1` from it, and when it dials it again (after the peer hung up) the
/// first bytes are an MSE key, not a plaintext handshake. A peer that did not say `e=1` is
/// dialled in plaintext again.
#[test]
fn btd_in_tolerated_mode_redials_a_peer_that_said_e1_encrypted_first() {
    use crate::support::fake_peer::{FakeListener, Fixture, extend_with_btd};
    let fx = Fixture::new("pex-e-redial", MIB, 32 * 1024);
    for says_e in [true, false] {
        let listener = FakeListener::bind("peer", next_ip());
        let out = fx.out_dir(&format!("out-{says_e}"));
        let label = format!("peer says e={}", u8::from(says_e));
        let (mut btd, mut first) = tolerated_leecher_of(&fx, &label, &listener, &out);
        let ours: &[u8] = if says_e { b"d1:ei1e1:mdee" } else { b"d1:mdee" };
        extend_with_btd(&mut first, &fx.meta.info_hash, ours);
        // Hang up once btd's coordinator has taken it in (it logs the peer's client then).
        let taken = format!("{}: client ", listener.addr());
        btd.proc
            .wait_for_line(SHORT, "btd taking the extended handshake", |l| {
                l.contains(&taken).then_some(())
            });
        drop(first);
        assert_eq!(
            listener.next_opens_in_plaintext(within(SHORT)),
            !says_e,
            "btd's second dial, after the peer said e={}",
            u8::from(says_e)
        );
        btd.proc.terminate_and_assert_ok(SHORT);
    }
}

/// BEP 11 `added.f` 0x02 in: a seeding btd told of two peers by PEX dials the one without the
/// flag and never the one flagged a seed (neither side would take anything).
#[test]
fn a_seeding_btd_does_not_dial_a_pex_peer_flagged_a_seed() {
    use crate::support::fake_peer::{FakeListener, Fixture, compact_v4, frame, take_pex_from_btd};
    let fx = Fixture::new("pex-flag-seed-in", MIB, 32 * 1024);
    let source = FakeListener::bind("pex source", next_ip());
    let seed_peer = FakeListener::bind("a seed, flagged 0x02", next_ip());
    let leech_peer = FakeListener::bind("a leecher, flagged 0x00", next_ip());
    let mut btd = Btd::seed(
        "btd seeder",
        &fx.torrent,
        &fx.seed_dir,
        next_ip(),
        &[source.addr()],
    );
    let mut fake = source.accept(within(SHORT));
    fake.expect_handshake(&fx.meta.info_hash, within(SHORT));
    take_pex_from_btd(&mut fake, &fx.meta.info_hash);
    let mut pex = vec![2u8];
    pex.extend_from_slice(b"d5:added12:");
    pex.extend(compact_v4(seed_peer.addr()));
    pex.extend(compact_v4(leech_peer.addr()));
    pex.extend_from_slice(b"7:added.f2:");
    pex.extend_from_slice(&[0x02, 0x00]);
    pex.push(b'e');
    fake.send_raw("ut_pex naming a seed and a leecher", &frame(20, &pex));
    assert!(
        leech_peer.dialled_by(within(SHORT)),
        "btd never dialled the unflagged PEX peer:\n{}",
        btd.proc.output()
    );
    // The leecher was dialled: the seed, told of in the same message, had its chance too.
    assert!(
        !seed_peer.dialled_by(within(Duration::from_secs(3))),
        "a seeding btd dialled a peer PEX flagged a seed:\n{}",
        btd.proc.output()
    );
    drop(fake);
    btd.proc.terminate_and_assert_ok(SHORT);
}

/// BEP 27: a private torrent never touches PEX. A fake peer offers `ut_pex` and sends btd a PEX
/// message naming a listener: for a public torrent btd offers `ut_pex` back and dials the
/// listener (so the test can fail); for a private one its extended handshake has no `ut_pex`
/// and the PEX message (sent under the id btd uses for public torrents) is ignored: nothing
/// dials the listener.
#[test]
fn a_private_torrent_offers_no_ut_pex_and_ignores_pex_messages() {
    use crate::support::fake_peer::{FakeListener, Msg, TorrentMeta, btd_download_with, frame};
    let tmp = TempDir::new("pex-private");
    let mut rng = Rng::new(test_seed("pex_private"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, &[("pex-private.bin", MIB + 5)], &mut rng);
    for private in [false, true] {
        let torrent = tmp.path().join(format!("private-{private}.torrent"));
        let mut create: Vec<OsString> = vec![
            "create".into(),
            seed_dir.join("pex-private.bin").into(),
            "-o".into(),
            torrent.clone().into(),
        ];
        if private {
            create.push("--private".into());
        }
        Btd::run(create).assert_success();
        let meta = TorrentMeta::read(&torrent);
        let out = tmp.subdir(&format!("out-{private}"));
        let mut btd = btd_download_with(
            &format!("btd leecher (private {private})"),
            torrent.to_str().expect("utf-8 path"),
            &out,
            &["--encryption", "tolerated"],
            next_ip(),
            &[],
        );
        let addr = btd.wait_listening();
        let named = FakeListener::bind("peer named by pex", next_ip());

        let mut fake = fake_pex_peer("fake pex peer", addr, &meta, 0);
        let (ext, _) = fake.wait_for(
            within(SHORT),
            "btd's extended handshake",
            |m| matches!(m, Msg::Other { id: 20, payload } if payload.first() == Some(&0)),
        );
        let Msg::Other { payload, .. } = ext else {
            unreachable!()
        };
        let offers_pex = payload.windows(6).any(|w| w == b"ut_pex");
        assert_eq!(
            offers_pex,
            !private,
            "private {private}: btd's extended handshake {:?}",
            String::from_utf8_lossy(&payload)
        );
        let std::net::SocketAddr::V4(to) = named.addr() else {
            unreachable!("FakeListener binds IPv4")
        };
        let mut pex = vec![2u8]; // btd's ut_pex id for public torrents
        pex.extend_from_slice(b"d5:added6:");
        pex.extend_from_slice(&to.ip().octets());
        pex.extend_from_slice(&to.port().to_be_bytes());
        pex.push(b'e');
        fake.send_raw("ut_pex naming the listener", &frame(20, &pex));
        let dialled = named.try_accept(within(Duration::from_secs(if private {
            5
        } else {
            SHORT.as_secs()
        })));
        assert_eq!(
            dialled.is_some(),
            !private,
            "private {private}: btd {} the peer named by PEX\n{}",
            if private { "dialled" } else { "never dialled" },
            btd.log_text()
        );
        drop(fake);
        btd.terminate_and_assert_ok(SHORT);
    }
}
