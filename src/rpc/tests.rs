//! The RPC transport end to end over loopback, with a fake daemon answering from the channel;
//! and `transmission-remote` (Debian's transmission-cli) as a real client.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::front::host_allowed;
use super::*;
use crate::test_dir::TempDir;

fn loopback_config() -> RpcConfig {
    RpcConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ..RpcConfig::default()
    }
}

/// A daemon that answers `session-get` like transmission's (a few keys), echoes the arguments
/// of `echo`, adds any `torrent-add` (noting its metainfo's length), never answers `hang`, and says `method name not recognized` to the rest. Ends
/// when the server (the only sender) is gone.
fn fake_daemon(calls: Receiver<RpcCall>) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut hanging = Vec::new();
        for call in calls {
            seen.push(call.method.clone());
            match call.method.as_str() {
                "session-get" => {
                    let Value::Object(args) = json!({
                        "rpc-version": 17,
                        "rpc-version-minimum": 14,
                        "version": "4.0.6 (btd 0.1.0)",
                        "download-dir": "/srv/btd/downloads",
                        "config-dir": "/srv/btd/state",
                        "peer-port": 6881,
                        "speed-limit-down": 100,
                        "speed-limit-down-enabled": false,
                        "speed-limit-up": 100,
                        "speed-limit-up-enabled": false,
                        "seedRatioLimit": 2.0,
                        "seedRatioLimited": false,
                        "peer-limit-global": 500,
                        "peer-limit-per-torrent": 50,
                    }) else {
                        unreachable!()
                    };
                    call.answer(Ok(args.into()));
                }
                "echo" => {
                    let args = call.arguments.clone();
                    call.answer(Ok(args.into()));
                }
                "torrent-add" => {
                    // Notes how much metainfo came.
                    let size = call.arguments["metainfo"].as_str().map_or(0, str::len);
                    *seen.last_mut().expect("just pushed") = format!("torrent-add {size}");
                    let Value::Object(args) = json!({
                        "torrent-added": {"id": 1, "name": format!("{size} base64 bytes"),
                                          "hashString": "00".repeat(20)}
                    }) else {
                        unreachable!()
                    };
                    call.answer(Ok(args.into()));
                }
                "hang" => hanging.push(call),
                _ => call.answer(Err("method name not recognized".into())),
            }
        }
        seen
    })
}

struct Rig {
    server: RpcServer,
    daemon: JoinHandle<Vec<String>>,
}

impl Rig {
    fn start(config: RpcConfig) -> Rig {
        let (tx, rx) = channel();
        let server = RpcServer::start_with(config, tx, Duration::from_millis(500)).unwrap();
        Rig {
            server,
            daemon: fake_daemon(rx),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn id(&self) -> String {
        self.server.session_id().to_owned()
    }

    /// Stops the server and returns the methods the daemon was called with.
    fn stop(self) -> Vec<String> {
        self.server.stop();
        self.daemon.join().unwrap()
    }
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// One raw exchange.
fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(request); // the server may refuse before taking it all
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&reply)));
    let head = String::from_utf8_lossy(&reply[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: reply[end + 4..].to_vec(),
    }
}

