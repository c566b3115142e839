//! Local service discovery (BEP 14) with libtorrent, each test in a network namespace of its
//! own (loopback up, 239.0.0.0/8 routed to it), so no announce reaches a real network. Every
//! process gets its own loopback address; no tracker, no DHT and no `--peer`: LSD is the only
//! way the peers find each other. IPv6 (`[ff15::efc0:988f]:6771`) runs over a veth pair inside
//! the namespace, since IPv6 multicast does not loop back on `lo`.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::daemon::{DaemonHome, TorrentEntry, within};
use crate::support::{
    Btd, LtClient, PeerSpec, Rng, SHORT, TRANSFER, TempDir, TorrentInfo, assert_same_files,
    download_args, mktorrent, next_ip, run_to_end, test_seed, wait_until, write_payload,
};

const MIB: u64 = 1024 * 1024;

/// Runs `f` on a thread of its own in a new network namespace where loopback is up and carries
/// the multicast routes (239.0.0.0/8); the processes `f` starts inherit it and it goes away with
/// them. Needs root, as the other namespace tests do.
fn in_lsd_namespace(f: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): the integration tests run as root");
        for args in ["link set lo up", "route add 239.0.0.0/8 dev lo"] {
            let mut cmd = Command::new("ip");
            cmd.args(args.split(' '));
            run_to_end(&format!("ip {args}"), cmd, SHORT).assert_success();
        }
        f();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// `btd download|seed ...` with LSD on (as `config/btd.toml` has it: no `--no-lsd`), logging
/// LSD and the coordinator's peer sources.
fn btd_with_lsd(args: &[OsString]) -> Command {
    let mut cmd = Command::new(Btd::BIN);
    cmd.args(args).env(
        "RUST_LOG",
        "info,btd::lsd=debug,btd::torrent::coordinator=debug,btd::metadata_fetch=debug",
    );
    cmd
}

/// `btd download WHAT -o OUT --bind BIND --port 0` with LSD on, then `more`.
fn lsd_download(what: impl Into<OsString>, out: &Path, bind: &str, more: &[&str]) -> Command {
    let mut args = download_args(what, out, bind);
    args.extend(more.iter().map(OsString::from));
    btd_with_lsd(&args)
}

/// A payload of one file and its trackerless torrent (mktorrent), public unless `private`.
fn payload(tmp: &TempDir, name: &str, size: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut rng = Rng::new(test_seed(name));
    let seed_dir = tmp.subdir(&format!("{name}-seed"));
    write_payload(&seed_dir, &[(name, size)], &mut rng);
    let torrent = tmp.join(&format!("{name}.torrent"));
    mktorrent(&seed_dir.join(name), &torrent, 15, &[]);
    (seed_dir, torrent)
}

fn lt_spec<'a>(torrent: &'a Path, dir: &'a Path) -> PeerSpec<'a> {
    PeerSpec {
        torrent,
        dir,
        ip: next_ip(),
        peers: Vec::new(),
        announce: false,
    }
}

#[test]
fn btd_download_finds_a_libtorrent_seeder_through_lsd_alone() {
    in_lsd_namespace(|| {
        let tmp = TempDir::new("lsd-lt-seeder");
        let (seed_dir, torrent) = payload(&tmp, "lsd-a.bin", 3 * MIB + 5);
        let out = tmp.subdir("out");
        // btd first: libtorrent announces when its torrent starts, and btd must hear it.
        let mut btd = Btd::spawn(
            "btd download (lsd)",
            lsd_download(&torrent, &out, &next_ip().to_string(), &[]),
        );
        btd.proc.wait_for_line(SHORT, "lsd: announcing", |l| {
            l.contains("lsd: announcing on 239.192.152.143:6771")
                .then_some(())
        });
        let mut lt = LtClient::with_lsd(
            "libtorrent seeder (lsd)",
            "seed",
            &lt_spec(&torrent, &seed_dir),
        );
        let lt_addr = lt.wait_listening();
        btd.assert_exits_ok(TRANSFER);
        assert_same_files(&seed_dir.join("lsd-a.bin"), &out.join("lsd-a.bin"));
        // Either side may hear the other's announce first (btd dials the seeder, or the seeder
        // dials btd); nothing else tells either of the other.
        let output = btd.proc.output();
        let dialled_in = output
            .lines()
            .any(|l| l.contains(&format!(" {}:", lt_addr.ip())) && l.contains("connected (in)"));
        assert!(
            output.contains(&format!("lsd gave [{lt_addr}]")) || dialled_in,
            "btd met no peer at {} through LSD:\n{output}",
            lt_addr.ip()
        );
        lt.terminate_and_assert_ok(SHORT);
    });
}

