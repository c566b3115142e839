//! `btd daemon` for tests: a [`DaemonHome`] is one instance's directory (its TOML config, state,
//! download and watch directories, its own loopback address, port 0), and [`Daemon`] one run of
//! the binary on it, so that a test can stop, kill and restart the daemon on the same state.
//! A [`Daemon`] reads the `listening on` line, the status file and the log (stderr, or the
//! `[log] file`), sends signals, and is stopped on `Drop` (SIGTERM, then SIGKILL); `kill9` is
//! the crash. [`LtSeeder`] is a libtorrent seeder of several torrents with an upload cap, so that
//! a transfer lasts long enough to be watched.

use super::process::{Proc, RunOutput, parse_listening};
use super::{
    Btd, PYTHON, SHORT, TRANSFER, TempDir, TorrentInfo, client_script, next_ip, require_libtorrent,
    run_to_end,
};
use serde::Deserialize;
use std::ffi::OsString;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// How long a daemon may take to exit after SIGTERM or SIGINT (the issue's promise).
pub const STOP_LIMIT: Duration = Duration::from_secs(5);

/// The header of the status table (`btd status`, SIGUSR1), word by word.
pub const TABLE_HEADER: [&str; 11] = [
    "ID", "NAME", "STATE", "SIZE", "HAVE", "PROGRESS", "DOWN", "UP", "ETA", "PEERS", "RATIO",
];

/// One `[[torrent]]` entry of a daemon's config: a `.torrent` path, or (with an empty `path`) a
/// magnet link.
#[derive(Clone, Debug)]
pub struct TorrentEntry {
    pub path: PathBuf,
    pub magnet: Option<String>,
    /// `None`: the daemon's `paths.download_dir`.
    pub download_dir: Option<PathBuf>,
    pub paused: bool,
    pub peers: Vec<SocketAddr>,
}

impl TorrentEntry {
    pub fn new(path: &Path) -> TorrentEntry {
        TorrentEntry {
            path: path.to_owned(),
            magnet: None,
            download_dir: None,
            paused: false,
            peers: Vec::new(),
        }
    }

    /// An entry `magnet = "URI"` (no `path`).
    pub fn magnet(uri: &str) -> TorrentEntry {
        TorrentEntry {
            magnet: Some(uri.to_owned()),
            ..TorrentEntry::new(Path::new(""))
        }
    }

    pub fn peers(mut self, peers: &[SocketAddr]) -> TorrentEntry {
        self.peers = peers.to_vec();
        self
    }

    pub fn download_dir(mut self, dir: &Path) -> TorrentEntry {
        self.download_dir = Some(dir.to_owned());
        self
    }

    fn to_toml(&self) -> toml::Value {
        let mut t = toml::Table::new();
        if !self.path.as_os_str().is_empty() {
            t.insert("path".into(), path_value(&self.path));
        }
        if let Some(uri) = &self.magnet {
            t.insert("magnet".into(), uri.clone().into());
        }
        if let Some(dir) = &self.download_dir {
            t.insert("download_dir".into(), path_value(dir));
        }
        t.insert("paused".into(), self.paused.into());
        let peers: Vec<toml::Value> = self.peers.iter().map(|p| p.to_string().into()).collect();
        t.insert("peers".into(), peers.into());
        t.into()
    }
}

fn path_value(p: &Path) -> toml::Value {
    p.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
        .into()
}

/// The directory of one daemon instance: `btd.toml` with relative paths `state/`, `downloads/`
/// and `watch/` beside it (scanned every second), listening on its own loopback address at port
/// 0 (and `[rpc] listen` says the same, so daemons serving the RPC never fight over 9091),
/// status file rewritten every second. Tests change keys with [`set`](Self::set) and the
/// torrent list with [`add_torrent`](Self::add_torrent), then [`write_config`](Self::write_config).
pub struct DaemonHome {
    dir: TempDir,
    pub ip: Ipv4Addr,
    config: toml::Table,
    torrents: Vec<TorrentEntry>,
}

