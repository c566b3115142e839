//! Malformed torrents, typed by hand as bencode: a symlink leaving the torrent, a key twice, a
//! v2-only torrent, a file that is also a directory, absurd piece counts, hashes that do not add
//! up, no pieces, a piece length that is not a multiple of 16 KiB. `btd download` and `btd seed`
//! exit 2 naming the file and the reason, write nothing, and the daemon renames each one
//! `*.invalid` in its watch directory with a log line saying why, and keeps going. Path
//! traversal, absolute paths and duplicate files load sanitised: every file lands inside the
//! torrent's directory.

use crate::support::daemon::{DaemonHome, drop_into, watch_renamed, within};
use crate::support::{Btd, SHORT, TempDir, next_ip, wait_until};
use std::ffi::OsString;
use std::fs;
use std::path::Path;

/// A torrent whose info dictionary is `info` with `#P` replaced by `n` piece hashes.
fn torrent(info: &str, n: usize) -> Vec<u8> {
    let (head, tail) = info.split_once("#P").expect("info has #P");
    let mut out = b"d8:announce27:http://127.0.0.1:1/announce4:info".to_vec();
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(format!("6:pieces{}:", n * 20).as_bytes());
    out.extend(std::iter::repeat_n(0xab, n * 20));
    out.extend_from_slice(tail.as_bytes());
    out.push(b'e');
    out
}

/// A multi-file info dictionary named `d` with these `(length, bencoded path list)` files.
fn files(list: &[(u64, &str)], piece_len: u64) -> String {
    let entries: String = list
        .iter()
        .map(|(len, path)| format!("d6:lengthi{len}e4:path{path}e"))
        .collect();
    format!("d5:filesl{entries}e4:name1:d12:piece lengthi{piece_len}e#Pe")
}

/// (file name, torrent bytes, what the refusal must say).
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        (
            "symlink-escape.torrent",
            torrent(
                "d5:filesld6:lengthi3e4:pathl1:xeed4:attr1:l4:pathl4:linke12:symlink pathl2:..2:..3:etceee4:name1:d12:piece lengthi16384e#Pe",
                1,
            ),
            "not a valid torrent: file 1: symlink target \"../../etc\" leaves the torrent's directory",
        ),
        (
            "duplicate-key.torrent",
            torrent("d6:lengthi3e4:name1:a4:name1:b12:piece lengthi16384e#Pe", 1),
            "not a valid torrent: not a bencoded torrent: dictionary key \"name\" appears twice",
        ),
        (
            "v2-only.torrent",
            b"d4:infod9:file treed1:ad0:d6:lengthi5eeee12:meta versioni2e4:name1:a12:piece lengthi16384eee".to_vec(),
            "unsupported torrent: a v2-only torrent (BEP 52, `meta version` 2): btd cannot handle this version yet",
        ),
        (
            "file-and-dir.torrent",
            torrent(&files(&[(3, "l1:ae"), (4, "l1:a1:be")], 16384), 1),
            "not a valid torrent: d/a: a file, and also the directory of d/a/b",
        ),
        (
            "huge.torrent",
            torrent(&files(&[(1 << 50, "l1:xe")], 16384), 1),
            "unsupported torrent: 1125899906842624 bytes in pieces of 16384 make 68719476736 pieces, over btd's limit of 2097152",
        ),
        (
            "inconsistent.torrent",
            torrent(&files(&[(100_000, "l1:xe")], 16384), 2),
            "not a valid torrent: 2 piece hashes for 100000 bytes in pieces of 16384 (expected 7)",
        ),
        (
            "no-pieces.torrent",
            torrent(&files(&[(100_000, "l1:xe")], 16384), 0),
            "not a valid torrent: no pieces: `pieces` is empty",
        ),
        (
            "odd-piece-length.torrent",
            torrent(&files(&[(100_000, "l1:xe")], 10_000), 10),
            "not a valid torrent: piece length 10000: not a multiple of 16 KiB (16384)",
        ),
    ]
}

fn write_cases(dir: &Path) -> Vec<(&'static str, std::path::PathBuf, &'static str)> {
    cases()
        .into_iter()
        .map(|(name, bytes, reason)| {
            let path = dir.join(name);
            fs::write(&path, bytes).expect("write torrent");
            (name, path, reason)
        })
        .collect()
}

