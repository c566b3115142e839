//! The DHT (BEP 5) against libtorrent's on loopback: a bare libtorrent node is the only
//! bootstrap node (`lt_client.py dht`), every libtorrent process runs its DHT bootstrapping from
//! it alone (loopback allowed, `dht_restrict_*_ips` off), every process has its own 127.x
//! address, and the magnet links carry only the info hash: no tracker, no `x.pe`, no `--peer`.
//! The peers are found through the DHT or not at all.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use crate::support::daemon::{DaemonHome, TorrentEntry};
use crate::support::{
    Btd, PYTHON, Proc, Rng, SHORT, TRANSFER, TempDir, TorrentInfo, assert_same_files,
    client_script, download_args, mktorrent, next_ip, test_seed, write_payload,
};

const MIB: u64 = 1024 * 1024;

/// A bare libtorrent DHT node on its own address: the swarm's only bootstrap node.
fn lt_router() -> (Proc, SocketAddr) {
    lt_router_on(IpAddr::V4(next_ip()))
}

fn lt_router_on(ip: IpAddr) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(client_script("lt_client.py"))
        .args(["dht", "--dir", "/nonexistent", "--bind", &ip.to_string()])
        .env("DIE_WITH_PARENT", "1");
    let mut proc = Proc::spawn("libtorrent dht node", cmd);
    let port = proc.wait_for_line(SHORT, "LISTENING <port>", |l| {
        l.strip_prefix("LISTENING ")?.trim().parse::<u16>().ok()
    });
    (proc, SocketAddr::new(ip, port))
}

/// `lt_client.py MODE ... --dht-bootstrap ROUTER`, with `--torrent` or `--magnet`.
fn lt_on_dht(
    name: &str,
    mode: &str,
    what: &[OsString],
    dir: &std::path::Path,
    router: SocketAddr,
) -> Proc {
    let bind = match router.ip() {
        IpAddr::V4(_) => IpAddr::V4(next_ip()),
        v6 => v6, // ::1: one address for all, each process on its own port
    };
    let mut cmd = Command::new(PYTHON);
    cmd.arg(client_script("lt_client.py"))
        .arg(mode)
        .args(what)
        .arg("--dir")
        .arg(dir)
        .args(["--bind", &bind.to_string()])
        .args(["--dht-bootstrap", &router.to_string()])
        .args(["--timeout", &TRANSFER.as_secs().to_string()])
        .env("DIE_WITH_PARENT", "1");
    Proc::spawn(name, cmd)
}

/// A payload and its mktorrent torrent (no tracker).
fn payload(tmp: &TempDir, test: &str) -> (std::path::PathBuf, std::path::PathBuf, TorrentInfo) {
    let mut rng = Rng::new(test_seed(test));
    let seed_dir = tmp.subdir("seed");
    write_payload(
        &seed_dir,
        &[
            ("dht-payload/a.bin", 2 * MIB + 77),
            ("dht-payload/b.txt", 5000),
        ],
        &mut rng,
    );
    let torrent = tmp.path().join("dht.torrent");
    mktorrent(&seed_dir.join("dht-payload"), &torrent, 15, &[]);
    let info = TorrentInfo::read(&torrent);
    (seed_dir, torrent, info)
}

/// `btd download MAGNET` with only the DHT to find peers.
fn btd_download_magnet_command(magnet: &str, out: &std::path::Path, router: SocketAddr) -> Command {
    let mut args = download_args(magnet, out, &next_ip().to_string());
    args.extend(["--dht-bootstrap".into(), router.to_string().into()]);
    Btd::command(args)
}

fn btd_download_magnet(name: &str, magnet: &str, out: &std::path::Path, router: SocketAddr) -> Btd {
    Btd::spawn(name, btd_download_magnet_command(magnet, out, router))
}

/// `btd seed TORRENT -d DIR --bind IP --port 0 --dht-bootstrap ROUTER`, started.
fn btd_seed_on_dht(
    name: &str,
    torrent: &std::path::Path,
    dir: &std::path::Path,
    ip: IpAddr,
    router: SocketAddr,
) -> Btd {
    let args: Vec<OsString> = vec![
        "seed".into(),
        torrent.into(),
        "-d".into(),
        dir.into(),
        "--bind".into(),
        ip.to_string().into(),
        "--port".into(),
        "0".into(),
        "--dht-bootstrap".into(),
        router.to_string().into(),
    ];
    Btd::spawn(name, Btd::command(args))
}

