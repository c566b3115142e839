//! Message stream encryption (MSE/PE) against real clients on loopback: libtorrent with
//! `pe_forced` (RC4, then header-only), transmission-daemon with encryption required, btd
//! against btd in every pair of modes, and the pairs that must fail (btd `required` against a
//! peer that only speaks plaintext). A libtorrent peer's own `peer_info` flags tell whether the
//! connection was RC4 or header-only encrypted.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{
    Btd, LtClient, OpenTracker, PeerSpec, Rng, SHORT, ScriptClient, TRANSFER, TempDir, TorrentInfo,
    Transmission, aria2_crypto_required, assert_same_files, free_port, mktorrent, net_args,
    next_ip, test_seed, wait_until, write_payload,
};

const MIB: u64 = 1024 * 1024;

/// A payload of two files and its torrent (mktorrent, 32 KiB pieces).
fn payload(tmp: &TempDir, test: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let seed_dir = tmp.subdir("seed");
    write_payload(
        &seed_dir,
        &[("enc/a.bin", 3 * MIB + 77), ("enc/b.bin", MIB / 3)],
        &mut Rng::new(test_seed(test)),
    );
    let torrent = tmp.path().join("enc.torrent");
    mktorrent(&seed_dir.join("enc"), &torrent, 15, &[]);
    (seed_dir, torrent)
}

/// `btd download TORRENT -o OUT --bind IP --port 0 --peer ADDR --encryption MODE` with the
/// connection log on.
fn btd_download(
    name: &str,
    torrent: &std::path::Path,
    out: &std::path::Path,
    peer: SocketAddr,
    mode: &str,
) -> Btd {
    let mut args: Vec<OsString> = vec!["download".into(), torrent.into(), "-o".into(), out.into()];
    args.extend(net_args(next_ip(), &[peer]));
    args.extend(["--encryption".into(), mode.into()]);
    let mut cmd = Btd::command(args);
    cmd.env("RUST_LOG", "info,btd::peer::conn=debug,btd::listener=debug");
    Btd::spawn(name, cmd)
}

/// `btd seed TORRENT -d DIR --bind IP --port 0 [--peer ADDR] --encryption MODE`, listening.
fn btd_seed(
    name: &str,
    torrent: &std::path::Path,
    dir: &std::path::Path,
    peers: &[SocketAddr],
    mode: &str,
) -> (Btd, SocketAddr) {
    let mut args: Vec<OsString> = vec!["seed".into(), torrent.into(), "-d".into(), dir.into()];
    args.extend(net_args(next_ip(), peers));
    args.extend(["--encryption".into(), mode.into()]);
    let mut cmd = Btd::command(args);
    cmd.env("RUST_LOG", "info,btd::peer::conn=debug,btd::listener=debug");
    let mut btd = Btd::spawn(name, cmd);
    let addr = btd.wait_listening();
    (btd, addr)
}

/// The `PEER <addr> rc4=<0|1> plaintext_header=<0|1>` line of a libtorrent client started with
/// `--log-peers`, for its first peer: (rc4, header-only).
fn lt_peer_encryption(lt: &mut ScriptClient) -> (bool, bool) {
    lt.proc.wait_for_line(SHORT, "a PEER line", |l| {
        let rest = l.strip_prefix("PEER ")?;
        let flag = |key: &str| {
            rest.split(' ')
                .find_map(|f| f.strip_prefix(key))
                .map(|v| v == "1")
        };
        Some((flag("rc4=")?, flag("plaintext_header=")?))
    })
}

fn lt_seeder(
    name: &str,
    torrent: &std::path::Path,
    dir: &std::path::Path,
    options: &[&str],
) -> (ScriptClient, SocketAddr) {
    let spec = PeerSpec {
        torrent,
        dir,
        ip: next_ip(),
        peers: vec![],
        announce: false,
    };
    let mut lt = LtClient::with_options(name, "seed", &spec, options);
    let addr = lt.wait_listening();
    lt.wait_seeding();
    (lt, addr)
}

#[test]
fn btd_downloads_from_a_libtorrent_seeder_that_forces_rc4_in_required_and_preferred_modes() {
    let tmp = TempDir::new("enc-lt-rc4");
    let (seed_dir, torrent) = payload(&tmp, "enc_lt_rc4");
    for mode in ["required", "preferred"] {
        let (mut lt, lt_addr) = lt_seeder(
            "libtorrent seeder (pe_forced, rc4)",
            &torrent,
            &seed_dir,
            &[
                "--encryption",
                "forced",
                "--enc-level",
                "rc4",
                "--log-peers",
            ],
        );
        let out = tmp.subdir(&format!("out-{mode}"));
        let mut btd = btd_download(
            &format!("btd leecher ({mode})"),
            &torrent,
            &out,
            lt_addr,
            mode,
        );
        btd.assert_exits_ok(TRANSFER);
        assert_same_files(&seed_dir.join("enc"), &out.join("enc"));
        assert_eq!(
            lt_peer_encryption(&mut lt),
            (true, false),
            "libtorrent saw btd ({mode}) unencrypted"
        );
        lt.terminate_and_assert_ok(SHORT);
    }
}

