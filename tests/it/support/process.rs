//! Child processes of a test: spawned with their output read by threads into a log, waited for
//! with deadlines, and stopped on `Drop` (SIGTERM, then SIGKILL), also when the test panics.

use super::{PYTHON, SHORT, TRANSFER, TempDir, client_script};
use crossbeam_channel::{Receiver, RecvTimeoutError, unbounded};
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `Drop` lets a process handle SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One line a child wrote, and on which stream.
#[derive(Clone, Debug)]
pub struct Line {
    pub stderr: bool,
    pub text: String,
}

/// A running child process with its stdout and stderr collected line by line.
pub struct Proc {
    name: String,
    child: Child,
    lines: Receiver<Line>,
    log: Arc<Mutex<Vec<Line>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    command_line: String,
}

impl Proc {
    /// Spawns `cmd` (stdin from /dev/null, stdout and stderr captured). `name` labels its log.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let command_line = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot spawn {command_line}: {e}"));
        let (tx, rx) = unbounded();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let streams: [(Box<dyn Read + Send>, bool); 2] = [
            (Box::new(child.stdout.take().expect("piped stdout")), false),
            (Box::new(child.stderr.take().expect("piped stderr")), true),
        ];
        for (stream, stderr) in streams {
            let tx = tx.clone();
            let log = Arc::clone(&log);
            let reader = std::thread::Builder::new()
                .name(format!(
                    "{name} {}",
                    if stderr { "stderr" } else { "stdout" }
                ))
                .spawn(move || {
                    let mut r = BufReader::new(stream);
                    let mut buf = Vec::new();
                    loop {
                        buf.clear();
                        match r.read_until(b'\n', &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                        let line = Line { stderr, text };
                        log.lock().unwrap().push(line.clone());
                        let _ = tx.send(line);
                    }
                })
                .expect("spawn reader thread");
            readers.push(reader);
        }
        Proc {
            name: name.to_string(),
            child,
            lines: rx,
            log,
            readers,
            status: None,
            command_line,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far, one line each, stderr lines marked.
    pub fn log_text(&self) -> String {
        let log = self.log.lock().unwrap();
        let mut out = String::new();
        for line in log.iter() {
            out.push_str(if line.stderr { "  [err] " } else { "  [out] " });
            out.push_str(&line.text);
            out.push('\n');
        }
        out
    }

    /// The full text of what the process wrote, without markers.
    pub fn output(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter().map(|l| format!("{}\n", l.text)).collect()
    }

    fn describe(&self) -> String {
        format!(
            "{} ({}, pid {}, {})\n{}",
            self.name,
            self.command_line,
            self.child.id(),
            match self.status {
                Some(s) => describe_status(s),
                None => "running".to_string(),
            },
            self.log_text()
        )
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("{}: wait: {e}", self.name));
            if self.status.is_some() {
                self.drain_readers(Duration::from_secs(2));
            }
        }
        self.status
    }

    /// Lets the reader threads take in the last lines after the process exited (bounded: a
    /// grandchild may still hold the pipe).
    fn drain_readers(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && !self.readers.iter().all(JoinHandle::is_finished) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    /// True once the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.poll_exit().is_some()
    }

