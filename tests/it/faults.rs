//! Faults around the daemon: a full disk and a read-only download directory put only their
//! torrent in state `error`, keep its verified pieces, and SIGHUP resumes it once space or write
//! access is back; a file truncated or deleted under a seeding torrent is never served wrong and
//! makes the torrent recheck and download the lost pieces again; `kill -9` at random points of a
//! download never leaves resume data claiming a piece that is not on disk; trackers that hang,
//! reset or trickle hold no thread and stop no download.
//!
//! The disk tests mount small tmpfs file systems (the tests run as root), unmounted on `Drop`.

use crate::support::daemon::{DaemonHome, LtSeeder, TorrentEntry, payload, within};
use crate::support::fake_peer::{Block, FakePeer, Fixture, Msg, Recv};
use crate::support::{Rng, SHORT, TRANSFER, TempDir, next_ip, run_to_end, test_seed};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const BLOCK: u32 = 16 * 1024;

// ---- helpers --------------------------------------------------------------------------------

/// A tmpfs mounted at a directory (created), unmounted on `Drop`, lazily so that a process still
/// holding a file there cannot keep it mounted.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size_bytes: u64, read_only: bool) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut opts = format!("size={size_bytes}");
        if read_only {
            opts.push_str(",ro");
        }
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o", &opts, "btd-test"]).arg(dir);
        let out = run_to_end("mount", cmd, SHORT);
        assert!(
            out.status.success(),
            "mount -t tmpfs -o {opts} {} failed (these tests need root): {}",
            dir.display(),
            out.stderr
        );
        Tmpfs {
            dir: dir.to_owned(),
        }
    }

    /// `mount -o remount,OPTS`.
    fn remount(&self, opts: &str) {
        let mut cmd = Command::new("mount");
        cmd.args(["-o", &format!("remount,{opts}")]).arg(&self.dir);
        let out = run_to_end("mount -o remount", cmd, SHORT);
        assert!(
            out.status.success(),
            "remount {opts} {}: {}",
            self.dir.display(),
            out.stderr
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let mut cmd = Command::new("umount");
        cmd.arg("-l").arg(&self.dir);
        let out = run_to_end("umount", cmd, SHORT);
        if !out.status.success() {
            eprintln!("umount -l {}: {}", self.dir.display(), out.stderr);
        }
    }
}

/// The pieces the daemon's resume data for `info_hash` lists as verified (none without a file).
fn resume_pieces(home: &DaemonHome, info_hash: &str) -> Vec<u32> {
    let path = home.resume_file(info_hash);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", path.display()));
    let num_pieces = json["num_pieces"].as_u64().expect("num_pieces");
    let hex = json["pieces"].as_str().expect("pieces");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    (0..u32::try_from(num_pieces).expect("u32"))
        .filter(|&p| bytes[(p / 8) as usize] & (0x80 >> (p % 8)) != 0)
        .collect()
}

/// Panics unless every piece in `claimed` holds the fixture's bytes in `file`.
fn assert_pieces_on_disk(fix: &Fixture, file: &Path, claimed: &[u32], when: &str) {
    let on_disk = std::fs::read(file).unwrap_or_default();
    let piece_len = fix.meta.piece_len as usize;
    for &p in claimed {
        let start = p as usize * piece_len;
        let end = (start + piece_len).min(fix.data.len());
        assert!(
            on_disk.get(start..end) == Some(&fix.data[start..end]),
            "{when}: the resume data lists piece {p} as verified, but {} does not hold it",
            file.display()
        );
    }
}

fn file_matches(fix: &Fixture, file: &Path) -> bool {
    std::fs::read(file).is_ok_and(|d| d == fix.data)
}

