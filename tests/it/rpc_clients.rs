//! btd's Transmission RPC as two kinds of client use it: Sonarr's requests in their exact
//! shapes (the fields it asks for, the arguments it sends), and the Python library
//! `transmission-rpc` (PyPI; `scripts/install-deps` puts it in a venv) driving
//! `scripts/clients/trpc_client.py`. Each step is checked against btd's own state.

use crate::support::daemon::{Daemon, DaemonHome, Payload, payload, within};
use crate::support::parse_rpc_serving;
use crate::support::rpc_client::RpcClient;
use crate::support::{SHORT, TempDir, client_script, require_transmission_rpc, run_to_end};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The fields Sonarr's Transmission client asks `torrent-get` for, in its order, with the JSON
/// type it reads each as.
const SONARR_FIELDS: &[(&str, &str)] = &[
    ("id", "number"),
    ("hashString", "string"),
    ("name", "string"),
    ("downloadDir", "string"),
    ("totalSize", "number"),
    ("leftUntilDone", "number"),
    ("isFinished", "bool"),
    ("eta", "number"),
    ("status", "number"),
    ("secondsDownloading", "number"),
    ("secondsSeeding", "number"),
    ("errorString", "string"),
    ("uploadedEver", "number"),
    ("downloadedEver", "number"),
    ("seedRatioLimit", "number"),
    ("seedRatioMode", "number"),
    ("seedIdleLimit", "number"),
    ("seedIdleMode", "number"),
    ("fileCount", "number"),
    ("labels", "array"),
];

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Asserts that `object` has each of `keys` with its JSON type.
fn assert_shape(what: &str, object: &Map<String, Value>, keys: &[(&str, &str)]) {
    let wrong: Vec<String> = keys
        .iter()
        .filter(|(key, want)| object.get(*key).map(kind) != Some(want))
        .map(|(key, want)| format!("{key}: want {want}, got {:?}", object.get(*key)))
        .collect();
    assert!(wrong.is_empty(), "{what}: {}\n{object:?}", wrong.join("; "));
}

/// A daemon serving the RPC with no torrents, and its RPC's address.
fn rpc_daemon(label: &str) -> (DaemonHome, Daemon, SocketAddr) {
    let home = DaemonHome::new(label);
    home.write_config();
    let mut d = home.start("btd daemon");
    let addr = d.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving);
    (home, d, addr)
}

