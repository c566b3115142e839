//! File selection and priorities (issue 13) against real clients: a libtorrent seeder whose
//! upload log shows what btd asked for, `transmission-remote -G/-g/-ph` and btd's own
//! `btd files`, each checked against the files on disk and btd's state after a restart.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::support::daemon::{Daemon, DaemonHome, Payload, within};
use crate::support::rpc_client::RpcClient;
use crate::support::{
    LtClient, PeerSpec, SHORT, TRANSFER, TempDir, next_ip, parse_rpc_serving, require_program,
    run_to_end, sha1_file, wait_until,
};

const KIB: u64 = 1024;
const PIECE: u64 = 64 * KIB;

/// Three files whose boundaries fall inside pieces: `a` (pieces 0-3), `b` (3-20, sharing
/// piece 3 with `a` and 20 with `c`), `c` (20-24).
fn three_files(work: &TempDir, name: &str) -> Payload {
    Payload::create(
        &work.subdir("seed"),
        name,
        &[
            (&format!("{name}/a.bin"), 3 * PIECE + 5000),
            (&format!("{name}/b.bin"), 17 * PIECE),
            (&format!("{name}/c.bin"), 4 * PIECE + 123),
        ],
        crate::support::test_seed(name),
        &work.join(&format!("{name}.torrent")),
        PIECE,
        &[],
    )
}

/// The daemon's RPC client and address.
fn rpc(d: &mut Daemon) -> (RpcClient, SocketAddr) {
    let addr = d.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving);
    (RpcClient::new(addr), addr)
}

/// The torrent's index of each file name (`a.bin` ...), as btd lists them.
fn file_index(c: &mut RpcClient, id: u64, file: &str) -> usize {
    let t = one(c, id, &["files"]);
    t["files"]
        .as_array()
        .unwrap()
        .iter()
        .position(|f| f["name"].as_str().unwrap().ends_with(file))
        .unwrap_or_else(|| panic!("no {file} in {t:?}"))
}

fn one(c: &mut RpcClient, id: u64, fields: &[&str]) -> Map<String, Value> {
    c.torrents(json!([id]), fields)
        .pop()
        .unwrap_or_else(|| panic!("torrent {id} is not listed"))
}

/// Waits until the torrent has every wanted byte and seeds.
fn wait_done(c: &mut RpcClient, id: u64, timeout: Duration) -> Map<String, Value> {
    let mut last = Map::new();
    wait_until(within(timeout), "the wanted files", || {
        last = one(
            c,
            id,
            &["leftUntilDone", "status", "sizeWhenDone", "totalSize"],
        );
        last["leftUntilDone"] == 0 && last["status"] == 6
    });
    last
}

/// Pieces `first..=last` a file of the payload spans.
fn pieces_of(offset: u64, len: u64) -> BTreeSet<u32> {
    let first = u32::try_from(offset / PIECE).unwrap();
    let last = u32::try_from((offset + len - 1) / PIECE).unwrap();
    (first..=last).collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    sha1_file(a).ok().is_some() && sha1_file(a).ok() == sha1_file(b).ok()
}

#[test]
fn an_unwanted_file_is_never_requested_or_created_and_wanting_it_later_completes_it() {
    let work = TempDir::new("files-select");
    let p = three_files(&work, "files-select");
    let home = DaemonHome::new("files-select");
    home.write_config();
    let mut d = home.start("btd daemon");
    let btd = d.wait_listening();
    let (mut c, rpc_addr) = rpc(&mut d);
    let metainfo =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&p.torrent).unwrap());
    // mktorrent lists the files by name: a, b, c.
    let added = c.ok(
        "torrent-add",
        json!({"metainfo": metainfo, "files-unwanted": [1], "priority-high": [2]}),
    );
    let id = added["torrent-added"]["id"].as_u64().unwrap();
    assert_eq!(file_index(&mut c, id, "b.bin"), 1);
    let t = one(
        &mut c,
        id,
        &["wanted", "priorities", "sizeWhenDone", "totalSize"],
    );
    assert_eq!(t["wanted"], json!([1, 0, 1]));
    assert_eq!(t["priorities"], json!([0, 0, 1]));
    let (a_len, b_len, c_len) = (3 * PIECE + 5000, 17 * PIECE, 4 * PIECE + 123);
    let total = a_len + b_len + c_len;
    assert_eq!(t["totalSize"], total);
    // Pieces 0-3 and 20-24: the last one is short.
    assert_eq!(t["sizeWhenDone"], 9 * PIECE - (25 * PIECE - total));

    let mut seeder = LtClient::seed_logging_uploads(
        "libtorrent seed",
        &PeerSpec {
            torrent: &p.torrent,
            dir: &p.dir,
            ip: next_ip(),
            peers: vec![btd],
            announce: false,
        },
    );
    seeder.wait_seeding();
    wait_done(&mut c, id, TRANSFER);
    let got = home.download_dir().join(&p.name);
    assert!(same_file(&got.join("a.bin"), &p.data().join("a.bin")));
    assert!(same_file(&got.join("c.bin"), &p.data().join("c.bin")));
    assert!(!got.join("b.bin").exists(), "the unwanted file was created");
    let uploaded = seeder.uploaded_pieces();
    let wanted: BTreeSet<u32> = pieces_of(0, a_len)
        .union(&pieces_of(a_len + b_len, c_len))
        .copied()
        .collect();
    assert!(
        uploaded.is_subset(&wanted),
        "the seeder sent pieces lying wholly in the unwanted file: {:?}",
        uploaded.difference(&wanted).collect::<Vec<_>>()
    );
    assert_eq!(uploaded, wanted, "every wanted piece came from the seeder");

    // Wanted after all (btd's CLI): created, its boundary bytes moved out of the part file,
    // the rest fetched.
    let rpc_url = format!("http://{rpc_addr}/transmission/rpc");
    let out = home.cli(&[
        "files".into(),
        "--rpc".into(),
        rpc_url.clone().into(),
        id.to_string().into(),
        "--want".into(),
        "all".into(),
    ]);
    out.assert_success();
    let t = wait_done(&mut c, id, TRANSFER);
    assert_eq!(t["sizeWhenDone"], total);
    for f in ["a.bin", "b.bin", "c.bin"] {
        assert!(same_file(&got.join(f), &p.data().join(f)), "{f} differs");
    }
    let listing = home.cli(&[
        "files".into(),
        "--rpc".into(),
        rpc_url.into(),
        id.to_string().into(),
    ]);
    listing.assert_success();
    assert!(
        listing
            .stdout
            .lines()
            .filter(|l| l.contains(" yes "))
            .count()
            == 3,
        "{}",
        listing.stdout
    );

    // A restart trusts the resume data: nothing is hashed again, nothing fetched again.
    d.stop("TERM");
    drop(seeder);
    let mut d = home.start("btd daemon again");
    let (mut c, _) = rpc(&mut d);
    let t = wait_done(&mut c, id, SHORT);
    assert_eq!(t["leftUntilDone"], 0);
    assert!(
        d.log_lines()
            .iter()
            .any(|l| l.contains("resume data matches")),
        "{:?}",
        d.log_lines()
    );
}