/// A libtorrent seeder of the fixtures, their payloads gathered in one directory.
fn lt_seeder(work: &TempDir, fixtures: &[&Fixture], upload_limit: u64) -> LtSeeder {
    let dir = work.subdir("lt-seed");
    for fix in fixtures {
        std::fs::copy(fix.payload(), dir.join(&fix.name)).expect("copy the payload");
    }
    let torrents: Vec<&Path> = fixtures.iter().map(|f| f.torrent.as_path()).collect();
    LtSeeder::start("libtorrent seeder", &torrents, &dir, upload_limit, false)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- disk full, read-only directories ----------------------------------------------------

#[test]
fn a_full_disk_stops_only_its_torrent_keeps_its_pieces_and_sighup_resumes_it_once_space_is_freed() {
    let full = Fixture::new("faults-full", 4 * MIB, 64 * 1024);
    let other = Fixture::new("faults-full-other", 4 * MIB, 64 * 1024);
    let (full_hash, other_hash) = (hex(&full.meta.info_hash), hex(&other.meta.info_hash));
    let work = TempDir::new("faults-full");
    // 5 MiB, 3 MiB of it taken: about half of the 4 MiB torrent fits until the filler goes.
    let small = work.path().join("small");
    let tmpfs = Tmpfs::mount(&small, 5 * MIB, false);
    let filler = small.join("filler");
    std::fs::write(&filler, vec![7u8; 3 << 20]).expect("write the filler");
    // 1 MiB/s per torrent: the other torrent is still downloading when the disk fills up.
    let lt = lt_seeder(&work, &[&full, &other], MIB);
    let mut home = DaemonHome::new("faults-full");
    // The free-space guard off: this is what a full disk does without it (`low_space` has it on).
    home.set("disk", "min_free_mib", 0)
        .add_torrent(
            TorrentEntry::new(&full.torrent)
                .peers(&[lt.addr])
                .download_dir(&small),
        )
        .add_torrent(TorrentEntry::new(&other.torrent).peers(&[lt.addr]))
        .write_config();
    let mut d = home.start("btd daemon");

    let s = d.wait_status(
        TRANSFER,
        "the torrent on the full disk in state error",
        |s| s.torrent(&full_hash).is_some_and(|t| t.state == "error"),
    );
    let t = s.torrent(&full_hash).expect("listed");
    let error = t.error.clone().unwrap_or_default();
    assert!(
        error.contains("No space left on device") && error.contains(&full.name),
        "the error should name the file and the cause: {t:?}"
    );
    let o = s.torrent(&other_hash).expect("listed");
    assert_eq!(o.state, "downloading", "the other torrent: {o:?}");
    assert!(
        o.progress < 1.0,
        "the other torrent finished too soon to tell: {o:?}"
    );
    assert!(
        d.log_lines()
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("No space left on device")),
        "no error line in the log"
    );
    // The state is `error` once the run is told to stop; its resume data is saved when the
    // coordinator has finished stopping.
    let stopped = format!("torrent {}: stopped", full.name);
    d.wait_log_after(0, SHORT, &stopped, |l| l.ends_with(&stopped).then_some(()));
    // No verified piece is lost: what the resume data lists is on disk.
    let kept = resume_pieces(&home, &full_hash);
    eprintln!(
        "disk full after {} of {} pieces",
        kept.len(),
        full.meta.num_pieces
    );
    assert!(
        !kept.is_empty(),
        "no piece was kept before the disk filled up"
    );
    assert_pieces_on_disk(
        &full,
        &small.join(&full.name),
        &kept,
        "after the disk filled up",
    );

    // The other torrent carries on; the failed one stays in error (its retry is minutes away).
    d.wait_seeding(&other_hash, TRANSFER);
    assert!(file_matches(&other, &home.download_dir().join(&other.name)));
    let s = home.status().expect("status");
    assert_eq!(s.torrent(&full_hash).expect("listed").state, "error");

    // Space freed, SIGHUP: the torrent checks its data, keeps what it had and completes.
    std::fs::remove_file(&filler).expect("remove the filler");
    let mark = d.log_mark();
    d.reload();
    let line = d.wait_log_contains(mark, SHORT, "resume data matches");
    assert!(
        line.contains(&format!("{}/{} pieces", kept.len(), full.meta.num_pieces)),
        "the retry should start from the {} kept pieces: {line}",
        kept.len()
    );
    d.wait_seeding(&full_hash, TRANSFER);
    assert!(file_matches(&full, &small.join(&full.name)), "wrong data");
    d.stop("TERM");
    drop(tmpfs);
}

#[test]
fn a_read_only_download_dir_is_an_error_and_sighup_retries_it_once_writable() {
    let fix = Fixture::new("faults-readonly", MIB, 32 * 1024);
    let hash = hex(&fix.meta.info_hash);
    let work = TempDir::new("faults-readonly");
    let mnt = work.path().join("ro");
    let tmpfs = Tmpfs::mount(&mnt, 4 * MIB, true);
    let lt = lt_seeder(&work, &[&fix], 0);
    let mut home = DaemonHome::new("faults-readonly");
    // The free-space guard off: a 4 MiB file system is far below its default 1 GiB.
    home.set("disk", "min_free_mib", 0)
        .add_torrent(
            TorrentEntry::new(&fix.torrent)
                .peers(&[lt.addr])
                .download_dir(&mnt.join("downloads")),
        )
        .write_config();
    let mut d = home.start("btd daemon");
    let s = d.wait_status(SHORT, "the torrent in state error", |s| {
        s.torrent(&hash).is_some_and(|t| t.state == "error")
    });
    let t = s.torrent(&hash).expect("listed");
    assert!(
        t.error
            .as_deref()
            .is_some_and(|e| e.contains("Read-only file system")),
        "{t:?}"
    );
    assert!(
        d.log_contains("retry in 60s or on SIGHUP"),
        "the log should say how to retry"
    );
    tmpfs.remount("rw");
    d.reload();
    d.wait_seeding(&hash, TRANSFER);
    assert!(file_matches(&fix, &mnt.join("downloads").join(&fix.name)));
    d.stop("TERM");
}