#[test]
fn btd_downloads_a_magnet_with_only_the_info_hash_from_a_libtorrent_seeder_found_on_the_dht() {
    let tmp = TempDir::new("dht-from-lt");
    let (seed_dir, torrent, info) = payload(&tmp, "dht_from_lt");
    let (mut router, router_addr) = lt_router();
    let mut seeder = lt_on_dht(
        "libtorrent seeder on the dht",
        "seed",
        &["--torrent".into(), torrent.clone().into()],
        &seed_dir,
        router_addr,
    );
    seeder.wait_for_line(SHORT, "SEEDING", |l| (l.trim() == "SEEDING").then_some(()));
    let out = tmp.subdir("out");
    let magnet = format!("magnet:?xt=urn:btih:{}", info.info_hash);
    let mut cmd = btd_download_magnet_command(&magnet, &out, router_addr);
    cmd.env("RUST_LOG", "info,btd::peer::session=debug");
    let mut btd = Btd::spawn("btd leecher", cmd);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("dht-payload"), &out.join("dht-payload"));
    // Both handshakes carried the DHT bit, so libtorrent told us its DHT port (BEP 5).
    assert!(
        btd.log_text().contains(": <- port "),
        "no port message from libtorrent:\n{}",
        btd.log_text()
    );
    seeder.terminate_and_assert_ok(SHORT);
    router.terminate_and_assert_ok(SHORT);
}

#[test]
fn a_libtorrent_leecher_downloads_a_trackerless_magnet_from_btd_seed_found_on_the_dht() {
    let tmp = TempDir::new("dht-to-lt");
    let (seed_dir, torrent, info) = payload(&tmp, "dht_to_lt");
    let (mut router, router_addr) = lt_router();
    let mut seeder = btd_seed_on_dht(
        "btd seed on the dht",
        &torrent,
        &seed_dir,
        next_ip().into(),
        router_addr,
    );
    seeder.wait_listening();
    let out = tmp.subdir("out");
    let magnet = format!("magnet:?xt=urn:btih:{}", info.info_hash);
    let mut leech = lt_on_dht(
        "libtorrent leecher on the dht",
        "leech",
        &["--magnet".into(), magnet.into()],
        &out,
        router_addr,
    );
    leech.wait_for_line(TRANSFER, "COMPLETE <seconds>", |l| {
        l.strip_prefix("COMPLETE ").map(|_| ())
    });
    leech.assert_exits_ok(SHORT);
    assert_same_files(&seed_dir.join("dht-payload"), &out.join("dht-payload"));
    seeder.terminate_and_assert_ok(SHORT);
    router.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_downloads_a_trackerless_magnet_from_btd_seed_through_the_dht() {
    let tmp = TempDir::new("dht-btd-btd");
    let (seed_dir, torrent, info) = payload(&tmp, "dht_btd_btd");
    let (mut router, router_addr) = lt_router();
    let mut seeder = btd_seed_on_dht(
        "btd seed on the dht",
        &torrent,
        &seed_dir,
        next_ip().into(),
        router_addr,
    );
    seeder.wait_listening();
    let out = tmp.subdir("out");
    let magnet = format!("magnet:?xt=urn:btih:{}", info.info_hash);
    let mut btd = btd_download_magnet("btd leecher", &magnet, &out, router_addr);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("dht-payload"), &out.join("dht-payload"));
    seeder.terminate_and_assert_ok(SHORT);
    router.terminate_and_assert_ok(SHORT);
}

