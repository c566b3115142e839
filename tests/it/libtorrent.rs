//! btd against libtorrent (python3-libtorrent through `scripts/clients/lt_client.py`) on
//! loopback: btd downloads from a libtorrent seeder with a torrent made by mktorrent, and a
//! libtorrent leecher downloads from a btd seeder with a torrent made by `btd create`.

use crate::support::{
    Btd, LtClient, Rng, SHORT, TRANSFER, TempDir, assert_same_files, mktorrent, next_ip, test_seed,
    write_payload,
};
use std::ffi::OsString;

const MIB: u64 = 1024 * 1024;

const FILES: &[(&str, u64)] = &[
    ("lt-payload/one.bin", 6 * MIB + 999),
    ("lt-payload/nothing", 0),
    ("lt-payload/small.txt", 4321),
    ("lt-payload/dir/two.bin", 2 * MIB + 17),
];

#[test]
fn btd_downloads_from_a_libtorrent_seeder_with_a_mktorrent_torrent() {
    let tmp = TempDir::new("lt-seeder");
    let mut rng = Rng::new(test_seed("btd_downloads_from_a_libtorrent_seeder"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, FILES, &mut rng);
    let torrent = tmp.path().join("lt.torrent");
    mktorrent(&seed_dir.join("lt-payload"), &torrent, 15, &[]);

    let (mut lt, lt_addr) =
        LtClient::ready_seeder("libtorrent seeder", &torrent, &seed_dir, next_ip(), false);

    let out = tmp.subdir("out");
    let mut btd = Btd::download("btd leecher", &torrent, &out, next_ip(), &[lt_addr], false);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("lt-payload"), &out.join("lt-payload"));
    lt.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_downloads_a_single_file_torrent_from_a_libtorrent_seeder() {
    let tmp = TempDir::new("lt-seeder-single");
    let mut rng = Rng::new(test_seed("btd_downloads_a_single_file_torrent"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, &[("single.iso", 3 * MIB + 3)], &mut rng);
    let torrent = tmp.path().join("single.torrent");
    mktorrent(&seed_dir.join("single.iso"), &torrent, 16, &[]);

    let (mut lt, lt_addr) =
        LtClient::ready_seeder("libtorrent seeder", &torrent, &seed_dir, next_ip(), false);

    let out = tmp.subdir("out");
    let mut btd = Btd::download("btd leecher", &torrent, &out, next_ip(), &[lt_addr], false);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("single.iso"), &out.join("single.iso"));
    lt.terminate_and_assert_ok(SHORT);
}

#[test]
fn libtorrent_downloads_from_a_btd_seeder_with_a_btd_torrent() {
    let tmp = TempDir::new("lt-leecher");
    let mut rng = Rng::new(test_seed("libtorrent_downloads_from_a_btd_seeder"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, FILES, &mut rng);
    let torrent = tmp.path().join("btd.torrent");
    Btd::run([
        OsString::from("create"),
        seed_dir.join("lt-payload").into(),
        "-o".into(),
        torrent.clone().into(),
    ])
    .assert_success();

    let mut btd = Btd::seed("btd seeder", &torrent, &seed_dir, next_ip(), &[]);
    let btd_addr = btd.wait_listening();

    let out = tmp.subdir("out");
    let mut lt = LtClient::leech_from("libtorrent leecher", &torrent, &out, btd_addr);
    lt.wait_complete(TRANSFER);
    assert_same_files(&seed_dir.join("lt-payload"), &out.join("lt-payload"));
    btd.terminate_and_assert_ok(SHORT);
}

/// The fast extension (BEP 6) with libtorrent: each side sends `have all` or `have none` in
/// place of a bitfield, as btd's wire log shows.
#[test]
fn btd_and_libtorrent_exchange_have_all_and_have_none() {
    let tmp = TempDir::new("lt-fast");
    let mut rng = Rng::new(test_seed("btd_and_libtorrent_exchange_have_all"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, &[("fast.bin", 2 * MIB)], &mut rng);
    let torrent = tmp.path().join("fast.torrent");
    mktorrent(&seed_dir.join("fast.bin"), &torrent, 15, &[]);
    let (mut lt, lt_addr) =
        LtClient::ready_seeder("libtorrent seeder", &torrent, &seed_dir, next_ip(), false);
    let out = tmp.subdir("out");
    let mut cmd = Btd::command([
        OsString::from("download"),
        torrent.clone().into(),
        "-o".into(),
        out.clone().into(),
        "--bind".into(),
        next_ip().to_string().into(),
        "--port".into(),
        "0".into(),
        "--peer".into(),
        lt_addr.to_string().into(),
        "--seed".into(),
    ]);
    cmd.env("RUST_LOG", "info,btd::peer=debug");
    let mut btd = Btd::spawn("btd leecher", cmd);
    let btd_addr = btd.wait_listening();
    btd.proc
        .wait_for_line(SHORT, "have all from libtorrent", |l| {
            (l.contains(&lt_addr.to_string()) && l.contains("<- have all")).then_some(())
        });
    btd.proc
        .wait_for_line(SHORT, "have none to libtorrent", |l| {
            (l.contains(&lt_addr.to_string()) && l.contains("-> have none")).then_some(())
        });
    btd.proc
        .wait_for_line(TRANSFER, "the download complete", |l| {
            l.contains("download complete").then_some(())
        });
    assert_same_files(&seed_dir.join("fast.bin"), &out.join("fast.bin"));
    // Now a libtorrent leecher meets btd as a seeder: btd sends have all.
    let mut leecher = LtClient::leech_from(
        "libtorrent leecher",
        &torrent,
        &tmp.subdir("lt-out"),
        btd_addr,
    );
    btd.proc
        .wait_for_line(SHORT, "have all to the libtorrent leecher", |l| {
            l.contains("-> have all").then_some(())
        });
    leecher.wait_complete(TRANSFER);
    btd.terminate_and_assert_ok(SHORT);
    lt.terminate_and_assert_ok(SHORT);
}