    /// Returns the first line (from the start of the log) for which `f` gives `Some`, waiting up
    /// to `timeout` for it. Panics with the log if the process exits or time runs out first.
    pub fn wait_for_line<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let log = self.log.lock().unwrap();
                for line in &log[seen..] {
                    if let Some(v) = f(&line.text) {
                        return v;
                    }
                }
                seen = log.len();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} from {}",
                    self.describe()
                );
            }
            match self
                .lines
                .recv_timeout((deadline - now).min(Duration::from_millis(200)))
            {
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Both streams closed: look at the log one last time, then give up.
                    let found = {
                        let log = self.log.lock().unwrap();
                        log[seen..].iter().find_map(|l| f(&l.text))
                    };
                    if let Some(v) = found {
                        return v;
                    }
                    let _ = self.wait_exit_quietly(Duration::from_secs(2));
                    panic!(
                        "{} closed its output before {what}: {}",
                        self.name,
                        self.describe()
                    );
                }
            }
            if self.poll_exit().is_some() {
                let found = {
                    let log = self.log.lock().unwrap();
                    log[seen..].iter().find_map(|l| f(&l.text))
                };
                if let Some(v) = found {
                    return v;
                }
                panic!("{} exited before {what}: {}", self.name, self.describe());
            }
        }
    }

    fn wait_exit_quietly(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.poll_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to exit; panics with its log if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit_quietly(timeout) {
            Some(s) => s,
            None => panic!(
                "timed out after {timeout:?} waiting for {} to exit: {}",
                self.name,
                self.describe()
            ),
        }
    }

    /// Waits for the process to exit and asserts it exited with status 0.
    pub fn assert_exits_ok(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        assert!(
            status.success(),
            "{} failed: {}",
            self.name,
            self.describe()
        );
    }

    /// Sends `signal` (a name `kill` knows: TERM, INT, KILL) unless the process has exited.
    pub fn signal(&mut self, signal: &str) {
        if self.poll_exit().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM, then asserts a clean exit (status 0) within `timeout`.
    pub fn terminate_and_assert_ok(&mut self, timeout: Duration) {
        self.stop_and_assert_ok("TERM", timeout);
    }

    /// Sends `signal` (TERM or INT) to a running process, then asserts it exits with status 0
    /// within `timeout`.
    pub fn stop_and_assert_ok(&mut self, signal: &str, timeout: Duration) {
        assert!(
            self.poll_exit().is_none(),
            "{} had already exited before SIG{signal}: {}",
            self.name,
            self.describe()
        );
        self.signal(signal);
        self.assert_exits_ok(timeout);
    }

    /// Asserts the process is still running.
    pub fn assert_running(&mut self) {
        assert!(
            self.poll_exit().is_none(),
            "{} exited unexpectedly: {}",
            self.name,
            self.describe()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            self.signal("TERM");
            if self.wait_exit_quietly(STOP_GRACE).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.status = Some(ExitStatus::from_raw(9));
            }
        }
        if std::thread::panicking() {
            eprintln!("--- {}", self.describe());
        }
    }
}

fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s}"),
    }
}

/// What a command that ran to its end left behind.
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub description: String,
}

impl RunOutput {
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "command failed: {}",
            self.description
        );
    }
}

/// Runs `cmd` to its end (at most `timeout`) and returns its status and output.
pub fn run_to_end(name: &str, cmd: Command, timeout: Duration) -> RunOutput {
    let mut p = Proc::spawn(name, cmd);
    let status = p.wait_exit(timeout);
    let (stdout, stderr) = {
        let log = p.log.lock().unwrap();
        let pick = |err: bool| -> String {
            log.iter()
                .filter(|l| l.stderr == err)
                .map(|l| format!("{}\n", l.text))
                .collect()
        };
        (pick(false), pick(true))
    };
    RunOutput {
        status,
        stdout,
        stderr,
        description: p.describe(),
    }
}

/// The `btd` binary of this build.
pub struct Btd {
    pub proc: Proc,
}

impl std::ops::Deref for Btd {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl std::ops::DerefMut for Btd {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl Btd {
    pub const BIN: &'static str = env!("CARGO_BIN_EXE_btd");

    /// A `btd` command with logging at info unless `RUST_LOG` says otherwise.
    pub fn command<I, S>(args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut cmd = Command::new(Self::BIN);
        cmd.args(&args);
        // The engine commands read the repository's config/btd.toml (DHT and LSD on, public
        // DHT bootstrap nodes): nothing a test starts may send beyond loopback, so they run
        // without either unless the test is about it (it passes `--dht-bootstrap` or
        // `--no-dht` itself; tests about LSD build their command with `Command::new(Btd::BIN)`).
        if matches!(subcommand(&args), Some("download" | "seed")) {
            let about_dht = args
                .iter()
                .any(|a| a == "--dht-bootstrap" || a == "--no-dht");
            if !about_dht {
                cmd.arg("--no-dht");
            }
            cmd.arg("--no-lsd");
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd
    }

    /// Runs `btd ARGS...` to its end (at most [`SHORT`]).
    pub fn run<I, S>(args: I) -> RunOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_to_end("btd", Self::command(args), SHORT)
    }

    /// Starts a command made by [`Btd::command`] without waiting for anything.
    pub fn spawn(name: &str, cmd: Command) -> Btd {
        Btd {
            proc: Proc::spawn(name, cmd),
        }
    }

    /// `btd seed TORRENT -d DIR --bind IP --port 0 [--peer ADDR]...`
    pub fn seed(name: &str, torrent: &Path, dir: &Path, ip: Ipv4Addr, peers: &[SocketAddr]) -> Btd {
        let mut args: Vec<OsString> = vec!["seed".into(), torrent.into(), "-d".into(), dir.into()];
        args.extend(net_args(ip, peers));
        Btd {
            proc: Proc::spawn(name, Self::command(args)),
        }
    }