/// Polls `torrent-get` (Sonarr's way: every torrent, its fields) until `f` holds for the
/// torrent `hash`; returns it.
fn wait_torrent(
    rpc: &mut RpcClient,
    hash: &str,
    what: &str,
    f: impl Fn(&Map<String, Value>) -> bool,
) -> Map<String, Value> {
    let fields: Vec<&str> = SONARR_FIELDS.iter().map(|(f, _)| *f).collect();
    let deadline = within(SHORT);
    loop {
        let args = rpc.ok("torrent-get", json!({ "fields": fields }));
        let found = args["torrents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .find(|t| t["hashString"] == hash)
            .cloned();
        if let Some(t) = found.filter(|t| f(t)) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "torrent {hash} not {what} within {SHORT:?}: {args:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn seed_payload(work: &TempDir, name: &str) -> Payload {
    payload(work, "data", name, MIB, 32 * KIB, &[])
}

#[test]
fn sonarrs_requests_get_answers_of_the_shapes_it_reads() {
    let work = TempDir::new("rpc-sonarr");
    let p = seed_payload(&work, "rpc-sonarr");
    let (_home, mut d, addr) = rpc_daemon("rpc-sonarr");
    let mut rpc = RpcClient::new(addr);

    // session-get, without arguments: the version Sonarr parses (its first dotted number, at
    // least 2.40; 4 or more for labels) and the session's seeding limits.
    let session = rpc.ok("session-get", Value::Null);
    assert_shape(
        "session-get",
        &session,
        &[
            ("version", "string"),
            ("rpc-version", "number"),
            ("download-dir", "string"),
            ("seedRatioLimit", "number"),
            ("seedRatioLimited", "bool"),
            ("idle-seeding-limit", "number"),
            ("idle-seeding-limit-enabled", "bool"),
        ],
    );
    let version = session["version"].as_str().expect("checked above");
    let major: u32 = version
        .split(['.', ' '])
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("version {version:?} does not start with a number"));
    assert!(major >= 4, "version {version:?}: Sonarr wants 4 for labels");

    // torrent-add as Sonarr sends it: metainfo, paused, download-dir, labels.
    let metainfo = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(&p.torrent).expect("read the torrent"));
    let add = json!({
        "metainfo": metainfo,
        "paused": false,
        "download-dir": p.dir.display().to_string(),
        "labels": ["tv-sonarr"],
    });
    let added = rpc.ok("torrent-add", add.clone());
    let t = added["torrent-added"]
        .as_object()
        .unwrap_or_else(|| panic!("no torrent-added: {added:?}"));
    assert_shape(
        "torrent-added",
        t,
        &[
            ("id", "number"),
            ("name", "string"),
            ("hashString", "string"),
        ],
    );
    assert_eq!(t["hashString"], p.info_hash.as_str());
    // The same again: a duplicate, which Sonarr takes as added.
    let again = rpc.ok("torrent-add", add);
    assert_eq!(
        again["torrent-duplicate"]["hashString"],
        p.info_hash.as_str(),
        "{again:?}"
    );

    // torrent-get with Sonarr's fields: each of its type, the values btd's.
    let t = wait_torrent(&mut rpc, &p.info_hash, "seeding", |t| t["status"] == 6);
    assert_shape("torrent-get", &t, SONARR_FIELDS);
    assert_eq!(t["downloadDir"], p.dir.display().to_string());
    assert_eq!(t["leftUntilDone"], 0);
    assert_eq!(t["totalSize"], MIB + 1000);
    assert_eq!(t["fileCount"], 2);
    assert_eq!(
        t["labels"],
        json!(["tv-sonarr"]),
        "the labels of torrent-add"
    );
    let status = d.wait_seeding(&p.info_hash, SHORT);
    assert_eq!(
        Some(status.download_dir.as_deref()),
        Some(t["downloadDir"].as_str())
    );

    // torrent-set as Sonarr sends it: its ratio and idle limits apply.
    let hash = json!([p.info_hash]);
    rpc.ok(
        "torrent-set",
        json!({"ids": hash, "seedRatioLimit": 2.0, "seedRatioMode": 1,
               "seedIdleLimit": 60, "seedIdleMode": 1}),
    );
    rpc.ok(
        "torrent-set",
        json!({"ids": hash, "labels": ["tv-sonarr-imported"]}),
    );
    rpc.ok("queue-move-top", json!({ "ids": hash }));
    let t = &rpc.torrents(
        hash.clone(),
        &[
            "labels",
            "seedRatioLimit",
            "seedRatioMode",
            "seedIdleLimit",
            "seedIdleMode",
        ],
    )[0];
    assert_eq!(t["labels"], json!(["tv-sonarr-imported"]), "{t:?}");
    assert_eq!(
        (t["seedRatioLimit"].as_f64(), t["seedRatioMode"].as_u64()),
        (Some(2.0), Some(1))
    );
    assert_eq!(
        (&t["seedIdleLimit"], &t["seedIdleMode"]),
        (&json!(60), &json!(1))
    );

    // torrent-remove with delete-local-data: gone from the daemon and from the disk.
    rpc.ok(
        "torrent-remove",
        json!({"ids": hash, "delete-local-data": true}),
    );
    let deadline = within(SHORT);
    loop {
        let gone = rpc.torrents(json!([p.info_hash]), &["id"]).is_empty();
        let status_gone = d
            .snapshot()
            .is_some_and(|s| s.status.torrent(&p.info_hash).is_none());
        if gone && status_gone && !p.data().exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after torrent-remove: listed {}, in the status file {}, data there {}",
            !gone,
            !status_gone,
            p.data().exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.stop("TERM");
}

/// Runs `trpc_client.py --host IP --port N ARGS...` with the venv's Python; returns its JSON.
pub(crate) fn trpc(addr: SocketAddr, args: &[&str]) -> Value {
    let python = require_transmission_rpc();
    let mut cmd = Command::new(python);
    cmd.arg(client_script("trpc_client.py"))
        .arg("--host")
        .arg(addr.ip().to_string())
        .arg("--port")
        .arg(addr.port().to_string())
        .args(args);
    let out = run_to_end("trpc_client.py", cmd, SHORT);
    assert!(
        out.status.success(),
        "trpc_client.py {args:?} failed: {}{}",
        out.stdout,
        out.stderr
    );
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("trpc_client.py {args:?}: not JSON ({e}): {}", out.stdout))
}