#[test]
fn btd_download_of_a_bare_magnet_gets_its_metadata_from_a_libtorrent_seeder_found_by_lsd() {
    in_lsd_namespace(|| {
        let tmp = TempDir::new("lsd-magnet");
        let (seed_dir, torrent) = payload(&tmp, "lsd-m.bin", MIB + 3);
        let info_hash = TorrentInfo::read(&torrent).info_hash;
        let out = tmp.subdir("out");
        // No tr, no x.pe, no --peer: only LSD can find the seeder.
        let mut btd = Btd::spawn(
            "btd download magnet (lsd)",
            lsd_download(
                format!("magnet:?xt=urn:btih:{info_hash}"),
                &out,
                &next_ip().to_string(),
                &["--metadata-timeout", "60"],
            ),
        );
        btd.proc.wait_for_line(SHORT, "lsd: announcing", |l| {
            l.contains("lsd: announcing on 239.192.152.143:6771")
                .then_some(())
        });
        let mut lt = LtClient::with_lsd(
            "libtorrent seeder (lsd)",
            "seed",
            &lt_spec(&torrent, &seed_dir),
        );
        let lt_addr = lt.wait_listening();
        btd.assert_exits_ok(TRANSFER);
        assert_same_files(&seed_dir.join("lsd-m.bin"), &out.join("lsd-m.bin"));
        // Either side may hear the other's announce first: btd dials the seeder it heard, or
        // the seeder dials the btd it heard. Nothing else tells either of the other.
        let output = btd.proc.output();
        assert!(
            output.contains(&format!("metadata: lsd gave [{lt_addr}]"))
                || output.contains(&format!("metadata: peer {}:", lt_addr.ip())),
            "the metadata fetch met no peer at {} through LSD:\n{output}",
            lt_addr.ip()
        );
        lt.terminate_and_assert_ok(SHORT);
    });
}

#[test]
fn a_libtorrent_leecher_finds_btd_seed_through_its_announce() {
    in_lsd_namespace(|| {
        let tmp = TempDir::new("lsd-lt-leecher");
        let (seed_dir, torrent) = payload(&tmp, "lsd-b.bin", 2 * MIB + 77);
        let out = tmp.subdir("out");
        // libtorrent first: its own start-up announce finds nobody, so it learns of btd only
        // from btd's announce and dials it.
        let mut lt = LtClient::with_lsd(
            "libtorrent leecher (lsd)",
            "leech",
            &lt_spec(&torrent, &out),
        );
        lt.wait_listening();
        let mut btd = Btd::spawn(
            "btd seed (lsd)",
            btd_with_lsd(&[
                "seed".into(),
                torrent.clone().into(),
                "-d".into(),
                seed_dir.clone().into(),
                "--bind".into(),
                next_ip().to_string().into(),
                "--port".into(),
                "0".into(),
            ]),
        );
        btd.wait_listening();
        lt.wait_complete(TRANSFER);
        assert_same_files(&seed_dir.join("lsd-b.bin"), &out.join("lsd-b.bin"));
        btd.terminate_and_assert_ok(SHORT);
    });
}

