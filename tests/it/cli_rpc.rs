//! btd's own CLI as a client of a running daemon's RPC (`btd list`, `info`, `add`, `pause`,
//! `resume`, `verify`, `remove`): each command checked against the daemon's status file, its log
//! and the data on disk; IDs by number, name and info-hash prefix; credentials from the config
//! and from `BTD_RPC_AUTH`; the errors when there is no daemon or no RPC to reach.

use crate::support::daemon::{
    Daemon, DaemonHome, Payload, TorrentEntry, files_in, payload, within,
};
use crate::support::{Btd, SHORT, TempDir, free_port, parse_rpc_serving, run_to_end};
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// What `btd` printed and how it exited.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    description: String,
}

/// `btd ARGS... --config FILE [--rpc URL]`, with `BTD_RPC_AUTH` set to `auth` or unset.
fn btd(home: &DaemonHome, rpc: Option<&str>, auth: Option<&str>, args: &[&str]) -> Ran {
    let mut all: Vec<OsString> = args.iter().map(OsString::from).collect();
    all.push("--config".into());
    all.push(home.config_path().into());
    if let Some(url) = rpc {
        all.push("--rpc".into());
        all.push(url.into());
    }
    let mut cmd: Command = Btd::command(all);
    match auth {
        Some(a) => cmd.env("BTD_RPC_AUTH", a),
        None => cmd.env_remove("BTD_RPC_AUTH"),
    };
    let out = run_to_end("btd cli", cmd, SHORT);
    Ran {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: out.stderr,
        description: out.description,
    }
}

/// Runs `btd` and asserts exit 0; returns stdout.
fn ok(home: &DaemonHome, rpc: &str, args: &[&str]) -> String {
    let out = btd(home, Some(rpc), None, args);
    assert_eq!(out.code, Some(0), "btd {args:?}: {}", out.description);
    out.stdout
}

/// The daemon's RPC URL, from its `rpc serving HTTP on ADDR` line.
fn rpc_url(d: &mut Daemon) -> String {
    let addr = d.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving);
    format!("http://{addr}")
}

fn state(home: &DaemonHome, hash: &str) -> Option<String> {
    home.status()
        .and_then(|s| s.torrent(hash).map(|t| t.state.clone()))
}

