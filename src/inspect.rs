//! `btd info TORRENT|MAGNET [--json]`: what a `.torrent` file or a magnet link holds, before it
//! is added, as transmission-show and libtorrent's dump_torrent print it, plus the paths btd will
//! write and every warning from loading it. `--json` prints the same as one object (its keys are
//! in README.md). Pure apart from reading the file; the daemon is not involved.

use std::path::Path;

use serde_json::{Value, json};

use crate::commands::CommandError;
use crate::magnet::Magnet;
use crate::metainfo::{Metainfo, MetainfoError};
use crate::status::{bytes, printable};

/// True when `btd info ARG` means a local file or a magnet link rather than a daemon's torrent:
/// a `magnet:` link, or a path to an existing file.
pub fn is_local(arg: &str) -> bool {
    arg.starts_with("magnet:") || Path::new(arg).is_file()
}

/// Prints what `arg` (a `.torrent` path or a magnet link) holds.
///
/// # Errors
/// `BadInput` (exit 2) naming the file and the reason when btd cannot load it; with `json`, an
/// object `{"loadable": false, "error": ...}` is printed first.
pub fn run(arg: &str, json: bool) -> Result<(), CommandError> {
    let loaded = if arg.starts_with("magnet:") {
        Magnet::parse(arg)
            .map(|m| magnet_json(&m))
            .map_err(|e| format!("{arg}: {e}"))
    } else {
        Metainfo::load_file(Path::new(arg))
            .map(|m| torrent_json(&m))
            .map_err(|e: MetainfoError| e.to_string())
    };
    match loaded {
        Ok(value) if json => crate::commands::emit(&format!("{value}\n")),
        Ok(value) => crate::commands::emit(&text(&value)),
        Err(reason) => {
            if json {
                println!("{}", json!({"loadable": false, "error": reason}));
            }
            Err(CommandError::BadInput(reason))
        }
    }
}

/// The JSON of a loaded torrent (keys documented in README.md, "btd info").
pub fn torrent_json(meta: &Metainfo) -> Value {
    let about = &meta.about;
    // Both kinds of web seed are shown: `url-list` (BEP 19) and `httpseeds` (BEP 17).
    let mut web_seeds = about.web_seeds.clone();
    for url in &about.http_seeds {
        if !web_seeds.contains(url) {
            web_seeds.push(url.clone());
        }
    }
    let files: Vec<Value> = meta
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.on_disk())
        .map(|(i, f)| {
            json!({
                "path": f.path.to_string_lossy(),
                "original": about.original_paths.get(i).filter(|o| !o.is_empty()),
                "size": f.len,
                "executable": f.attr.executable,
                "hidden": f.attr.hidden,
                "symlink": f.attr.symlink.as_ref().map(|t| t.to_string_lossy()),
            })
        })
        .collect();
    let tiers: Vec<Vec<String>> = match (&meta.announce_list, &meta.announce) {
        (Some(list), _) => list.clone(),
        (None, Some(one)) => vec![vec![one.clone()]],
        (None, None) => Vec::new(),
    };
    json!({
        "loadable": true,
        "kind": "torrent",
        "name": meta.name,
        "info_hash": meta.info_hash.to_hex(),
        "info_hash_v2": meta.info_hash_v2_hex(),
        "hybrid": about.info_hash_v2.is_some(),
        "total_size": meta.geometry.total_len,
        "piece_length": meta.geometry.piece_len,
        "piece_count": meta.geometry.num_pieces,
        "private": meta.private,
        "trackers": tiers,
        "web_seeds": web_seeds,
        "files": files,
        "pad_files": meta.files.iter().filter(|f| !f.on_disk()).count(),
        "creation_date": (about.creation_date != 0).then_some(about.creation_date),
        "created_by": about.created_by,
        "comment": about.comment,
        "source": about.source,
        "warnings": about.warnings,
    })
}

/// The JSON of a magnet link: what it names before its metadata is fetched.
fn magnet_json(magnet: &Magnet) -> Value {
    json!({
        "loadable": true,
        "kind": "magnet",
        "name": magnet.name,
        "info_hash": magnet.info_hash.to_hex(),
        "trackers": magnet.trackers.iter().map(|t| vec![t]).collect::<Vec<_>>(),
        "peers": magnet.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "web_seeds": magnet.web_seeds,
        "warnings": Vec::<String>::new(),
    })
}

