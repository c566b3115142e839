//! The RPC of a running daemon against what no honest client sends: wrong credentials (401), a
//! client outside `allowed_ips` (403), a foreign `Host` (421), no session id (409 carrying it),
//! a 100 MiB body (413, unread), garbage bodies (a result naming what is wrong), 500 idle
//! connections and 500 requests at once. While and after each, an allowed client's
//! `session-get` is answered and the daemon's torrent is still seeding. (The transport's unit
//! tests, `src/rpc/tests.rs` and `src/http_server.rs`, cover the same against a fake daemon.)

use crate::support::daemon::{Daemon, DaemonHome, Payload, TorrentEntry, payload, within};
use crate::support::rpc_client::{RawReply, RpcClient, exchange, rpc_post};
use crate::support::{SHORT, TempDir, next_ip, parse_rpc_serving};
use base64::Engine as _;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Transmission's status number for a seeding torrent.
const SEEDING: u64 = 6;

/// A daemon seeding one torrent, its RPC allowing 127.0.0.1 only (the address a loopback
/// client gets unless it binds another), optionally with credentials.
struct Rig {
    _work: TempDir,
    p: Payload,
    _home: DaemonHome,
    d: Daemon,
    addr: SocketAddr,
    auth: Option<(&'static str, &'static str)>,
}

impl Rig {
    fn start(label: &str, auth: Option<(&'static str, &'static str)>) -> Rig {
        let work = TempDir::new(label);
        let p = payload(&work, "data", label, MIB, 32 * KIB, &[]);
        let mut home = DaemonHome::new(label);
        home.set("rpc", "allowed_ips", vec!["127.0.0.1"])
            .add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir));
        if let Some((user, password)) = auth {
            home.set("rpc", "username", user)
                .set("rpc", "password", password);
        }
        home.write_config();
        let mut d = home.start("btd daemon");
        let addr = d.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving);
        d.wait_seeding(&p.info_hash, SHORT);
        Rig {
            _work: work,
            p,
            _home: home,
            d,
            addr,
            auth,
        }
    }

    fn client(&self) -> RpcClient {
        let client = RpcClient::new(self.addr);
        match self.auth {
            Some((user, password)) => client.with_auth(user, password),
            None => client,
        }
    }

    /// The daemon runs, answers an allowed client's `session-get` and its torrent seeds.
    fn assert_serving(&mut self, after: &str) {
        self.d.proc.assert_running();
        let mut rpc = self.client();
        let session = rpc.ok("session-get", Value::Null);
        assert_eq!(session["rpc-version"], 17, "after {after}: {session:?}");
        let t = &rpc.torrents(json!([self.p.info_hash]), &["status"])[0];
        assert_eq!(t["status"], SEEDING, "after {after}: {t:?}");
    }

    /// The session id, from the 409 that a request without one gets.
    fn session_id(&self) -> String {
        let reply = exchange(
            None,
            self.addr,
            &rpc_post(self.addr, &self.credentials(), b"{}"),
        )
        .expect("a reply");
        assert_eq!(reply.status, 409, "{reply:?}");
        reply
            .header("X-Transmission-Session-Id")
            .expect("a 409 carries the session id")
            .to_owned()
    }

    /// The `Authorization` header of the right credentials, when there are any.
    fn credentials(&self) -> Vec<String> {
        self.auth
            .map(|(user, password)| basic(&format!("{user}:{password}")))
            .into_iter()
            .collect()
    }
}

fn basic(user_password: &str) -> String {
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

fn session_header(id: &str) -> String {
    format!("X-Transmission-Session-Id: {id}")
}

#[test]
fn wrong_or_missing_credentials_get_401_and_the_daemon_serves_on() {
    let mut rig = Rig::start("rpc-sec-auth", Some(("admin", "s3cret")));
    let id = rig.session_id();
    let body = br#"{"method":"session-get"}"#;
    for (what, auth) in [
        ("no credentials", vec![]),
        ("a wrong password", vec![basic("admin:wrong")]),
        ("a wrong user", vec![basic("root:s3cret")]),
        ("not Basic", vec!["Authorization: Bearer s3cret".to_owned()]),
        ("not base64", vec!["Authorization: Basic !!!".to_owned()]),
    ] {
        let headers = [auth, vec![session_header(&id)]].concat();
        let reply = exchange(None, rig.addr, &rpc_post(rig.addr, &headers, body)).expect("a reply");
        assert_eq!(reply.status, 401, "{what}: {reply:?}");
        assert_eq!(
            reply.header("WWW-Authenticate"),
            Some("Basic realm=\"btd\""),
            "{what}"
        );
        assert!(!reply.body.contains("rpc-version"), "{what}: {reply:?}");
        rig.assert_serving(what);
    }
    // With them: served.
    let headers = [rig.credentials(), vec![session_header(&id)]].concat();
    let reply = exchange(None, rig.addr, &rpc_post(rig.addr, &headers, body)).expect("a reply");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["result"], "success");
    assert!(
        !rig.d.log_lines().iter().any(|l| l.contains("s3cret")),
        "the password went into the log"
    );
    rig.d.stop("TERM");
}

