//! Hybrid torrents with BEP 47 pad files and file attributes, made by libtorrent 2.0.8's
//! `create_torrent` with its default flags (`scripts/clients/lt_create.py`), between btd and
//! libtorrent on loopback: btd downloads one without ever creating a pad file, seeds it back
//! from data that has none, and makes `x` files executable and `l` entries symlinks.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::{
    Btd, LtClient, Rng, SHORT, TRANSFER, TempDir, assert_same_files, lt_create, next_ip, test_seed,
    write_payload,
};

const KIB: u64 = 1024;

/// Sizes that are not multiples of the 32 KiB pieces, so every file but the last needs a pad.
const FILES: &[(&str, u64)] = &[
    ("hybrid/a.bin", 300 * KIB + 7),
    ("hybrid/nothing", 0),
    ("hybrid/dir/b.bin", 70 * KIB + 1),
    ("hybrid/small.txt", 999),
];

/// What `btd info --json` says of `torrent`.
fn info_json(torrent: &Path) -> serde_json::Value {
    let out = Btd::run(["info".as_ref(), "--json".as_ref(), torrent.as_os_str()]);
    out.assert_success();
    serde_json::from_str(out.stdout.trim()).expect("btd info --json prints JSON")
}

fn assert_no_pad_files(root: &Path) {
    for dir in [root.join(".pad"), root.join("hybrid/.pad")] {
        assert!(!dir.exists(), "{} was created", dir.display());
    }
}

#[test]
fn btd_downloads_a_libtorrent_hybrid_without_pad_files_and_seeds_it_back_to_libtorrent() {
    let tmp = TempDir::new("bep47-hybrid");
    let mut rng = Rng::new(test_seed("bep47_hybrid"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, FILES, &mut rng);
    let torrent = tmp.path().join("hybrid.torrent");
    lt_create(&seed_dir.join("hybrid"), &torrent, 32768, false);
    let info = info_json(&torrent);
    assert_eq!(info["hybrid"], true, "{info}");
    assert!(info["pad_files"].as_u64().unwrap() >= 2, "{info}");
    assert_eq!(info["warnings"], serde_json::json!([]), "{info}");

    let (mut lt, lt_addr) =
        LtClient::ready_seeder("libtorrent seeder", &torrent, &seed_dir, next_ip(), false);
    let out = tmp.subdir("out");
    let mut btd = Btd::download("btd leecher", &torrent, &out, next_ip(), &[lt_addr], false);
    btd.assert_exits_ok(TRANSFER);
    lt.terminate_and_assert_ok(SHORT);
    assert_same_files(&seed_dir.join("hybrid"), &out.join("hybrid"));
    assert_no_pad_files(&out);

    // btd seeds the data as it is now, with no pad file anywhere, to a libtorrent leecher.
    let mut seeder = Btd::seed("btd seeder", &torrent, &out, next_ip(), &[]);
    let addr = seeder.wait_listening();
    let again = tmp.subdir("again");
    let mut leecher = LtClient::leech_from("libtorrent leecher", &torrent, &again, addr);
    leecher.wait_complete(TRANSFER);
    assert_same_files(&seed_dir.join("hybrid"), &again.join("hybrid"));
    assert_no_pad_files(&out);
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_makes_x_files_executable_and_l_entries_symlinks_from_a_libtorrent_torrent() {
    let tmp = TempDir::new("bep47-attrs");
    let mut rng = Rng::new(test_seed("bep47_attrs"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, FILES, &mut rng);
    let root = seed_dir.join("hybrid");
    let script = root.join("run.sh");
    std::fs::write(&script, b"#!/bin/sh\necho hello\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("dir/b.bin", root.join("link")).unwrap();
    let torrent = tmp.path().join("attrs.torrent");
    lt_create(&root, &torrent, 32768, true);
    let info = info_json(&torrent);
    let files = info["files"].as_array().unwrap();
    let find = |path: &str| {
        files
            .iter()
            .find(|f| f["path"] == path)
            .expect(path)
            .clone()
    };
    assert_eq!(find("hybrid/run.sh")["executable"], true, "{info}");
    assert_eq!(find("hybrid/link")["symlink"], "hybrid/dir/b.bin", "{info}");
    assert_eq!(find("hybrid/a.bin")["executable"], false, "{info}");

    let (mut lt, lt_addr) =
        LtClient::ready_seeder("libtorrent seeder", &torrent, &seed_dir, next_ip(), false);
    let out = tmp.subdir("out");
    let mut btd = Btd::download("btd leecher", &torrent, &out, next_ip(), &[lt_addr], false);
    btd.assert_exits_ok(TRANSFER);
    lt.terminate_and_assert_ok(SHORT);
    assert_same_files(&root, &out.join("hybrid"));
    assert_no_pad_files(&out);
    let got = out.join("hybrid");
    let mode = std::fs::metadata(got.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o100, 0, "run.sh is not executable: {mode:o}");
    let plain = std::fs::metadata(got.join("a.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(plain & 0o111, 0, "a.bin became executable: {plain:o}");
    assert_eq!(
        std::fs::read_link(got.join("link")).unwrap(),
        Path::new("dir/b.bin")
    );
}