#[test]
fn download_and_seed_refuse_each_malformed_torrent_with_exit_2_naming_the_file_and_the_reason() {
    let tmp = TempDir::new("malformed-cli");
    let out_dir = tmp.subdir("work/out");
    let ip = next_ip().to_string();
    for (name, path, reason) in write_cases(tmp.path()) {
        for sub in ["download", "seed"] {
            let dir_flag = if sub == "download" { "-o" } else { "-d" };
            let out = Btd::run([
                OsString::from(sub),
                path.clone().into(),
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
                "btd {sub} {name}: {}",
                out.description
            );
            let want = format!("{}: {reason}", path.display());
            assert!(
                out.stderr.contains(&want),
                "btd {sub} {name}: the error does not say {want:?}: {}",
                out.description
            );
        }
    }
    let left: Vec<_> = fs::read_dir(tmp.join("work"))
        .expect("read work dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        ["out"],
        "a refused torrent wrote next to the download dir"
    );
    assert_eq!(
        fs::read_dir(&out_dir).expect("read out dir").count(),
        0,
        "a refused torrent wrote into the download dir"
    );
}

#[test]
fn traversal_absolute_and_duplicate_paths_are_created_inside_the_torrents_directory() {
    let tmp = TempDir::new("malformed-sanitised");
    let out = tmp.subdir("work/out");
    let path = tmp.path().join("evil.torrent");
    let list = [
        (3, "l2:..4:evile"),
        (3, "l4:/tmp4:evile"),
        (3, "l1:a2:..2:..2:..4:evile"),
        (3, "l12:../../x/../ye"),
        (3, "l4:evile"),
        (3, "l0:e"),
    ];
    fs::write(&path, torrent(&files(&list, 16384), 1)).expect("write torrent");
    let mut btd = Btd::download("btd sanitised", &path, &out, next_ip(), &[], false);
    let want = [
        "d/evil",
        "d/tmp/evil",
        "d/a/evil",
        "d/....x..y",
        "d/evil.1",
        "d/_",
    ];
    wait_until(within(SHORT), "the torrent's files created", || {
        want.iter().all(|f| out.join(f).is_file())
    });
    btd.terminate_and_assert_ok(SHORT);
    let mut created = Vec::new();
    let mut stack = vec![tmp.join("work")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read dir") {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                created.push(p.strip_prefix(&out).expect("inside out").to_owned());
            }
        }
    }
    created.sort();
    let mut want: Vec<_> = want.iter().map(std::path::PathBuf::from).collect();
    want.sort();
    assert_eq!(created, want);
    assert!(!tmp.join("evil").exists() && !tmp.join("x").exists());
}

#[test]
fn the_daemon_renames_malformed_torrents_in_its_watch_dir_invalid_and_says_why() {
    let tmp = TempDir::new("malformed-watch");
    let home = DaemonHome::new("malformed-watch");
    let mut d = home.start("btd daemon");
    let mark = d.log_mark();
    // All at once: each is refused only after it has not changed for the daemon's settle time.
    let cases = write_cases(tmp.path());
    let dropped: Vec<_> = cases
        .iter()
        .map(|(name, src, _)| drop_into(&home.watch_dir(), name, src))
        .collect();
    for ((name, _, reason), dropped) in cases.iter().zip(&dropped) {
        let invalid = watch_renamed(dropped, "invalid");
        wait_until(within(SHORT), &format!("{name} renamed *.invalid"), || {
            invalid.exists() && !dropped.exists()
        });
        let kind = reason.split(':').next().unwrap_or_default();
        let line = d.wait_log_contains(mark, SHORT, &format!("{name}: {kind}"));
        assert!(
            line.contains(reason),
            "{name}: the log line does not say {reason:?}: {line}"
        );
    }
    d.proc.assert_running();
    let s = d.snapshot().expect("a status file");
    let s = d.next_snapshot(&s, SHORT);
    assert!(s.status.torrents.is_empty(), "{}", s.text);
    assert_eq!(
        fs::read_dir(home.download_dir()).map_or(0, Iterator::count),
        0,
        "a refused torrent wrote into the download dir"
    );
    d.stop("TERM");
}
