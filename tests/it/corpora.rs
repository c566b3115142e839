//! btd's metainfo loading against the `.torrent` test corpora of libtorrent, Transmission,
//! anacrolix/torrent and rqbit (`../shared/corpora`, read in place, never copied here): no
//! panic on any file; every file its project loads (v1 or hybrid) loads and lists the same
//! files and sizes as libtorrent 2.0.8's `torrent_info`; every file its project refuses is
//! refused with a reason. The deliberate disagreements are listed below, and in DESIGN.md
//! ("Malformed torrents").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use btd::metainfo::{Metainfo, MetainfoError};

use crate::support::{TorrentInfo, read_each};

/// Files btd treats otherwise than their project expects, and why.
const DISAGREE: &[(&str, &str)] = &[
    (
        "libtorrent/large_piece_size.torrent",
        "512 MiB pieces: over btd's 64 MiB limit (a piece is assembled in memory); refused as unsupported",
    ),
    (
        "libtorrent/v2_mismatching_metadata.torrent",
        "a hybrid whose v1 and v2 file lists disagree: joined as v1 with a warning",
    ),
    (
        "libtorrent/v2_invalid_file.torrent",
        "a hybrid whose v2 file tree is malformed: btd does not use v2 yet, joins it as v1 with a warning",
    ),
    (
        "transmission/dup-files.torrent",
        "two files at one path: Transmission refuses it; btd, as libtorrent, writes the second as NAME.1.EXT",
    ),
    (
        "transmission/gimp-2.10.32-1-arm64.dmg.torrent",
        "no info dictionary: Transmission <= 3.0's private format for a magnet link saved as a file",
    ),
];

/// Files btd writes under other paths than libtorrent 2.0.8 (their sizes and order agree).
const PATHS_DIFFER: &[(&str, &str)] = &[
    (
        "libtorrent/empty_path.torrent",
        "path ['', '']: libtorrent writes temp/_/_ (one '_' per empty component), btd one temp/_",
    ),
    (
        "transmission/bad-utf8-path.torrent",
        "a byte that is not UTF-8: libtorrent writes '_', Transmission U+FFFD, btd %80 (lossless)",
    ),
];

struct Case {
    file: String,
    path: PathBuf,
    expect_ok: bool,
    format: String,
}

/// `../shared/corpora` beside the project: `$BTD_CORPORA` when set, else the first
/// `shared/corpora` in the checkout's parent or above it (a clone elsewhere, such as CI's, looks
/// in this machine's `/work/shared/corpora` last). Missing corpora fail the test: it must not
/// pass by checking nothing.
fn corpora() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates: Vec<PathBuf> = std::env::var_os("BTD_CORPORA")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            manifest
                .ancestors()
                .skip(1)
                .map(|a| a.join("shared/corpora")),
        )
        .chain([PathBuf::from("/work/shared/corpora")])
        .collect();
    candidates
        .iter()
        .find(|dir| dir.join("README.md").is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the corpora are in none of {candidates:?}: this test needs them (set BTD_CORPORA)"
            )
        })
}