#[test]
fn a_stranger_gets_403_a_foreign_host_421_and_no_session_id_409_carrying_it() {
    let mut rig = Rig::start("rpc-sec-refusals", None);
    let id = rig.session_id();
    assert_eq!(id.len(), 48, "{id:?}");
    let body = br#"{"method":"session-get"}"#;

    // 127.0.0.2 is not in allowed_ips: 403 on the RPC and on the web client's paths, with or
    // without the session id.
    let stranger = Ipv4Addr::new(127, 0, 0, 2);
    for request in [
        rpc_post(rig.addr, &[session_header(&id)], body),
        rpc_post(rig.addr, &[], body),
        b"GET /transmission/web/ HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let reply = exchange(Some(stranger), rig.addr, &request).expect("a reply");
        assert_eq!(reply.status, 403, "{reply:?}");
        assert!(!reply.body.contains(&id), "a stranger got the session id");
        rig.assert_serving("a stranger's request");
    }

    // A Host that names neither an address of btd nor localhost (DNS rebinding): 421.
    for host in [
        "evil.example.com",
        "evil.example.com:9091",
        "localhost.evil.com",
    ] {
        let request = format!(
            "POST /transmission/rpc HTTP/1.1\r\nHost: {host}\r\n{}\r\nContent-Length: {}\r\n\r\n",
            session_header(&id),
            body.len()
        );
        let request = [request.as_bytes(), body].concat();
        let reply = exchange(None, rig.addr, &request).expect("a reply");
        assert_eq!(reply.status, 421, "Host {host}: {reply:?}");
        rig.assert_serving("a foreign Host");
    }
    // No Host at all: refused the same way.
    let request = format!(
        "POST /transmission/rpc HTTP/1.0\r\n{}\r\nContent-Length: {}\r\n\r\n",
        session_header(&id),
        body.len()
    );
    let reply = exchange(None, rig.addr, &[request.as_bytes(), body].concat()).expect("a reply");
    assert_eq!(reply.status, 421, "{reply:?}");

    // No session id, or a wrong one: 409 carrying the right one, and the retry with it works.
    for headers in [vec![], vec![session_header("not-the-id")]] {
        let reply = exchange(None, rig.addr, &rpc_post(rig.addr, &headers, body)).expect("a reply");
        assert_eq!(reply.status, 409, "{headers:?}: {reply:?}");
        assert_eq!(reply.header("X-Transmission-Session-Id"), Some(id.as_str()));
        rig.assert_serving("a request without the session id");
    }
    let reply = exchange(
        None,
        rig.addr,
        &rpc_post(rig.addr, &[session_header(&id)], body),
    )
    .expect("a reply");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["result"], "success");
    rig.d.stop("TERM");
}

