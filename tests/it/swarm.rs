//! A swarm of btd processes on loopback: one seeder and three leechers that all complete with
//! the right bytes; a leecher that starts from partial or damaged data; a downloader that keeps
//! seeding with `--seed`; and `btd seed` refusing data that is missing or corrupt.

use crate::support::{
    Btd, Rng, SHORT, TRANSFER, TempDir, TorrentInfo, assert_same_files, next_ip, test_seed,
    tree_differences, tree_digest, trees_match, wait_until, write_payload,
};
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const NAME: &str = "swarm-payload";
const PIECE_LEN: u64 = 64 * KIB;

/// A multi-file payload whose files do not line up with 64 KiB pieces, so pieces span files;
/// with a zero-length file and one smaller than a 16 KiB block.
const FILES: &[(&str, u64)] = &[
    ("swarm-payload/big.bin", 5 * MIB + 12_345),
    ("swarm-payload/empty.dat", 0),
    ("swarm-payload/tiny.txt", 1000),
    ("swarm-payload/sub/mid.bin", MIB + 7),
    ("swarm-payload/sub/deep/end.bin", 777_777),
];

/// The payload under `<tmp>/seed/swarm-payload` and its torrent, made by `btd create`.
struct Fixture {
    tmp: TempDir,
    seed_dir: PathBuf,
    torrent: PathBuf,
}

impl Fixture {
    fn new(test: &str) -> Fixture {
        let tmp = TempDir::new(test);
        let mut rng = Rng::new(test_seed(test));
        let seed_dir = tmp.subdir("seed");
        write_payload(&seed_dir, FILES, &mut rng);
        let torrent = tmp.path().join("swarm.torrent");
        Btd::run([
            OsString::from("create"),
            seed_dir.join(NAME).into(),
            "-o".into(),
            torrent.clone().into(),
            "--piece-length".into(),
            PIECE_LEN.to_string().into(),
        ])
        .assert_success();
        let f = Fixture {
            tmp,
            seed_dir,
            torrent,
        };
        f.assert_shape();
        f
    }

    /// Guards what the tests rely on: pieces that span files, an empty file, a sub-block file.
    fn assert_shape(&self) {
        let info = TorrentInfo::read(&self.torrent);
        assert_eq!(info.piece_length, PIECE_LEN);
        assert_eq!(info.files.len(), FILES.len(), "{info:?}");
        assert!(info.files.iter().any(|f| f.size == 0));
        assert!(info.files.iter().any(|f| f.size > 0 && f.size < 16 * KIB));
        let mut offset = 0;
        let mut spanning = 0;
        for f in &info.files {
            let end = offset + f.size;
            if f.size > 0 && end % PIECE_LEN != 0 && end < info.total_size {
                spanning += 1; // the piece holding this file's last byte holds the next file's too
            }
            offset = end;
        }
        assert!(spanning >= 2, "want pieces that span files: {info:?}");
    }

    fn payload(&self) -> PathBuf {
        self.seed_dir.join(NAME)
    }

    fn out_dir(&self, label: &str) -> PathBuf {
        self.tmp.subdir(label)
    }
}

#[test]
fn one_seeder_and_three_leechers_all_complete_with_identical_files() {
    let fx = Fixture::new("swarm");
    let ips: Vec<Ipv4Addr> = (2..=5).map(|n| Ipv4Addr::new(127, 0, 0, n)).collect();
    let before = tree_digest(&fx.payload());

    let mut seeder = Btd::seed("seeder", &fx.torrent, &fx.seed_dir, ips[0], &[]);
    let seeder_addr = seeder.wait_listening();
    assert_eq!(
        seeder_addr.ip(),
        ips[0],
        "the seeder listens on its --bind address"
    );

    // Each leecher gets the seeder and the leechers started before it; connections go both ways.
    // The first keeps seeding (--seed) so the others can also fetch from it.
    let mut peers: Vec<SocketAddr> = vec![seeder_addr];
    let mut leechers = Vec::new();
    let mut outs = Vec::new();
    for (i, ip) in ips[1..].iter().enumerate() {
        let out = fx.out_dir(&format!("leecher{}", i + 1));
        let mut l = Btd::download(
            &format!("leecher{} ({ip})", i + 1),
            &fx.torrent,
            &out,
            *ip,
            &peers,
            i == 0,
        );
        peers.push(l.wait_listening());
        leechers.push(l);
        outs.push(out);
    }

    // Leechers 2 and 3 exit 0 once every piece is verified and on disk.
    for l in &mut leechers[1..] {
        l.assert_exits_ok(TRANSFER);
    }
    for out in &outs[1..] {
        assert_same_files(&fx.payload(), &out.join(NAME));
    }
    // Leecher 1 (--seed) gets everything too, and keeps running until told to stop.
    let deadline = Instant::now() + TRANSFER;
    wait_until(
        deadline,
        "leecher1 (--seed) to hold the whole payload",
        || trees_match(&fx.payload(), &outs[0].join(NAME)),
    );
    leechers[0].assert_running();
    leechers[0].terminate_and_assert_ok(SHORT);
    assert_same_files(&fx.payload(), &outs[0].join(NAME));

    seeder.terminate_and_assert_ok(SHORT);
    assert_eq!(
        tree_digest(&fx.payload()),
        before,
        "the seeder's own data changed"
    );
}