// ---- files changed under a seeding torrent ---------------------------------------------

/// A daemon seeding `fix` from its own copy of the payload, with a libtorrent seeder of the
/// same data as its peer (to download lost pieces from).
fn seeding_daemon(label: &str, fix: &Fixture, work: &TempDir) -> (DaemonHome, LtSeeder) {
    let lt = lt_seeder(work, &[fix], 0);
    let mut home = DaemonHome::new(label);
    std::fs::create_dir_all(home.download_dir()).expect("create the download dir");
    std::fs::copy(fix.payload(), home.download_dir().join(&fix.name)).expect("copy");
    home.add_torrent(TorrentEntry::new(&fix.torrent).peers(&[lt.addr]))
        .write_config();
    (home, lt)
}

#[test]
fn a_file_truncated_under_a_seed_is_never_served_and_its_lost_pieces_are_downloaded_again() {
    let fix = Fixture::new("faults-truncated", 2 * MIB, 64 * 1024);
    let hash = hex(&fix.meta.info_hash);
    let work = TempDir::new("faults-truncated");
    let (home, _lt) = seeding_daemon("faults-truncated", &fix, &work);
    let mut d = home.start("btd daemon");
    d.wait_seeding(&hash, SHORT);
    let file = home.download_dir().join(&fix.name);

    let mut fake = FakePeer::connect_when_ready(
        "fake leecher",
        next_ip(),
        d.addr(),
        &fix.meta.info_hash,
        within(SHORT),
    );
    fake.wait_for(within(SHORT), "a bitfield", |m| {
        matches!(m, Msg::Bitfield(_))
    });
    fake.send_interested();
    fake.wait_for(within(SHORT), "unchoke", |m| *m == Msg::Unchoke);
    let first = Block::new(0, 0, BLOCK);
    fake.send_request(first);
    fake.wait_for(within(SHORT), "piece 0", |m| matches!(m, Msg::Piece { .. }));

    // Half the file goes: pieces 16..31 are gone. Ask for one before, one in and one after.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(MIB))
        .expect("truncate");
    let mark = d.log_mark();
    let gone = Block::new(20, 0, BLOCK);
    for b in [Block::new(1, 0, BLOCK), gone, Block::new(2, 0, BLOCK)] {
        fake.send_request(b);
    }
    let mut served = Vec::new();
    let closed = loop {
        match fake.recv(within(SHORT)) {
            Recv::Msg(Msg::Piece {
                piece,
                offset,
                data,
            }) => {
                let b = Block::new(piece, offset, u32::try_from(data.len()).expect("small"));
                assert!(
                    data == fix.block_data(b),
                    "btd sent wrong bytes for {b} after the truncation"
                );
                served.push(b);
            }
            Recv::Msg(_) => {}
            Recv::Closed(why) => break why,
            Recv::Timeout => panic!("btd kept the connection after failing to read piece 20"),
        }
    };
    eprintln!("served after the truncation: {served:?}; then closed ({closed})");
    assert!(
        !served.contains(&gone),
        "a block of the truncated part was sent"
    );
    d.wait_log_contains(mark, SHORT, "cannot serve piece 20");
    d.wait_log_contains(mark, SHORT, "rechecking its data");
    // The check keeps exactly the 16 pieces still on disk, and the rest comes from libtorrent.
    let line = d.wait_log_contains(mark, SHORT, "pieces verified in");
    assert!(line.contains("16/32 pieces"), "{line}");
    // (The status file may still show the seeding before the recheck: wait for the log.)
    d.wait_log_contains(mark, TRANSFER, "download complete");
    d.wait_seeding(&hash, SHORT);
    assert!(file_matches(&fix, &file), "the repaired file differs");
    d.stop("TERM");
}