#[test]
fn btd_takes_header_only_encryption_from_libtorrent_when_rc4_is_not_allowed() {
    let tmp = TempDir::new("enc-lt-header");
    let (seed_dir, torrent) = payload(&tmp, "enc_lt_header");
    let (mut lt, lt_addr) = lt_seeder(
        "libtorrent seeder (pe_forced, plaintext level)",
        &torrent,
        &seed_dir,
        &[
            "--encryption",
            "forced",
            "--enc-level",
            "plaintext",
            "--log-peers",
        ],
    );
    let out = tmp.subdir("out");
    let mut btd = btd_download(
        "btd leecher (preferred)",
        &torrent,
        &out,
        lt_addr,
        "preferred",
    );
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("enc"), &out.join("enc"));
    assert_eq!(lt_peer_encryption(&mut lt), (false, true));
    lt.terminate_and_assert_ok(SHORT);
}

#[test]
fn libtorrent_downloads_from_btd_in_required_mode_over_rc4_and_a_plaintext_peer_gets_nothing() {
    let tmp = TempDir::new("enc-lt-leech");
    let (seed_dir, torrent) = payload(&tmp, "enc_lt_leech");
    let (mut btd, btd_addr) = btd_seed(
        "btd seeder (required)",
        &torrent,
        &seed_dir,
        &[],
        "required",
    );

    // A libtorrent that only speaks plaintext: btd closes it, and it gets no byte.
    let plain_dir = tmp.subdir("plain");
    let mut plain = LtClient::with_options(
        "libtorrent leecher (plaintext only)",
        "leech",
        &PeerSpec {
            torrent: &torrent,
            dir: &plain_dir,
            ip: next_ip(),
            peers: vec![btd_addr],
            announce: false,
        },
        &["--encryption", "plaintext"],
    );
    btd.proc
        .wait_for_line(SHORT, "the plaintext peer refused", |l| {
            l.contains("plaintext handshake refused: encryption is required")
                .then_some(())
        });

    let out = tmp.subdir("out");
    let mut lt = LtClient::forced_rc4("leech", &torrent, &out, vec![btd_addr], &[]);
    lt.wait_complete(TRANSFER);
    assert_same_files(&seed_dir.join("enc"), &out.join("enc"));
    assert_eq!(lt_peer_encryption(&mut lt), (true, false));

    // Still nothing for the plaintext one: no PROGRESS above zero, no peer ever.
    let plain_progress: Vec<String> = plain
        .proc
        .output()
        .lines()
        .filter(|l| l.starts_with("PROGRESS ") && !l.starts_with("PROGRESS 0.000000"))
        .map(str::to_owned)
        .collect();
    assert!(
        plain_progress.is_empty(),
        "the plaintext peer got data: {plain_progress:?}"
    );
    plain.terminate_and_assert_ok(SHORT);
    btd.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_in_required_mode_gets_nothing_from_a_plaintext_only_libtorrent_and_says_why() {
    let tmp = TempDir::new("enc-lt-plain");
    let (seed_dir, torrent) = payload(&tmp, "enc_lt_plain");
    let (mut lt, lt_addr) = lt_seeder(
        "libtorrent seeder (plaintext only)",
        &torrent,
        &seed_dir,
        &["--encryption", "plaintext"],
    );
    let out = tmp.subdir("out");
    let mut btd = btd_download(
        "btd leecher (required)",
        &torrent,
        &out,
        lt_addr,
        "required",
    );
    // btd tries, fails the encryption handshake, and never falls back to plaintext.
    btd.proc
        .wait_for_line(SHORT, "the failed encrypted attempt", |l| {
            (l.contains(&lt_addr.to_string())
                && l.contains("encryption is required, so no plaintext retry"))
            .then_some(())
        });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !btd.proc.output().contains("trying plaintext"),
        "btd fell back to plaintext in required mode:\n{}",
        btd.proc.output()
    );
    btd.terminate_and_assert_ok(SHORT);
    let got: u64 = walk_size(&out);
    assert_eq!(got, 0, "btd wrote data it cannot have received");
    lt.terminate_and_assert_ok(SHORT);
}

/// Bytes of all regular files under `dir`.
fn walk_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk_size(&p)
                } else {
                    // A sparse preallocation is fine: count what was written.
                    std::fs::read(&p).map_or(0, |b| b.iter().filter(|&&x| x != 0).count() as u64)
                }
            })
            .sum()
    })
}