fn wait_state(home: &DaemonHome, hash: &str, want: &str) {
    let deadline = within(SHORT);
    while state(home, hash).as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "torrent {hash} not {want} within {SHORT:?}: {:?}",
            state(home, hash)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_gone(home: &DaemonHome, hash: &str) {
    let deadline = within(SHORT);
    while state(home, hash).is_some() {
        assert!(Instant::now() < deadline, "{hash} still in the status file");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn seed_payload(work: &TempDir, label: &str, name: &str) -> Payload {
    payload(work, label, name, MIB, 32 * KIB, &[])
}

/// The status file's id of the torrent.
fn id_of(home: &DaemonHome, hash: &str) -> u32 {
    home.status()
        .and_then(|s| s.torrent(hash).and_then(|t| t.id))
        .unwrap_or_else(|| panic!("no id for {hash} in the status file"))
}

#[test]
fn btd_cli_adds_lists_shows_pauses_resumes_and_verifies_over_the_rpc() {
    let work = TempDir::new("cli-rpc");
    let p = seed_payload(&work, "data", "cli-rpc");
    let home = DaemonHome::new("cli-rpc");
    let mut d = home.start("btd daemon");
    let url = rpc_url(&mut d);
    let watch_before = files_in(&home.watch_dir());

    // A file through the RPC's torrent-add (the watch directory is not used), seeded from
    // --dir.
    let torrent = p.torrent.display().to_string();
    let dir = p.dir.display().to_string();
    let out = ok(&home, &url, &["add", &torrent, "--dir", &dir]);
    assert!(
        out.contains(&format!("added {} ({})", p.name, p.info_hash)),
        "{out}"
    );
    assert_eq!(
        files_in(&home.watch_dir()),
        watch_before,
        "went through the watch dir"
    );
    d.wait_seeding(&p.info_hash, SHORT);
    let again = btd(&home, Some(&url), None, &["add", &torrent]);
    assert_eq!(again.code, Some(1), "{}", again.description);
    assert!(
        again
            .stderr
            .contains(&format!("already in the daemon as {}", p.name)),
        "{}",
        again.description
    );

    // A magnet link, paused, whose hash shares its first 4 digits with the file's.
    let twin = format!("{}{}", &p.info_hash[..4], "e".repeat(36));
    let magnet = format!("magnet:?xt=urn:btih:{twin}&dn=cli-rpc-magnet");
    let out = ok(&home, &url, &["add", &magnet, "--paused"]);
    assert!(
        out.contains(&format!("added cli-rpc-magnet ({twin})")),
        "{out}"
    );
    wait_state(&home, &twin, "paused");

    // The list shows each torrent with the id the daemon gave it.
    let id = id_of(&home, &p.info_hash);
    let magnet_id = id_of(&home, &twin);
    let list = ok(&home, &url, &["list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].split_whitespace().eq([
            "ID", "NAME", "STATE", "SIZE", "HAVE", "PROGRESS", "DOWN", "UP", "ETA", "PEERS",
            "RATIO"
        ]),
        "{list}"
    );
    let row = |name: &str| -> Vec<String> {
        lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {list}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let r = row("cli-rpc");
    assert_eq!(
        (r[0].as_str(), r[2].as_str()),
        (id.to_string().as_str(), "seeding"),
        "{list}"
    );
    assert!(r.contains(&"100.0%".to_owned()), "{list}");
    let r = row("cli-rpc-magnet");
    assert_eq!(
        (r[0].as_str(), r[2].as_str()),
        (magnet_id.to_string().as_str(), "paused"),
        "{list}"
    );
    assert!(list.contains("2 torrents"), "{list}");

    // info by id, by name, by hash prefix: the same torrent.
    for key in [id.to_string(), p.name.clone(), p.info_hash[..8].to_owned()] {
        let info = ok(&home, &url, &["info", &key]);
        assert!(
            info.contains(&format!("info hash:  {}", p.info_hash)),
            "{key}: {info}"
        );
        assert!(info.contains("state:      seeding"), "{key}: {info}");
        assert!(
            info.contains(&format!("location:   {dir}")),
            "{key}: {info}"
        );
        assert!(info.contains("data.bin"), "{key}: {info}");
        assert!(!info.contains("cli-rpc-magnet"), "{key}: {info}");
    }
    // Four digits both hashes start with: bad usage, naming both.
    let prefix = &p.info_hash[..4];
    let out = btd(&home, Some(&url), None, &["info", prefix]);
    assert_eq!(out.code, Some(2), "{}", out.description);
    assert!(
        out.stderr.contains(&format!("{prefix:?} names 2 torrents")),
        "{}",
        out.description
    );
    assert!(
        out.stderr
            .contains(&format!("{id} cli-rpc ({})", p.info_hash)),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("{magnet_id} cli-rpc-magnet ({twin})")),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.description);
    let out = btd(&home, Some(&url), None, &["pause", "no-such-torrent"]);
    assert_eq!(out.code, Some(2), "{}", out.description);
    assert!(
        out.stderr.contains("no torrent \"no-such-torrent\""),
        "{}",
        out.description
    );

    // Pause by hash prefix, resume by name, each seen in the status file.
    let out = ok(&home, &url, &["pause", &p.info_hash[..10]]);
    assert!(
        out.contains(&format!("paused {id} cli-rpc ({}): paused", p.info_hash)),
        "{out}"
    );
    wait_state(&home, &p.info_hash, "paused");
    let out = ok(&home, &url, &["resume", &p.name]);
    assert!(out.starts_with(&format!("resumed {id} cli-rpc")), "{out}");
    wait_state(&home, &p.info_hash, "seeding");

    // Verify by id: the daemon hashes the data again, and seeds after.
    let mark = d.log_mark();
    let out = ok(&home, &url, &["verify", &id.to_string()]);
    assert!(out.starts_with(&format!("verifying {id} cli-rpc")), "{out}");
    d.wait_log_contains(mark, SHORT, "cli-rpc: verifying over the RPC");
    // Hashed, not taken from resume data: every piece counted again.
    d.wait_log_after(mark, SHORT, "cli-rpc's data hashed", |l| {
        (l.contains("torrent cli-rpc: ") && l.contains(" pieces verified in ")).then_some(())
    });
    wait_state(&home, &p.info_hash, "seeding");

    // Its files, numbered, complete.
    let files = ok(&home, &url, &["files", &p.name]);
    let rows: Vec<&str> = files.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{files}");
    assert!(
        rows[0].trim_start().starts_with("0  100.0%  normal    yes"),
        "{files}"
    );
    assert!(rows[0].ends_with("cli-rpc/data.bin"), "{files}");
    assert!(rows[1].ends_with("cli-rpc/notes/readme.txt"), "{files}");

    // Methods the daemon may not do yet: its answer, whichever it is, never a made-up success.
    let elsewhere = work.subdir("elsewhere").display().to_string();
    for (args, method) in [
        (vec!["reannounce", "cli-rpc"], "torrent-reannounce"),
        (vec!["set", "cli-rpc", "--ratio", "3"], "torrent-set"),
        (vec!["files", "cli-rpc", "--skip", "1"], "torrent-set"),
        (
            vec!["move", "cli-rpc", elsewhere.as_str()],
            "torrent-set-location",
        ),
    ] {
        let out = btd(&home, Some(&url), None, &args);
        match out.code {
            Some(0) => assert!(out.stdout.contains("cli-rpc"), "{}", out.description),
            Some(1) => assert!(
                out.stderr.starts_with("btd: error: ") && out.stderr.contains(method),
                "{args:?}: not the daemon's refusal: {}",
                out.description
            ),
            _ => panic!("{args:?}: {}", out.description),
        }
    }
    d.stop("TERM");
}

#[test]
fn btd_remove_over_the_rpc_keeps_or_deletes_the_data_and_names_a_refusal() {
    let work = TempDir::new("cli-rpc-remove");
    let keep = seed_payload(&work, "keep", "cli-keep");
    let gone = seed_payload(&work, "gone", "cli-gone");
    let configured = seed_payload(&work, "conf", "cli-conf");
    let mut home = DaemonHome::new("cli-rpc-remove");
    home.add_torrent(TorrentEntry::new(&configured.torrent).download_dir(&configured.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    let url = rpc_url(&mut d);
    for p in [&keep, &gone] {
        let torrent = p.torrent.display().to_string();
        ok(
            &home,
            &url,
            &["add", &torrent, "--dir", &p.dir.display().to_string()],
        );
    }
    for p in [&keep, &gone, &configured] {
        d.wait_seeding(&p.info_hash, SHORT);
    }
    let neighbour = gone.dir.join("not-the-torrents.txt");
    std::fs::write(&neighbour, "stays").expect("write a neighbour");

    let id = id_of(&home, &keep.info_hash);
    let out = ok(&home, &url, &["remove", &id.to_string()]);
    assert!(
        out.contains(&format!(
            "removed {id} cli-keep ({}); its data stays",
            keep.info_hash
        )),
        "{out}"
    );
    wait_gone(&home, &keep.info_hash);
    assert!(
        keep.data().join("data.bin").exists(),
        "remove deleted the data"
    );

    let out = ok(&home, &url, &["remove", "cli-gone", "--delete-data"]);
    assert!(out.contains("and deleted its data"), "{out}");
    wait_gone(&home, &gone.info_hash);
    assert!(
        !gone.data().exists(),
        "--delete-data left {}",
        gone.data().display()
    );
    assert!(neighbour.exists(), "a file that is not the torrent's went");

    // A [[torrent]] entry's torrent is refused with the daemon's words, exit 1; it stays.
    let out = btd(&home, Some(&url), None, &["remove", "cli-conf"]);
    assert_eq!(out.code, Some(1), "{}", out.description);
    assert!(out.stderr.contains("[[torrent]]"), "{}", out.description);
    assert!(!out.stdout.contains("removed"), "{}", out.description);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        state(&home, &configured.info_hash).is_some(),
        "removed anyway"
    );
    assert!(configured.data().join("data.bin").exists());
    d.stop("TERM");
}

#[test]
fn btd_cli_credentials_come_from_btd_rpc_auth_before_the_config() {
    let mut home = DaemonHome::new("cli-rpc-auth");
    let port = free_port(home.ip);
    let listen = format!("{}:{port}", home.ip);
    home.set("rpc", "listen", listen.clone())
        .set("rpc", "username", "admin")
        .set("rpc", "password", "s3cret")
        .write_config();
    let mut d = home.start("btd daemon");
    rpc_url(&mut d);

    // The config's own address and credentials, no --rpc.
    let out = btd(&home, None, None, &["list"]);
    assert_eq!(out.code, Some(0), "{}", out.description);
    assert!(out.stdout.contains("0 torrents"), "{}", out.description);
    // BTD_RPC_AUTH wins over the config's.
    let out = btd(&home, None, Some("admin:wrong"), &["list"]);
    assert_eq!(out.code, Some(1), "{}", out.description);
    assert!(
        out.stderr.contains(&format!(
            "the btd RPC at {listen} refused the credentials of user \"admin\""
        )),
        "{}",
        out.description
    );

    // A config without credentials: BTD_RPC_AUTH gives them; without it, the daemon asks.
    let bare = DaemonHome::new("cli-rpc-auth-bare");
    let url = format!("http://{listen}");
    let out = btd(&bare, Some(&url), None, &["list"]);
    assert_eq!(out.code, Some(1), "{}", out.description);
    assert!(
        out.stderr.contains("wants credentials (401)"),
        "{}",
        out.description
    );
    assert!(out.stderr.contains("BTD_RPC_AUTH"), "{}", out.description);
    let out = btd(&bare, Some(&url), Some("admin:s3cret"), &["list"]);
    assert_eq!(out.code, Some(0), "{}", out.description);
    assert!(
        !d.log_lines().iter().any(|l| l.contains("s3cret")),
        "the password went into the log"
    );
    d.stop("TERM");
}

#[test]
fn btd_cli_without_a_daemon_or_its_rpc_says_so_and_exits_1() {
    let work = TempDir::new("cli-rpc-none");
    let p = seed_payload(&work, "data", "cli-none");
    let torrent = p.torrent.display().to_string();

    // Nothing listening at the config's address.
    let mut home = DaemonHome::new("cli-rpc-none");
    let listen = format!("{}:{}", home.ip, free_port(home.ip));
    home.set("rpc", "listen", listen.clone()).write_config();
    for args in [
        &["list"][..],
        &["info", "1"],
        &["pause", "1"],
        &["remove", "1", "--delete-data"],
    ] {
        let out = btd(&home, None, None, args);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.description);
        assert!(
            out.stderr.starts_with(&format!(
                "btd: error: no btd RPC at {listen}: is the daemon running with [rpc] enabled?"
            )),
            "{args:?}: {}",
            out.description
        );
    }
    // `btd add` falls back to the watch directory, which finds no daemon either.
    let out = btd(&home, None, None, &["add", &torrent]);
    assert_eq!(out.code, Some(1), "{}", out.description);
    assert!(
        out.stderr.contains("no btd daemon is running"),
        "{}",
        out.description
    );
    // So does --rpc URL, without falling back.
    let out = btd(
        &home,
        Some(&format!("http://{listen}")),
        None,
        &["add", &torrent],
    );
    assert_eq!(out.code, Some(1), "{}", out.description);
    assert!(
        out.stderr.contains(&format!("no btd RPC at {listen}")),
        "{}",
        out.description
    );

    // Port 0 (only the daemon knows the port) and a disabled RPC: said, with what to do.
    let zero = DaemonHome::new("cli-rpc-port0");
    let out = btd(&zero, None, None, &["list"]);
    assert_eq!(out.code, Some(1), "{}", out.description);
    assert!(out.stderr.contains("has port 0"), "{}", out.description);
    assert!(out.stderr.contains("--rpc"), "{}", out.description);
    let mut off = DaemonHome::new("cli-rpc-off");
    off.set("rpc", "enabled", false).write_config();
    let out = btd(&off, None, None, &["info", "x"]);
    assert_eq!(out.code, Some(1), "{}", out.description);
    assert!(
        out.stderr.contains("[rpc] enabled = false"),
        "{}",
        out.description
    );
    let out = btd(&off, None, None, &["add", &torrent, "--paused"]);
    assert_eq!(out.code, Some(1), "{}", out.description);
    assert!(
        out.stderr
            .contains("--paused and --dir need the daemon's RPC"),
        "{}",
        out.description
    );
    assert!(Path::new(&torrent).exists());
}

#[test]
fn btd_cli_finds_a_running_daemons_rpc_on_port_0_through_its_status_file() {
    let work = TempDir::new("cli-rpc-port0-run");
    let p = seed_payload(&work, "data", "cli-port0");
    let mut home = DaemonHome::new("cli-rpc-port0-run");
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&p.info_hash, SHORT);
    // The test homes' [rpc] listen has port 0: no --rpc, the status file tells.
    let out = btd(&home, None, None, &["list"]);
    assert_eq!(out.code, Some(0), "{}", out.description);
    assert!(out.stdout.contains("cli-port0"), "{}", out.description);
    d.stop("TERM");
}