#[test]
fn a_file_deleted_under_a_seed_is_noticed_and_downloaded_again() {
    let fix = Fixture::new("faults-deleted", 2 * MIB, 64 * 1024);
    let hash = hex(&fix.meta.info_hash);
    let work = TempDir::new("faults-deleted");
    let (home, _lt) = seeding_daemon("faults-deleted", &fix, &work);
    let mut d = home.start("btd daemon");
    d.wait_seeding(&hash, SHORT);
    let file = home.download_dir().join(&fix.name);
    let mark = d.log_mark();
    std::fs::remove_file(&file).expect("delete the payload");
    // Reads still succeed through the daemon's open handle: the periodic file check notices.
    let line = d.wait_log_contains(mark, SHORT, "rechecking its data");
    assert!(line.contains("deleted"), "{line}");
    let line = d.wait_log_contains(mark, SHORT, "pieces verified in");
    assert!(line.contains("0/32 pieces"), "{line}");
    d.wait_log_contains(mark, TRANSFER, "download complete");
    d.wait_seeding(&hash, SHORT);
    assert!(file_matches(&fix, &file), "the downloaded file differs");
    d.stop("TERM");
}

// ---- crash loop ------------------------------------------------------------------------

/// Kills during the check at start and at six random points of the download.
const KILLS: usize = 7;

#[test]
fn kill_9_at_random_points_never_leaves_a_wrong_piece_in_resume_data_and_the_download_completes() {
    let fix = Fixture::new("faults-crash-loop", 8 * MIB, 64 * 1024);
    let hash = hex(&fix.meta.info_hash);
    let work = TempDir::new("faults-crash-loop");
    // 256 KiB/s: 32 s for the whole download, several resume saves (every 5 s) between kills.
    let lt = lt_seeder(&work, &[&fix], 256 * KIB);
    let mut home = DaemonHome::new("faults-crash-loop");
    home.add_torrent(TorrentEntry::new(&fix.torrent).peers(&[lt.addr]))
        .write_config();
    let file = home.download_dir().join(&fix.name);
    let mut rng = Rng::new(test_seed("crash loop kill points"));
    // Kill points from 5 % to 70 %: the status file lags up to a second and the kill waits up to
    // another, so later targets could see the download finish first (3 % of it is a second).
    let mut targets: Vec<f64> = (1..KILLS)
        .map(|_| 0.05 + (rng.next_u64() % 650) as f64 / 1000.0)
        .collect();
    targets.sort_by(f64::total_cmp);
    let mut kept: Vec<u32> = Vec::new();
    for run in 0..KILLS {
        let mut d = home.start(&format!("btd daemon (run {})", run + 1));
        let at = if run == 0 {
            "startup".to_owned()
        } else {
            let target = targets[run - 1];
            let s = d.wait_status(TRANSFER, &format!("progress {target:.2}"), |s| {
                s.torrent(&hash).is_some_and(|t| t.progress >= target)
            });
            let t = s.torrent(&hash).expect("listed");
            assert!(t.progress < 1.0, "finished before kill {}: {t:?}", run + 1);
            // A random moment inside the next second, not just after a status write.
            std::thread::sleep(Duration::from_millis(rng.next_u64() % 1000));
            format!("progress {:.3}", t.progress)
        };
        d.kill9();
        let claimed = resume_pieces(&home, &hash);
        eprintln!(
            "run {}: kill -9 at {at}; resume data lists {} pieces",
            run + 1,
            claimed.len()
        );
        assert_pieces_on_disk(&fix, &file, &claimed, &format!("after kill {}", run + 1));
        let lost: Vec<u32> = kept
            .iter()
            .filter(|p| !claimed.contains(p))
            .copied()
            .collect();
        assert!(
            lost.is_empty(),
            "kill {}: pieces {lost:?} were lost",
            run + 1
        );
        kept = claimed;
    }
    assert!(
        kept.len() < fix.meta.num_pieces as usize,
        "the download finished during the crash loop"
    );
    assert!(!kept.is_empty(), "no resume data was saved in {KILLS} runs");
    let mut d = home.start("btd daemon (after the last kill)");
    d.wait_seeding(&hash, TRANSFER);
    assert!(file_matches(&fix, &file), "the final data differs");
    d.stop("TERM");
}

// ---- trackers --------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Behaviour {
    /// Reads the request and never answers, holding the connection open.
    Hang,
    /// Resets the connection (RST) as soon as it is accepted.
    Reset,
    /// Sends its status line one byte every 200 ms, forever.
    Trickle,
    /// Answers with the peer given by [`ScriptedTracker::set_peer`] (none before).
    Peer,
}