/// btd against btd in all nine pairs of modes: every pair connects (tolerated accepts
/// encrypted peers and retries encrypted when plaintext is refused), and the connection is
/// encrypted exactly when one side asks for it first.
#[test]
fn btd_to_btd_in_every_pair_of_modes() {
    let tmp = TempDir::new("enc-btd-btd");
    let (seed_dir, torrent) = payload(&tmp, "enc_btd_btd");
    let modes = ["tolerated", "preferred", "required"];
    for seeder in modes {
        let (mut seed, seed_addr) = btd_seed(
            &format!("btd seeder ({seeder})"),
            &torrent,
            &seed_dir,
            &[],
            seeder,
        );
        for leecher in modes {
            let out = tmp.subdir(&format!("out-{seeder}-{leecher}"));
            let mut btd = btd_download(
                &format!("btd leecher ({leecher} -> {seeder})"),
                &torrent,
                &out,
                seed_addr,
                leecher,
            );
            btd.assert_exits_ok(TRANSFER);
            assert_same_files(&seed_dir.join("enc"), &out.join("enc"));
            let log = btd.proc.output();
            let retried_encrypted = log.contains("trying encrypted");
            // tolerated dials in plaintext first; only a required seeder refuses that.
            let expect_retry = leecher == "tolerated" && seeder == "required";
            assert_eq!(
                retried_encrypted, expect_retry,
                "{leecher} -> {seeder}:\n{log}"
            );
            assert!(
                !log.contains("trying plaintext"),
                "{leecher} -> {seeder}:\n{log}"
            );
        }
        seed.terminate_and_assert_ok(SHORT);
    }
}

#[test]
fn btd_and_transmission_with_encryption_required_both_ways() {
    let tmp = TempDir::new("enc-tr");
    let (seed_dir, torrent) = payload(&tmp, "enc_tr");

    // transmission seeds; btd (required) dials it.
    let mut tr = Transmission::with_options(
        "transmission seeder (required)",
        "seed",
        &PeerSpec {
            torrent: &torrent,
            dir: &seed_dir,
            ip: next_ip(),
            peers: vec![],
            announce: false,
        },
        &["--encryption", "required"],
    );
    let tr_addr = tr.wait_listening();
    tr.wait_seeding();
    let out = tmp.subdir("out-btd");
    let mut btd = btd_download(
        "btd leecher (required)",
        &torrent,
        &out,
        tr_addr,
        "required",
    );
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("enc"), &out.join("enc"));
    tr.terminate_and_assert_ok(SHORT);

    // btd (required) seeds and dials a transmission leecher that requires encryption too
    // (transmission does not dial loopback peers).
    let tr_out = tmp.subdir("out-tr");
    let mut tr = Transmission::with_options(
        "transmission leecher (required)",
        "leech",
        &PeerSpec {
            torrent: &torrent,
            dir: &tr_out,
            ip: next_ip(),
            peers: vec![],
            announce: false,
        },
        &["--encryption", "required"],
    );
    let tr_addr = tr.wait_listening();
    let (mut seed, _) = btd_seed(
        "btd seeder (required)",
        &torrent,
        &seed_dir,
        &[tr_addr],
        "required",
    );
    tr.wait_complete(TRANSFER);
    assert_same_files(&seed_dir.join("enc"), &tr_out.join("enc"));
    seed.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_fetches_a_magnets_metadata_from_libtorrent_in_required_mode() {
    let tmp = TempDir::new("enc-magnet");
    let (seed_dir, torrent) = payload(&tmp, "enc_magnet");
    let info = TorrentInfo::read(&torrent);
    let (mut lt, lt_addr) = lt_seeder(
        "libtorrent seeder (pe_forced, rc4)",
        &torrent,
        &seed_dir,
        &["--encryption", "forced", "--enc-level", "rc4"],
    );
    let uri = format!("magnet:?xt=urn:btih:{}&x.pe={lt_addr}", info.info_hash);
    let out = tmp.subdir("out");
    let mut args: Vec<OsString> = vec![
        "download".into(),
        uri.into(),
        "-o".into(),
        out.clone().into(),
    ];
    args.extend(net_args(next_ip(), &[]));
    args.extend(["--encryption".into(), "required".into()]);
    let mut btd = Btd::spawn("btd magnet leecher (required)", Btd::command(args));
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("enc"), &out.join("enc"));
    lt.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_and_aria2_with_encryption_required_both_ways() {
    let tmp = TempDir::new("enc-aria2");
    let seed_dir = tmp.subdir("seed");
    write_payload(
        &seed_dir,
        &[("a2/data.bin", 2 * MIB + 5)],
        &mut Rng::new(test_seed("enc_aria2")),
    );
    let port = free_port(std::net::Ipv4Addr::LOCALHOST);
    let torrent = tmp.path().join("a2.torrent");
    mktorrent(
        &seed_dir.join("a2"),
        &torrent,
        15,
        &[OpenTracker::url_for(port)],
    );
    let info = TorrentInfo::read(&torrent);
    let tracker = OpenTracker::start(port, &[&info.info_hash]);
    // btd announces from 127.0.0.1 (the tracker lists that, not its --bind address), so the
    // side that announces second dials the first: aria2 first, then btd, each time.

    // aria2 (crypto required) waits as a leecher; btd (required) seeds and dials it.
    let a2_out = tmp.subdir("out-aria2");
    let mut leech =
        aria2_crypto_required("aria2 leecher (crypto required)", &torrent, &a2_out, false);
    wait_until(within(SHORT), "aria2 announced as a leecher", || {
        tracker.leechers(&info.info_hash) >= 1
    });
    let (mut seed, _) = btd_seed(
        "btd seeder (required)",
        &torrent,
        &seed_dir,
        &[],
        "required",
    );
    leech.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("a2"), &a2_out.join("a2"));
    seed.terminate_and_assert_ok(SHORT);

    // aria2 seeds; btd (required) downloads, dialling it.
    let mut a2_seed =
        aria2_crypto_required("aria2 seeder (crypto required)", &torrent, &seed_dir, true);
    wait_until(within(SHORT), "aria2 announced as a seeder", || {
        tracker.seeders(&info.info_hash) >= 1
    });
    let out = tmp.subdir("out-btd");
    let mut args: Vec<OsString> = vec![
        "download".into(),
        torrent.clone().into(),
        "-o".into(),
        out.clone().into(),
    ];
    args.extend(net_args(next_ip(), &[]));
    args.extend(["--encryption".into(), "required".into()]);
    let mut btd = Btd::spawn("btd leecher (required)", Btd::command(args));
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("a2"), &out.join("a2"));
    a2_seed.terminate_and_assert_ok(SHORT);
}

