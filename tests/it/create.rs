//! `btd create`: what it writes reads back in libtorrent (and transmission-show) with the right
//! name, files, piece length, trackers, private flag and comment, and its piece hashes match the
//! data; bad input exits 2 with a message naming the path.

use crate::support::{
    Btd, LtClient, PeerSpec, Rng, SHORT, TempDir, TorrentInfo, next_ip, require_program,
    run_to_end, test_seed, write_payload, write_random_file,
};
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

fn create(src: &Path, out: &Path, extra: &[&str]) {
    let mut args: Vec<OsString> = vec!["create".into(), src.into(), "-o".into(), out.into()];
    args.extend(extra.iter().map(OsString::from));
    Btd::run(args).assert_success();
    assert!(out.is_file(), "btd create did not write {}", out.display());
}

/// libtorrent checks `dir/<name>` against the torrent's piece hashes and must find it complete.
fn assert_libtorrent_verifies(torrent: &Path, dir: &Path) {
    let mut lt = LtClient::seed(
        "libtorrent checking btd's torrent",
        &PeerSpec {
            torrent,
            dir,
            ip: next_ip(),
            peers: vec![],
            announce: false,
        },
    );
    lt.wait_seeding();
    lt.terminate_and_assert_ok(SHORT);
}

/// transmission-show, a second reader, accepts the torrent and names it.
fn assert_transmission_show_reads(torrent: &Path, name: &str) {
    require_program("transmission-show", "transmission-cli");
    let mut cmd = Command::new("transmission-show");
    cmd.arg(torrent);
    let out = run_to_end("transmission-show", cmd, SHORT);
    out.assert_success();
    assert!(
        out.stdout.contains(&format!("Name: {name}")),
        "transmission-show does not name the torrent {name}: {}",
        out.description
    );
}

fn assert_piece_length_rule(info: &TorrentInfo) {
    let pl = info.piece_length;
    assert!(
        pl.is_power_of_two(),
        "piece length {pl} is not a power of two"
    );
    assert!(
        (16 * KIB..=16 * MIB).contains(&pl),
        "piece length {pl} is outside 16 KiB..=16 MiB"
    );
    let n = info.num_pieces;
    assert_eq!(
        n,
        info.total_size.div_ceil(pl),
        "piece count for {pl}-byte pieces"
    );
    assert!(
        pl == 16 * KIB || n >= 1000,
        "{n} pieces of {pl} bytes: a smaller power of two would give 1000-2000 pieces"
    );
    assert!(
        pl == 16 * MIB || n <= 2000,
        "{n} pieces of {pl} bytes: a larger power of two would give 1000-2000 pieces"
    );
}

#[test]
fn create_on_a_file_makes_a_single_file_torrent_that_libtorrent_verifies() {
    let tmp = TempDir::new("create-file");
    let mut rng = Rng::new(test_seed("create_on_a_file"));
    let data = tmp.subdir("data");
    let len = 3 * MIB + 123;
    write_random_file(&data.join("movie.bin"), len, &mut rng);
    let torrent = tmp.path().join("movie.torrent");

    create(&data.join("movie.bin"), &torrent, &[]);

    let info = TorrentInfo::read(&torrent);
    assert_eq!(info.name, "movie.bin");
    assert_eq!(info.total_size, len);
    assert_eq!(info.files.len(), 1, "{info:?}");
    assert_eq!(
        (info.files[0].path.as_str(), info.files[0].size),
        ("movie.bin", len)
    );
    assert_eq!(
        info.piece_length,
        16 * KIB,
        "a 3 MiB file gets the smallest piece length"
    );
    assert_piece_length_rule(&info);
    assert!(
        info.trackers.is_empty(),
        "no -t, yet trackers {:?}",
        info.trackers
    );
    assert!(!info.private, "private without --private");
    assert_transmission_show_reads(&torrent, "movie.bin");
    assert_libtorrent_verifies(&torrent, &data);
}

#[test]
fn create_on_a_directory_lists_every_file_including_empty_ones() {
    let tmp = TempDir::new("create-dir");
    let mut rng = Rng::new(test_seed("create_on_a_directory"));
    let data = tmp.subdir("data");
    let files: &[(&str, u64)] = &[
        ("album/a.bin", MIB + 1),
        ("album/empty", 0),
        ("album/sub/b.bin", 100 * KIB),
        ("album/sub/deeper/c.txt", 1000),
        ("album/z.bin", 700_001),
    ];
    let total = write_payload(&data, files, &mut rng);
    let torrent = tmp.path().join("album.torrent");

    create(&data.join("album"), &torrent, &["--piece-length", "65536"]);

    let info = TorrentInfo::read(&torrent);
    assert_eq!(info.name, "album");
    assert_eq!(info.total_size, total);
    assert_eq!(info.piece_length, 64 * KIB, "--piece-length 65536 ignored");
    assert_eq!(info.num_pieces, total.div_ceil(64 * KIB));
    let mut got: Vec<(String, u64)> = info
        .files
        .iter()
        .map(|f| (f.path.clone(), f.size))
        .collect();
    got.sort();
    let mut want: Vec<(String, u64)> = files.iter().map(|(p, l)| (p.to_string(), *l)).collect();
    want.sort();
    assert_eq!(got, want, "files of the torrent");
    assert_transmission_show_reads(&torrent, "album");
    assert_libtorrent_verifies(&torrent, &data);
}