#[test]
fn downloader_with_seed_flag_serves_the_next_leecher_after_the_seeder_stops() {
    let fx = Fixture::new("keep-seeding");
    let mut seeder = Btd::seed("seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    let seeder_addr = seeder.wait_listening();

    let first_out = fx.out_dir("first");
    let mut first = Btd::download(
        "first (--seed)",
        &fx.torrent,
        &first_out,
        next_ip(),
        &[seeder_addr],
        true,
    );
    let first_addr = first.wait_listening();
    let deadline = Instant::now() + TRANSFER;
    wait_until(
        deadline,
        "the first downloader to hold the whole payload",
        || trees_match(&fx.payload(), &first_out.join(NAME)),
    );
    seeder.terminate_and_assert_ok(SHORT);

    let second_out = fx.out_dir("second");
    let mut second = Btd::download(
        "second",
        &fx.torrent,
        &second_out,
        next_ip(),
        &[first_addr],
        false,
    );
    second.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &second_out.join(NAME));

    first.assert_running();
    first.stop_and_assert_ok("INT", SHORT); // Ctrl-C stops it cleanly too
}

fn copy_file(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    let at = usize::try_from(at).expect("small file");
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn leecher_starting_from_partial_and_damaged_data_ends_with_correct_files() {
    let fx = Fixture::new("partial");
    let out = fx.out_dir("leecher");
    let (have, want) = (out.join(NAME), fx.payload());
    // Correct: big.bin and the empty file. Damaged: mid.bin truncated to a third, tiny.txt with
    // one byte changed. Missing: end.bin.
    copy_file(&want.join("big.bin"), &have.join("big.bin"));
    copy_file(&want.join("empty.dat"), &have.join("empty.dat"));
    copy_file(&want.join("sub/mid.bin"), &have.join("sub/mid.bin"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(have.join("sub/mid.bin"))
        .expect("open");
    f.set_len((MIB + 7) / 3).expect("truncate");
    drop(f);
    copy_file(&want.join("tiny.txt"), &have.join("tiny.txt"));
    flip_byte(&have.join("tiny.txt"), 500);
    assert!(!tree_differences(&want, &have).is_empty());

    let mut seeder = Btd::seed("seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    let seeder_addr = seeder.wait_listening();
    let mut leecher = Btd::download(
        "leecher",
        &fx.torrent,
        &out,
        next_ip(),
        &[seeder_addr],
        false,
    );
    leecher.assert_exits_ok(TRANSFER);
    assert_same_files(&want, &have);
    seeder.terminate_and_assert_ok(SHORT);
}

/// `btd seed` on `dir` exits non-zero (not by a signal) within [`SHORT`], naming `file`.
fn assert_seed_refuses(fx: &Fixture, dir: &Path, file: &str) {
    let mut seeder = Btd::seed("seeder", &fx.torrent, dir, next_ip(), &[]);
    let status = seeder.wait_exit(SHORT);
    assert!(
        status.code().is_some_and(|c| c != 0),
        "btd seed on bad data should exit non-zero, got {status}:\n{}",
        seeder.log_text()
    );
    assert!(
        seeder.output().contains(file),
        "btd seed's messages do not name {file}:\n{}",
        seeder.log_text()
    );
}

#[test]
fn seed_with_a_missing_file_exits_non_zero_naming_it() {
    let fx = Fixture::new("seed-missing");
    std::fs::remove_file(fx.payload().join("sub/mid.bin")).expect("remove");
    assert_seed_refuses(&fx, &fx.seed_dir, "sub/mid.bin");
}

#[test]
fn seed_with_a_corrupt_file_exits_non_zero_naming_it() {
    let fx = Fixture::new("seed-corrupt");
    flip_byte(&fx.payload().join("sub/deep/end.bin"), 300_000);
    assert_seed_refuses(&fx, &fx.seed_dir, "end.bin");
}

/// User + system CPU time of a process so far, in clock ticks (from /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Issue 3 regression: a torrent without trackers left its coordinator spinning on a
/// disconnected channel, a full core while idle.
#[test]
fn idle_seeder_without_trackers_does_not_spin() {
    let fx = Fixture::new("idle_seeder_without_trackers_does_not_spin");
    let mut seeder = Btd::seed("seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    seeder.wait_listening();
    let before = cpu_ticks(seeder.pid());
    let start = Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let used = cpu_ticks(seeder.pid()) - before;
    let ticks = start.elapsed().as_secs_f64() * 100.0; // USER_HZ is 100 on Linux
    assert!(
        (used as f64) < ticks * 0.2,
        "idle seeder used {used} CPU ticks in {ticks:.0} ticks of wall time"
    );
    seeder.terminate_and_assert_ok(SHORT);
}
