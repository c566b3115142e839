//! btd's Transmission RPC beside the real thing: the same `session-get`, `session-stats` and
//! `torrent-get` requests (objects, `table`, `recently-active`; the torrent seeding, then
//! stopped) to transmission-daemon 3.00 (through `scripts/clients/transmission.py`: port
//! mapping, DHT, LPD, PEX and uTP off, its own config dir, RPC on 127.0.0.1) and to btd, both
//! seeding the same torrent from the same files. Every key transmission answers must be in btd's
//! answer with the same JSON type (number, string, bool, array, object, null), inside the
//! objects of `files`, `fileStats`, `trackers` and `trackerStats` too; btd may add only the keys
//! Transmission 4 (rpc-version 17, which btd speaks) added. All differences are reported at once.

use crate::support::daemon::{DaemonHome, TorrentEntry, payload, within};
use crate::support::rpc_client::RpcClient;
use crate::support::{
    PeerSpec, SHORT, TempDir, Transmission, closed_port, next_ip, parse_rpc_serving,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The `torrent-get` fields compared: the list, and those `transmission-remote -i` asks.
const TORRENT_FIELDS: &[&str] = &[
    "id",
    "hashString",
    "name",
    "status",
    "percentDone",
    "sizeWhenDone",
    "leftUntilDone",
    "totalSize",
    "haveValid",
    "haveUnchecked",
    "rateDownload",
    "rateUpload",
    "uploadedEver",
    "downloadedEver",
    "corruptEver",
    "desiredAvailable",
    "uploadRatio",
    "eta",
    "error",
    "errorString",
    "isFinished",
    "isStalled",
    "downloadDir",
    "addedDate",
    "doneDate",
    "activityDate",
    "startDate",
    "secondsDownloading",
    "secondsSeeding",
    "peersConnected",
    "peersGettingFromUs",
    "peersSendingToUs",
    "peer-limit",
    "peers",
    "trackers",
    "trackerStats",
    "files",
    "fileStats",
    "fileCount",
    "wanted",
    "priorities",
    "pieceCount",
    "pieceSize",
    "labels",
    "queuePosition",
    "magnetLink",
    "metadataPercentComplete",
    "recheckProgress",
    "seedRatioLimit",
    "seedRatioMode",
    "seedIdleLimit",
    "seedIdleMode",
    "downloadLimit",
    "downloadLimited",
    "uploadLimit",
    "uploadLimited",
    "honorsSessionLimits",
    "bandwidthPriority",
    "isPrivate",
    "comment",
    "creator",
    "dateCreated",
    "webseeds",
    "webseedsSendingToUs",
    "etaIdle",
    "percentComplete",
    "manualAnnounceTime",
    "maxConnectedPeers",
    "peersFrom",
    "pieces",
    "torrentFile",
    "editDate",
    "group",
    "primary-mime-type",
    "file-count",
    "trackerList",
];

/// Keys Transmission 4 (rpc-version 17) added inside objects, which 3.00 does not answer: btd,
/// which says it speaks 17, may give them. `path` is where the key sits (`files[]`, ...).
const RPC17_ADDITIONS: &[(&str, &str)] = &[
    ("files[]", "begin_piece"),
    ("files[]", "end_piece"),
    ("trackers[]", "sitename"),
    ("trackerStats[]", "sitename"),
    ("session", "rpc-version-semver"),
];

/// `torrent-get` fields that Transmission 4 (rpc-version 17) added, with their type in its
/// spec: 3.00 answers a field name it does not know with the number 0, so these are checked
/// against the spec instead.
const RPC17_FIELDS: &[(&str, &str)] = &[
    ("fileCount", "number"),
    ("file-count", "number"),
    ("percentComplete", "number"),
    ("editDate", "number"),
    ("group", "string"),
    ("primary-mime-type", "string"),
    ("trackerList", "string"),
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

/// Appends to `out` each way `btd` differs in shape from `tr` at `path`.
fn shape_diffs(path: &str, tr: &Value, btd: &Value, out: &mut Vec<String>) {
    if kind(tr) != kind(btd) {
        out.push(format!(
            "{path}: transmission gives {} {tr}, btd {} {btd}",
            kind(tr),
            kind(btd)
        ));
        return;
    }
    match (tr, btd) {
        (Value::Object(t), Value::Object(b)) => {
            for (key, tv) in t {
                match b.get(key) {
                    None => out.push(format!("{path}.{key}: btd lacks it (transmission: {tv})")),
                    Some(bv) => shape_diffs(&format!("{path}.{key}"), tv, bv, out),
                }
            }
            let bare = path.rsplit('.').next().unwrap_or(path);
            for (key, bv) in b {
                if !t.contains_key(key) && !RPC17_ADDITIONS.contains(&(bare, key.as_str())) {
                    out.push(format!("{path}.{key}: only btd gives it ({bv})"));
                }
            }
        }
        (Value::Array(t), Value::Array(b)) => {
            if t.len() != b.len() {
                out.push(format!(
                    "{path}: transmission gives {} elements, btd {}",
                    t.len(),
                    b.len()
                ));
            }
            // Element by element: a `table` mixes a header row of strings with rows of values.
            for (tv, bv) in t.iter().zip(b) {
                shape_diffs(&format!("{path}[]"), tv, bv, out);
            }
        }
        _ => {}
    }
}

/// Equal JSON, numbers compared by value: transmission writes a whole real as an integer
/// (`percentDone: 1`), serde_json as a float (`1.0`); both are the number 1 to a client.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// The fields both must give the same value for, seeding the same files.
fn same_values(state: &str, tr: &Value, btd: &Value, fields: &[&str], out: &mut Vec<String>) {
    for f in fields {
        if !same(&tr[f], &btd[f]) {
            out.push(format!(
                "{state}: {f}: transmission {}, btd {}",
                tr[f], btd[f]
            ));
        }
    }
}

/// Sends both the same `torrent-get` of [`TORRENT_FIELDS`] for `hash` (both in `state`) and
/// appends to `diffs` how btd's answer differs: shapes, and the values both must share.
fn compare_torrent(
    trc: &mut RpcClient,
    btc: &mut RpcClient,
    hash: &str,
    state: &str,
    diffs: &mut Vec<String>,
) {
    let ids = json!([hash]);
    let tr_torrents = trc.torrents(ids.clone(), TORRENT_FIELDS);
    let btd_torrents = btc.torrents(ids, TORRENT_FIELDS);
    assert_eq!(tr_torrents.len(), 1, "transmission: {tr_torrents:?}");
    assert_eq!(btd_torrents.len(), 1, "btd: {btd_torrents:?}");
    let mut tr_t = Value::Object(tr_torrents[0].clone());
    let mut btd_t = Value::Object(btd_torrents[0].clone());
    for (field, want) in RPC17_FIELDS {
        tr_t.as_object_mut().expect("an object").remove(*field);
        match btd_t.as_object_mut().expect("an object").remove(*field) {
            Some(v) if kind(&v) == *want => {}
            other => diffs.push(format!(
                "{state}.torrent.{field}: want a {want}, btd gives {other:?}"
            )),
        }
    }
    shape_diffs(&format!("{state}.torrent"), &tr_t, &btd_t, diffs);
    same_values(
        state,
        &tr_t,
        &btd_t,
        &[
            "hashString",
            "name",
            "status",
            "percentDone",
            "sizeWhenDone",
            "leftUntilDone",
            "totalSize",
            "haveValid",
            "isFinished",
            "isPrivate",
            "pieceCount",
            "pieceSize",
            "pieces",
            "fileStats",
            "wanted",
            "priorities",
            "metadataPercentComplete",
            "comment",
            "creator",
            "dateCreated",
        ],
        diffs,
    );
    for (i, (tf, bf)) in tr_t["files"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(btd_t["files"].as_array().into_iter().flatten())
        .enumerate()
    {
        for key in ["name", "length", "bytesCompleted"] {
            if !same(&tf[key], &bf[key]) {
                diffs.push(format!(
                    "{state}: files[{i}].{key}: transmission {}, btd {}",
                    tf[key], bf[key]
                ));
            }
        }
    }
    for key in ["announce", "tier", "scrape"] {
        if !same(&tr_t["trackers"][0][key], &btd_t["trackers"][0][key]) {
            diffs.push(format!(
                "{state}: trackers[0].{key}: transmission {}, btd {}",
                tr_t["trackers"][0][key], btd_t["trackers"][0][key]
            ));
        }
    }
}

#[test]
fn session_and_torrent_fields_have_transmissions_keys_and_types() {
    let work = TempDir::new("rpc-diff");
    // A tracker where nothing listens (on loopback): both announce there and fail, so the
    // tracker lists are not empty and no packet leaves the machine.
    let tracker = format!("http://127.0.0.1:{}/announce", closed_port());
    let p = payload(&work, "data", "rpc-diff", MIB, 32 * KIB, &[tracker]);

    let mut tr = Transmission::seed(
        "transmission seeder",
        &PeerSpec {
            torrent: &p.torrent,
            dir: &p.dir,
            ip: next_ip(),
            peers: vec![],
            announce: false,
        },
    );
    tr.wait_listening();
    let tr_rpc = tr.wait_rpc();
    tr.wait_seeding();

    let mut home = DaemonHome::new("rpc-diff");
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    let btd_rpc = d.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving);
    d.wait_seeding(&p.info_hash, SHORT);

    let mut trc = RpcClient::new(tr_rpc);
    let mut btc = RpcClient::new(btd_rpc);
    let mut diffs = Vec::new();

    let tr_session = Value::Object(trc.ok("session-get", json!({})));
    let btd_session = Value::Object(btc.ok("session-get", json!({})));
    shape_diffs("session", &tr_session, &btd_session, &mut diffs);

    let tr_stats = Value::Object(trc.ok("session-stats", json!({})));
    let btd_stats = Value::Object(btc.ok("session-stats", json!({})));
    shape_diffs("stats", &tr_stats, &btd_stats, &mut diffs);

    compare_torrent(&mut trc, &mut btc, &p.info_hash, "seeding", &mut diffs);

    // The same `table` request: a header row, then one row per torrent. A name asked for
    // twice is two columns, as in Transmission's.
    let table = json!({
        "ids": [p.info_hash],
        "fields": ["id", "name", "status", "name"],
        "format": "table",
    });
    let tr_table = Value::Object(trc.ok("torrent-get", table.clone()));
    let btd_table = Value::Object(btc.ok("torrent-get", table));
    shape_diffs("table", &tr_table, &btd_table, &mut diffs);
    assert_eq!(
        tr_table["torrents"][0], btd_table["torrents"][0],
        "the table's header rows differ"
    );
    // As objects, a name asked for twice is one key.
    let objects = json!({"ids": [p.info_hash], "fields": ["id", "name", "status", "name"]});
    let tr_objects = trc.ok("torrent-get", objects.clone());
    let btd_objects = btc.ok("torrent-get", objects.clone());
    let text = btc.call_text("torrent-get", objects);
    assert_eq!(text.matches("\"name\":").count(), 1, "`name` twice: {text}");
    shape_diffs(
        "objects",
        &Value::Object(tr_objects),
        &Value::Object(btd_objects),
        &mut diffs,
    );

    // `recently-active`: the torrents and the ids removed lately.
    let recent = json!({"ids": "recently-active", "fields": ["id", "hashString"]});
    let tr_recent = Value::Object(trc.ok("torrent-get", recent.clone()));
    let btd_recent = Value::Object(btc.ok("torrent-get", recent));
    shape_diffs("recently-active", &tr_recent, &btd_recent, &mut diffs);

    // Both stopped: the same shapes again, status 0.
    let ids = json!({ "ids": [p.info_hash] });
    trc.ok("torrent-stop", ids.clone());
    btc.ok("torrent-stop", ids);
    // Transmission stops a torrent on its own loop, a moment after it answers.
    let deadline = within(SHORT);
    while trc.torrents(json!([p.info_hash]), &["status"])[0]["status"] != 0 {
        assert!(
            Instant::now() < deadline,
            "transmission did not stop the torrent"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    compare_torrent(&mut trc, &mut btc, &p.info_hash, "stopped", &mut diffs);

    assert!(
        diffs.is_empty(),
        "btd's RPC answers differ from transmission-daemon's:\n  {}",
        diffs.join("\n  ")
    );
    d.stop("TERM");
    tr.terminate_and_assert_ok(SHORT);
}