    /// `btd download TORRENT -o DIR --bind IP --port 0 [--peer ADDR]... [--seed]`
    pub fn download(
        name: &str,
        torrent: &Path,
        out: &Path,
        ip: Ipv4Addr,
        peers: &[SocketAddr],
        then_seed: bool,
    ) -> Btd {
        let mut args: Vec<OsString> =
            vec!["download".into(), torrent.into(), "-o".into(), out.into()];
        args.extend(net_args(ip, peers));
        if then_seed {
            args.push("--seed".into());
        }
        Btd {
            proc: Proc::spawn(name, Self::command(args)),
        }
    }

    /// Waits for the `listening on IP:PORT` log line and returns that address.
    pub fn wait_listening(&mut self) -> SocketAddr {
        self.proc
            .wait_for_line(SHORT, "a 'listening on IP:PORT' log line", parse_listening)
    }
}

/// `download WHAT -o OUT --bind BIND --port 0`: how most tests' `btd download` starts (more
/// options may follow).
pub fn download_args(what: impl Into<OsString>, out: &Path, bind: &str) -> Vec<OsString> {
    vec![
        "download".into(),
        what.into(),
        "-o".into(),
        out.into(),
        "--bind".into(),
        bind.into(),
        "--port".into(),
        "0".into(),
    ]
}

pub fn net_args(ip: Ipv4Addr, peers: &[SocketAddr]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--bind".into(),
        ip.to_string().into(),
        "--port".into(),
        "0".into(),
    ];
    for p in peers {
        args.push("--peer".into());
        args.push(p.to_string().into());
    }
    args
}

/// The address in a line containing `listening on IP:PORT` (the peer port).
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    addr_after(line, "listening on ")
}

/// The address in a line containing `rpc serving HTTP on IP:PORT` (the RPC's port; port 0 in
/// the config picks a free one). Worded apart from `listening on`, which names the peer port.
pub fn parse_rpc_serving(line: &str) -> Option<SocketAddr> {
    addr_after(line, "rpc serving HTTP on ")
}

/// The `IP:PORT` right after `marker` in `line`.
fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    token.trim_end_matches([':', '.']).parse().ok()
}

/// What a real client of `scripts/clients/` is asked to do.
pub struct PeerSpec<'a> {
    pub torrent: &'a Path,
    /// Save path: the data is `dir/<torrent name>`.
    pub dir: &'a Path,
    pub ip: Ipv4Addr,
    /// Peers to dial (libtorrent only: transmission does not dial loopback peers).
    pub peers: Vec<SocketAddr>,
    /// Use the torrent's trackers (libtorrent only).
    pub announce: bool,
}

/// A client driven by one of the `scripts/clients/` scripts, which print `LISTENING <port>`,
/// `PROGRESS ...`, `SEEDING` and `COMPLETE <seconds>`.
pub struct ScriptClient {
    pub proc: Proc,
    ip: Ipv4Addr,
    /// The client's own state (transmission's config dir), removed after the process is gone.
    _state: TempDir,
}

impl std::ops::Deref for ScriptClient {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl std::ops::DerefMut for ScriptClient {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl ScriptClient {
    fn spawn(
        name: &str,
        script: &str,
        mode: &str,
        spec: &PeerSpec,
        timeout: Duration,
        extra: &[&str],
    ) -> Self {
        let state = TempDir::new("client-state");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(client_script(script))
            .arg(mode)
            .arg("--torrent")
            .arg(spec.torrent)
            .arg("--dir")
            .arg(spec.dir)
            .arg("--bind")
            .arg(spec.ip.to_string())
            .arg("--timeout")
            .arg(timeout.as_secs().to_string())
            .env("DIE_WITH_PARENT", "1");
        if script == "transmission.py" {
            cmd.arg("--config-dir").arg(state.path());
        }
        for p in &spec.peers {
            cmd.arg("--peer").arg(p.to_string());
        }
        if spec.announce {
            cmd.arg("--announce");
        }
        cmd.args(extra);
        ScriptClient {
            proc: Proc::spawn(name, cmd),
            ip: spec.ip,
            _state: state,
        }
    }

    /// Waits for `LISTENING <port>` and returns the client's address.
    pub fn wait_listening(&mut self) -> SocketAddr {
        let port = self.proc.wait_for_line(SHORT, "LISTENING <port>", |l| {
            l.strip_prefix("LISTENING ")?.trim().parse::<u16>().ok()
        });
        SocketAddr::new(IpAddr::V4(self.ip), port)
    }

