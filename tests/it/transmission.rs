//! btd against transmission-daemon 3.00 (through `scripts/clients/transmission.py`) on loopback.
//! Transmission does not dial peers in 127.0.0.0/8, so btd always makes the connection: as a
//! leecher to the transmission seeder, and as a seeder to the transmission leecher (`--peer`).

use crate::support::{
    Btd, PeerSpec, Rng, SHORT, TRANSFER, TempDir, Transmission, assert_same_files, mktorrent,
    next_ip, test_seed, write_payload,
};
use std::ffi::OsString;

const MIB: u64 = 1024 * 1024;

#[test]
fn btd_downloads_from_a_transmission_seeder() {
    let tmp = TempDir::new("tr-seeder");
    let mut rng = Rng::new(test_seed("btd_downloads_from_a_transmission_seeder"));
    let seed_dir = tmp.subdir("seed");
    write_payload(
        &seed_dir,
        &[
            ("tr-payload/a.bin", 4 * MIB + 4097),
            ("tr-payload/b/c.bin", 1000),
            ("tr-payload/b/d.bin", 2 * MIB - 1),
        ],
        &mut rng,
    );
    let torrent = tmp.path().join("tr.torrent");
    mktorrent(&seed_dir.join("tr-payload"), &torrent, 15, &[]);

    let mut tr = Transmission::seed(
        "transmission seeder",
        &PeerSpec {
            torrent: &torrent,
            dir: &seed_dir,
            ip: next_ip(),
            peers: vec![],
            announce: false,
        },
    );
    let tr_addr = tr.wait_listening();
    tr.wait_seeding();

    let out = tmp.subdir("out");
    let mut btd = Btd::download("btd leecher", &torrent, &out, next_ip(), &[tr_addr], false);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("tr-payload"), &out.join("tr-payload"));
    tr.terminate_and_assert_ok(SHORT);
}

#[test]
fn transmission_downloads_from_a_btd_seeder_that_dials_it() {
    let tmp = TempDir::new("tr-leecher");
    let mut rng = Rng::new(test_seed("transmission_downloads_from_a_btd_seeder"));
    let seed_dir = tmp.subdir("seed");
    // No zero-length file: transmission 3.00 does not create one, and that is not btd's doing.
    write_payload(
        &seed_dir,
        &[
            ("tr-payload/a.bin", 5 * MIB + 1),
            ("tr-payload/small.txt", 10_000),
            ("tr-payload/sub/e.bin", MIB + 333),
        ],
        &mut rng,
    );
    let torrent = tmp.path().join("btd.torrent");
    Btd::run([
        OsString::from("create"),
        seed_dir.join("tr-payload").into(),
        "-o".into(),
        torrent.clone().into(),
    ])
    .assert_success();

    let out = tmp.subdir("out");
    let mut tr = Transmission::leech(
        "transmission leecher",
        &PeerSpec {
            torrent: &torrent,
            dir: &out,
            ip: next_ip(),
            peers: vec![],
            announce: false,
        },
    );
    let tr_addr = tr.wait_listening();

    let mut btd = Btd::seed("btd seeder", &torrent, &seed_dir, next_ip(), &[tr_addr]);
    btd.wait_listening();
    tr.wait_complete(TRANSFER);
    assert_same_files(&seed_dir.join("tr-payload"), &out.join("tr-payload"));
    btd.terminate_and_assert_ok(SHORT);
}
