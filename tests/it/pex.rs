//! Peer exchange (BEP 11) with real clients: two libtorrent leechers that only know a btd
//! seeder learn of each other from btd's `ut_pex` messages and connect.

use crate::support::{
    Btd, LtClient, PeerSpec, Rng, SHORT, TempDir, next_ip, test_seed, write_payload,
};
use std::ffi::OsString;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

#[test]
fn libtorrent_leechers_find_each_other_through_btds_pex() {
    let tmp = TempDir::new("pex-lt");
    let mut rng = Rng::new(test_seed(
        "libtorrent_leechers_find_each_other_through_btds_pex",
    ));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, &[("pex-payload.bin", 16 * MIB)], &mut rng);
    let torrent = tmp.path().join("pex.torrent");
    Btd::run([
        OsString::from("create"),
        seed_dir.join("pex-payload.bin").into(),
        "-o".into(),
        torrent.clone().into(),
    ])
    .assert_success();
    // A slow seeder, so the leechers are still at it when the PEX messages arrive.
    let config = tmp.path().join("slow.toml");
    std::fs::write(&config, "[rates]\nupload_kib_per_sec = 512\n").unwrap();
    let ip = next_ip();
    let mut seeder = Btd::spawn(
        "btd seeder",
        [
            OsString::from("--config"),
            config.into(),
            "seed".into(),
            torrent.clone().into(),
            "-d".into(),
            seed_dir.clone().into(),
            "--bind".into(),
            ip.to_string().into(),
            "--port".into(),
            "0".into(),
        ],
    );
    let seeder_addr = seeder.wait_listening();
    let spec = |dir| PeerSpec {
        torrent: &torrent,
        dir,
        ip: next_ip(),
        peers: vec![seeder_addr],
        announce: false,
    };
    let (d1, d2) = (tmp.subdir("l1"), tmp.subdir("l2"));
    let mut l1 = LtClient::leech("libtorrent leecher 1", &spec(&d1));
    let mut l2 = LtClient::leech("libtorrent leecher 2", &spec(&d2));
    for l in [&mut l1, &mut l2] {
        // PROGRESS <fraction> <down> <up> <num_peers>: two peers = btd and the other leecher.
        l.proc.wait_for_line(
            Duration::from_secs(30),
            "a PROGRESS line with 2 peers",
            |line| {
                let peers: u32 = line
                    .strip_prefix("PROGRESS ")?
                    .split_whitespace()
                    .nth(3)?
                    .parse()
                    .ok()?;
                (peers >= 2).then_some(())
            },
        );
    }
    seeder.terminate_and_assert_ok(SHORT);
}