#[test]
fn a_parked_daemon_seed_with_lsd_on_serves_a_libtorrent_leecher_it_heard_announce() {
    in_lsd_namespace(|| {
        let tmp = TempDir::new("lsd-daemon");
        let (seed_dir, torrent) = payload(&tmp, "lsd-c.bin", 2 * MIB + 1);
        let info_hash = TorrentInfo::read(&torrent).info_hash;
        let mut home = DaemonHome::new("lsd-daemon-home");
        // Slow enough (about 8 s) for the status file to show the leecher connected.
        home.set("lsd", "enabled", true)
            .set("rates", "upload_kib_per_sec", 256)
            .add_torrent(TorrentEntry::new(&torrent).download_dir(&seed_dir))
            .write_config();
        let mut daemon = home.start("btd daemon (lsd)");
        daemon.wait_seeding(&info_hash, SHORT);
        daemon.wait_log_contains(0, SHORT, "lsd: announcing on 239.192.152.143:6771");
        // The RPC says so (Transmission's `lpd-enabled`), and that the DHT is off here.
        let rpc_at = daemon.wait_log_after(
            0,
            SHORT,
            "the RPC's address",
            crate::support::parse_rpc_serving,
        );
        let session = crate::support::rpc_client::RpcClient::new(rpc_at).ok(
            "session-get",
            serde_json::json!({"fields": ["lpd-enabled", "dht-enabled", "pex-enabled"]}),
        );
        assert_eq!(
            (
                &session["lpd-enabled"],
                &session["dht-enabled"],
                &session["pex-enabled"]
            ),
            (
                &serde_json::json!(true),
                &serde_json::json!(false),
                &serde_json::json!(true)
            ),
            "session-get: {session:?}"
        );
        // A seed with nothing going on parks (its coordinator thread ends) though LSD keeps
        // it registered: LSD's peers ring its doorbell.
        wait_until(
            within(SHORT),
            "the seed's coordinator thread to end (parked)",
            || {
                !daemon
                    .thread_names()
                    .iter()
                    .any(|n| n.starts_with("torrent "))
            },
        );
        // libtorrent after btd's start-up announce: btd learns of it from libtorrent's own
        // announce and dials it, its coordinator woken by what LSD delivers.
        let out = tmp.subdir("out");
        let mut lt = LtClient::with_lsd(
            "libtorrent leecher (lsd)",
            "leech",
            &lt_spec(&torrent, &out),
        );
        lt.wait_listening();
        let status = daemon.wait_status(TRANSFER, "one peer from lsd", |s| {
            s.torrent(&info_hash)
                .is_some_and(|t| t.peers_by_source.lsd == 1)
        });
        let t = status.torrent(&info_hash).unwrap();
        assert_eq!(t.peers, 1, "{t:?}");
        assert_eq!(
            t.peers_by_source.tracker + t.peers_by_source.pex + t.peers_by_source.manual,
            0,
            "{t:?}"
        );
        lt.wait_complete(TRANSFER);
        assert_same_files(&seed_dir.join("lsd-c.bin"), &out.join("lsd-c.bin"));
        daemon.stop("TERM");
    });
}

#[test]
fn a_private_torrent_is_never_announced_while_a_public_one_is() {
    in_lsd_namespace(|| {
        let tmp = TempDir::new("lsd-private");
        let (pub_dir, public) = payload(&tmp, "lsd-public.bin", 100_000);
        let mut rng = Rng::new(test_seed("lsd-private.bin"));
        let priv_dir = tmp.subdir("lsd-private-seed");
        write_payload(&priv_dir, &[("lsd-private.bin", 100_000)], &mut rng);
        let private = tmp.join("lsd-private.torrent");
        Btd::run([
            OsString::from("create"),
            priv_dir.join("lsd-private.bin").into(),
            "-o".into(),
            private.clone().into(),
            "--private".into(),
        ])
        .assert_success();
        let public_hash = TorrentInfo::read(&public).info_hash;
        let private_hash = TorrentInfo::read(&private).info_hash;

        // A listener on the group, as any host on the LAN would be.
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        socket.set_reuse_address(true).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 6771)).into())
            .unwrap();
        socket
            .join_multicast_v4(&Ipv4Addr::new(239, 192, 152, 143), &Ipv4Addr::UNSPECIFIED)
            .unwrap();
        let socket: UdpSocket = socket.into();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();

        let mut home = DaemonHome::new("lsd-private-home");
        home.set("lsd", "enabled", true)
            .add_torrent(TorrentEntry::new(&private).download_dir(&priv_dir))
            .add_torrent(TorrentEntry::new(&public).download_dir(&pub_dir))
            .write_config();
        let mut daemon = home.start("btd daemon (private and public)");
        daemon.wait_seeding(&public_hash, SHORT);
        daemon.wait_seeding(&private_hash, SHORT);

        let mut heard = String::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + SHORT;
        let mut public_seen_at = None;
        // Everything announced up to 2 s after the public torrent's announce.
        while Instant::now() < deadline
            && public_seen_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(2))
        {
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                if public_seen_at.is_none() && text.contains(&public_hash) {
                    public_seen_at = Some(Instant::now());
                }
                heard.push_str(&text);
            }
        }
        assert!(
            public_seen_at.is_some(),
            "no announce of the public torrent {public_hash} within {SHORT:?}; heard:\n{heard}"
        );
        assert!(
            !heard.contains(&private_hash),
            "the private torrent {private_hash} was announced:\n{heard}"
        );
        assert!(heard.starts_with("bt-search * http/1.1\r\n"), "{heard}");
        daemon.stop("TERM");
    });
}