fn cases() -> Vec<Case> {
    let root = corpora();
    let mut out = Vec::new();
    for project in ["libtorrent", "transmission", "anacrolix-torrent", "rqbit"] {
        let expected = std::fs::read_to_string(root.join(project).join("expected.json"))
            .expect("expected.json");
        let expected: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&expected).expect("expected.json is JSON");
        for (name, e) in expected {
            out.push(Case {
                file: format!("{project}/{name}"),
                path: root.join(project).join(&name),
                expect_ok: e["expect"] == "ok",
                format: e["format"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    assert!(out.len() > 150, "{} corpus files", out.len());
    out
}

#[test]
fn every_corpus_torrent_loads_or_is_refused_as_its_project_expects() {
    let cases = cases();
    let paths: Vec<PathBuf> = cases.iter().map(|c| c.path.clone()).collect();
    let libtorrent = read_each(&paths);
    let mut wrong = Vec::new();
    let mut loaded = 0;
    for (case, lt) in cases.iter().zip(&libtorrent) {
        let got = std::panic::catch_unwind(|| Metainfo::load_file(&case.path))
            .unwrap_or_else(|_| panic!("{}: loading panicked", case.file));
        let disagreement = DISAGREE.iter().any(|(f, _)| *f == case.file);
        match (&got, case.expect_ok) {
            (Err(MetainfoError::Read { .. }), _) => {
                wrong.push(format!("{}: unreadable", case.file))
            }
            (Ok(_), true) if disagreement => wrong.push(format!(
                "{}: listed as a disagreement, but loads",
                case.file
            )),
            (Err(e), false) if disagreement => wrong.push(format!(
                "{}: listed as a disagreement, but refused: {e}",
                case.file
            )),
            (Ok(meta), true) => {
                loaded += 1;
                let Ok(lt) = lt else {
                    wrong.push(format!("{}: libtorrent refuses it", case.file));
                    continue;
                };
                compare(case, meta, lt, &mut wrong);
            }
            (Err(e), true) if case.format == "v2-only" => {
                // Until btd speaks v2: refused, saying so.
                if !e
                    .to_string()
                    .contains("unsupported torrent: a v2-only torrent")
                {
                    wrong.push(format!(
                        "{}: v2-only, but refused otherwise: {e}",
                        case.file
                    ));
                }
            }
            (Err(e), true) if !disagreement => wrong.push(format!(
                "{}: its project loads it, btd refuses: {e}",
                case.file
            )),
            (Ok(meta), false) if !disagreement => wrong.push(format!(
                "{}: its project refuses it, btd loads it ({} files)",
                case.file,
                meta.files.len()
            )),
            (Err(e), _) => {
                // Refused, as expected (or as listed): the reason must say something.
                let text = e.to_string();
                let reason = text.split_once(": ").map_or("", |(_, r)| r);
                if reason.len() < 10 {
                    wrong.push(format!("{}: refused without a reason: {text}", case.file));
                }
            }
            (Ok(meta), false) => {
                // A listed disagreement that loads: with a warning saying what was set aside.
                if case.format == "hybrid" && meta.about.warnings.is_empty() {
                    wrong.push(format!("{}: joined as v1 without a warning", case.file));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} files:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert!(loaded > 90, "only {loaded} corpus files loaded");
}

/// btd's files (pad files left out) against libtorrent's: the same sizes in the same order, and
/// the same paths unless listed in [`PATHS_DIFFER`]; the same info hash and piece count.
fn compare(case: &Case, meta: &Metainfo, lt: &TorrentInfo, wrong: &mut Vec<String>) {
    let ours: Vec<(String, u64)> = meta
        .files
        .iter()
        .filter(|f| f.on_disk())
        .map(|f| (f.path.to_string_lossy().into_owned(), f.len))
        .collect();
    let theirs: Vec<(String, u64)> = lt.files.iter().map(|f| (f.path.clone(), f.size)).collect();
    let sizes = |v: &[(String, u64)]| v.iter().map(|(_, s)| *s).collect::<Vec<_>>();
    if sizes(&ours) != sizes(&theirs) {
        wrong.push(format!(
            "{}: file sizes differ: btd {ours:?}, libtorrent {theirs:?}",
            case.file
        ));
    } else if ours != theirs && !PATHS_DIFFER.iter().any(|(f, _)| *f == case.file) {
        wrong.push(format!(
            "{}: paths differ: btd {ours:?}, libtorrent {theirs:?}",
            case.file
        ));
    }
    if meta.info_hash.to_hex() != lt.info_hash {
        wrong.push(format!(
            "{}: info hash {} , libtorrent {}",
            case.file, meta.info_hash, lt.info_hash
        ));
    }
    if u64::from(meta.geometry.num_pieces) != lt.num_pieces
        || meta.geometry.total_len != lt.total_size
    {
        wrong.push(format!("{}: geometry differs", case.file));
    }
}
