//! What the daemon keeps across restarts about a torrent's place and its data's place: the
//! queue order set over the RPC, and a move of its data that a crash cut short or that failed
//! half way (the record and the files must agree).

use crate::support::daemon::{Daemon, DaemonHome, Payload, Snapshot, TorrentEntry, payload};
use crate::support::rpc_client::RpcClient;
use crate::support::{SHORT, TempDir, parse_rpc_serving, tree_digest};
use serde_json::{Value, json};
use std::fs;
use std::path::Path;

const KIB: u64 = 1024;

fn rpc(d: &mut Daemon) -> RpcClient {
    RpcClient::new(d.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving))
}

fn state_of(s: &Snapshot, p: &Payload) -> String {
    s.status
        .torrent(&p.info_hash)
        .map_or_else(|| "absent".into(), |t| t.state.clone())
}

/// The torrents' `queuePosition`s, by payload.
fn positions(rpc: &mut RpcClient, ps: &[&Payload]) -> Vec<u64> {
    let hashes: Vec<&str> = ps.iter().map(|p| p.info_hash.as_str()).collect();
    let got = rpc.torrents(json!(hashes), &["hashString", "queuePosition"]);
    ps.iter()
        .map(|p| {
            got.iter()
                .find(|t| t["hashString"] == p.info_hash.as_str())
                .and_then(|t| t["queuePosition"].as_u64())
                .unwrap_or_else(|| panic!("no queuePosition for {}: {got:?}", p.name))
        })
        .collect()
}

#[test]
fn a_queued_torrent_moved_to_the_top_over_the_rpc_starts_first_after_a_restart() {
    let work = TempDir::new("queue-order");
    // No peer has them: the one downloading holds the only download slot for good.
    let ps: Vec<Payload> = ["order-a", "order-b", "order-c"]
        .iter()
        .map(|name| payload(&work, name, name, 64 * KIB, 16 * KIB, &[]))
        .collect();
    let [a, b, c] = [&ps[0], &ps[1], &ps[2]];
    let mut home = DaemonHome::new("queue-order");
    home.set("queue", "max_active_downloads", 1);
    for p in &ps {
        home.add_torrent(TorrentEntry::new(&p.torrent));
    }
    home.write_config();
    let mut d = home.start("btd daemon");
    let mut client = rpc(&mut d);
    d.wait_snapshot(SHORT, "a downloading, b and c queued", |s| {
        (state_of(s, a), state_of(s, b), state_of(s, c))
            == ("downloading".into(), "queued".into(), "queued".into())
    });
    assert_eq!(positions(&mut client, &[a, b, c]), [0, 1, 2]);
    client.ok("queue-move-top", json!({"ids": [c.info_hash]}));
    assert_eq!(positions(&mut client, &[a, b, c]), [1, 2, 0]);
    d.stop("TERM");

    let mut d = home.start("btd daemon again");
    let mut client = rpc(&mut d);
    let s = d.wait_snapshot(SHORT, "c downloading first", |s| {
        state_of(s, c) == "downloading"
    });
    assert_eq!(
        (state_of(&s, a), state_of(&s, b)),
        ("queued".into(), "queued".into()),
        "{}",
        s.text
    );
    assert_eq!(positions(&mut client, &[a, b, c]), [1, 2, 0]);
    // torrent-set's queuePosition is kept the same way.
    client.ok(
        "torrent-set",
        json!({"ids": [b.info_hash], "queuePosition": 0}),
    );
    assert_eq!(positions(&mut client, &[a, b, c]), [2, 0, 1]);
    d.stop("TERM");
    let mut d = home.start("btd daemon a third time");
    let mut client = rpc(&mut d);
    assert_eq!(positions(&mut client, &[a, b, c]), [2, 0, 1]);
    d.stop("TERM");
}

/// The torrent's record in the state directory.
fn record(home: &DaemonHome, p: &Payload) -> Value {
    let path = home
        .state_dir()
        .join("torrents")
        .join(format!("{}.json", p.info_hash));
    serde_json::from_slice(&fs::read(&path).expect("the record")).expect("JSON")
}

/// A daemon seeding `p` (two files) from `p.dir`, added over the RPC so that its record owns
/// its directory.
fn seeding_over_rpc(home: &DaemonHome, p: &Payload) -> (Daemon, RpcClient) {
    let mut d = home.start("btd daemon");
    let mut client = rpc(&mut d);
    client.ok(
        "torrent-add",
        json!({"filename": p.torrent, "download-dir": p.dir}),
    );
    d.wait_seeding(&p.info_hash, SHORT);
    (d, client)
}