    /// Waits for transmission.py's `RPC <port>` line and returns where its transmission-daemon
    /// answers the RPC (127.0.0.1, no authentication).
    pub fn wait_rpc(&mut self) -> SocketAddr {
        let port = self.proc.wait_for_line(SHORT, "RPC <port>", |l| {
            l.strip_prefix("RPC ")?.trim().parse::<u16>().ok()
        });
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Waits until a seeder has checked its data and found it complete.
    pub fn wait_seeding(&mut self) {
        self.proc
            .wait_for_line(SHORT, "SEEDING", |l| (l.trim() == "SEEDING").then_some(()));
    }

    /// The pieces of which a seeder started with `--log-uploads` sent blocks, so far.
    pub fn uploaded_pieces(&self) -> std::collections::BTreeSet<u32> {
        self.proc
            .output()
            .lines()
            .filter_map(|l| l.strip_prefix("UPLOADED ")?.split(' ').next()?.parse().ok())
            .collect()
    }

    /// Waits for a leecher's `COMPLETE` line and its clean exit; returns the seconds it reported.
    pub fn wait_complete(&mut self, timeout: Duration) -> f64 {
        let secs = self.proc.wait_for_line(timeout, "COMPLETE <seconds>", |l| {
            l.strip_prefix("COMPLETE ")?.trim().parse::<f64>().ok()
        });
        self.proc.assert_exits_ok(SHORT);
        secs
    }
}

/// libtorrent through `scripts/clients/lt_client.py`.
pub struct LtClient;

impl LtClient {
    pub fn seed(name: &str, spec: &PeerSpec) -> ScriptClient {
        super::require_libtorrent();
        ScriptClient::spawn(name, "lt_client.py", "seed", spec, TRANSFER * 3, &[])
    }

    /// A seeder that prints `UPLOADED <piece> <block>` for every block it sends
    /// ([`ScriptClient::uploaded_pieces`] reads them).
    pub fn seed_logging_uploads(name: &str, spec: &PeerSpec) -> ScriptClient {
        super::require_libtorrent();
        ScriptClient::spawn(
            name,
            "lt_client.py",
            "seed",
            spec,
            TRANSFER * 3,
            &["--log-uploads"],
        )
    }

    pub fn leech(name: &str, spec: &PeerSpec) -> ScriptClient {
        super::require_libtorrent();
        ScriptClient::spawn(name, "lt_client.py", "leech", spec, TRANSFER, &[])
    }

    /// A seeder or leecher (`mode`) with local service discovery on (`--lsd`): only inside a
    /// network namespace the test made.
    pub fn with_lsd(name: &str, mode: &str, spec: &PeerSpec) -> ScriptClient {
        Self::with_options(name, mode, spec, &["--lsd"])
    }

    /// A seeder or leecher (`mode`) with more `lt_client.py` options (`--encryption forced`...).
    pub fn with_options(name: &str, mode: &str, spec: &PeerSpec, options: &[&str]) -> ScriptClient {
        super::require_libtorrent();
        ScriptClient::spawn(name, "lt_client.py", mode, spec, TRANSFER * 3, options)
    }

    /// A libtorrent `mode` (seed or leech) on a loopback address of its own that speaks
    /// RC4-encrypted connections only (`pe_forced`), dials `peers`, and prints a `PEER` line per
    /// peer with its encryption (`--log-peers`); `extra` options after.
    pub fn forced_rc4(
        mode: &str,
        torrent: &Path,
        dir: &Path,
        peers: Vec<SocketAddr>,
        extra: &[&str],
    ) -> ScriptClient {
        let spec = PeerSpec {
            torrent,
            dir,
            ip: super::next_ip(),
            peers,
            announce: false,
        };
        let mut options = vec![
            "--encryption",
            "forced",
            "--enc-level",
            "rc4",
            "--log-peers",
        ];
        options.extend_from_slice(extra);
        Self::with_options(
            &format!("libtorrent {mode} (pe_forced, rc4)"),
            mode,
            &spec,
            &options,
        )
    }

    /// A leecher of `torrent` into `dir`, on a loopback address of its own, that gets the
    /// data from `seed` alone (no trackers).
    pub fn leech_from(name: &str, torrent: &Path, dir: &Path, seed: SocketAddr) -> ScriptClient {
        Self::leech(
            name,
            &PeerSpec {
                torrent,
                dir,
                ip: super::next_ip(),
                peers: vec![seed],
                announce: false,
            },
        )
    }

