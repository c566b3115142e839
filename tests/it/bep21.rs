//! BEP 21 (upload only) against libtorrent: btd says `upload_only` when it has every piece it
//! wants though its bitfield is not full (a file skipped), and a seeding btd closes a peer that
//! said it only uploads though its bitfield is not full either. A full bitfield alone would tell
//! neither side, so both tests skip a file.

use std::net::SocketAddr;

use base64::Engine as _;
use serde_json::json;

use crate::support::daemon::{Daemon, DaemonHome, Payload, within};
use crate::support::rpc_client::RpcClient;
use crate::support::{
    Btd, LtClient, PeerSpec, SHORT, TempDir, next_ip, parse_rpc_serving, wait_until,
};

const PIECE: u64 = 64 * 1024;

/// `want.bin` (pieces 0-3) and `skip.bin` (pieces 4-7): no piece shared, so a peer with
/// `want.bin` alone has every piece it wants and half the bitfield.
fn two_files(work: &TempDir, name: &str) -> Payload {
    Payload::create(
        &work.subdir("seed"),
        name,
        &[
            (&format!("{name}/skip.bin"), 4 * PIECE),
            (&format!("{name}/want.bin"), 4 * PIECE),
        ],
        crate::support::test_seed(name),
        &work.join(&format!("{name}.torrent")),
        PIECE,
        &[],
    )
}

/// Copies the payload's `want.bin` alone into `dir/<name>/`.
fn want_only(p: &Payload, dir: &std::path::Path) {
    let to = dir.join(&p.name);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(p.data().join("want.bin"), to.join("want.bin")).unwrap();
}

/// The first line of a libtorrent client started with `--log-peers` that starts with `what`
/// and names `peer`; the rest of that line.
fn wait_peer_line(lt: &mut crate::support::ScriptClient, what: &str, peer: SocketAddr) -> String {
    let prefix = format!("{what} {peer}");
    lt.proc.wait_for_line(SHORT, &format!("'{prefix}'"), |l| {
        l.strip_prefix(&prefix).map(|rest| rest.trim().to_owned())
    })
}

fn rpc(d: &mut Daemon) -> RpcClient {
    RpcClient::new(d.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving))
}

#[test]
fn a_daemon_with_every_wanted_piece_tells_libtorrent_it_only_uploads_though_a_file_is_skipped() {
    let work = TempDir::new("bep21-send");
    let p = two_files(&work, "bep21-send");
    let home = DaemonHome::new("bep21-send");
    home.write_config();
    want_only(&p, &home.download_dir());
    let mut d = home.start("btd daemon");
    let btd = d.wait_listening();
    let mut c = rpc(&mut d);
    let metainfo =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&p.torrent).unwrap());
    // btd create lists the files by name: skip.bin is file 0.
    let added = c.ok(
        "torrent-add",
        json!({"metainfo": metainfo, "files-unwanted": [0]}),
    );
    let id = added["torrent-added"]["id"].as_u64().unwrap();
    wait_until(
        within(SHORT),
        "want.bin verified and the torrent seeding",
        || {
            let t = c
                .torrents(json!([id]), &["leftUntilDone", "status", "percentComplete"])
                .pop()
                .unwrap();
            t["leftUntilDone"] == 0 && t["status"] == 6
        },
    );

    let leech_dir = work.subdir("lt");
    let mut lt = LtClient::with_options(
        "libtorrent leecher",
        "leech",
        &PeerSpec {
            torrent: &p.torrent,
            dir: &leech_dir,
            ip: next_ip(),
            peers: vec![btd],
            announce: false,
        },
        &["--log-peers"],
    );
    wait_peer_line(&mut lt, "PEER", btd);
    // libtorrent marks a peer upload-only from BEP 21 alone: btd's bitfield has half the
    // pieces, so without `upload_only: 1` in its extended handshake neither line comes. Once
    // it has want.bin, libtorrent closes btd as an "uninteresting upload-only peer", sometimes
    // before its loop saw the flag.
    let upload_only = (format!("UPLOAD_ONLY {btd}"), format!("GONE {btd} "));
    let line = lt
        .proc
        .wait_for_line(SHORT, "btd taken as upload-only", |l| {
            (l.starts_with(&upload_only.0)
                || (l.starts_with(&upload_only.1) && l.contains("upload-only")))
            .then(|| l.to_owned())
        });
    eprintln!("libtorrent: {line}");
    // And btd still serves what it has to a peer that wants it.
    lt.proc.wait_for_line(SHORT, "half the data from btd", |l| {
        let fraction: f64 = l
            .strip_prefix("PROGRESS ")?
            .split(' ')
            .next()?
            .parse()
            .ok()?;
        (fraction >= 0.499).then_some(())
    });
    lt.proc.terminate_and_assert_ok(SHORT);
    d.stop("TERM");
}