impl DaemonHome {
    pub fn new(label: &str) -> DaemonHome {
        let ip = next_ip();
        let config: toml::Table = toml::from_str(&format!(
            r#"
[paths]
state_dir = "state"
download_dir = "downloads"
[watch]
dir = "watch"
scan_interval_secs = 1
[network]
listen_address = "{ip}"
listen_port = 0
connect_timeout_secs = 5
[status]
interval_secs = 1
[announce]
timeout_secs = 5
[lsd]
enabled = false
[rpc]
listen = "{ip}:0"
allowed_ips = ["127.0.0.0/8"]
[dht]
enabled = false
"#
        ))
        .expect("the base config is TOML");
        let home = DaemonHome {
            dir: TempDir::new(label),
            ip,
            config,
            torrents: Vec::new(),
        };
        fs::create_dir_all(home.watch_dir()).expect("create the watch dir");
        home.write_config();
        home
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("btd.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn download_dir(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    pub fn watch_dir(&self) -> PathBuf {
        self.dir.path().join("watch")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.state_dir().join("btd.pid")
    }

    pub fn status_file(&self) -> PathBuf {
        self.state_dir().join("status.json")
    }

    /// Where the daemon saves a magnet link's metadata.
    pub fn saved_torrent(&self, info_hash: &str) -> PathBuf {
        self.state_dir()
            .join("torrents")
            .join(format!("{info_hash}.torrent"))
    }

    pub fn resume_file(&self, info_hash: &str) -> PathBuf {
        self.state_dir()
            .join("resume")
            .join(format!("{info_hash}.json"))
    }

    /// Sets `[section] key = value` in the config held here (written by `write_config`).
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> &mut Self {
        let table = self
            .config
            .entry(section)
            .or_insert_with(|| toml::Table::new().into())
            .as_table_mut()
            .unwrap_or_else(|| panic!("[{section}] is not a table"));
        table.insert(key.into(), value.into());
        self
    }

    pub fn add_torrent(&mut self, entry: TorrentEntry) -> &mut Self {
        self.torrents.push(entry);
        self
    }

    /// Drops every `[[torrent]]` entry whose path is `path`.
    pub fn remove_torrent(&mut self, path: &Path) -> &mut Self {
        self.torrents.retain(|t| t.path != path);
        self
    }

    /// The config as TOML text.
    pub fn config_text(&self) -> String {
        let mut table = self.config.clone();
        if !self.torrents.is_empty() {
            let list: Vec<toml::Value> = self.torrents.iter().map(TorrentEntry::to_toml).collect();
            table.insert("torrent".into(), list.into());
        }
        toml::to_string(&table).expect("serialise the config")
    }

    /// Writes the config (atomically: a reload never sees half a file).
    pub fn write_config(&self) {
        self.write_config_text(&self.config_text());
    }

    /// Writes `text` as the config file, atomically.
    pub fn write_config_text(&self, text: &str) {
        let tmp = self.dir.path().join(".btd.toml.tmp");
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, self.config_path()).expect("rename the config into place");
    }

    /// The `btd daemon --config FILE` command for this home.
    pub fn command(&self) -> Command {
        let mut args: Vec<OsString> = vec!["daemon".into(), "--config".into()];
        args.push(self.config_path().into());
        Btd::command(args)
    }

    /// Starts the daemon without waiting for anything.
    pub fn spawn(&self, name: &str) -> Daemon {
        self.spawn_command(name, self.command())
    }

    /// Runs `cmd` (which runs `btd daemon` on this home) as this home's daemon.
    fn spawn_command(&self, name: &str, cmd: Command) -> Daemon {
        let log_file = self
            .config
            .get("log")
            .and_then(|l| l.get("file"))
            .and_then(toml::Value::as_str)
            .filter(|f| !f.is_empty())
            .map(|f| self.dir.path().join(f));
        Daemon {
            proc: Proc::spawn(name, cmd),
            status_file: self.status_file(),
            log_file,
            listen: None,
        }
    }

    /// Starts the daemon and waits until it logs `listening on IP:PORT`.
    pub fn start(&self, name: &str) -> Daemon {
        let mut d = self.spawn(name);
        d.wait_listening();
        d
    }