fn dir_of(s: &Snapshot, p: &Payload) -> Option<String> {
    s.status
        .torrent(&p.info_hash)
        .and_then(|t| t.download_dir.clone())
}

fn text(path: &Path) -> String {
    path.to_str().expect("UTF-8").to_owned()
}

#[test]
fn a_move_cut_short_by_a_crash_is_finished_at_the_next_start_without_hashing() {
    let work = TempDir::new("move-crash");
    let p = payload(&work, "old", "move-crash", 256 * KIB, 16 * KIB, &[]);
    let digest = tree_digest(&p.data());
    let home = DaemonHome::new("move-crash");
    let (mut d, _) = seeding_over_rpc(&home, &p);
    d.stop("TERM");

    // What a kill between two files of a move leaves: the record names the target, the first
    // file is there, the second is still at the source with a copy cut short beside its target.
    let new_dir = work.subdir("new");
    let mut rec = record(&home, &p);
    rec["moving_to"] = json!(new_dir);
    fs::write(
        home.state_dir()
            .join("torrents")
            .join(format!("{}.json", p.info_hash)),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();
    fs::create_dir_all(new_dir.join("move-crash/notes")).unwrap();
    fs::rename(
        p.data().join("data.bin"),
        new_dir.join("move-crash/data.bin"),
    )
    .unwrap();
    fs::write(new_dir.join("move-crash/notes/readme.txt.part"), b"cut").unwrap();

    let mut d = home.start("btd daemon after the crash");
    let moved_to = text(&new_dir);
    let s = d.wait_snapshot(SHORT, "seeding from the move's target", |s| {
        state_of(s, &p) == "seeding" && dir_of(s, &p).as_deref() == Some(moved_to.as_str())
    });
    assert_eq!(
        tree_digest(&new_dir.join("move-crash")),
        digest,
        "{}",
        s.text
    );
    assert!(!p.data().exists(), "the source is left");
    assert!(d.log_contains("did not finish; finishing it"));
    let line = d.wait_log_contains(0, SHORT, "torrent move-crash: resume data");
    assert!(line.contains("matches"), "hashed again: {line}");
    let rec = record(&home, &p);
    assert_eq!(rec["download_dir"], json!(new_dir), "{rec}");
    assert!(rec.get("moving_to").is_none(), "{rec}");
    d.stop("TERM");
}

#[test]
fn a_move_that_fails_half_way_puts_the_files_back_and_the_record_keeps_their_place() {
    let work = TempDir::new("move-fail");
    let p = payload(&work, "old", "move-fail", 256 * KIB, 16 * KIB, &[]);
    let digest = tree_digest(&p.data());
    let home = DaemonHome::new("move-fail");
    let (mut d, mut client) = seeding_over_rpc(&home, &p);

    // data.bin moves first; a file where readme.txt's directory must go stops the move there.
    let new_dir = work.subdir("new");
    fs::create_dir_all(new_dir.join("move-fail")).unwrap();
    fs::write(new_dir.join("move-fail/notes"), b"in the way").unwrap();
    let mark = d.log_mark();
    client.ok(
        "torrent-set-location",
        json!({"ids": [p.info_hash], "location": new_dir, "move": true}),
    );
    d.wait_log_contains(mark, SHORT, "its files are back in");
    let old_dir = text(&p.dir);
    let s = d.wait_snapshot(SHORT, "in error, data where it was", |s| {
        state_of(s, &p) == "error" && dir_of(s, &p).as_deref() == Some(old_dir.as_str())
    });
    let error = s.status.torrent(&p.info_hash).unwrap().error.clone();
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("moving its data")),
        "{error:?}"
    );
    assert_eq!(
        tree_digest(&p.data()),
        digest,
        "the files did not all go back"
    );
    assert!(!new_dir.join("move-fail/data.bin").exists());
    assert_eq!(
        fs::read(new_dir.join("move-fail/notes")).unwrap(),
        b"in the way"
    );
    let rec = record(&home, &p);
    assert_eq!(rec["download_dir"], json!(p.dir), "{rec}");
    assert!(rec.get("moving_to").is_none(), "{rec}");

    // Started again, it seeds from where its files are, without hashing them again.
    let mark = d.log_mark();
    client.ok("torrent-start", json!({"ids": [p.info_hash]}));
    d.wait_seeding(&p.info_hash, SHORT);
    let line = d.wait_log_contains(mark, SHORT, "torrent move-fail: resume data");
    assert!(line.contains("matches"), "hashed again: {line}");
    d.stop("TERM");
}