/// BEP 14 over IPv6: `[ff15::efc0:988f]:6771`. IPv6 multicast does not loop back on `lo`, so
/// the namespace gets a veth pair (both ends inside it, nothing leaves) with `fd00::1` and
/// `fd00::2`; btd binds the first, a libtorrent seeder with LSD the second; no IPv4 at all,
/// no tracker, no DHT, no `--peer`.
#[test]
fn btd_download_finds_a_libtorrent_seeder_through_ipv6_lsd() {
    in_lsd_namespace(|| {
        let mut veth = Command::new("ip");
        veth.args("link add v0 type veth peer name v1".split(' '));
        if !run_to_end("ip link add (veth)", veth, SHORT)
            .status
            .success()
        {
            eprintln!("no veth here (kernel module); IPv6 LSD is covered by the unit tests");
            return;
        }
        for args in [
            "link set v0 up",
            "link set v1 up",
            "-6 addr add fd00::1/64 dev v0 nodad",
            "-6 addr add fd00::2/64 dev v1 nodad",
        ] {
            let mut cmd = Command::new("ip");
            cmd.args(args.split(' '));
            run_to_end(&format!("ip {args}"), cmd, SHORT).assert_success();
        }
        let tmp = TempDir::new("lsd-v6");
        let (seed_dir, torrent) = payload(&tmp, "lsd-v6.bin", 2 * MIB + 9);
        let out = tmp.subdir("out");
        let mut btd = Btd::spawn(
            "btd download (lsd, ipv6)",
            lsd_download(&torrent, &out, "fd00::1", &[]),
        );
        btd.proc
            .wait_for_line(SHORT, "lsd: announcing on the IPv6 group", |l| {
                l.contains("lsd: announcing on [ff15::efc0:988f]:6771")
                    .then_some(())
            });
        let mut lt = Command::new(crate::support::PYTHON);
        lt.arg(crate::support::client_script("lt_client.py"))
            .args(["seed", "--torrent"])
            .arg(&torrent)
            .arg("--dir")
            .arg(&seed_dir)
            .args(["--bind", "fd00::2", "--lsd", "--timeout"])
            .arg(TRANSFER.as_secs().to_string())
            .env("DIE_WITH_PARENT", "1");
        let mut lt = crate::support::Proc::spawn("libtorrent seeder (lsd, ipv6)", lt);
        lt.wait_for_line(SHORT, "LISTENING <port>", |l| {
            l.strip_prefix("LISTENING ").map(|_| ())
        });
        btd.assert_exits_ok(TRANSFER);
        assert_same_files(&seed_dir.join("lsd-v6.bin"), &out.join("lsd-v6.bin"));
        let output = btd.proc.output();
        assert!(
            output.contains("lsd gave [[fd00::") || output.contains("connected (in)"),
            "btd met no peer through LSD over IPv6:\n{output}"
        );
        lt.terminate_and_assert_ok(SHORT);
    });
}