    /// Starts the daemon in a mount namespace of its own (`unshare --mount --propagation
    /// private`, which needs root) with a tmpfs of `size_mib` MiB mounted on `dir` there, and
    /// waits until it listens. Nobody else sees the mount and it ends with the daemon (no
    /// unmount to forget); the test reaches it through [`Daemon::ns_path`].
    pub fn start_with_tmpfs(&self, name: &str, dir: &Path, size_mib: u64) -> Daemon {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let btd = self.command();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={size_mib}m btd-test \"$0\" && exec \"$@\""
            ))
            .arg(dir)
            .arg(btd.get_program())
            .args(btd.get_args());
        for (key, value) in btd.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let mut d = self.spawn_command(name, cmd);
        d.wait_listening();
        d
    }

    /// The status file as it is now, if there is one.
    pub fn status(&self) -> Option<Status> {
        read_status(&self.status_file()).map(|s| s.status)
    }

    /// Runs `btd ARGS... --config FILE` to its end (at most [`SHORT`]).
    pub fn cli(&self, args: &[OsString]) -> RunOutput {
        let mut all: Vec<OsString> = args.to_vec();
        all.push("--config".into());
        all.push(self.config_path().into());
        run_to_end("btd cli", Btd::command(all), SHORT)
    }
}

/// `<state_dir>/status.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub updated_unix: u64,
    pub listen: String,
    pub torrents: Vec<TorrentStatus>,
    /// The process's peer budget.
    #[serde(default)]
    pub peer_slots: PeerSlots,
}

/// `peer_slots` of `status.json`: slots of `peers.max_global` held, and that maximum.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct PeerSlots {
    pub used: usize,
    pub max: usize,
}

impl Status {
    pub fn torrent(&self, info_hash: &str) -> Option<&TorrentStatus> {
        self.torrents.iter().find(|t| t.info_hash == info_hash)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct TorrentStatus {
    pub name: String,
    pub info_hash: String,
    pub state: String,
    pub progress: f64,
    pub size_bytes: u64,
    pub downloaded_bytes: u64,
    pub uploaded_bytes: u64,
    pub download_rate: f64,
    pub upload_rate: f64,
    pub peers: u64,
    /// Web seeds running.
    #[serde(default)]
    pub web_seeds: u64,
    /// Connected peers by where their address came from.
    #[serde(default)]
    pub peers_by_source: PeerSourceCounts,
    pub ratio: f64,
    pub error: Option<String>,
    pub source: String,
    /// Seeders, leechers and completed downloads from the tracker, when it counted them.
    #[serde(default)]
    pub swarm: Option<SwarmCounts>,
    /// The torrent's number in this run of the daemon.
    #[serde(default)]
    pub id: Option<u32>,
    /// Where the torrent's data is (its own, kept across restarts and config changes).
    #[serde(default)]
    pub download_dir: Option<String>,
    /// Seconds spent seeding over the torrent's life (across restarts).
    #[serde(default)]
    pub seeding_secs: Option<u64>,
    /// 0 to 1 while the state is `checking`.
    #[serde(default)]
    pub check_progress: Option<f64>,
    /// Verified bytes.
    #[serde(default)]
    pub have_bytes: Option<u64>,
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// While `low-space`: bytes free on its file system, and bytes it still has to write.
    #[serde(default)]
    pub free_bytes: Option<u64>,
    #[serde(default)]
    pub needed_bytes: Option<u64>,
    /// A tracker's refusal, `URL: reason`.
    #[serde(default)]
    pub tracker_error: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct PeerSourceCounts {
    pub tracker: u32,
    pub dht: u32,
    pub pex: u32,
    pub lsd: u32,
    pub incoming: u32,
    pub web_seed: u32,
    pub manual: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct SwarmCounts {
    pub seeders: u32,
    pub leechers: u32,
    pub completed: u32,
}

/// One write of the status file: its parsed content, its raw text, and when it was written.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub status: Status,
    pub text: String,
    pub written: SystemTime,
}

/// Reads the status file; `None` when there is none yet. A file that is not the status JSON
/// panics (the daemon replaces it atomically, so a half-written file is a bug too).
pub fn read_status(path: &Path) -> Option<Snapshot> {
    let written = fs::metadata(path).ok()?.modified().ok()?;
    let text = fs::read_to_string(path).ok()?;
    let status = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{} is not the status JSON of the issue ({e}):\n{text}",
            path.display()
        )
    });
    Some(Snapshot {
        status,
        text,
        written,
    })
}

/// One run of `btd daemon`.
pub struct Daemon {
    pub proc: Proc,
    status_file: PathBuf,
    /// `[log] file`, when the log goes there instead of stderr.
    log_file: Option<PathBuf>,
    listen: Option<SocketAddr>,
}