fn within(d: Duration) -> std::time::Instant {
    std::time::Instant::now() + d
}

/// A hostile initiator's cost is bounded (the responder's side of MSE). 70 connections from 70
/// addresses each send 96 random bytes, a Diffie-Hellman public key as far as btd can tell:
/// btd answers 64 at once with its own key (its handshake slots bound the DH work) and closes
/// the rest at once. Each answered one then sends 1 KiB without the `req1` hash that must come
/// within 512 bytes of padding after the key, and is closed at once, not at the handshake's
/// 10 s timeout. A libtorrent leecher that forces RC4 then downloads everything.
#[test]
fn a_flood_of_garbage_public_keys_costs_at_most_the_handshake_slots_and_an_honest_peer_completes() {
    use std::io::{ErrorKind, Read, Write};
    use std::time::Instant;
    let tmp = TempDir::new("enc-flood");
    let (seed_dir, torrent) = payload(&tmp, "enc_flood");
    let (mut btd, btd_addr) = btd_seed(
        "btd seeder (required)",
        &torrent,
        &seed_dir,
        &[],
        "required",
    );
    let mut rng = Rng::new(test_seed("enc_flood_keys"));
    let streams: Vec<std::net::TcpStream> = (0..70)
        .map(|_| {
            let mut s = crate::support::connect_from(next_ip(), btd_addr).expect("connect");
            let mut key = [0u8; 96];
            rng.fill(&mut key);
            // A write to a connection btd already closed may fail: that is a refusal too.
            let _ = s.write_all(&key);
            s
        })
        .collect();
    let mut answered = Vec::new();
    let mut refused = 0;
    for mut s in streams {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut key = [0u8; 96];
        match s.read_exact(&mut key) {
            Ok(()) => answered.push(s),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        (answered.len(), refused),
        (64, 6),
        "of 70 initiators btd answered (n, refused); want 64 answered"
    );
    let sent = Instant::now();
    let mut garbage = [0u8; 1024];
    rng.fill(&mut garbage);
    for s in &mut answered {
        let _ = s.write_all(&garbage);
    }
    for mut s in answered {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {} // the rest of btd's padding
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "an initiator with no req1 hash still open after {:?}: {e}",
                    sent.elapsed()
                ),
            }
        }
    }

    let out = tmp.subdir("out");
    let mut lt = LtClient::forced_rc4("leech", &torrent, &out, vec![btd_addr], &[]);
    lt.wait_complete(TRANSFER);
    assert_same_files(&seed_dir.join("enc"), &out.join("enc"));
    btd.terminate_and_assert_ok(SHORT);
}
