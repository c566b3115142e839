//! What the admin sees at the command line: errors read `btd: error: ...` on stderr (no log
//! timestamps or levels) with the exit status of their kind; `btd status` still works while the
//! config file is broken (it warns and reads only `[paths] state_dir`); `btd daemon` without
//! `--config` does what its help says (config/btd.toml when it exists, else built-in defaults).

use crate::support::daemon::{DaemonHome, TorrentEntry, is_table_header, payload, within};
use crate::support::{Btd, SHORT, TempDir, next_ip, run_to_end, wait_until};
use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::Command;

const KIB: u64 = 1024;

/// Asserts that `stderr` holds exactly one line, `btd: error: ...` containing `needle`.
fn assert_cli_error(stderr: &str, needle: &str, what: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        matches!(lines.as_slice(), [line] if line.starts_with("btd: error: ") && line.contains(needle)),
        "{what}: want one line `btd: error: ...{needle}...` on stderr, got:\n{stderr}"
    );
}

#[test]
fn cli_errors_read_btd_error_on_stderr_without_log_timestamps_and_keep_their_exit_status() {
    let tmp = TempDir::new("cli-errors");
    let missing = tmp.path().join("no-such.torrent");
    let garbage = tmp.path().join("garbage.torrent");
    fs::write(&garbage, b"not a torrent").expect("write garbage");
    let out_dir = tmp.subdir("out");
    let home = DaemonHome::new("cli-errors");
    let config = home.config_path();
    let arg = |p: &Path| OsString::from(p);
    let cases: Vec<(&str, Vec<OsString>, i32, String)> = vec![
        (
            "btd download of a missing torrent",
            vec![
                "download".into(),
                arg(&missing),
                "-o".into(),
                arg(&out_dir),
                "--bind".into(),
                next_ip().to_string().into(),
                "--port".into(),
                "0".into(),
            ],
            2,
            missing.display().to_string(),
        ),
        (
            "btd create of a missing path",
            vec![
                "create".into(),
                arg(&missing),
                "-o".into(),
                arg(&tmp.path().join("x.torrent")),
            ],
            2,
            missing.display().to_string(),
        ),
        (
            "btd status with no daemon",
            vec!["status".into(), "--config".into(), arg(&config)],
            1,
            "no btd daemon is running".into(),
        ),
        (
            "btd add of garbage",
            vec!["add".into(), arg(&garbage), "--config".into(), arg(&config)],
            2,
            garbage.display().to_string(),
        ),
        (
            "btd daemon with a missing config",
            vec![
                "daemon".into(),
                "--config".into(),
                arg(&tmp.path().join("nowhere.toml")),
            ],
            2,
            "nowhere.toml".into(),
        ),
    ];
    for (what, args, code, needle) in cases {
        let out = Btd::run(args);
        assert_eq!(out.status.code(), Some(code), "{what}: {}", out.description);
        assert_cli_error(&out.stderr, &needle, what);
    }

    // A config with a wrong type: the daemon refuses it in the same form.
    let mut bad = DaemonHome::new("cli-errors-bad-config");
    bad.set("network", "listen_port", "6881").write_config();
    let mut d = bad.spawn("btd daemon with listen_port = \"6881\"");
    let status = d.proc.wait_exit(SHORT);
    assert_eq!(status.code(), Some(2), "{}", d.proc.output());
    assert_cli_error(
        &d.proc.output(),
        "network.listen_port: expected an integer from 0 to 65535, got the string \"6881\"",
        "btd daemon with a wrong type",
    );
}

#[test]
fn btd_status_works_while_the_config_file_is_broken() {
    let work = TempDir::new("cli-status-broken");
    let p = payload(&work, "seed", "status-broken", 100 * KIB, 16 * KIB, &[]);
    let mut home = DaemonHome::new("cli-status-broken");
    home.add_torrent(TorrentEntry::new(&p.torrent).download_dir(&p.dir))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&p.info_hash, SHORT);
    let good = home.config_text();

    // The admin is editing the config: a wrong type, then a TOML syntax error elsewhere.
    for (what, text, needle) in [
        (
            "a wrong type",
            good.replace("listen_port = 0", "listen_port = \"6881\""),
            "network.listen_port: expected an integer",
        ),
        (
            "a syntax error",
            format!("{good}\n[rates\ndownload_kib_per_sec = 1\n"),
            "line ",
        ),
    ] {
        assert_ne!(text, good, "{what}: the edit changed nothing");
        home.write_config_text(&text);
        let out = home.cli(&["status".into()]);
        out.assert_success();
        let warnings: Vec<&str> = out.stderr.lines().collect();
        let path = home.config_path().display().to_string();
        assert!(
            matches!(warnings.as_slice(), [w] if w.starts_with("btd: warning: ")
                && w.contains(&path) && w.contains(needle)),
            "{what}: want one warning naming the config error: {}",
            out.description
        );
        let lines: Vec<&str> = out.stdout.lines().collect();
        let header = lines
            .iter()
            .position(|l| is_table_header(l))
            .unwrap_or_else(|| panic!("{what}: no table: {}", out.description));
        assert!(
            lines[header + 1..]
                .iter()
                .any(|l| l.split_whitespace().nth(1) == Some("status-broken")),
            "{what}: no row for the torrent: {}",
            out.description
        );
    }

    // When even the state directory cannot be read, the config error stands.
    home.write_config_text(&good.replace("state_dir = \"state\"", "state_dir = 5"));
    let out = home.cli(&["status".into()]);
    assert_eq!(out.status.code(), Some(2), "{}", out.description);
    assert_cli_error(
        &out.stderr,
        "paths.state_dir: expected a string (a path), got the integer 5",
        "btd status with state_dir = 5",
    );

    home.write_config_text(&good);
    d.stop("TERM");
}

