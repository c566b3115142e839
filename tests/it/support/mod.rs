//! Shared machinery of the integration tests: temporary directories, deterministic payloads,
//! file comparison by hash, bounded waits, and wrappers around the processes a test runs
//! (btd itself, libtorrent and transmission through `scripts/clients/`, opentracker, fake
//! trackers: one answering garbage, one recording every announce, one that never answers;
//! headless Chromium through chromedriver). Every process is killed and every directory removed on `Drop`, also on panic; on
//! panic each process's log is printed so the failure message says what the peers saw.

#![allow(dead_code)] // each test file uses a different part of this module

pub mod browser;
pub mod daemon;
pub mod fake_peer;
mod process;
pub mod rpc_client;
mod torrent;
mod tracker;
pub mod web_seed;

pub use process::{
    Btd, LtClient, PeerSpec, Proc, ScriptClient, Transmission, aria2_crypto_required,
    download_args, net_args, parse_rpc_serving, run_to_end,
};
pub use torrent::{TorrentInfo, lt_create, mktorrent, read_each};
pub use tracker::{
    Announce, FakeTracker, OpenTracker, RecordingTracker, SilentTracker, TrackerReply, closed_port,
    describe_announces, free_port,
};

use sha1::{Digest as _, Sha1};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a test waits for things that should take a fraction of a second (a process listening,
/// a small btd command finishing).
pub const SHORT: Duration = Duration::from_secs(20);
/// How long a test waits for a download of a few MiB on loopback. Transmission decides whom to
/// unchoke and what it is interested in every 10 s, so its transfers start late.
pub const TRANSFER: Duration = Duration::from_secs(120);

/// Polls `f` every 50 ms until it returns true; panics naming `what` once `deadline` passes.
pub fn wait_until(deadline: Instant, what: &str, mut f: impl FnMut() -> bool) {
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh loopback address for one process of one test (127.0.1.1, 127.0.1.2, ...), so that no
/// two processes of a test run share an address (some clients keep one peer per IP, and a tracker
/// hands every announcer back its own address).
pub fn next_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 250 * 254, "ran out of loopback addresses");
    let [hi, lo] = [1 + n / 254, 1 + n % 254].map(|x| u8::try_from(x).expect("checked above"));
    Ipv4Addr::new(127, hi, 0, lo)
}

/// A TCP connection to `to` from the address `from` (port chosen by the kernel), made within
/// [`SHORT`]: a client on a loopback address of its own.
///
/// # Errors
/// The socket cannot be made or bound, or the connection fails.
pub fn connect_from(from: Ipv4Addr, to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind(&std::net::SocketAddr::from((from, 0)).into())?;
    socket.connect_timeout(&to.into(), SHORT)?;
    Ok(socket.into())
}

/// A directory under `std::env::temp_dir()` with a unique name, removed with everything in it on
/// `Drop`.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "btd-it-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self/rel`, with its parent directories created.
    pub fn join(&self, rel: &str) -> PathBuf {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        p
    }

    /// A subdirectory, created.
    pub fn subdir(&self, rel: &str) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The seed of a test's payload: `BTD_TEST_SEED` when set, otherwise from the clock. Printed, so
/// a failing run can be repeated with the same bytes.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("BTD_TEST_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("BTD_TEST_SEED must be a u64, got {s:?}")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() << 30 ^ u64::from(d.subsec_nanos())),
    };
    eprintln!("{test}: payload seed {seed} (run with BTD_TEST_SEED={seed} to repeat it)");
    seed
}

/// splitmix64: small, fast, and the same bytes for the same seed on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Writes `len` pseudo-random bytes to `path` (parents created).
pub fn write_random_file(path: &Path, len: u64, rng: &mut Rng) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).expect("at most the buffer's length");
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        left -= n as u64;
    }
}

/// `tmp/seed/` holding `files`, their bytes from the seed of `test` (printed, so a failure can
/// be repeated).
pub fn seed_payload(tmp: &TempDir, test: &str, files: &[(&str, u64)]) -> PathBuf {
    let mut rng = Rng::new(test_seed(test));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, files, &mut rng);
    seed_dir
}

/// Writes each `(relative path, length)` under `root` and returns the total length.
pub fn write_payload(root: &Path, files: &[(&str, u64)], rng: &mut Rng) -> u64 {
    for (rel, len) in files {
        write_random_file(&root.join(rel), *len, rng);
    }
    files.iter().map(|(_, len)| len).sum()
}