#[test]
fn a_100_mib_body_gets_413_unread_and_garbage_bodies_get_a_result_naming_what_is_wrong() {
    let mut rig = Rig::start("rpc-sec-bodies", None);
    let id = rig.session_id();

    // 100 MiB announced and sent: 413 as soon as the head is read, the body not taken.
    let total: usize = 100 * 1024 * 1024;
    let head = format!(
        "POST /transmission/rpc HTTP/1.1\r\nHost: {}\r\n{}\r\nContent-Length: {total}\r\n\r\n",
        rig.addr,
        session_header(&id)
    );
    let mut s = TcpStream::connect_timeout(&rig.addr, SHORT).expect("connect");
    s.set_read_timeout(Some(SHORT)).expect("read timeout");
    s.set_write_timeout(Some(SHORT)).expect("write timeout");
    let started = Instant::now();
    let mut reader = s.try_clone().expect("clone the socket");
    let reading = std::thread::spawn(move || {
        let mut reply = Vec::new();
        let _ = reader.read_to_end(&mut reply);
        (reply, Instant::now())
    });
    s.write_all(head.as_bytes()).expect("send the head");
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < total && s.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let (reply, replied) = reading.join().expect("the reader");
    drop(s);
    let reply = RawReply::parse(&reply)
        .unwrap_or_else(|| panic!("no reply: {:?}", String::from_utf8_lossy(&reply)));
    assert_eq!(reply.status, 413, "{reply:?}");
    let took = replied - started;
    eprintln!(
        "100 MiB body: 413 after {took:?}; the server took {} MiB before closing",
        sent / (1024 * 1024)
    );
    assert!(took < Duration::from_secs(3), "413 after {took:?}");
    assert!(
        sent < total / 4,
        "{sent} bytes of {total} went in before the close"
    );
    rig.assert_serving("a 100 MiB body");

    // Bodies that are not a call: 200 with a result saying what is wrong (as Transmission),
    // the tag echoed when there is one to read.
    let deep = "[".repeat(100_000);
    for (body, want, tag) in [
        (
            &b"garbage"[..],
            "no method name (the body is not JSON: ",
            None,
        ),
        (b"", "no method name (the body is not JSON: ", None),
        (b"\xff\xfe{", "no method name (the body is not JSON: ", None),
        (
            b"[1,2,3]",
            "no method name (the request is not a JSON object)",
            None,
        ),
        (
            br#"{"method":5,"tag":9}"#,
            "no method name (`method` is not a string)",
            Some(9),
        ),
        (br#"{"arguments":{}}"#, "no method name", None),
        (
            deep.as_bytes(),
            "no method name (the body is not JSON: recursion limit exceeded",
            None,
        ),
        (
            br#"{"method":"torrent-fly","tag":3}"#,
            "method not supported by btd (yet): torrent-fly",
            Some(3),
        ),
        (
            br#"{"method":"torrent-get","arguments":{"fields":"name"}}"#,
            "torrent-get needs `fields`, a list of field names",
            None,
        ),
        (
            br#"{"method":"torrent-get","arguments":{"ids":[{}],"fields":["id"]}}"#,
            "ids: {} is neither a torrent id nor a hash string",
            None,
        ),
    ] {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        let reply = exchange(
            None,
            rig.addr,
            &rpc_post(rig.addr, &[session_header(&id)], body),
        )
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(reply.status, 200, "{shown}: {reply:?}");
        let answer = reply.json();
        let result = answer["result"].as_str().unwrap_or_default();
        assert!(result.starts_with(want), "{shown}: {answer}");
        assert_eq!(answer["tag"].as_i64(), tag, "{shown}: {answer}");
        assert_eq!(answer["arguments"], json!({}), "{shown}: {answer}");
        rig.assert_serving(&shown);
    }
    rig.d.stop("TERM");
}

/// `session-get` with raw requests until one is answered (a connection the server had no room
/// for is closed unanswered); returns how long it took.
fn session_get_answered(addr: SocketAddr, id: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let request = rpc_post(addr, &[session_header(id)], br#"{"method":"session-get"}"#);
    loop {
        match exchange(None, addr, &request) {
            Ok(reply) if reply.status == 200 => {
                assert_eq!(reply.json()["result"], "success", "{reply:?}");
                return started.elapsed();
            }
            Ok(reply) => panic!("session-get: {reply:?}"),
            Err(e) => assert!(
                started.elapsed() < timeout,
                "session-get not answered within {timeout:?}: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn five_hundred_idle_connections_and_five_hundred_requests_at_once_leave_the_daemon_serving() {
    let mut rig = Rig::start("rpc-sec-flood", None);
    let id = rig.session_id();
    let addr = rig.addr;

    // 500 connections from an allowed address that send nothing, held open: the workers each
    // take one, 64 wait in the queue, the rest are closed at accept. Each has 5 s from its
    // accept to send a head, so an honest request is answered within about that.
    let held: Vec<TcpStream> = (0..500)
        .filter_map(|_| TcpStream::connect_timeout(&addr, SHORT).ok())
        .collect();
    assert!(held.len() > 400, "only {} connected", held.len());
    let waited = session_get_answered(addr, &id, SHORT);
    eprintln!("500 idle connections: session-get answered after {waited:?}");
    assert!(waited < Duration::from_secs(12), "{waited:?}");
    rig.assert_serving("500 idle connections");
    drop(held);

    // The same from a stranger: refused at accept without a worker, so no delay at all.
    let stranger = next_ip();
    let held: Vec<TcpStream> = (0..500)
        .filter_map(|_| crate::support::connect_from(stranger, addr).ok())
        .collect();
    assert!(held.len() > 400, "only {} connected", held.len());
    let waited = session_get_answered(addr, &id, SHORT);
    eprintln!("500 idle connections from a stranger: session-get answered after {waited:?}");
    // Not a head timeout (5 s) per connection, nor one for them all.
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    drop(held);

    // 500 real requests at once, each retried until answered (as clients retry a refused
    // connection): every one gets its answer, and so does another client meanwhile.
    let start = Arc::new(Barrier::new(501));
    let clients: Vec<_> = (0..500)
        .map(|n| {
            let (start, id) = (Arc::clone(&start), id.clone());
            std::thread::Builder::new()
                .name(format!("rpc client {n}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    start.wait();
                    session_get_answered(addr, &id, Duration::from_secs(60))
                })
                .expect("spawn a client")
        })
        .collect();
    let started = Instant::now();
    start.wait();
    let meanwhile = session_get_answered(addr, &id, Duration::from_secs(60));
    let mut slowest = Duration::ZERO;
    for c in clients {
        slowest = slowest.max(c.join().expect("a client panicked"));
    }
    eprintln!(
        "500 concurrent session-gets: all answered within {:?} (slowest {slowest:?}); another \
         client's after {meanwhile:?}",
        started.elapsed()
    );
    rig.assert_serving("500 concurrent requests");
    let deadline = within(SHORT);
    // The status file is still written: the main loop is not stuck.
    let s = rig.d.snapshot().expect("a status file");
    rig.d.next_snapshot(&s, deadline - Instant::now());
    rig.d.stop("TERM");
}