#[test]
fn transmission_remote_skips_and_prioritises_files_and_the_choice_survives_a_restart() {
    require_program("transmission-remote", "transmission-cli");
    let work = TempDir::new("files-remote");
    let p = three_files(&work, "files-remote");
    let home = DaemonHome::new("files-remote");
    home.write_config();
    let mut d = home.start("btd daemon");
    let (mut c, addr) = rpc(&mut d);
    let addr = addr.to_string();
    let remote = |args: &[&str]| {
        let mut cmd = std::process::Command::new("transmission-remote");
        cmd.arg(&addr).args(args);
        let out = run_to_end("transmission-remote", cmd, SHORT);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            out.status.success() && !text.contains("Error"),
            "transmission-remote {args:?}: {text}"
        );
        text
    };
    let added = c.ok(
        "torrent-add",
        json!({"filename": p.torrent.to_str().unwrap(), "paused": true}),
    );
    let id = added["torrent-added"]["id"].as_u64().unwrap();
    let tid = id.to_string();
    remote(&["-t", &tid, "-G", "1"]);
    remote(&["-t", &tid, "-ph", "2"]);
    remote(&["-t", &tid, "-pl", "0"]);
    let check = |c: &mut RpcClient, text: &str| {
        let t = one(c, id, &["wanted", "priorities"]);
        assert_eq!(t["wanted"], json!([1, 0, 1]), "{t:?}");
        assert_eq!(t["priorities"], json!([-1, 0, 1]), "{t:?}");
        // transmission-remote -f: "#  Done Priority Get Size Name".
        let rows: Vec<(String, String)> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(|ch: char| ch.is_ascii_digit()))
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols[2].to_owned(), cols[3].to_owned())
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("Low".to_owned(), "Yes".to_owned()),
                ("Normal".to_owned(), "No".to_owned()),
                ("High".to_owned(), "Yes".to_owned()),
            ],
            "{text}"
        );
    };
    let listing = remote(&["-t", &tid, "-f"]);
    check(&mut c, &listing);

    d.stop("TERM");
    let mut d = home.start("btd daemon again");
    let (mut c, addr_again) = rpc(&mut d);
    let addr_again = addr_again.to_string();
    let mut cmd = std::process::Command::new("transmission-remote");
    cmd.arg(&addr_again).args(["-t", &tid, "-f"]);
    let out = run_to_end("transmission-remote", cmd, SHORT);
    check(&mut c, &out.stdout);

    // Started with a seeder: the skipped file never appears; then -g brings it.
    let btd_again = d.wait_listening();
    let mut cmd = std::process::Command::new("transmission-remote");
    cmd.arg(&addr_again).args(["-t", &tid, "-s"]);
    run_to_end("transmission-remote", cmd, SHORT).assert_success();
    let mut seeder = LtClient::seed(
        "libtorrent seed",
        &PeerSpec {
            torrent: &p.torrent,
            dir: &p.dir,
            ip: next_ip(),
            peers: vec![btd_again],
            announce: false,
        },
    );
    seeder.wait_seeding();
    wait_done(&mut c, id, TRANSFER);
    let got = home.download_dir().join(&p.name);
    assert!(!got.join("b.bin").exists());
    let mut cmd = std::process::Command::new("transmission-remote");
    cmd.arg(&addr_again).args(["-t", &tid, "-g", "1"]);
    run_to_end("transmission-remote", cmd, SHORT).assert_success();
    wait_done(&mut c, id, TRANSFER);
    assert!(same_file(&got.join("b.bin"), &p.data().join("b.bin")));
}
