//! The daemon's embedded tracker (`[tracker] enabled = true`): one daemon seeds a torrent whose
//! only tracker is its own, a second daemon (no peers given) finds it through that tracker over
//! UDP and downloads; the tracker shows in the status file and the SIGUSR1 table; a reload that
//! disables it frees its port.

use crate::support::daemon::{DaemonHome, Payload, drop_into, watch_renamed, within};
use crate::support::{SHORT, TRANSFER, TempDir, assert_same_files, wait_until};
use std::net::{SocketAddr, UdpSocket};

const MIB: u64 = 1024 * 1024;

/// The embedded tracker's address, from `tracker serving HTTP and UDP on ADDR`.
fn tracker_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("tracker serving HTTP and UDP on ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `tracker` of the status file, as (listen, torrents, peers).
fn tracker_status(home: &DaemonHome) -> Option<(String, u64, u64)> {
    let text = std::fs::read_to_string(home.status_file()).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let t = json.get("tracker")?;
    Some((
        t.get("listen")?.as_str()?.to_owned(),
        t.get("torrents")?.as_u64()?,
        t.get("peers")?.as_u64()?,
    ))
}

#[test]
fn a_daemon_with_the_embedded_tracker_brings_its_seeder_and_another_daemons_leecher_together() {
    let work = TempDir::new("daemon-tracker");
    let mut seed_home = DaemonHome::new("daemon-tracker-seeder");
    let listen = format!("{}:0", seed_home.ip);
    seed_home
        .set("tracker", "enabled", true)
        .set("tracker", "listen", listen)
        .set("tracker", "interval_secs", 5)
        .write_config();
    let mut seeder = seed_home.start("btd daemon (seeder, tracker)");
    let tracker = seeder.wait_log_after(0, SHORT, "the tracker's address", tracker_addr);
    assert_eq!(tracker.ip(), std::net::IpAddr::V4(seed_home.ip));

    // The data in the seeder's download directory, its torrent announcing only over UDP to the
    // embedded tracker.
    let p = Payload::create(
        &seed_home.download_dir(),
        "tracked",
        &[("tracked/a.bin", 3 * MIB + 77), ("tracked/b/c.txt", 4000)],
        crate::support::test_seed("daemon-tracker"),
        &work.join("tracked.torrent"),
        64 * 1024,
        &[format!("udp://{tracker}")],
    );
    drop_into(&seed_home.watch_dir(), "tracked.torrent", &p.torrent);
    seeder.wait_seeding(&p.info_hash, SHORT);

    let leech_home = DaemonHome::new("daemon-tracker-leecher");
    let mut leecher = leech_home.start("btd daemon (leecher)");
    let dropped = drop_into(&leech_home.watch_dir(), "tracked.torrent", &p.torrent);
    wait_until(
        within(SHORT),
        "the leecher's watch file renamed *.added",
        || watch_renamed(&dropped, "added").exists(),
    );
    leecher.wait_seeding(&p.info_hash, TRANSFER);
    assert_same_files(&p.data(), &leech_home.download_dir().join("tracked"));

    // Both daemons announced: one torrent, two peers, in the seeder's status and its USR1 table.
    wait_until(within(SHORT), "the tracker to count two peers", || {
        tracker_status(&seed_home) == Some((tracker.to_string(), 1, 2))
    });
    let mark = seeder.log_mark();
    seeder.signal("USR1");
    seeder.wait_log_contains(
        mark,
        SHORT,
        &format!("tracker on {tracker}: 1 torrents, 2 peers"),
    );

    // Disabled by a reload: the port is free again; the daemon and its torrent carry on.
    seed_home.set("tracker", "enabled", false).write_config();
    let mark = seeder.log_mark();
    seeder.reload();
    seeder.wait_log_contains(mark, SHORT, "config reload: [tracker] disabled");
    wait_until(within(SHORT), "the tracker's UDP port to be free", || {
        UdpSocket::bind(tracker).is_ok()
    });
    wait_until(within(SHORT), "the status file without a tracker", || {
        seed_home.status().is_some() && tracker_status(&seed_home).is_none()
    });
    assert!(seed_home.status().unwrap().torrent(&p.info_hash).is_some());
    leecher.stop("TERM");
    seeder.stop("TERM");
}