/// `POST /transmission/rpc` with these extra header lines and body.
fn post(addr: SocketAddr, extra: &[String], body: &str) -> Reply {
    let mut request = format!(
        "POST /transmission/rpc HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    exchange(addr, request.as_bytes())
}

fn get(addr: SocketAddr, target: &str) -> Reply {
    exchange(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}

fn with_id(id: &str) -> Vec<String> {
    vec![format!("X-Transmission-Session-Id: {id}")]
}

fn basic(user_pass: &str) -> String {
    use base64::Engine;
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

#[test]
fn the_session_id_handshake_answers_409_with_the_id_then_serves_the_retry() {
    let rig = Rig::start(loopback_config());
    let addr = rig.addr();
    let first = post(addr, &[], r#"{"method":"session-get"}"#);
    assert_eq!(first.status, 409);
    let id = first.header(SESSION_ID_HEADER).unwrap().to_owned();
    assert_eq!(id, rig.id());
    assert_eq!(id.len(), 48);
    assert_eq!(post(addr, &with_id("nope"), "{}").status, 409);
    let reply = post(addr, &with_id(&id), r#"{"method":"session-get","tag":3}"#);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    let json = reply.json();
    assert_eq!(json["result"], "success");
    assert_eq!(json["tag"], 3);
    assert_eq!(json["arguments"]["rpc-version"], 17);
    // Not POST: 405, once the id is right.
    let mut request = format!("GET /transmission/rpc HTTP/1.1\r\nHost: {addr}\r\n");
    request.push_str(&format!("X-Transmission-Session-Id: {id}\r\n\r\n"));
    assert_eq!(exchange(addr, request.as_bytes()).status, 405);
    assert_eq!(rig.stop(), vec!["session-get"]);
}

#[test]
fn tags_are_echoed_and_garbage_gets_a_result_saying_what_is_wrong() {
    let rig = Rig::start(loopback_config());
    let (addr, id) = (rig.addr(), with_id(&rig.id()));
    let reply = post(
        addr,
        &id,
        r#"{"method":"echo","arguments":{"a":[1,2]},"tag":-9}"#,
    )
    .json();
    assert_eq!(
        reply,
        json!({"arguments": {"a": [1, 2]}, "result": "success", "tag": -9})
    );
    let reply = post(addr, &id, r#"{"method":"frobnicate","tag":4}"#).json();
    assert_eq!(
        reply,
        json!({"arguments": {}, "result": "method name not recognized", "tag": 4})
    );
    for body in [
        "garbage",
        "",
        "[1]",
        "{\"method\": 5}",
        "{\"method\":\"x\"",
        "\u{0}\u{1}",
    ] {
        let reply = post(addr, &id, body);
        assert_eq!(reply.status, 200, "{body:?}");
        let result = reply.json()["result"].as_str().unwrap().to_owned();
        assert!(result.starts_with("no method name"), "{body:?}: {result}");
    }
    // Invalid UTF-8 and deep nesting too.
    let mut raw = format!(
        "POST /transmission/rpc HTTP/1.1\r\nHost: {addr}\r\n{}\r\nContent-Length: 4\r\n\r\n",
        id[0]
    )
    .into_bytes();
    raw.extend_from_slice(b"{\xff\xfe}");
    assert!(
        exchange(addr, &raw).json()["result"]
            .as_str()
            .unwrap()
            .starts_with("no method name")
    );
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    assert_eq!(post(addr, &id, &deep).status, 200);
    assert_eq!(rig.stop(), vec!["echo", "frobnicate"]);
}

#[test]
fn a_daemon_that_does_not_answer_gets_a_result_saying_so() {
    let rig = Rig::start(loopback_config());
    let (addr, id) = (rig.addr(), with_id(&rig.id()));
    let started = Instant::now();
    let reply = post(addr, &id, r#"{"method":"hang","tag":1}"#).json();
    assert!(started.elapsed() < Duration::from_secs(3));
    let result = reply["result"].as_str().unwrap();
    assert!(result.contains("did not answer hang"), "{result}");
    assert_eq!(reply["tag"], 1);
    rig.stop();

    // A daemon that is gone.
    let (tx, rx) = channel();
    drop(rx);
    let server = RpcServer::start(loopback_config(), tx).unwrap();
    let reply = post(
        server.local_addr(),
        &with_id(server.session_id()),
        r#"{"method":"session-get"}"#,
    )
    .json();
    assert_eq!(reply["result"], "btd is shutting down");
    server.stop();
}

#[test]
fn basic_auth_is_required_when_both_username_and_password_are_set() {
    let rig = Rig::start(RpcConfig {
        username: "admin".into(),
        password: Secret::new("s3cret:with colon"),
        ..loopback_config()
    });
    let (addr, id) = (rig.addr(), rig.id());
    for auth in [
        None,
        Some(basic("admin:wrong")),
        Some(basic("admin:s3cret:with colo")),
        Some(basic("Admin:s3cret:with colon")),
        Some("Authorization: Bearer abc".to_owned()),
        Some("Authorization: Basic !!!".to_owned()),
    ] {
        let mut headers = with_id(&id);
        headers.extend(auth.clone());
        let reply = post(addr, &headers, r#"{"method":"session-get"}"#);
        assert_eq!(reply.status, 401, "{auth:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Basic realm=\"btd\"")
        );
        assert_eq!(reply.header(SESSION_ID_HEADER), None, "{auth:?}");
    }
    // Right credentials: the handshake, then the call; any Host goes while auth is required.
    let auth = basic("admin:s3cret:with colon");
    let reply = post(
        addr,
        std::slice::from_ref(&auth),
        r#"{"method":"session-get"}"#,
    );
    assert_eq!(reply.status, 409);
    let mut headers = with_id(&id);
    headers.push(auth.replacen("Basic", "basic", 1));
    let mut request = format!(
        "POST /transmission/rpc HTTP/1.1\r\nHost: evil.example\r\n{}\r\n{}\r\n",
        headers[0], headers[1]
    );
    request.push_str("Content-Length: 24\r\n\r\n{\"method\":\"session-get\"}");
    let reply = exchange(addr, request.as_bytes());
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["result"], "success");
    // The password is never in the config's Debug text.
    let text = format!("{:?}", rig.server.config());
    assert!(!text.contains("s3cret"), "{text}");
    rig.stop();
}

#[test]
fn addresses_outside_allowed_ips_get_403_on_every_path() {
    let rig = Rig::start(RpcConfig {
        allowed_ips: vec![IpRange::parse("10.0.0.0/8").unwrap()],
        ..loopback_config()
    });
    let addr = rig.addr();
    assert_eq!(post(addr, &with_id(&rig.id()), "{}").status, 403);
    assert_eq!(get(addr, "/").status, 403);
    assert_eq!(get(addr, "/transmission/web/").status, 403);
    // A 100 MiB body is refused without being read.
    let started = Instant::now();
    let reply = exchange(
        addr,
        b"POST /transmission/rpc HTTP/1.1\r\nContent-Length: 104857600\r\n\r\n{",
    );
    assert_eq!(reply.status, 403);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(rig.stop().is_empty());
}

#[test]
fn ip_ranges_parse_cidr_plain_addresses_and_trailing_wildcards() {
    let r = |s: &str| IpRange::parse(s).unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(r("127.0.0.1").contains(ip("127.0.0.1")));
    assert!(!r("127.0.0.1").contains(ip("127.0.0.2")));
    assert!(
        r("127.0.0.1").contains(ip("::ffff:127.0.0.1")),
        "IPv4-mapped"
    );
    assert!(r("10.0.0.0/8").contains(ip("10.255.1.2")));
    assert!(!r("10.0.0.0/8").contains(ip("11.0.0.1")));
    assert!(
        r("192.168.1.77/24").contains(ip("192.168.1.1")),
        "host bits ignored"
    );
    assert!(r("0.0.0.0/0").contains(ip("8.8.8.8")));
    assert!(!r("0.0.0.0/0").contains(ip("::1")));
    assert!(r("::/0").contains(ip("2001:db8::1")));
    assert!(r("fd00::/8").contains(ip("fd12::1")));
    assert!(!r("fd00::/8").contains(ip("fe80::1")));
    assert!(r("::1").contains(ip("::1")));
    assert!(r("192.168.*.*").contains(ip("192.168.9.9")));
    assert!(!r("192.168.*.*").contains(ip("192.169.0.1")));
    assert!(r("*.*.*.*").contains(ip("1.2.3.4")));
    assert_eq!(r("192.168.*.*").to_string(), "192.168.0.0/16");
    for bad in [
        "",
        "localhost",
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/",
        "10.0.0.0/x",
        "192.*.1.*",
        "1.2.*",
        "300.*.*.*",
        "10.0.0.0/8/8",
    ] {
        assert!(IpRange::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_host_header_must_name_an_ip_localhost_or_an_allowed_host() {
    let config = RpcConfig {
        allowed_hosts: vec!["box.lan".into(), "*.example.org".into()],
        ..loopback_config()
    };
    for host in [
        "127.0.0.1",
        "127.0.0.1:9091",
        "[::1]",
        "[::1]:9091",
        "localhost",
        "LOCALHOST:9091",
        "localhost.",
        "box.lan",
        "Box.Lan:80",
        "seed.example.org",
        "a.b.example.org:1",
    ] {
        assert!(host_allowed(&config, Some(host)), "{host}");
    }
    for host in [
        "",
        "evil.example",
        "box.lan.evil.example",
        "example.org",
        "xexample.org",
        "localhost.evil",
        "127.0.0.1:x",
        "[::1",
        "[nope]:1",
        "box.lan:99999999",
    ] {
        assert!(!host_allowed(&config, Some(host)), "{host}");
    }
    assert!(!host_allowed(&config, None));

    let rig = Rig::start(config);
    let (addr, id) = (rig.addr(), with_id(&rig.id()));
    let request = |host: &str| {
        format!(
            "POST /transmission/rpc HTTP/1.1\r\nHost: {host}\r\n{}\r\nContent-Length: 17\r\n\r\n\
             {{\"method\":\"echo\"}}",
            id[0]
        )
    };
    assert_eq!(
        exchange(addr, request("rebind.evil.example").as_bytes()).status,
        421
    );
    assert_eq!(
        exchange(addr, request("box.lan:9091").as_bytes()).status,
        200
    );
    assert_eq!(rig.stop(), vec!["echo"]);
}

#[test]
fn bodies_over_the_limit_get_413_and_a_ten_mib_metainfo_fits() {
    let rig = Rig::start(loopback_config());
    let (addr, id) = (rig.addr(), with_id(&rig.id()));
    let over = format!(
        "POST /transmission/rpc HTTP/1.1\r\nHost: {addr}\r\n{}\r\nContent-Length: {}\r\n\r\n",
        id[0],
        MAX_BODY_BYTES + 1
    );
    assert_eq!(exchange(addr, over.as_bytes()).status, 413);
    let hundred = over.replace(&(MAX_BODY_BYTES + 1).to_string(), &(100 << 20).to_string());
    assert_eq!(exchange(addr, hundred.as_bytes()).status, 413);
    // 10 MiB of metainfo in base64, as torrent-add sends it.
    use base64::Engine;
    let metainfo = base64::engine::general_purpose::STANDARD.encode(vec![0x5a; 10 << 20]);
    let body = format!(r#"{{"method":"echo","arguments":{{"metainfo":"{metainfo}"}}}}"#);
    let started = Instant::now();
    let reply = post(addr, &id, &body);
    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert_eq!(
        json["arguments"]["metainfo"].as_str().unwrap().len(),
        metainfo.len()
    );
    eprintln!(
        "a {} byte torrent-add body: {:?} round trip",
        body.len(),
        started.elapsed()
    );
    assert_eq!(rig.stop(), vec!["echo"]);
}

#[test]
fn the_web_client_is_served_from_web_dir_without_traversal() {
    let dir = TempDir::new("rpc-web");
    let web = dir.0.join("web");
    std::fs::create_dir_all(web.join("javascript")).unwrap();
    std::fs::write(web.join("index.html"), "<html>btd</html>").unwrap();
    std::fs::write(web.join("javascript/main.js"), "let x = 1;").unwrap();
    std::fs::write(web.join(".hidden"), "no").unwrap();
    std::fs::write(dir.0.join("secret.txt"), "top secret").unwrap();
    let rig = Rig::start(RpcConfig {
        web_dir: Some(web.clone()),
        ..loopback_config()
    });
    let addr = rig.addr();
    for target in ["/", "/transmission", "/transmission/", "/transmission/web"] {
        let reply = get(addr, target);
        assert_eq!(reply.status, 301, "{target}");
        assert_eq!(reply.header("location"), Some("/transmission/web/"));
    }
    let index = get(addr, "/transmission/web/");
    assert_eq!(
        (index.status, index.body.as_slice()),
        (200, &b"<html>btd</html>"[..])
    );
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let js = get(addr, "/transmission/web/javascript/main.js?v=3");
    assert_eq!((js.status, js.body.as_slice()), (200, &b"let x = 1;"[..]));
    assert_eq!(
        js.header("content-type"),
        Some("application/javascript; charset=utf-8")
    );
    for target in [
        "/transmission/web/../secret.txt",
        "/transmission/web/%2e%2e/secret.txt",
        "/transmission/web/javascript/%2E%2E/%2E%2E/secret.txt",
        "/transmission/web/..%2fsecret.txt",
        "/transmission/web//etc/passwd",
        "/transmission/web/.hidden",
        "/transmission/web/missing.js",
        "/transmission/web/javascript",
        "/elsewhere",
    ] {
        let reply = get(addr, target);
        assert_eq!(reply.status, 404, "{target}");
        assert!(
            !String::from_utf8_lossy(&reply.body).contains("secret"),
            "{target}"
        );
    }
    let post_web = exchange(
        addr,
        b"POST /transmission/web/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post_web.status, 405);
    rig.stop();

    // No web_dir: 404.
    let rig = Rig::start(loopback_config());
    assert_eq!(get(rig.addr(), "/transmission/web/").status, 404);
    rig.stop();
}

#[test]
fn set_config_applies_credentials_at_once_and_moves_to_a_new_address() {
    let mut rig = Rig::start(loopback_config());
    let (addr, id) = (rig.addr(), rig.id());
    assert_eq!(
        post(addr, &with_id(&id), r#"{"method":"echo"}"#).status,
        200
    );
    let locked = RpcConfig {
        username: "u".into(),
        password: Secret::new("p"),
        ..loopback_config()
    };
    rig.server.set_config(locked.clone()).unwrap();
    assert_eq!(rig.addr(), addr, "same listen address: same socket");
    assert_eq!(
        post(addr, &with_id(&id), r#"{"method":"echo"}"#).status,
        401
    );
    let mut headers = with_id(&id);
    headers.push(basic("u:p"));
    assert_eq!(post(addr, &headers, r#"{"method":"echo"}"#).status, 200);

    // A new address: the old one closes, the session id stays.
    let moved = RpcConfig {
        listen: SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 0)),
        ..locked
    };
    rig.server.set_config(moved).unwrap();
    let new_addr = rig.addr();
    assert_eq!(new_addr.ip(), Ipv4Addr::new(127, 0, 0, 2));
    assert!(
        TcpStream::connect(addr).is_err(),
        "the old address is closed"
    );
    assert_eq!(post(new_addr, &headers, r#"{"method":"echo"}"#).status, 200);
    assert_eq!(rig.id(), id);

    // An address that cannot be bound: an error, and the server stays where it is.
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let e = rig
        .server
        .set_config(RpcConfig {
            listen: taken.local_addr().unwrap(),
            ..loopback_config()
        })
        .unwrap_err();
    assert!(e.to_string().contains("cannot listen on"), "{e}");
    assert_eq!(rig.addr(), new_addr);
    assert_eq!(post(new_addr, &headers, r#"{"method":"echo"}"#).status, 200);
    assert_eq!(rig.stop(), vec!["echo"; 4]);
}

/// A connection from `source` (a loopback address of its own) to `addr`.
fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

#[test]
fn five_hundred_idle_connections_from_a_stranger_leave_the_rpc_answering() {
    let rig = Rig::start(RpcConfig {
        allowed_ips: vec![IpRange::parse("127.0.0.1").unwrap()],
        ..loopback_config()
    });
    let (addr, id) = (rig.addr(), with_id(&rig.id()));
    // Held open and silent: beyond the queue they are closed at accept, the queued ones get
    // 403 after REFUSE_WAIT each.
    let stranger = Ipv4Addr::new(127, 0, 0, 3);
    let held: Vec<TcpStream> = (0..500)
        .filter_map(|_| connect_from(stranger, addr).ok())
        .collect();
    assert!(held.len() > 400, "{} connected", held.len());
    let started = Instant::now();
    let reply = post(addr, &id, r#"{"method":"echo","tag":1}"#);
    let waited = started.elapsed();
    assert_eq!(reply.status, 200);
    eprintln!(
        "{} idle stranger connections held; an allowed client answered after {waited:?}",
        held.len()
    );
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    // Once the flood ends, a stranger that sends a request reads its 403 (while the refusal
    // queue was full, its connection would have been closed at accept).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect_from(stranger, addr).unwrap();
        s.write_all(b"POST /transmission/rpc HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        if reply.starts_with("HTTP/1.1 403 ") {
            break;
        }
        assert!(reply.is_empty(), "{reply:?}");
        assert!(Instant::now() < deadline, "no 403 after the flood");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rig.stop(), vec!["echo"]);
}

/// `transmission-remote` (Debian's transmission-cli) against the server, or `None` when it is
/// not installed.
fn transmission_remote(addr: SocketAddr, args: &[&str]) -> Option<std::process::Output> {
    let mut command = std::process::Command::new("transmission-remote");
    command
        .arg(addr.to_string())
        .args(args)
        .env_remove("TR_AUTH")
        .env("HOME", "/nonexistent");
    match command.output() {
        Ok(output) => Some(output),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => panic!("transmission-remote: {e}"),
    }
}

#[test]
fn transmission_remote_does_the_handshake_and_reads_session_get_with_and_without_auth() {
    let rig = Rig::start(loopback_config());
    let Some(out) = transmission_remote(rig.addr(), &["--session-info"]) else {
        eprintln!("transmission-remote is not installed; skipped");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("RPC version: 17"), "{stdout}");
    assert!(stdout.contains("/srv/btd/downloads"), "{stdout}");
    assert!(stdout.contains("4.0.6 (btd 0.1.0)"), "{stdout}");
    // It had no session id, got 409, and retried: the daemon saw the call once.
    assert_eq!(rig.stop(), vec!["session-get"]);

    let rig = Rig::start(RpcConfig {
        username: "admin".into(),
        password: Secret::new("hunter2"),
        ..loopback_config()
    });
    let refused = transmission_remote(rig.addr(), &["--session-info"]).unwrap();
    assert!(!refused.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(text.contains("401"), "{text}");
    let wrong = transmission_remote(rig.addr(), &["--auth", "admin:hunter3", "-si"]).unwrap();
    assert!(!wrong.status.success());
    let out = transmission_remote(rig.addr(), &["--auth", "admin:hunter2", "-si"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("RPC version: 17"), "{stdout}");
    // An unknown method's result reaches the user.
    let out = transmission_remote(rig.addr(), &["--auth", "admin:hunter2", "-st"]).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("method name not recognized"), "{text}");
    // A 10 MiB torrent file: curl sends it with `Expect: 100-continue`.
    let dir = TempDir::new("rpc-remote");
    let torrent = dir.0.join("big.torrent");
    std::fs::write(&torrent, vec![b'd'; 10 << 20]).unwrap();
    let out = transmission_remote(
        rig.addr(),
        &["--auth", "admin:hunter2", "-a", torrent.to_str().unwrap()],
    )
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(
        rig.stop(),
        vec!["session-get", "session-stats", "torrent-add 13981016"],
        "{text}"
    );
}