#[test]
fn default_piece_length_is_a_power_of_two_giving_1000_to_2000_pieces() {
    let tmp = TempDir::new("create-piece-length");
    // Sparse files: only their length matters here. (size, the one piece length in the rule)
    for (size, want) in [
        (2 * MIB, 16 * KIB),
        (24 * MIB, 16 * KIB),
        (96 * MIB, 64 * KIB),
    ] {
        let src = tmp.path().join(format!("sparse-{size}"));
        std::fs::File::create(&src)
            .and_then(|f| f.set_len(size))
            .expect("sparse file");
        let torrent = tmp.path().join(format!("sparse-{size}.torrent"));
        create(&src, &torrent, &[]);
        let info = TorrentInfo::read(&torrent);
        assert_eq!(info.total_size, size);
        assert_piece_length_rule(&info);
        assert_eq!(
            info.piece_length, want,
            "default piece length for {size} bytes"
        );
    }
}

#[test]
fn piece_length_option_is_respected() {
    let tmp = TempDir::new("create-piece-length-option");
    let mut rng = Rng::new(test_seed("piece_length_option"));
    let src = tmp.path().join("p.bin");
    write_random_file(&src, 2 * MIB + 5, &mut rng);
    let torrent = tmp.path().join("p.torrent");
    create(&src, &torrent, &["--piece-length", "262144"]);
    let info = TorrentInfo::read(&torrent);
    assert_eq!(info.piece_length, 256 * KIB);
    assert_eq!(info.num_pieces, 9);
}

#[test]
fn announce_urls_private_flag_and_comment_are_written() {
    let tmp = TempDir::new("create-options");
    let mut rng = Rng::new(test_seed("announce_urls_private_flag_and_comment"));
    let src = tmp.path().join("opts.bin");
    write_random_file(&src, 100 * KIB, &mut rng);
    let torrent = tmp.path().join("opts.torrent");
    let urls = [
        "http://127.0.0.1:6969/announce",
        "http://127.0.0.1:7070/announce?passkey=abc",
    ];
    let comment = "made by btd's tests: ünïcode & spaces";
    create(
        &src,
        &torrent,
        &[
            "-t",
            urls[0],
            "-t",
            urls[1],
            "--private",
            "--comment",
            comment,
        ],
    );
    let info = TorrentInfo::read(&torrent);
    let mut got: Vec<&str> = info.trackers.iter().map(|t| t.url.as_str()).collect();
    got.sort_unstable();
    assert_eq!(
        got,
        urls.to_vec(),
        "trackers (libtorrent shuffles within a tier)"
    );
    assert!(info.private, "--private did not set the private flag");
    assert_eq!(info.comment, comment);

    // One -t alone is the announce URL.
    let single = tmp.path().join("single.torrent");
    create(&src, &single, &["-t", urls[0]]);
    let info = TorrentInfo::read(&single);
    assert_eq!(
        info.trackers
            .iter()
            .map(|t| t.url.as_str())
            .collect::<Vec<_>>(),
        vec![urls[0]]
    );
    assert!(!info.private);
}

#[test]
fn create_of_a_missing_path_exits_2_naming_it() {
    let tmp = TempDir::new("create-missing");
    let missing = tmp.path().join("no-such-file.bin");
    let torrent = tmp.path().join("x.torrent");
    let out = Btd::run([
        OsString::from("create"),
        missing.clone().into(),
        "-o".into(),
        torrent.clone().into(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.description);
    assert!(
        out.stderr.contains("no-such-file.bin"),
        "the error does not name {}: {}",
        missing.display(),
        out.description
    );
    assert!(
        !torrent.exists(),
        "a torrent was written for a missing path"
    );
}

#[test]
fn download_and_seed_of_an_unreadable_torrent_exit_2_naming_it() {
    let tmp = TempDir::new("bad-torrent");
    let garbage = tmp.path().join("garbage.torrent");
    std::fs::write(&garbage, b"d8:announce3:abcd4:infoi3e").expect("write");
    let missing = tmp.path().join("absent.torrent");
    let out_dir = tmp.subdir("out");
    let ip = next_ip().to_string();
    for (torrent, label) in [(&garbage, "garbage.torrent"), (&missing, "absent.torrent")] {
        for sub in ["download", "seed"] {
            let dir_flag = if sub == "download" { "-o" } else { "-d" };
            let out = Btd::run([
                OsString::from(sub),
                torrent.into(),
                dir_flag.into(),
                (&out_dir).into(),
                "--bind".into(),
                ip.clone().into(),
                "--port".into(),
                "0".into(),
            ]);
            assert_eq!(
                out.status.code(),
                Some(2),
                "btd {sub} of {label}: {}",
                out.description
            );
            assert!(
                out.stderr.contains(label),
                "btd {sub}: the error does not name {label}: {}",
                out.description
            );
        }
    }
}