impl Daemon {
    /// `path` as the daemon sees it, through `/proc/PID/root` (its mount namespace: see
    /// [`DaemonHome::start_with_tmpfs`]).
    pub fn ns_path(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").expect("an absolute path");
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(rel)
    }

    /// The names of the daemon's threads now (`/proc/PID/task/*/comm`, 15 bytes at most).
    pub fn thread_names(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {dir}: {e}"))
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The log so far, one line each: stderr and stdout, or the `[log] file`.
    pub fn log_lines(&self) -> Vec<String> {
        match &self.log_file {
            None => self.proc.output().lines().map(str::to_owned).collect(),
            Some(f) => fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
        }
    }

    /// A mark in the log: [`wait_log_after`](Self::wait_log_after) looks only at later lines.
    pub fn log_mark(&self) -> usize {
        self.log_lines().len()
    }

    /// Waits up to `timeout` for a line after `mark` for which `f` gives `Some`. Panics (the log
    /// is printed on `Drop`) when time runs out or the daemon exits first.
    pub fn wait_log_after<T>(
        &mut self,
        mark: usize,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.proc.has_exited();
            let lines = self.log_lines();
            if let Some(v) = lines.iter().skip(mark).find_map(|l| f(l)) {
                return v;
            }
            assert!(!exited, "{} exited before logging {what}", self.proc.name());
            assert!(
                Instant::now() < deadline,
                "{} did not log {what} within {timeout:?}",
                self.proc.name()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a log line containing `needle` after `mark`; returns the line.
    pub fn wait_log_contains(&mut self, mark: usize, timeout: Duration, needle: &str) -> String {
        self.wait_log_after(mark, timeout, &format!("a line with {needle:?}"), |l| {
            l.contains(needle).then(|| l.to_owned())
        })
    }

    /// True if some line of the log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log_lines().iter().any(|l| l.contains(needle))
    }

    /// Waits for `listening on IP:PORT` and returns the address.
    pub fn wait_listening(&mut self) -> SocketAddr {
        if let Some(a) = self.listen {
            return a;
        }
        let addr = self.wait_log_after(0, SHORT, "'listening on IP:PORT'", parse_listening);
        self.listen = Some(addr);
        addr
    }

    /// The address it listens on (after `wait_listening`).
    pub fn addr(&self) -> SocketAddr {
        self.listen.expect("wait_listening first")
    }

    /// The status file, if written yet.
    pub fn snapshot(&self) -> Option<Snapshot> {
        read_status(&self.status_file)
    }

    /// Polls the status file (every 20 ms) until `f` accepts a snapshot written by this process;
    /// panics with the last one when `timeout` passes or the daemon exits.
    pub fn wait_snapshot(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Snapshot) -> bool,
    ) -> Snapshot {
        let deadline = Instant::now() + timeout;
        let pid = self.pid();
        let mut last: Option<Snapshot> = None;
        loop {
            assert!(
                !self.proc.has_exited(),
                "{} exited while the test waited for {what}; last status: {}",
                self.proc.name(),
                last.as_ref().map_or("none", |s| s.text.as_str())
            );
            if let Some(s) = self.snapshot().filter(|s| s.status.pid == pid) {
                if f(&s) {
                    return s;
                }
                last = Some(s);
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out after {timeout:?} waiting for {what}; last status: {}",
                self.proc.name(),
                last.as_ref().map_or("none", |s| s.text.as_str())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`wait_snapshot`](Self::wait_snapshot), on the parsed status.
    pub fn wait_status(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Status) -> bool,
    ) -> Status {
        self.wait_snapshot(timeout, what, |s| f(&s.status)).status
    }

    /// The first snapshot written after `prev` (a later mtime or another text).
    pub fn next_snapshot(&mut self, prev: &Snapshot, timeout: Duration) -> Snapshot {
        self.wait_snapshot(timeout, "the next status file", |s| {
            s.written > prev.written || s.text != prev.text
        })
    }

    /// Waits until the torrent with `info_hash` is complete (progress 1) and seeding.
    pub fn wait_seeding(&mut self, info_hash: &str, timeout: Duration) -> TorrentStatus {
        let s = self.wait_status(timeout, &format!("{info_hash} seeding"), |s| {
            s.torrent(info_hash)
                .is_some_and(|t| t.state == "seeding" && t.progress >= 1.0)
        });
        s.torrent(info_hash).expect("just checked").clone()
    }

    /// Sends `signal` (a name `kill` knows: HUP, USR1, TERM, INT, KILL).
    pub fn signal(&mut self, signal: &str) {
        self.proc.assert_running();
        self.proc.signal(signal);
    }

    /// Sends SIGHUP and waits for `config reloaded` (after the HUP).
    pub fn reload(&mut self) {
        let mark = self.log_mark();
        self.signal("HUP");
        self.wait_log_contains(mark, SHORT, "config reloaded");
    }

    /// Sends `signal` (TERM or INT) and asserts exit status 0 within [`STOP_LIMIT`]; returns how
    /// long it took.
    pub fn stop(&mut self, signal: &str) -> Duration {
        self.proc.assert_running();
        let t0 = Instant::now();
        self.proc.signal(signal);
        let status = self.proc.wait_exit(STOP_LIMIT + Duration::from_secs(5));
        let took = t0.elapsed();
        assert!(
            status.success(),
            "{} exited with {status} after SIG{signal}",
            self.proc.name()
        );
        assert!(
            took <= STOP_LIMIT,
            "{} took {took:?} to exit after SIG{signal}, more than {STOP_LIMIT:?}",
            self.proc.name()
        );
        took
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill9(&mut self) {
        self.proc.signal("KILL");
        let status = self.proc.wait_exit(SHORT);
        assert!(!status.success(), "SIGKILLed daemon exited 0");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(f) = &self.log_file
        {
            eprintln!(
                "--- {} log file {}:\n{}",
                self.proc.name(),
                f.display(),
                fs::read_to_string(f).unwrap_or_else(|e| format!("(unreadable: {e})"))
            );
        }
    }
}

/// The download rate of the torrents `info_hashes` together from the daemon's status file, in
/// bytes/s: the growth of their `downloaded_bytes` over at least `window`, between two writes of
/// the file (timed by their mtimes). Panics if one of them completes meanwhile. Returns the rate
/// and the last snapshot.
pub fn measure_download_rate(
    d: &mut Daemon,
    info_hashes: &[&str],
    window: Duration,
) -> (f64, Snapshot) {
    let bytes = |s: &Snapshot| -> u64 {
        info_hashes
            .iter()
            .map(|h| {
                let t = s
                    .status
                    .torrent(h)
                    .unwrap_or_else(|| panic!("{h} not in the status: {}", s.text));
                assert!(
                    t.progress < 1.0,
                    "{} completed while its rate was measured: {}",
                    t.name,
                    s.text
                );
                t.downloaded_bytes
            })
            .sum()
    };
    let first = d.wait_snapshot(SHORT, "a status with the torrents", |s| {
        info_hashes.iter().all(|h| s.status.torrent(h).is_some())
    });
    let first = d.next_snapshot(&first, SHORT);
    let start = bytes(&first);
    let mut last = first.clone();
    let elapsed = |last: &Snapshot| {
        last.written
            .duration_since(first.written)
            .unwrap_or_default()
    };
    while elapsed(&last) < window {
        last = d.next_snapshot(&last, SHORT);
        bytes(&last);
    }
    let rate = bytes(&last).saturating_sub(start) as f64 / elapsed(&last).as_secs_f64();
    (rate, last)
}

/// A payload and its torrent, made with `btd create`.
pub struct Payload {
    /// The directory holding `name` (a daemon's `download_dir` to seed it from there).
    pub dir: PathBuf,
    pub name: String,
    pub torrent: PathBuf,
    pub info_hash: String,
}

impl Payload {
    /// Writes `files` (paths starting with `name/`) under `dir` and makes `torrent` of
    /// `dir/name` with `piece_length` and the given announce URLs.
    pub fn create(
        dir: &Path,
        name: &str,
        files: &[(&str, u64)],
        seed: u64,
        torrent: &Path,
        piece_length: u64,
        trackers: &[String],
    ) -> Payload {
        let mut rng = super::Rng::new(seed);
        super::write_payload(dir, files, &mut rng);
        let mut args: Vec<OsString> = vec![
            "create".into(),
            dir.join(name).into(),
            "-o".into(),
            torrent.into(),
            "--piece-length".into(),
            piece_length.to_string().into(),
        ];
        for t in trackers {
            args.push("-t".into());
            args.push(t.into());
        }
        Btd::run(args).assert_success();
        let info = TorrentInfo::read(torrent);
        assert_eq!(info.name, name);
        Payload {
            dir: dir.to_owned(),
            name: name.to_owned(),
            torrent: torrent.to_owned(),
            info_hash: info.info_hash,
        }
    }

    /// `dir/name`: the payload itself.
    pub fn data(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

/// A payload `<work>/<dir_label>/<name>/` of two files (`size` bytes and a small one, from the
/// printed seed of `name`), and its torrent `<work>/<name>.torrent` with `piece_length` and
/// `trackers`.
pub fn payload(
    work: &TempDir,
    dir_label: &str,
    name: &str,
    size: u64,
    piece_length: u64,
    trackers: &[String],
) -> Payload {
    let big = format!("{name}/data.bin");
    let small = format!("{name}/notes/readme.txt");
    Payload::create(
        &work.subdir(dir_label),
        name,
        &[(&big, size), (&small, 1000)],
        super::test_seed(name),
        &work.join(&format!("{name}.torrent")),
        piece_length,
        trackers,
    )
}

/// Puts a copy of `from` into `watch_dir` as `name`, whole at once: copied beside the watch
/// directory first, then renamed into it. Returns the new file.
pub fn drop_into(watch_dir: &Path, name: &str, from: &Path) -> PathBuf {
    let tmp = watch_dir
        .parent()
        .expect("the watch dir has a parent")
        .join(format!("{name}.part"));
    let to = watch_dir.join(name);
    fs::copy(from, &tmp).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    fs::rename(&tmp, &to).unwrap_or_else(|e| panic!("rename to {}: {e}", to.display()));
    to
}

/// The names in `dir`, sorted (none when it cannot be read).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `d` from now.
pub fn within(d: Duration) -> Instant {
    Instant::now() + d
}

/// A libtorrent seeder of one or more torrents (`lt_client.py seed`), each torrent's upload capped
/// at `upload_limit` bytes/s (0: no cap), ready (listening, data checked) when returned.
pub struct LtSeeder {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl LtSeeder {
    pub fn start(
        name: &str,
        torrents: &[&Path],
        dir: &Path,
        upload_limit: u64,
        announce: bool,
    ) -> LtSeeder {
        require_libtorrent();
        let ip = next_ip();
        let mut cmd = Command::new(PYTHON);
        cmd.arg(client_script("lt_client.py")).arg("seed");
        for t in torrents {
            cmd.arg("--torrent").arg(t);
        }
        cmd.arg("--dir")
            .arg(dir)
            .arg("--bind")
            .arg(ip.to_string())
            .arg("--timeout")
            .arg((TRANSFER * 3).as_secs().to_string())
            .arg("--upload-limit")
            .arg(upload_limit.to_string())
            .env("DIE_WITH_PARENT", "1");
        if announce {
            cmd.arg("--announce");
        }
        let mut proc = Proc::spawn(name, cmd);
        let port = proc.wait_for_line(SHORT, "LISTENING <port>", |l| {
            l.strip_prefix("LISTENING ")?.trim().parse::<u16>().ok()
        });
        proc.wait_for_line(SHORT, "SEEDING", |l| (l.trim() == "SEEDING").then_some(()));
        LtSeeder {
            proc,
            addr: SocketAddr::new(IpAddr::V4(ip), port),
        }
    }
}

/// True for the header line of the status table (`btd status`, the SIGUSR1 log), whatever precedes
/// it on the line (a log prefix).
pub fn is_table_header(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    // A SWARM column follows when a tracker counted the swarm.
    words.windows(TABLE_HEADER.len()).any(|w| w == TABLE_HEADER)
}

/// The name the daemon gives a watch file it has taken in: `FILE` becomes `FILE.added` (or
/// `FILE.invalid`).
pub fn watch_renamed(watch_file: &Path, suffix: &str) -> PathBuf {
    let mut name = watch_file.file_name().expect("a file name").to_os_string();
    name.push(".");
    name.push(suffix);
    watch_file.with_file_name(name)
}