#[test]
fn the_daemon_downloads_a_trackerless_magnet_through_the_dht_and_saves_its_routing_table() {
    let tmp = TempDir::new("dht-daemon");
    let (seed_dir, torrent, info) = payload(&tmp, "dht_daemon");
    let (mut router, router_addr) = lt_router();
    let mut seeder = lt_on_dht(
        "libtorrent seeder on the dht",
        "seed",
        &["--torrent".into(), torrent.clone().into()],
        &seed_dir,
        router_addr,
    );
    seeder.wait_for_line(SHORT, "SEEDING", |l| (l.trim() == "SEEDING").then_some(()));
    let mut home = DaemonHome::new("dht-daemon");
    home.set("dht", "enabled", true)
        .set(
            "dht",
            "bootstrap",
            vec![toml::Value::from(router_addr.to_string())],
        )
        .add_torrent(TorrentEntry::magnet(&format!(
            "magnet:?xt=urn:btih:{}",
            info.info_hash
        )));
    home.write_config();
    let mut d = home.spawn("btd daemon on the dht");
    d.wait_seeding(&info.info_hash, TRANSFER);
    assert_same_files(
        &seed_dir.join("dht-payload"),
        &home.path().join("downloads/dht-payload"),
    );
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.status_file()).expect("status.json"))
            .expect("status.json is JSON");
    let nodes = status["dht"]["nodes"].as_u64().unwrap_or(0);
    assert!(nodes >= 1, "status.json's dht: {}", status["dht"]);
    d.stop("TERM");
    let saved = std::fs::read(home.path().join("state/dht.dat")).expect("state/dht.dat");
    assert!(saved.starts_with(b"d2:id20:"), "{saved:?}");
    // The next start needs no bootstrap node: the saved nodes are pinged and answer.
    home.set("dht", "bootstrap", Vec::<toml::Value>::new());
    home.write_config();
    let _ = std::fs::remove_file(home.status_file()); // the first run's figures
    let mut d = home.spawn("btd daemon restarted on its saved routing table");
    d.wait_listening();
    let status_file = home.status_file();
    crate::support::wait_until(
        crate::support::daemon::within(SHORT),
        "status.json's dht.nodes >= 1 with no bootstrap node",
        || {
            std::fs::read(&status_file)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["dht"]["nodes"].as_u64())
                .is_some_and(|n| n >= 1)
        },
    );
    d.stop("TERM");
    seeder.terminate_and_assert_ok(SHORT);
    router.terminate_and_assert_ok(SHORT);
}

/// BEP 32: the same over IPv6 loopback: btd's DHT binds `::1` only (an IPv6 table, `nodes6`,
/// 18-byte peers), libtorrent's nodes too; skipped (with a note) where `::1` cannot be bound.
#[test]
fn a_libtorrent_leecher_finds_btd_seed_on_the_ipv6_dht() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no ::1 on this machine; the IPv6 paths are covered by unit tests");
        return;
    }
    let tmp = TempDir::new("dht-v6");
    let (seed_dir, torrent, info) = payload(&tmp, "dht_v6");
    let (mut router, router_addr) = lt_router_on("::1".parse().unwrap());
    let mut seeder = btd_seed_on_dht(
        "btd seed on the ipv6 dht",
        &torrent,
        &seed_dir,
        "::1".parse().unwrap(),
        router_addr,
    );
    seeder.wait_listening();
    let out = tmp.subdir("out");
    let magnet = format!("magnet:?xt=urn:btih:{}", info.info_hash);
    let mut leech = lt_on_dht(
        "libtorrent leecher on the ipv6 dht",
        "leech",
        &["--magnet".into(), magnet.into()],
        &out,
        router_addr,
    );
    leech.wait_for_line(TRANSFER, "COMPLETE <seconds>", |l| {
        l.strip_prefix("COMPLETE ").map(|_| ())
    });
    leech.assert_exits_ok(SHORT);
    assert_same_files(&seed_dir.join("dht-payload"), &out.join("dht-payload"));
    assert!(
        seeder.log_text().contains("(IPv6)"),
        "btd's DHT did not run on IPv6:\n{}",
        seeder.log_text()
    );
    seeder.terminate_and_assert_ok(SHORT);
    router.terminate_and_assert_ok(SHORT);
}

/// What btd says about the DHT on a connection: the DHT bit of its handshake, and the port of
/// the `port` message (BEP 5) among its first messages, if it sent one.
fn dht_signals(
    seed: SocketAddr,
    info_hash: &[u8; 20],
    from: std::net::Ipv4Addr,
) -> (bool, Option<u16>) {
    use std::io::{Read, Write};
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket
        .bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
        .expect("bind");
    socket
        .connect_timeout(&seed.into(), SHORT)
        .expect("connect to btd");
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .expect("timeout");
    let mut hello = crate::support::fake_peer::handshake_bytes(info_hash, b"-XX0001-dhtdhtdhtdht");
    hello[27] |= 0x01; // we run a DHT too
    stream.write_all(&hello).expect("send handshake");
    let mut theirs = [0u8; 68];
    stream.read_exact(&mut theirs).expect("btd's handshake");
    let dht_bit = theirs[27] & 0x01 != 0;
    // Its first messages (bitfield or have all, port, extended handshake) come at once.
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    let mut port = None;
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 3 && bytes.get(at + 4) == Some(&9) && at + 7 <= bytes.len() {
            port = Some(u16::from_be_bytes([bytes[at + 5], bytes[at + 6]]));
        }
        at += 4 + len;
    }
    (dht_bit, port)
}