#[test]
fn btd_daemon_without_config_uses_config_btd_toml_when_it_exists_else_built_in_defaults() {
    // No config at all: built-in defaults, relative to the working directory (./state), on
    // the default port 6881.
    let bare = TempDir::new("cli-daemon-defaults");
    // The built-in defaults run the DHT with public bootstrap nodes: the daemon gets a network
    // namespace of its own with only loopback up (`unshare` and `sh` exec, so the pid is the
    // daemon's), where nothing it sends leaves the machine, and where port 6881 is free.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-n",
        "--",
        "sh",
        "-c",
        "ip link set lo up && exec \"$0\" daemon",
        Btd::BIN,
    ]);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.current_dir(bare.path());
    let mut d = Btd::spawn("btd daemon (no config)", cmd);
    {
        let addr = d.wait_listening();
        assert_eq!(addr.port(), 6881, "{}", d.output());
        assert!(
            d.output().contains("built-in defaults"),
            "the log does not say the built-in defaults are used:\n{}",
            d.output()
        );
        let pid = fs::read_to_string(bare.path().join("state/btd.pid"))
            .unwrap_or_else(|e| panic!("no ./state/btd.pid ({e}):\n{}", d.output()));
        assert_eq!(pid.trim(), d.pid().to_string());
        // `btd status` without --config, from the same directory, finds it.
        let status_file = bare.path().join("state/status.json");
        wait_until(within(SHORT), "./state/status.json", || {
            status_file.exists()
        });
        let mut status = Btd::command(["status"]);
        status.current_dir(bare.path());
        let out = run_to_end("btd status (no config)", status, SHORT);
        out.assert_success();
        d.stop_and_assert_ok("TERM", SHORT);
    }

    // config/btd.toml in the working directory is the default config.
    let with_file = TempDir::new("cli-daemon-default-file");
    let ip = next_ip();
    let config_dir = with_file.subdir("config");
    fs::write(
        config_dir.join("btd.toml"),
        format!(
            "[paths]\nstate_dir = \"st\"\n[network]\nlisten_address = \"{ip}\"\nlisten_port = 0\n\
             [status]\ninterval_secs = 1\n[dht]\nenabled = false\n"
        ),
    )
    .expect("write config/btd.toml");
    let mut cmd = Btd::command(["daemon"]);
    cmd.current_dir(with_file.path());
    let mut d = Btd::spawn("btd daemon (config/btd.toml)", cmd);
    let addr = d.wait_listening();
    assert_eq!(addr.ip(), ip, "{}", d.output());
    assert!(config_dir.join("st/btd.pid").exists(), "{}", d.output());
    let status_file = config_dir.join("st/status.json");
    wait_until(within(SHORT), "config/st/status.json", || {
        status_file.exists()
    });
    let mut status = Btd::command(["status"]);
    status.current_dir(with_file.path());
    let out = run_to_end("btd status (config/btd.toml)", status, SHORT);
    out.assert_success();
    d.stop_and_assert_ok("TERM", SHORT);
}

/// `btd info X | head -0`: when the reader is gone before btd writes, the output ends quietly
/// (exit 0, nothing on stderr), as Unix tools do; `print!` used to panic there (exit 101).
#[test]
fn output_into_a_pipe_nobody_reads_ends_quietly() {
    let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=gone";
    for json in [false, true] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let mut cmd = Btd::command(["info", magnet]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn btd info");
        let deadline = std::time::Instant::now() + SHORT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for btd info") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("btd info did not exit within {SHORT:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
            .expect("read stderr");
        assert!(
            status.success() && stderr.is_empty(),
            "btd info (json: {json}) into a closed pipe: {status}, stderr:\n{stderr}"
        );
    }
}