    /// A seeder of `torrent` (data in `dir`) on `ip` that dials nobody, once it listens and has
    /// checked its data; with its address. `announce`: use the torrent's trackers.
    pub fn ready_seeder(
        name: &str,
        torrent: &Path,
        dir: &Path,
        ip: Ipv4Addr,
        announce: bool,
    ) -> (ScriptClient, SocketAddr) {
        let mut seeder = Self::seed(
            name,
            &PeerSpec {
                torrent,
                dir,
                ip,
                peers: vec![],
                announce,
            },
        );
        let addr = seeder.wait_listening();
        seeder.wait_seeding();
        (seeder, addr)
    }
}

/// transmission-daemon through `scripts/clients/transmission.py`.
pub struct Transmission;

impl Transmission {
    fn require() {
        super::require_program("transmission-daemon", "transmission-daemon");
        super::require_program("transmission-remote", "transmission-cli");
    }

    pub fn seed(name: &str, spec: &PeerSpec) -> ScriptClient {
        Self::require();
        ScriptClient::spawn(name, "transmission.py", "seed", spec, TRANSFER * 3, &[])
    }

    pub fn leech(name: &str, spec: &PeerSpec) -> ScriptClient {
        Self::require();
        ScriptClient::spawn(name, "transmission.py", "leech", spec, TRANSFER, &[])
    }

    /// A seeder or leecher (`mode`) with more `transmission.py` options
    /// (`--encryption required`...).
    pub fn with_options(name: &str, mode: &str, spec: &PeerSpec, options: &[&str]) -> ScriptClient {
        Self::require();
        ScriptClient::spawn(name, "transmission.py", mode, spec, TRANSFER * 3, options)
    }
}

/// The subcommand in `btd` arguments: the first word that is not a global option or its value.
fn subcommand<S: AsRef<OsStr>>(args: &[S]) -> Option<&str> {
    let mut words = args.iter().map(|a| a.as_ref().to_str().unwrap_or(""));
    while let Some(word) = words.next() {
        match word {
            "--config" | "--rpc" => {
                words.next();
            }
            w if w.starts_with('-') => {}
            w => return Some(w),
        }
    }
    None
}

/// `aria2c` with encryption required (`--bt-require-crypto --bt-min-crypto-level=arc4`), DHT,
/// LSD, PEX off, no port mapping (aria2 has none for BitTorrent), finding its peer through
/// a tracker on loopback (aria2 takes no peer address on the command line). It announces
/// `requirecrypto=1`. `seed`: seed for 60 s once complete; otherwise exit once complete.
pub fn aria2_crypto_required(name: &str, torrent: &Path, dir: &Path, seed: bool) -> Proc {
    super::require_program("aria2c", "aria2");
    let ip = super::next_ip();
    let mut cmd = Command::new("aria2c");
    cmd.arg(format!("--dir={}", dir.display()))
        .args([
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--bt-require-crypto=true",
            "--bt-min-crypto-level=arc4",
            "--bt-tracker-interval=2",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--check-integrity=true",
            "--file-allocation=none",
        ])
        .arg(format!("--interface={ip}"))
        .arg(format!("--listen-port={}", super::free_port(ip)));
    if seed {
        cmd.args(["--seed-ratio=0.0", "--seed-time=60"]);
    } else {
        cmd.arg("--seed-time=0");
    }
    cmd.arg(torrent);
    Proc::spawn(name, cmd)
}

#[cfg(test)]
mod tests {
    use super::{parse_listening, parse_rpc_serving};

    #[test]
    fn listening_line_parses_with_and_without_trailing_text() {
        let want = "127.0.0.2:4567".parse().ok();
        assert_eq!(
            parse_listening("INFO btd: listening on 127.0.0.2:4567"),
            want
        );
        assert_eq!(
            parse_listening("[x INFO btd::listener] listening on 127.0.0.2:4567, peers 3"),
            want
        );
        assert_eq!(parse_listening("nothing here"), None);
    }

    #[test]
    fn the_rpc_line_is_not_taken_for_the_peer_port() {
        let line = "[x INFO btd::rpc] rpc serving HTTP on 127.0.0.2:40123";
        assert_eq!(parse_listening(line), None);
        assert_eq!(parse_rpc_serving(line), "127.0.0.2:40123".parse().ok());
        assert_eq!(
            parse_rpc_serving("INFO btd: listening on 127.0.0.2:4567"),
            None
        );
    }
}
