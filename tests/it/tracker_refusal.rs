//! A tracker that refuses a torrent (`failure reason`, issue 15): the daemon shows the refusal
//! with the torrent (status file, `btd status`, the RPC's `error`/`errorString` and
//! `trackerStats`), keeps downloading from a peer it was given, and asks the tracker again
//! only after a back-off that doubles (15 s, then 30 s), never hammering it.

use crate::support::daemon::{DaemonHome, LtSeeder, TorrentEntry, payload};
use crate::support::rpc_client::RpcClient;
use crate::support::{
    RecordingTracker, SHORT, TRANSFER, TempDir, TrackerReply, assert_same_files, parse_rpc_serving,
};
use serde_json::json;
use std::time::Duration;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

#[test]
fn a_refusing_tracker_is_shown_backed_off_doubling_and_the_torrent_downloads_from_its_peer() {
    let work = TempDir::new("tracker-refusal");
    let reason = "unregistered torrent";
    let tracker = RecordingTracker::with_reply(TrackerReply {
        failure: Some(reason.to_owned()),
        ..TrackerReply::default()
    });
    let p = payload(
        &work,
        "seed",
        "refused",
        4 * MIB,
        64 * KIB,
        &[tracker.announce_url()],
    );
    // 256 KiB/s: the download lasts long enough for the refusal to be seen while it runs.
    let lt = LtSeeder::start(
        "libtorrent seeder (256 KiB/s)",
        &[&p.torrent],
        &p.dir,
        256 * KIB,
        false,
    );
    let mut home = DaemonHome::new("tracker-refusal");
    home.add_torrent(TorrentEntry::new(&p.torrent).peers(&[lt.addr]))
        .write_config();
    let mut d = home.start("btd daemon");
    let rpc_addr = d.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving);

    let shown = format!("{}: {reason}", tracker.announce_url());
    let s = d.wait_status(SHORT, "the refusal shown while it downloads", |s| {
        s.torrent(&p.info_hash)
            .is_some_and(|t| t.tracker_error.as_deref() == Some(shown.as_str()))
    });
    let t = s.torrent(&p.info_hash).expect("the torrent");
    assert_eq!(t.state, "downloading", "{t:?}");
    assert_eq!(t.error, None, "a refusal is not the torrent's error: {t:?}");
    let table = home.cli(&["status".into()]);
    table.assert_success();
    assert!(
        table.stdout.contains(&format!("tracker: refused: {shown}")),
        "btd status does not show the refusal:\n{}",
        table.stdout
    );
    // As Transmission shows it: a tracker error (2) in the tracker's words, the torrent still
    // downloading (4), and the tracker's last announce failed with that result.
    let mut rpc = RpcClient::new(rpc_addr);
    let rows = rpc.torrents(
        json!([p.info_hash]),
        &["status", "error", "errorString", "trackerStats"],
    );
    let row = &rows[0];
    assert_eq!(row["error"], json!(2), "{row:?}");
    assert_eq!(row["errorString"], json!(reason), "{row:?}");
    assert_eq!(row["status"], json!(4), "{row:?}");
    let stats = &row["trackerStats"][0];
    assert_eq!(stats["announce"], json!(tracker.announce_url()), "{row:?}");
    assert_eq!(stats["lastAnnounceResult"], json!(reason), "{row:?}");
    assert_eq!(stats["lastAnnounceSucceeded"], json!(false), "{row:?}");
    assert_eq!(stats["hasAnnounced"], json!(true), "{row:?}");

    // Its other peer source carries it to the end.
    d.wait_seeding(&p.info_hash, TRANSFER);
    assert_same_files(&p.data(), &home.download_dir().join("refused"));

    // Back-off: the second announce about 15 s after the first, the third about 30 s after
    // that (the torrent asked for peers and completed meanwhile: neither cut it short).
    let announces = tracker.wait_for(
        &p.info_hash,
        Duration::from_secs(75),
        "three announces",
        |a| a.len() >= 3,
    );
    assert_eq!(announces.len(), 3, "one announce too many");
    let gap = |i: usize| announces[i].at.duration_since(announces[i - 1].at);
    let (first, second) = (gap(1), gap(2));
    assert!(
        first >= Duration::from_secs(14) && first < Duration::from_secs(25),
        "the first retry came {first:?} after the refusal, not about 15 s"
    );
    assert!(
        second >= Duration::from_secs(29) && second < Duration::from_secs(45),
        "the second retry came {second:?} after the first, not about 30 s (doubling)"
    );
    assert!(
        announces.iter().all(|a| a.is(Some("started"))),
        "a refused `started` is sent again until a tracker takes it"
    );
    d.stop("TERM");
}