/// The text listing of either JSON object.
fn text(v: &Value) -> String {
    let s = |key: &str| v[key].as_str().map(printable).unwrap_or_default();
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("{label:<14}{value}\n"));
        }
    };
    line("Name:", s("name"));
    line("Info hash:", s("info_hash"));
    line("Info hash v2:", s("info_hash_v2"));
    if v["kind"] == "magnet" {
        line(
            "Kind:",
            "magnet link (files unknown until its metadata is fetched)".into(),
        );
    } else {
        let total = v["total_size"].as_u64().unwrap_or(0);
        line("Total size:", format!("{} ({total} bytes)", bytes(total)));
        let piece = v["piece_length"].as_u64().unwrap_or(0);
        line(
            "Pieces:",
            format!("{} of {}", v["piece_count"], bytes(piece)),
        );
        line(
            "Private:",
            if v["private"] == true { "yes" } else { "no" }.into(),
        );
        if v["hybrid"] == true {
            line("Format:", "hybrid (v1 + v2); btd uses v1".into());
        }
        if let Some(date) = v["creation_date"].as_i64() {
            line("Created on:", format!("{date} (Unix time)"));
        }
        line("Created by:", s("created_by"));
        line("Comment:", s("comment"));
        line("Source:", s("source"));
    }
    let list = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    let tiers = list("trackers");
    if !tiers.is_empty() {
        out.push_str("Trackers:\n");
        for (i, tier) in tiers.iter().enumerate() {
            for url in tier.as_array().into_iter().flatten() {
                let url = printable(url.as_str().unwrap_or_default());
                out.push_str(&format!("  tier {}: {url}\n", i + 1));
            }
        }
    }
    for (key, title) in [("web_seeds", "Web seeds:"), ("peers", "Peers:")] {
        let items = list(key);
        if !items.is_empty() {
            out.push_str(&format!("{title}\n"));
            for item in items {
                out.push_str(&format!(
                    "  {}\n",
                    printable(item.as_str().unwrap_or_default())
                ));
            }
        }
    }
    let files = list("files");
    if v["kind"] == "torrent" {
        out.push_str(&format!("Files ({}):\n", files.len()));
    }
    for f in files {
        let path = printable(f["path"].as_str().unwrap_or_default());
        let mut entry = format!("  {path} ({})", bytes(f["size"].as_u64().unwrap_or(0)));
        if let Some(target) = f["symlink"].as_str() {
            entry.push_str(&format!(" -> {}", printable(target)));
        }
        if f["executable"] == true {
            entry.push_str(" [executable]");
        }
        if f["hidden"] == true {
            entry.push_str(" [hidden]");
        }
        if let Some(original) = f["original"].as_str().filter(|o| *o != path) {
            entry.push_str(&format!(" (in the torrent: {})", printable(original)));
        }
        out.push_str(&entry);
        out.push('\n');
    }
    let warnings = list("warnings");
    if !warnings.is_empty() {
        out.push_str("Warnings:\n");
        for w in warnings {
            out.push_str(&format!(
                "  {}\n",
                printable(w.as_str().unwrap_or_default())
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_sanitised_paths_beside_the_originals_and_hides_pad_files() {
        let info = "d5:filesld6:lengthi3e4:pathl2:..1:aeed4:attr1:p6:lengthi16381eed4:attr1:x6:lengthi2e4:pathl1:beee4:name1:d12:piece lengthi16384e6:pieces40:";
        let mut bytes = b"d8:announce9:http://t/7:comment2:hi4:info".to_vec();
        bytes.extend_from_slice(info.as_bytes());
        bytes.extend([b'0'; 40]);
        bytes.extend(b"ee");
        let meta = Metainfo::from_bytes(&bytes).unwrap();
        let v = torrent_json(&meta);
        assert_eq!(v["files"].as_array().unwrap().len(), 2);
        assert_eq!(v["files"][0]["path"], "d/a");
        assert_eq!(v["files"][0]["original"], "d/../a");
        assert_eq!(v["files"][1]["executable"], true);
        assert_eq!(v["pad_files"], 1);
        assert_eq!(v["trackers"][0][0], "http://t/");
        let shown = text(&v);
        assert!(
            shown.contains("  d/a (3 B) (in the torrent: d/../a)\n"),
            "{shown}"
        );
        assert!(shown.contains("  d/b (2 B) [executable]\n"), "{shown}");
        assert!(!shown.contains(".pad"), "{shown}");
        assert!(shown.contains("Comment:      hi\n"), "{shown}");
        assert!(
            shown.contains("Warnings:\n  \"d/../a\" is written as \"d/a\"\n"),
            "{shown}"
        );
    }

    #[test]
    fn a_magnets_web_seeds_are_listed() {
        let m = Magnet::parse(
            "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&ws=http%3A%2F%2Fw%2Fa%2F",
        )
        .unwrap();
        let v = magnet_json(&m);
        assert_eq!(v["web_seeds"], json!(["http://w/a/"]));
        assert!(
            text(&v).contains("Web seeds:\n  http://w/a/\n"),
            "{}",
            text(&v)
        );
    }
}