/// Lowercase hex SHA-1 of a file's contents.
pub fn sha1_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Relative path -> (length, SHA-1) of every regular file.
pub type Digest = BTreeMap<String, (u64, String)>;

fn try_tree_digest(root: &Path) -> std::io::Result<Digest> {
    fn walk(root: &Path, dir: &Path, out: &mut Digest) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let len = fs::metadata(&path)?.len();
                out.insert(rel.display().to_string(), (len, sha1_file(&path)?));
            }
        }
        Ok(())
    }
    let mut out = Digest::new();
    if root.is_file() {
        out.insert(String::new(), (fs::metadata(root)?.len(), sha1_file(root)?));
    } else if root.is_dir() {
        walk(root, root, &mut out)?;
    }
    Ok(out)
}

/// Every regular file under `root` (or `root` itself when it is a file): relative path ->
/// (length, SHA-1). A missing `root` gives an empty map; a file that cannot be read panics.
pub fn tree_digest(root: &Path) -> Digest {
    try_tree_digest(root).unwrap_or_else(|e| panic!("hash the files under {}: {e}", root.display()))
}

/// The differences between two trees, one line each; empty when every file has the same length
/// and hash and neither side has a file the other lacks.
pub fn tree_differences(expected: &Path, actual: &Path) -> Vec<String> {
    differences(&tree_digest(expected), &tree_digest(actual))
}

/// For polling while another process writes: true when the trees are the same, false when they
/// differ or a file vanished while being read.
pub fn trees_match(expected: &Path, actual: &Path) -> bool {
    match (try_tree_digest(expected), try_tree_digest(actual)) {
        (Ok(want), Ok(got)) => differences(&want, &got).is_empty(),
        _ => false,
    }
}

fn differences(want: &Digest, got: &Digest) -> Vec<String> {
    let mut diffs = Vec::new();
    for (rel, (len, sum)) in want {
        match got.get(rel) {
            None => diffs.push(format!("{rel}: missing")),
            Some((glen, gsum)) if glen != len || gsum != sum => diffs.push(format!(
                "{rel}: {glen} bytes sha1 {gsum}, want {len} bytes sha1 {sum}"
            )),
            Some(_) => {}
        }
    }
    for rel in got.keys().filter(|rel| !want.contains_key(*rel)) {
        diffs.push(format!("{rel}: not in the payload"));
    }
    diffs
}

/// Asserts that `actual` holds exactly the files of `expected`, compared by length and SHA-1.
pub fn assert_same_files(expected: &Path, actual: &Path) {
    let diffs = tree_differences(expected, actual);
    assert!(
        diffs.is_empty(),
        "{} differs from {}:\n  {}",
        actual.display(),
        expected.display(),
        diffs.join("\n  ")
    );
}

/// Panics with a pointer to `scripts/test` unless `program` is on PATH.
pub fn require_program(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "{program} is not installed (Debian package {package}): run scripts/test, which installs \
         everything the integration tests need"
    );
}

pub const PYTHON: &str = "/usr/bin/python3";

/// Panics with a pointer to `scripts/test` unless `/usr/bin/python3` can import libtorrent.
pub fn require_libtorrent() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{PYTHON} cannot import libtorrent (Debian package python3-libtorrent): run scripts/test, \
         which installs everything the integration tests need"
    );
}

/// The venv that `scripts/install-deps` makes for the Python clients that are not Debian
/// packages (transmission-rpc): `$BTD_PY_VENV`, else `$XDG_CACHE_HOME/btd/py-venv`, else
/// `$HOME/.cache/btd/py-venv`, as the script picks it.
pub fn py_venv() -> PathBuf {
    let nonempty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = nonempty("BTD_PY_VENV") {
        return dir.into();
    }
    let cache = nonempty("XDG_CACHE_HOME").map_or_else(
        || PathBuf::from(nonempty("HOME").unwrap_or_else(|| "/root".into())).join(".cache"),
        PathBuf::from,
    );
    cache.join("btd/py-venv")
}

/// The venv's interpreter, after checking that it imports transmission_rpc; panics with a
/// pointer to `scripts/test` otherwise.
pub fn require_transmission_rpc() -> PathBuf {
    let python = py_venv().join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import transmission_rpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import transmission_rpc (PyPI transmission-rpc): run scripts/test, which \
         installs everything the integration tests need",
        python.display()
    );
    python
}

/// `scripts/clients/<name>` in this repository.
pub fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/clients")
        .join(name)
}