#[test]
fn a_seeding_btd_closes_a_libtorrent_peer_that_only_uploads_though_its_bitfield_is_not_full() {
    let work = TempDir::new("bep21-honour");
    let p = two_files(&work, "bep21-honour");
    let ip = next_ip();
    let mut seed = Btd::seed("btd seed", &p.torrent, &p.dir, ip, &[]);
    let btd = seed.wait_listening();
    let lt_dir = work.subdir("lt");
    want_only(&p, &lt_dir);
    // libtorrent with skip.bin (file 0) unwanted has every piece it wants: it says
    // `upload_only: 1`. It keeps redundant connections itself, so only btd can close this one.
    let mut lt = LtClient::with_options(
        "libtorrent, skip.bin unwanted",
        "seed",
        &PeerSpec {
            torrent: &p.torrent,
            dir: &lt_dir,
            ip: next_ip(),
            peers: vec![btd],
            announce: false,
        },
        &["--log-peers", "--skip-file", "0", "--keep-redundant"],
    );
    lt.wait_seeding();
    let why = wait_peer_line(&mut lt, "GONE", btd);
    assert!(
        why.to_ascii_lowercase().contains("end of file"),
        "libtorrent closed the connection itself ({why}), not btd:\n{}",
        lt.proc.output()
    );
    lt.proc.terminate_and_assert_ok(SHORT);
    seed.proc.terminate_and_assert_ok(SHORT);
}

/// The order libtorrent does not use: the bitfield first, `upload_only` in an extended
/// handshake after it. A seeding btd closes that peer too, and keeps one that did not say it.
#[test]
fn a_seeding_btd_closes_a_peer_whose_upload_only_comes_after_its_bitfield() {
    use crate::support::fake_peer::{FakePeer, Msg, TorrentMeta, frame};
    use std::time::{Duration, Instant};
    let work = TempDir::new("bep21-order");
    let p = two_files(&work, "bep21-order");
    let meta = TorrentMeta::read(&p.torrent);
    let mut seed = Btd::seed("btd seed", &p.torrent, &p.dir, next_ip(), &[]);
    let btd = seed.wait_listening();
    // want.bin's pieces (4-7): half the bitfield.
    let half = vec![0x0f_u8];
    for (says_upload_only, dict) in [
        (false, &b"d1:md11:ut_metadatai3eee"[..]),
        (true, &b"d1:md11:ut_metadatai3ee11:upload_onlyi1ee"[..]),
    ] {
        let mut fake = FakePeer::connect("fake peer", next_ip(), btd);
        let mut hs = crate::support::fake_peer::handshake_bytes(&meta.info_hash, &fake.peer_id());
        hs[20 + 5] |= 0x10;
        fake.send_raw("handshake with the extension bit", &hs);
        fake.expect_handshake(&meta.info_hash, Instant::now() + SHORT);
        fake.send_bitfield(&half);
        fake.wait_for(
            Instant::now() + SHORT,
            "btd's extended handshake",
            |m| matches!(m, Msg::Other { id: 20, payload } if payload.first() == Some(&0)),
        );
        let mut ext = vec![0u8];
        ext.extend_from_slice(dict);
        fake.send_raw("extended handshake", &frame(20, &ext));
        if says_upload_only {
            fake.expect_closed(Instant::now() + SHORT);
        } else {
            let (_, closed) = fake.collect_until(Instant::now() + Duration::from_secs(3));
            assert!(
                closed.is_none(),
                "btd closed a peer that did not say it only uploads: {closed:?}\n{}",
                fake.transcript()
            );
        }
    }
    seed.proc.terminate_and_assert_ok(SHORT);
}