/// The torrent's state in btd's status file, once it is `want`.
fn wait_state(d: &mut Daemon, hash: &str, want: &str) {
    let deadline = within(SHORT);
    loop {
        let state = d
            .snapshot()
            .and_then(|s| s.status.torrent(hash).map(|t| t.state.clone()));
        if state.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "torrent {hash} not {want} within {SHORT:?}: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_python_transmission_rpc_library_adds_lists_reads_starts_stops_and_removes() {
    let work = TempDir::new("rpc-trpc");
    let p = seed_payload(&work, "rpc-trpc");
    let (_home, mut d, addr) = rpc_daemon("rpc-trpc");

    // The library reads the session (it does at connect) and every property of it.
    let session = trpc(addr, &["session"]);
    assert_eq!(session["rpc_version"], 17, "{session}");
    assert!(
        session["version"]
            .as_str()
            .is_some_and(|v| v.contains("btd")),
        "{session}"
    );
    assert_eq!(session["unreadable"], json!({}), "{session}");

    // Added paused, into the directory that holds its data: btd has it, paused.
    let torrent = p.torrent.display().to_string();
    let dir = p.dir.display().to_string();
    let added = trpc(addr, &["add", &torrent, "--dir", &dir, "--paused"]);
    assert_eq!(added["hash"], p.info_hash.as_str(), "{added}");
    assert_eq!(added["name"], "rpc-trpc", "{added}");
    wait_state(&mut d, &p.info_hash, "paused");
    let list = trpc(addr, &["list"]);
    let row = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["hash"] == p.info_hash.as_str())
        .unwrap_or_else(|| panic!("not listed: {list}"));
    assert_eq!(row["status"], "stopped", "{list}");

    // Started: btd checks the data and seeds; the library reads every field of it.
    trpc(addr, &["start", &p.info_hash]);
    wait_state(&mut d, &p.info_hash, "seeding");
    let t = trpc(addr, &["get", &p.info_hash]);
    assert_eq!(t["unreadable"], json!({}), "{t}");
    assert_eq!(t["status"], "seeding", "{t}");
    assert_eq!(t["percent_done"], 1.0, "{t}");
    assert_eq!(t["left_until_done"], 0, "{t}");
    assert_eq!(t["total_size"], MIB + 1000, "{t}");
    assert_eq!(t["download_dir"], dir.as_str(), "{t}");
    assert_eq!(t["file_count"], 2, "{t}");
    let files: Vec<(&str, u64, u64)> = t["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().expect("a name"),
                f["size"].as_u64().expect("a size"),
                f["completed"].as_u64().expect("completed"),
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            ("rpc-trpc/data.bin", MIB, MIB),
            ("rpc-trpc/notes/readme.txt", 1000, 1000)
        ],
        "{t}"
    );

    // Stopped: paused in btd.
    trpc(addr, &["stop", &p.info_hash]);
    wait_state(&mut d, &p.info_hash, "paused");
    let t = trpc(addr, &["get", &p.info_hash]);
    assert_eq!(t["status"], "stopped", "{t}");

    // Removed with its data: gone from btd and from the disk.
    trpc(addr, &["remove", &p.info_hash, "--delete"]);
    let deadline = within(SHORT);
    while d
        .snapshot()
        .is_none_or(|s| s.status.torrent(&p.info_hash).is_some())
        || p.data().exists()
    {
        assert!(
            Instant::now() < deadline,
            "after remove --delete: in the status file or data left in {}",
            p.data().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let list = trpc(addr, &["list"]);
    assert_eq!(list, json!([]), "{list}");
    d.stop("TERM");
}