/// An HTTP tracker on 127.0.0.1 that does one thing to every connection, counting them. Its
/// threads stop (and the connections it holds close) on `Drop`.
struct ScriptedTracker {
    port: u16,
    peer: Arc<Mutex<Option<SocketAddr>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ScriptedTracker {
    fn start(behaviour: Behaviour) -> ScriptedTracker {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let t = ScriptedTracker {
            port,
            peer: Arc::default(),
            connections: Arc::default(),
            stop: Arc::default(),
            threads: Arc::default(),
        };
        let (count, stop, threads, peer) = (
            Arc::clone(&t.connections),
            Arc::clone(&t.stop),
            Arc::clone(&t.threads),
            Arc::clone(&t.peer),
        );
        let acceptor = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let stop = Arc::clone(&stop);
                let peer = *peer.lock().expect("lock");
                let handler = std::thread::spawn(move || serve(conn, behaviour, peer, &stop));
                threads.lock().expect("lock").push(handler);
            }
        });
        t.threads.lock().expect("lock").push(acceptor);
        t
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    fn set_peer(&self, addr: SocketAddr) {
        *self.peer.lock().expect("lock") = Some(addr);
    }
}

impl Drop for ScriptedTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut *self.threads.lock().expect("lock"));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, behaviour: Behaviour, peer: Option<SocketAddr>, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    if let Behaviour::Reset = behaviour {
        let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
        return; // dropped with linger 0: RST
    }
    // Read the request header (or until btd gives up on us).
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
    match behaviour {
        Behaviour::Reset => {}
        Behaviour::Hang => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Behaviour::Trickle => {
            for &byte in b"HTTP/1.1 200 OK\r\nX-Slow: "
                .iter()
                .chain(std::iter::repeat(&b'a'))
            {
                if stop.load(Ordering::Relaxed) || conn.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Behaviour::Peer => {
            let mut peers = Vec::new();
            if let Some(SocketAddr::V4(v4)) = peer {
                peers.extend_from_slice(&v4.ip().octets());
                peers.extend_from_slice(&v4.port().to_be_bytes());
            }
            let mut body = format!("d8:intervali1800e5:peers{}:", peers.len()).into_bytes();
            body.extend_from_slice(&peers);
            body.push(b'e');
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
    }
}

#[test]
fn trackers_that_hang_reset_or_trickle_neither_block_a_thread_nor_stop_the_download() {
    let work = TempDir::new("faults-trackers");
    let (hang, reset, trickle) = (
        ScriptedTracker::start(Behaviour::Hang),
        ScriptedTracker::start(Behaviour::Reset),
        ScriptedTracker::start(Behaviour::Trickle),
    );
    // The libtorrent seeder is known only to the last tracker (one tier each, tried in order),
    // so the download starts only once the announcer got past the other three.
    let good = ScriptedTracker::start(Behaviour::Peer);
    let urls = [hang.url(), reset.url(), trickle.url(), good.url()];
    let p = payload(&work, "seed", "tracked", 2 * MIB, 64 * KIB, &urls);
    let lt = LtSeeder::start("libtorrent seeder", &[&p.torrent], &p.dir, 0, false);
    good.set_peer(lt.addr);
    // A second torrent whose only tracker hangs gets its peer from the config.
    let q = payload(&work, "seed3", "hung", MIB, 32 * KIB, &[hang.url()]);
    let lt2 = LtSeeder::start("libtorrent seeder 2", &[&q.torrent], &q.dir, 0, false);

    let mut home = DaemonHome::new("faults-trackers");
    home.add_torrent(TorrentEntry::new(&p.torrent))
        .add_torrent(TorrentEntry::new(&q.torrent).peers(&[lt2.addr]))
        .write_config();
    let mut d = home.start("btd daemon");
    d.wait_seeding(&q.info_hash, TRANSFER);
    d.wait_seeding(&p.info_hash, TRANSFER);
    crate::support::assert_same_files(&p.data(), &home.download_dir().join("tracked"));
    crate::support::assert_same_files(&q.data(), &home.download_dir().join("hung"));
    for (name, t) in [
        ("hanging", &hang),
        ("resetting", &reset),
        ("trickling", &trickle),
    ] {
        assert!(t.connections() >= 1, "the {name} tracker was never tried");
    }
    assert!(good.connections() >= 1);
    // Both announcers may be stuck in a hanging or trickling exchange: stop within 5 s anyway.
    let took = d.stop("TERM");
    eprintln!("stopped in {took:?}");
}
