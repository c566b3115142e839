//! The web client Debian ships with transmission (`transmission-common`,
//! `/usr/share/transmission/web`), served by btd from `[rpc] web_dir` and used in headless
//! Chromium (`support::browser`): the torrent list shows a torrent that is downloading, with its
//! name and progress; pausing and removing it from the page change btd's own state.

use crate::support::browser::Browser;
use crate::support::daemon::{DaemonHome, LtSeeder, Snapshot, payload};
use crate::support::rpc_client::RpcClient;
use crate::support::{RecordingTracker, SHORT, TempDir, TrackerReply, parse_rpc_serving};
use serde_json::json;
use std::path::Path;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Where Debian's transmission-common puts the web client.
const WEB_DIR: &str = "/usr/share/transmission/web";

/// The percentage in a row's progress details (`1.2 MB of 8.4 MB (14.3%) - 2 min remaining`).
fn shown_percent(details: &str) -> Option<f64> {
    let open = details.find('(')?;
    let close = open + details[open..].find("%)")?;
    details[open + 1..close].trim().parse().ok()
}

/// A screenshot of the page into the test's directory (and into `$BTD_TEST_SCREENSHOTS`, when
/// set, to look at after the test), with the page's text on stderr.
fn screenshot(browser: &Browser, work: &TempDir, name: &str) {
    let shot = work.path().join(name);
    let bytes = browser.screenshot(&shot);
    eprintln!(
        "screenshot {} ({bytes} bytes); the page reads:\n{}",
        shot.display(),
        browser.page_text()
    );
    if let Some(dir) = std::env::var_os("BTD_TEST_SCREENSHOTS") {
        let to = Path::new(&dir).join(name);
        if let Err(e) = std::fs::copy(&shot, &to) {
            eprintln!("copy to {}: {e}", to.display());
        }
    }
}

#[test]
fn transmissions_web_client_in_chromium_lists_pauses_and_removes_a_downloading_torrent() {
    assert!(
        Path::new(WEB_DIR).join("index.html").is_file(),
        "{WEB_DIR}/index.html is missing (Debian package transmission-common): run scripts/test, \
         which installs everything the integration tests need"
    );
    let work = TempDir::new("rpc-web");
    // The seeder uploads at 64 KiB/s: 8 MiB take two minutes, so the page sees it downloading.
    let tracker = RecordingTracker::start();
    let p = payload(
        &work,
        "seed",
        "web-ui",
        8 * MIB,
        32 * KIB,
        &[tracker.announce_url()],
    );
    let lt = LtSeeder::start("libtorrent seeder", &[&p.torrent], &p.dir, 64 * KIB, false);
    tracker.set_reply(TrackerReply {
        peers: vec![lt.addr],
        ..TrackerReply::default()
    });

    let mut home = DaemonHome::new("rpc-web");
    home.set("rpc", "web_dir", WEB_DIR).write_config();
    let mut d = home.start("btd daemon");
    let addr = d.wait_log_after(0, SHORT, "the RPC's address", parse_rpc_serving);
    let mut rpc = RpcClient::new(addr);
    let added = rpc.ok(
        "torrent-add",
        json!({"filename": p.torrent.display().to_string()}),
    );
    assert!(added.contains_key("torrent-added"), "{added:?}");
    let have = |s: &Snapshot| {
        s.status
            .torrent(&p.info_hash)
            .filter(|t| t.state == "downloading")
            .and_then(|t| t.have_bytes)
            .unwrap_or(0)
    };
    d.wait_snapshot(SHORT, "the download under way", |s| have(s) > 0);

    // The list: one row, the torrent's name, a progress figure between 0 and 100 %, close to
    // what btd itself says.
    let browser = Browser::start("web client", 1280, 720);
    browser.goto(&format!("http://{addr}/transmission/web/"));
    let (row, details) = browser.wait_for(SHORT, "the torrent downloading", |b| {
        let rows = b.find_all("#torrent_list li.torrent");
        let row = rows.first()?.clone();
        let details = b.text_in(&row, ".torrent_progress_details")?;
        let percent = shown_percent(&details)?;
        (percent > 0.0).then_some((row, details))
    });
    assert_eq!(browser.find_all("#torrent_list li.torrent").len(), 1);
    assert_eq!(
        browser.text_in(&row, ".torrent_name").as_deref(),
        Some(p.name.as_str())
    );
    let percent = shown_percent(&details).expect("checked above");
    let btd_percent = 100.0
        * d.snapshot()
            .expect("a status file")
            .status
            .torrent(&p.info_hash)
            .expect("listed")
            .progress;
    assert!(
        percent < 100.0 && (percent - btd_percent).abs() < 25.0,
        "the page shows {percent} % ({details:?}), btd {btd_percent:.1} %"
    );
    let peers = browser
        .text_in(&row, ".torrent_peer_details")
        .unwrap_or_default();
    assert!(peers.starts_with("Downloading from"), "{peers:?}");
    screenshot(&browser, &work, "web-client-downloading.png");

    // Pause: select the row, then the toolbar's pause button. btd stops the torrent; the page
    // shows it paused.
    browser.click(&row);
    browser.click_on("#toolbar-pause");
    d.wait_snapshot(SHORT, "the torrent paused", |s| {
        s.status
            .torrent(&p.info_hash)
            .is_some_and(|t| t.state == "paused")
    });
    let t = &rpc.torrents(json!([p.info_hash]), &["status"])[0];
    assert_eq!(t["status"], 0, "torrent-get says {t:?}");
    browser.wait_for(SHORT, "the row paused", |b| {
        let details = b.text_in(&row, ".torrent_peer_details")?;
        (details == "Paused").then_some(())
    });
    screenshot(&browser, &work, "web-client-paused.png");

    // Remove: the toolbar's remove button asks first; confirmed, the torrent is gone from btd
    // and from the page, and its data stays.
    browser.click_on("#toolbar-remove");
    browser.wait_for(SHORT, "the confirmation", |b| {
        let buttons = b.find_all("#dialog_confirm_button");
        let button = buttons.first()?;
        (b.text(button) == "Remove").then_some(())
    });
    browser.click_on("#dialog_confirm_button");
    d.wait_snapshot(SHORT, "the torrent removed", |s| {
        s.status.torrent(&p.info_hash).is_none()
    });
    assert!(rpc.torrents(json!([p.info_hash]), &["id"]).is_empty());
    browser.wait_for(SHORT, "an empty list", |b| {
        b.find_all("#torrent_list li.torrent")
            .is_empty()
            .then_some(())
    });
    assert!(
        home.download_dir().join("web-ui").join("data.bin").exists(),
        "removing without data deleted the data"
    );
    drop(browser);
    d.stop("TERM");
}