/// BEP 27: a private torrent never touches the DHT, even in a process whose DHT runs: no DHT
/// bit in its handshakes and no `port` message, where a public torrent has both.
#[test]
fn a_private_torrent_shows_no_dht_bit_and_sends_no_port_message() {
    let tmp = TempDir::new("dht-private");
    let (seed_dir, _, _) = payload(&tmp, "dht_private");
    let (mut router, router_addr) = lt_router();
    for private in [false, true] {
        let torrent = tmp.path().join(format!("private-{private}.torrent"));
        let mut create: Vec<OsString> = vec![
            "create".into(),
            seed_dir.join("dht-payload").into(),
            "-o".into(),
            torrent.clone().into(),
        ];
        if private {
            create.push("--private".into());
        }
        Btd::run(create).assert_success();
        let info = TorrentInfo::read(&torrent);
        assert_eq!(info.private, private);
        let hash: [u8; 20] = (0..20)
            .map(|i| u8::from_str_radix(&info.info_hash[2 * i..2 * i + 2], 16).expect("hex"))
            .collect::<Vec<u8>>()
            .try_into()
            .expect("20 bytes");
        let mut seeder = btd_seed_on_dht(
            "btd seed",
            &torrent,
            &seed_dir,
            next_ip().into(),
            router_addr,
        );
        let addr = seeder.wait_listening();
        let (bit, port) = dht_signals(addr, &hash, next_ip());
        if private {
            assert_eq!((bit, port), (false, None), "private: {}", seeder.log_text());
        } else {
            assert_eq!(
                (bit, port),
                (true, Some(addr.port())),
                "public: {}",
                seeder.log_text()
            );
        }
        seeder.terminate_and_assert_ok(SHORT);
    }
    router.terminate_and_assert_ok(SHORT);
}

/// `[dht] port = 0` is the TCP listen port's number (here one picked at start), a fixed
/// `port` is used as given, and `enabled = false` binds no UDP socket at all: checked in
/// status.json's `dht` and by binding the port ourselves. No bootstrap node: nothing is sent.
#[test]
fn the_dht_port_is_the_listen_ports_number_unless_configured_and_off_binds_nothing() {
    for case in ["port 0", "fixed port", "disabled"] {
        let mut home = DaemonHome::new("dht-port");
        let fixed = std::net::UdpSocket::bind((home.ip, 0))
            .and_then(|s| s.local_addr())
            .expect("a free UDP port")
            .port();
        if case != "disabled" {
            home.set("dht", "enabled", true)
                .set("dht", "bootstrap", Vec::<toml::Value>::new());
        }
        if case == "fixed port" {
            home.set("dht", "port", i64::from(fixed));
        }
        home.write_config();
        let mut d = home.spawn(&format!("btd daemon ({case})"));
        let listen = d.wait_listening();
        let snapshot = d.wait_snapshot(SHORT, "a status file", |_| true);
        let status: serde_json::Value =
            serde_json::from_str(&snapshot.text).expect("status.json is JSON");
        let want = match case {
            "port 0" => Some(listen.port()),
            "fixed port" => Some(fixed),
            _ => None,
        };
        let got = status
            .get("dht")
            .and_then(|d| d["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok());
        assert_eq!(got, want, "{case}: status.json {}", snapshot.text);
        let udp = std::net::UdpSocket::bind((home.ip, want.unwrap_or(listen.port())));
        match want {
            Some(port) => assert_eq!(
                udp.map(|_| ()).map_err(|e| e.kind()),
                Err(std::io::ErrorKind::AddrInUse),
                "{case}: UDP port {port} is not btd's"
            ),
            None => assert!(
                udp.is_ok(),
                "{case}: a UDP socket on the listen port: {udp:?}"
            ),
        }
        d.stop("TERM");
    }
}
