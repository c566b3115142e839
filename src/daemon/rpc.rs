//! The daemon's side of the Transmission RPC (rpc-version 17): each method, with its
//! `arguments`, translated onto the torrent set, on the main thread. The transport (HTTP,
//! session id, auth) is elsewhere; this answers `Ok(arguments)` or `Err(result string)`, and a
//! method btd does not do (yet) gets a result string saying so, never a silent success.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::rpc::Arguments;
use crate::selection::{Priority, Selection};
use crate::torrent::{PeerSource, PeersBySource};

use super::*;

/// A method's `arguments`, and what it answers.
pub(super) type Args = Map<String, Value>;

/// The version string clients read: automation (Sonarr, Radarr) takes its first dotted number
/// and wants at least 2.40 (4.0 for labels), so it leads with the Transmission release whose
/// RPC btd speaks, then names btd.
pub(super) const RPC_VERSION_STRING: &str = concat!("4.0.6 (btd ", env!("CARGO_PKG_VERSION"), ")");

/// Transmission's torrent status numbers.
mod status {
    pub const STOPPED: u8 = 0;
    pub const CHECK_WAIT: u8 = 1;
    pub const CHECK: u8 = 2;
    pub const DOWNLOAD_WAIT: u8 = 3;
    pub const DOWNLOAD: u8 = 4;
    pub const SEED_WAIT: u8 = 5;
    pub const SEED: u8 = 6;
}

/// `eta` when there is none to give (Transmission's `TR_ETA_NOT_AVAIL`).
const ETA_NOT_AVAILABLE: i64 = -1;

/// `recently-active` means active within this many seconds, as in Transmission.
const RECENTLY_ACTIVE_SECS: u64 = 60;

impl Daemon {
    /// Answers one call from the RPC's workers.
    pub(super) fn on_rpc(&mut self, call: RpcCall) {
        debug!("rpc {}: {}", call.peer, call.method);
        let result = if call.method == "torrent-get" {
            self.rpc_torrent_get(&call.arguments).map(Arguments::Json)
        } else {
            self.rpc(&call.method, &call.arguments).map(Arguments::Map)
        };
        if let Err(reason) = &result {
            info!("rpc {}: {}: {reason}", call.peer, call.method);
        }
        call.answer(result);
    }

    /// Carries out one RPC call.
    pub(super) fn rpc(&mut self, method: &str, args: &Args) -> Result<Args, String> {
        match method {
            "session-get" => Ok(self.rpc_session_get(args)),
            "session-stats" => Ok(self.rpc_session_stats()),
            "torrent-get" => self.rpc_torrent_get(args).and_then(|text| {
                serde_json::from_str(&text).map_err(|e| format!("torrent-get: {e}"))
            }),
            "torrent-add" => self.rpc_torrent_add(args),
            "torrent-start" | "torrent-start-now" => self.rpc_start_stop(args, false),
            "torrent-stop" => self.rpc_start_stop(args, true),
            "torrent-verify" => self.rpc_verify(args),
            "torrent-set-location" => self.rpc_set_location(args),
            "torrent-rename-path" => self.rpc_rename_path(args),
            "torrent-reannounce" => {
                for index in self.rpc_select(args)? {
                    if let Some(handle) = &self.torrents[index].handle {
                        handle.send(Control::Reannounce);
                    }
                }
                Ok(Map::new())
            }
            "torrent-remove" => self.rpc_remove(args),
            "free-space" => rpc_free_space(args),
            "session-close" => {
                self.close_requested = true;
                Ok(Map::new())
            }
            "torrent-set" => self.rpc_torrent_set(args),
            "queue-move-top" => self.rpc_queue_move(args, QueueMove::Top),
            "queue-move-up" => self.rpc_queue_move(args, QueueMove::Up),
            "queue-move-down" => self.rpc_queue_move(args, QueueMove::Down),
            "queue-move-bottom" => self.rpc_queue_move(args, QueueMove::Bottom),
            "session-set" => self.rpc_session_set(args),
            "blocklist-update" => Err("blocklist-update: btd has no blocklist".into()),
            "port-test" => Err(
                "port-test: btd does not ask an outside service whether its peer port is \
                 reachable, so it cannot say"
                    .into(),
            ),
            other => Err(format!("method not supported by btd (yet): {other}")),
        }
    }

    // ---- session -------------------------------------------------------------------------

    fn rpc_session_get(&self, args: &Args) -> Args {
        let c = &self.config;
        let setting = |key: &str| crate::session_settings::get(c, key).unwrap_or(Value::Null);
        let all = json!({
            "rpc-version": 17,
            "rpc-version-minimum": 14,
            "rpc-version-semver": "5.3.0",
            "version": RPC_VERSION_STRING,
            "session-id": self.rpc.as_ref().map_or("", |r| r.session_id()),
            "config-dir": c.state_dir.display().to_string(),
            "download-dir": c.download_dir.display().to_string(),
            "download-dir-free-space": free_bytes(&c.download_dir).unwrap_or(-1),
            "incomplete-dir": c.download_dir.display().to_string(),
            "incomplete-dir-enabled": false,
            "start-added-torrents": setting("start-added-torrents"),
            "rename-partial-files": false,
            "speed-limit-down": setting("speed-limit-down"),
            "speed-limit-down-enabled": setting("speed-limit-down-enabled"),
            "speed-limit-up": setting("speed-limit-up"),
            "speed-limit-up-enabled": setting("speed-limit-up-enabled"),
        });
        let more = json!({
            "alt-speed-enabled": false,
            "alt-speed-down": 0,
            "alt-speed-up": 0,
            // btd has no alternative speeds: off, with Transmission's default schedule.
            "alt-speed-time-enabled": false,
            // Transmission's defaults, 9:00 to 17:00 on every day.
            "alt-speed-time-begin": 540,
            "alt-speed-time-end": 1020,
            "alt-speed-time-day": 127,
            "seedRatioLimit": c.ratio_limit,
            "seedRatioLimited": c.ratio_limit > 0.0,
            "idle-seeding-limit": setting("idle-seeding-limit"),
            "idle-seeding-limit-enabled": setting("idle-seeding-limit-enabled"),
        });
        let limits = json!({
            "peer-limit-global": c.max_peers_global,
            "peer-limit-per-torrent": c.limits.max_peers,
            "peer-port": self.engine.listen_addr().port(),
            "peer-port-random-on-start": false,
            "port-forwarding-enabled": false,
            "dht-enabled": self.engine.dht().is_some(),
            "lpd-enabled": c.lsd,
            "pex-enabled": true,
            "utp-enabled": false,
            "encryption": setting("encryption"),
            "blocklist-enabled": false,
            "blocklist-size": 0,
            "blocklist-url": "",
            "download-queue-enabled": true,
            "download-queue-size": c.max_active_downloads,
            "seed-queue-enabled": true,
            "seed-queue-size": c.max_active_seeds,
            "queue-stalled-enabled": false,
            "queue-stalled-minutes": 30,
            "cache-size-mb": 0,
            "script-torrent-done-enabled": false,
            "script-torrent-done-filename": "",
            "trash-original-torrent-files": false,
            "units": {
                "speed-units": ["kB/s", "MB/s", "GB/s", "TB/s"],
                "speed-bytes": 1000,
                "size-units": ["kB", "MB", "GB", "TB"],
                "size-bytes": 1000,
                "memory-units": ["KiB", "MiB", "GiB", "TiB"],
                "memory-bytes": 1024
            }
        });
        let mut all = object(all);
        all.extend(object(limits));
        all.extend(object(more));
        match args.get("fields").and_then(Value::as_array) {
            Some(fields) => fields
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|f| all.get(f).map(|v| (f.to_owned(), v.clone())))
                .collect(),
            None => all,
        }
    }

    /// `session-set`: the settings btd applies (speed limits, the ratio limit, queue sizes,
    /// peer limits, the download directory) take effect at once and are kept in the state
    /// directory (see `session_settings`); a value equal to what `session-get` shows is taken
    /// for any other key; anything else is named in a non-success result.
    fn rpc_session_set(&mut self, args: &Args) -> Result<Args, String> {
        let shown = self.rpc_session_get(&Map::new());
        let mut refused = Vec::new();
        let mut changed = false;
        // Each key is checked against the config with the keys before it applied.
        let mut running = self.config.clone();
        for (key, value) in args {
            let current = crate::session_settings::get(&running, key);
            if current.as_ref() == Some(value)
                || (current.is_none() && shown.get(key) == Some(value))
            {
                continue;
            }
            match self.session.set(&running, &self.file_config, key, value) {
                Ok(()) => {
                    info!("session-set over the RPC: {key} = {value}");
                    changed = true;
                    running = self.session.apply_to(&self.file_config);
                }
                Err(reason) => refused.push(reason),
            }
        }
        if changed {
            self.save_session_settings();
            let new = self.session.apply_to(&self.file_config);
            self.apply_config(new);
        }
        if refused.is_empty() {
            Ok(Map::new())
        } else {
            Err(format!("not applied: {}", refused.join("; ")))
        }
    }

    fn rpc_session_stats(&self) -> Args {
        let active = self.torrents.iter().filter(|t| t.handle.is_some()).count();
        let (mut down, mut up, mut uploaded, mut downloaded) = (0u64, 0u64, 0u64, 0u64);
        for t in &self.torrents {
            if let Some(h) = &t.handle {
                down += h.stats.download_rate.load(Ordering::Relaxed);
                up += h.stats.upload_rate.load(Ordering::Relaxed);
            }
            let (u, d) = t.totals();
            uploaded += u;
            downloaded += d;
        }
        let totals = json!({
            "uploadedBytes": uploaded,
            "downloadedBytes": downloaded,
            "filesAdded": self.torrents.len(),
            "sessionCount": 1,
            "secondsActive": self.started.elapsed().as_secs(),
        });
        object(json!({
            "activeTorrentCount": active,
            "pausedTorrentCount": self.torrents.len() - active,
            "torrentCount": self.torrents.len(),
            "downloadSpeed": down,
            "uploadSpeed": up,
            "cumulative-stats": totals,
            "current-stats": totals,
        }))
    }

    // ---- torrents ------------------------------------------------------------------------

    /// The torrents `ids` names: all without it; a number (our id), a hash string, or a list
    /// of either; `recently-active`: those running now or active within the last minute
    /// ([`RECENTLY_ACTIVE_SECS`]).
    fn rpc_select(&self, args: &Args) -> Result<Vec<usize>, String> {
        let one = |v: &Value| -> Result<Option<usize>, String> {
            if let Some(id) = v.as_u64() {
                return Ok(self.torrents.iter().position(|t| u64::from(t.id) == id));
            }
            let Some(text) = v.as_str() else {
                return Err(format!(
                    "ids: {v} is neither a torrent id nor a hash string"
                ));
            };
            let hash = InfoHash::from_hex(text).ok_or_else(|| {
                format!("ids: {text:?} is neither a torrent id nor a hash string")
            })?;
            Ok(self
                .index_of(&hash)
                .filter(|&i| self.torrents[i].has_record()))
        };
        match args.get("ids") {
            None => Ok((0..self.torrents.len()).collect()),
            Some(Value::String(s)) if s == "recently-active" => Ok((0..self.torrents.len())
                .filter(|&i| self.torrents[i].recently_active(RECENTLY_ACTIVE_SECS))
                .collect()),
            Some(Value::Array(list)) => {
                let mut out = Vec::new();
                for v in list {
                    if let Some(i) = one(v)?
                        && !out.contains(&i)
                    {
                        out.push(i);
                    }
                }
                Ok(out)
            }
            Some(v) => Ok(one(v)?.into_iter().collect()),
        }
    }

    /// `torrent-get`'s `arguments` as JSON text, written torrent by torrent: with 10,000
    /// torrents a tree of values would be tens of MiB of small allocations at once.
    fn rpc_torrent_get(&self, args: &Args) -> Result<String, String> {
        let mut fields: Vec<&str> = args
            .get("fields")
            .and_then(Value::as_array)
            .ok_or("torrent-get needs `fields`, a list of field names")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let table = args.get("format").and_then(Value::as_str) == Some("table");
        if !table {
            // A name asked for twice is answered once: an object has each key once. A table
            // has the column twice, as Transmission's has.
            let mut unique: Vec<&str> = Vec::with_capacity(fields.len());
            for field in fields {
                if !unique.contains(&field) {
                    unique.push(field);
                }
            }
            fields = unique;
        }
        let selected = self.rpc_select(args)?;
        let mut out = Vec::with_capacity(64 + selected.len() * 64 * fields.len().max(1));
        out.extend_from_slice(b"{");
        if args.get("ids").and_then(Value::as_str) == Some("recently-active") {
            out.extend_from_slice(b"\"removed\":");
            write_json(&mut out, &self.removed_ids);
            out.push(b',');
        }
        out.extend_from_slice(b"\"torrents\":[");
        if table {
            write_json(&mut out, &fields);
        }
        for (n, i) in selected.into_iter().enumerate() {
            if table || n > 0 {
                out.push(b',');
            }
            // Each value goes straight into the text: with 10,000 torrents a map per row
            // (its keys, its tree) was most of the answer's time.
            out.push(if table { b'[' } else { b'{' });
            let mut first = true;
            self.rpc_torrent_fields(i, &fields, |field, value| {
                // A name btd does not know is `null` in its column and left out of an
                // object, as Transmission does.
                if value.is_none() && !table {
                    return;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                if !table {
                    write_json(&mut out, field);
                    out.push(b':');
                }
                match value {
                    Some(value) => write_json(&mut out, &value),
                    None => out.extend_from_slice(b"null"),
                }
            });
            out.push(if table { b']' } else { b'}' });
        }
        out.extend_from_slice(b"]}");
        Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
    }

    /// The fields of one torrent that `fields` names, each given to `emit` in that order:
    /// `None` for a name btd does not know.
    fn rpc_torrent_fields(
        &self,
        index: usize,
        fields: &[&str],
        mut emit: impl FnMut(&str, Option<Value>),
    ) {
        let t = &self.torrents[index];
        let size = t.size();
        let have = t.have_bytes();
        let (uploaded, downloaded) = t.totals();
        let run = t.running();
        let load = |f: fn(&TorrentStats) -> u64| run.map_or(0, |s| f(s));
        let rate_down = load(|s| s.download_rate.load(Ordering::Relaxed));
        let rate_up = load(|s| s.upload_rate.load(Ordering::Relaxed));
        let complete = t.life.complete();
        let status = match t.life.phase() {
            Phase::Metadata => status::DOWNLOAD,
            Phase::Queued if t.life.force_check() => status::CHECK_WAIT,
            Phase::Queued if complete => status::SEED_WAIT,
            // Waiting for free space, by itself, like a download waiting for a slot; nothing
            // went wrong, so no `error` (the web client would show it in red).
            Phase::Queued | Phase::LowSpace { .. } => status::DOWNLOAD_WAIT,
            Phase::Checking => status::CHECK,
            Phase::Running if complete => status::SEED,
            Phase::Running => status::DOWNLOAD,
            Phase::Paused
            | Phase::Finished
            | Phase::Stopped
            | Phase::Error(_)
            | Phase::Moving { .. } => status::STOPPED,
        };
        // Transmission's codes: 3 a local error; 2 a tracker's refusal (its words, cleared
        // when the tracker answers again), while the torrent runs on.
        let error = match (t.life.phase(), run.and_then(|r| r.swarm.refusal())) {
            (Phase::Error(e), _) => (3, e.clone()),
            (_, Some((_, reason))) => (2, reason),
            _ => (0, String::new()),
        };
        let eta = t.eta_secs().map_or(ETA_NOT_AVAILABLE, |secs| {
            i64::try_from(secs).unwrap_or(i64::MAX)
        });
        for &field in fields {
            let value = match field {
                "id" => json!(t.id),
                "hashString" if t.has_record() => json!(t.info_hash.to_hex()),
                "name" => json!(t.name),
                "status" => json!(status),
                "error" => json!(error.0),
                "errorString" => json!(error.1),
                "totalSize" => json!(size),
                "sizeWhenDone" => json!(t.wanted_size()),
                "leftUntilDone" => json!(t.left_until_done()),
                "haveValid" => json!(have),
                "haveUnchecked" | "corruptEver" => json!(0),
                "desiredAvailable" => json!(0),
                "percentComplete" => json!(fraction(have, size)),
                "percentDone" => json!(fraction(
                    t.wanted_size() - t.left_until_done().min(t.wanted_size()),
                    t.wanted_size()
                )),
                "metadataPercentComplete" => json!(if t.meta.is_some() { 1.0 } else { 0.0 }),
                "recheckProgress" => json!(t.check_fraction().unwrap_or(0.0)),
                "rateDownload" => json!(rate_down),
                "rateUpload" => json!(rate_up),
                "uploadedEver" => json!(uploaded),
                "downloadedEver" => json!(downloaded),
                "uploadRatio" => json!(if size == 0 {
                    -1.0
                } else {
                    uploaded as f64 / size as f64
                }),
                "eta" | "etaIdle" => json!(eta),
                "isFinished" => json!(*t.life.phase() == Phase::Finished),
                // btd has no stalled-queue rule (`queue-stalled-enabled` is false): never.
                "isStalled" => json!(false),
                "isPrivate" => json!(t.meta.as_ref().is_some_and(|m| m.private)),
                "comment" => json!(t.meta.as_ref().map_or("", |m| &m.about.comment)),
                "creator" => json!(t.meta.as_ref().map_or("", |m| &m.about.created_by)),
                "dateCreated" => json!(t.meta.as_ref().map_or(0, |m| m.about.creation_date)),
                "downloadDir" => json!(t.download_dir().display().to_string()),
                "addedDate" => json!(t.record.added_unix),
                "doneDate" => json!(t.record.completed_unix.unwrap_or(0)),
                // Neither is recorded: a running torrent is active now, a stopped one shows
                // Transmission's "never" (0).
                "activityDate" => json!(t.record.activity_unix),
                "startDate" => json!(if run.is_some() { t.run_started_unix } else { 0 }),
                "secondsSeeding" => json!(t.seeding_secs()),
                // btd does not count time spent downloading (yet): Transmission's value for a
                // torrent that never downloaded.
                "secondsDownloading" => json!(t.downloading_secs()),
                "peersConnected" => json!(load(|s| u64::from(s.peers.load(Ordering::Relaxed)))),
                "peersSendingToUs" => json!(load(|s| u64::from(
                    s.peers_sending_to_us.load(Ordering::Relaxed)
                ))),
                "peersGettingFromUs" => json!(load(|s| u64::from(
                    s.peers_getting_from_us.load(Ordering::Relaxed)
                ))),
                "peers" => json!(peer_list(run)),
                // The torrent's `url-list` (BEP 19), as Transmission lists them.
                "webseeds" => json!(t.meta.as_ref().map_or(&[][..], |m| &m.about.web_seeds[..])),
                "labels" => json!(t.record.labels),
                "webseedsSendingToUs" => json!(load(|s| u64::from(
                    s.web_seeds_sending_to_us.load(Ordering::Relaxed)
                ))),
                "pieceCount" => json!(t.meta.as_ref().map_or(0, |m| m.geometry.num_pieces)),
                "pieceSize" => json!(t.meta.as_ref().map_or(0, |m| m.geometry.piece_len)),
                "queuePosition" => json!(index),
                "magnetLink" => json!(magnet_link(t)),
                "files" => json!(file_list(t)),
                "fileStats" => json!(file_stats(t)),
                // `file-count` is Transmission 4's name; Sonarr asks for `fileCount` too.
                "fileCount" | "file-count" => {
                    json!(t.meta.as_ref().map_or(0, |m| m.files.len()))
                }
                // Transmission's own answer when it cannot tell the type of the data.
                "primary-mime-type" => json!("application/octet-stream"),
                "pieces" => json!(pieces_base64(t)),
                "torrentFile" => {
                    json!(
                        torrent_file(t, &self.config.state_dir)
                            .display()
                            .to_string()
                    )
                }
                "trackerList" => json!(tracker_list(t)),
                // Connected peers by where their address came from. Addresses the user gave
                // (`--peer`, `x.pe`, `[[torrent]] peers`) and web seeds are in no count;
                // btd keeps no peer cache and learns no peers from extended handshakes.
                "peersFrom" => {
                    let by = run.map_or_else(PeersBySource::default, |s| *s.peers_by_source.lock());
                    json!({
                        "fromCache": 0,
                        "fromDht": by.get(PeerSource::Dht),
                        "fromIncoming": by.get(PeerSource::Incoming),
                        "fromLpd": by.get(PeerSource::Lsd),
                        "fromLtep": 0,
                        "fromPex": by.get(PeerSource::Pex),
                        "fromTracker": by.get(PeerSource::Tracker),
                    })
                }
                // btd has no manual reannounce (yet): Transmission's -1, none allowed.
                "manualAnnounceTime" => json!(-1),
                "maxConnectedPeers" => json!(self.torrent_limits(t).max_peers),
                // No bandwidth groups; no edits (torrent-set) to date.
                "group" => json!(""),
                "editDate" => json!(0),
                "wanted" => json!(
                    (0..file_count(t))
                        .map(|i| u8::from(t.record.files.get(i).is_wanted()))
                        .collect::<Vec<_>>()
                ),
                "priorities" => json!(
                    (0..file_count(t))
                        .map(|i| t.record.files.get(i).transmission())
                        .collect::<Vec<_>>()
                ),
                "trackers" => json!(trackers(t)),
                "trackerStats" => json!(tracker_stats(t, run)),
                "seedRatioLimit" => json!(match t.record.ratio_limit {
                    RatioLimit::Own(ratio) => ratio,
                    _ => self.config.ratio_limit,
                }),
                "seedRatioMode" => json!(match t.record.ratio_limit {
                    RatioLimit::Global => 0,
                    RatioLimit::Own(_) => 1,
                    RatioLimit::Unlimited => 2,
                }),
                "seedIdleMode" => json!(match t.record.idle_limit {
                    IdleLimit::Global => 0,
                    IdleLimit::OwnMins(_) => 1,
                    IdleLimit::Unlimited => 2,
                }),
                "seedIdleLimit" => json!(match t.record.idle_limit {
                    IdleLimit::OwnMins(mins) => mins,
                    _ => crate::session_settings::idle_limit_mins(&self.config),
                }),
                "downloadLimit" => json!(t.record.rates.download_kbps),
                "uploadLimit" => json!(t.record.rates.upload_kbps),
                "downloadLimited" => json!(t.record.rates.download_limited),
                "uploadLimited" => json!(t.record.rates.upload_limited),
                "honorsSessionLimits" => json!(true),
                "bandwidthPriority" => json!(0),
                "peer-limit" => json!(self.torrent_limits(t).max_peers),
                _ => {
                    emit(field, None);
                    continue;
                }
            };
            emit(field, Some(value));
        }
    }

    /// `torrent-add`: `metainfo` (base64 of a .torrent) or `filename` (a local .torrent path
    /// or a magnet link), with `paused` and `download-dir`. Kept across restarts: the record
    /// says it came over the RPC, the .torrent is saved beside it.
    fn rpc_torrent_add(&mut self, args: &Args) -> Result<Args, String> {
        let (origin, bytes) = if let Some(b64) = args.get("metainfo").and_then(Value::as_str) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("metainfo: not base64: {e}"))?;
            let meta = Metainfo::from_bytes(&bytes)
                .map_err(|reason| format!("metainfo: not a valid torrent: {reason}"))?;
            (Origin::Meta(meta), Some(bytes))
        } else if let Some(name) = args.get("filename").and_then(Value::as_str) {
            if Magnet::is_magnet(name) {
                let magnet = Magnet::parse(name).map_err(|e| format!("filename: {e}"))?;
                (Origin::Magnet(magnet), None)
            } else if name.starts_with("http://") || name.starts_with("https://") {
                return Err(
                    "filename: btd does not fetch .torrent files from URLs (yet); \
                            send the file as `metainfo`"
                        .into(),
                );
            } else {
                let bytes = std::fs::read(name).map_err(|e| format!("filename: {name}: {e}"))?;
                let meta = Metainfo::from_bytes(&bytes)
                    .map_err(|reason| format!("filename: {name}: not a valid torrent: {reason}"))?;
                (Origin::Meta(meta), Some(bytes))
            }
        } else {
            return Err("torrent-add needs `metainfo` or `filename`".into());
        };
        let paused = args
            .get("paused")
            .and_then(Value::as_bool)
            .unwrap_or(!self.config.start_added_torrents);
        let labels = labels_arg(args)?.unwrap_or_default();
        let files = match &origin {
            Origin::Meta(meta) => Some(meta.files.len()),
            _ => None,
        };
        let mut selection = Selection::all();
        match files {
            Some(files) => apply_file_args(&mut selection, files, args, false)?,
            None => {
                if let Some(key) = FILE_ARGS.iter().find(|k| {
                    args.get(**k)
                        .and_then(Value::as_array)
                        .is_some_and(|l| !l.is_empty())
                }) {
                    return Err(format!(
                        "{key}: a magnet link's files are not known until its metadata \
                         arrives; not added (add it, then choose files with torrent-set)"
                    ));
                }
            }
        }
        let dir = args
            .get("download-dir")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        if dir.as_ref().is_some_and(|d| d.is_relative()) {
            return Err("download-dir: give an absolute path".into());
        }
        let hash = origin.info_hash();
        let magnet_uri = args
            .get("filename")
            .and_then(Value::as_str)
            .filter(|f| Magnet::is_magnet(f))
            .map(str::to_owned);
        if let Some(i) = self
            .index_of(&hash)
            .filter(|&i| self.torrents[i].has_record())
        {
            return Ok(added("torrent-duplicate", &self.torrents[i]));
        }
        if let Some(bytes) = &bytes {
            let path = saved_torrent_path(&self.config.state_dir, &hash);
            self.writer
                .write_now(&path, bytes.clone())
                .map_err(|e| e.to_string())?;
        }
        match self.add(origin, Source::Rpc, dir, Vec::new(), paused) {
            Ok(i) => {
                let t = &mut self.torrents[i];
                t.record.added_over_rpc = true;
                t.record.magnet = magnet_uri;
                t.record.paused = Some(paused);
                t.record.labels = labels;
                t.record.files = selection;
                t.save_record(&self.config.state_dir, &self.writer);
                Ok(added("torrent-added", t))
            }
            Err(i) => Ok(added("torrent-duplicate", &self.torrents[i])),
        }
    }

    /// A torrent's new file selection: kept in its record, given to its run, and whether it
    /// is complete follows (a seeding torrent that wants more downloads again).
    fn select_files(&mut self, index: usize, selection: Selection) {
        let t = &mut self.torrents[index];
        if t.record.files == selection {
            return;
        }
        t.record.files = selection;
        if let Some(handle) = &t.handle {
            // The run says when it completes, or downloads again.
            handle.send(Control::Select(t.record.files.clone()));
        }
        // Not checked since the daemon started: the next start finds out.
        let complete = t
            .have
            .as_ref()
            .is_some_and(|have| covers_wanted(&t.piece_levels(), have));
        let actions = t.life.on_selection_changed(complete);
        self.apply(index, actions);
    }

    /// `torrent-set`: labels, the ratio limit (`seedRatioMode` 0 global, 1 its own
    /// `seedRatioLimit`, 2 none) and `peer-limit` are kept in each torrent's record and apply at
    /// once; `queuePosition` moves it. Anything else it is asked to set is named in the result
    /// (after the rest is applied): btd does not do it (yet).
    fn rpc_torrent_set(&mut self, args: &Args) -> Result<Args, String> {
        let selected = self.rpc_select(args)?;
        let mut unsupported = Vec::new();
        let ratio_limit = args.get("seedRatioLimit").and_then(Value::as_f64);
        if ratio_limit.is_some_and(|r| !r.is_finite() || r < 0.0) {
            return Err("seedRatioLimit: must be a number >= 0".into());
        }
        let ratio_mode = match args.get("seedRatioMode") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(m @ 0..=2) => Some(m),
                _ => return Err(format!("seedRatioMode: {v} is not 0, 1 or 2")),
            },
        };
        let idle_limit = match args.get("seedIdleLimit") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(mins @ 1..) => Some(mins),
                _ => return Err(format!("seedIdleLimit: {v} is not a number of minutes > 0")),
            },
        };
        let idle_mode = match args.get("seedIdleMode") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(m @ 0..=2) => Some(m),
                _ => return Err(format!("seedIdleMode: {v} is not 0, 1 or 2")),
            },
        };
        let labels = labels_arg(args)?;
        let peer_limit = match args.get("peer-limit") {
            None => None,
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n > 0 => Some(n),
                _ => return Err(format!("peer-limit: {v} is not a number of peers > 0")),
            },
        };
        // Check every torrent's file arguments before changing anything.
        let mut selections = Vec::new();
        for &index in &selected {
            let t = &self.torrents[index];
            let mut selection = t.record.files.clone();
            match &t.meta {
                Some(meta) => apply_file_args(&mut selection, meta.files.len(), args, true)?,
                None if FILE_ARGS.iter().any(|k| args.contains_key(*k)) => {
                    return Err(format!(
                        "{}: its files are not known until its metadata arrives",
                        t.name()
                    ));
                }
                None => {}
            }
            selections.push(selection);
        }
        for (key, value) in args {
            let honest_no_op = match key.as_str() {
                "ids" | "seedRatioLimit" | "seedRatioMode" | "seedIdleLimit" | "seedIdleMode"
                | "labels" | "peer-limit" | "queuePosition" | "files-wanted" | "files-unwanted"
                | "priority-high" | "priority-low" | "priority-normal" => true,

                "honorsSessionLimits" => value.as_bool() == Some(true),
                "bandwidthPriority" => value.as_i64() == Some(0),
                "downloadLimit" | "uploadLimit" => value.as_u64().is_some(),
                "downloadLimited" | "uploadLimited" => value.as_bool().is_some(),
                _ => false,
            };
            if !honest_no_op {
                unsupported.push(key.clone());
            }
        }
        for (&index, selection) in selected.iter().zip(selections) {
            self.select_files(index, selection);
            let t = &mut self.torrents[index];
            if !t.has_record() {
                continue;
            }
            if let Some(labels) = &labels {
                t.record.labels.clone_from(labels);
            }
            match (ratio_mode, ratio_limit) {
                (Some(0), _) => t.record.ratio_limit = RatioLimit::Global,
                (Some(1), Some(r)) => t.record.ratio_limit = RatioLimit::Own(r),
                (Some(1), None) => {
                    t.record.ratio_limit = RatioLimit::Own(match t.record.ratio_limit {
                        RatioLimit::Own(r) => r,
                        _ => self.config.ratio_limit,
                    });
                }
                (Some(_), _) => t.record.ratio_limit = RatioLimit::Unlimited,
                (None, Some(r)) => {
                    if let RatioLimit::Own(_) = t.record.ratio_limit {
                        t.record.ratio_limit = RatioLimit::Own(r);
                    }
                }
                (None, None) => {}
            }
            let global_idle = crate::session_settings::idle_limit_mins(&self.config);
            t.record.idle_limit = match (idle_mode, idle_limit, t.record.idle_limit) {
                (Some(0), _, _) => IdleLimit::Global,
                (Some(1), Some(mins), _) | (None, Some(mins), IdleLimit::OwnMins(_)) => {
                    IdleLimit::OwnMins(mins)
                }
                (Some(1), None, IdleLimit::OwnMins(mins)) => IdleLimit::OwnMins(mins),
                (Some(1), None, _) => IdleLimit::OwnMins(global_idle),
                (Some(_), _, _) => IdleLimit::Unlimited,
                (None, _, current) => current,
            };
            let rates = &mut t.record.rates;
            let before = *rates;
            let number = |key: &str| args.get(key).and_then(Value::as_u64);
            let flag = |key: &str| args.get(key).and_then(Value::as_bool);
            rates.download_kbps = number("downloadLimit").unwrap_or(rates.download_kbps);
            rates.upload_kbps = number("uploadLimit").unwrap_or(rates.upload_kbps);
            rates.download_limited = flag("downloadLimited").unwrap_or(rates.download_limited);
            rates.upload_limited = flag("uploadLimited").unwrap_or(rates.upload_limited);
            if *rates != before
                && let Some(handle) = &t.handle
            {
                apply_own_rates(handle, &t.record);
            }
            if peer_limit.is_some() {
                t.record.peer_limit = peer_limit;
                let limits = self.torrent_limits(&self.torrents[index]);
                if let Some(handle) = &self.torrents[index].handle {
                    handle.send(Control::SetLimits(limits));
                }
            }
            self.torrents[index].save_record(&self.config.state_dir, &self.writer);
        }
        self.apply_seed_limits();
        if let Some(position) = args.get("queuePosition").and_then(Value::as_u64) {
            let at = usize::try_from(position).unwrap_or(usize::MAX);
            self.reorder_queue(QueueMove::To(at), &selected);
        }
        if unsupported.is_empty() {
            Ok(Map::new())
        } else {
            unsupported.sort();
            Err(format!(
                "btd does not support these torrent-set arguments (yet): {}; the others were \
                 applied",
                unsupported.join(", ")
            ))
        }
    }

    /// `queue-move-top`, `-up`, `-down`, `-bottom`: the order queued torrents start in.
    fn rpc_queue_move(&mut self, args: &Args, how: QueueMove) -> Result<Args, String> {
        let selected = self.rpc_select(args)?;
        self.reorder_queue(how, &selected);
        Ok(Map::new())
    }

    /// `torrent-set-location`: with `move`, its files move to `location` (a `move NAME`
    /// thread, once its run has ended) and it runs from there; without, it is looked for
    /// there (checked again).
    fn rpc_set_location(&mut self, args: &Args) -> Result<Args, String> {
        let to = args
            .get("location")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .ok_or("torrent-set-location needs `location`, an absolute path")?;
        let with_data = args.get("move").and_then(Value::as_bool).unwrap_or(false);
        for index in self.rpc_select(args)? {
            let t = &mut self.torrents[index];
            if t.meta.is_none() || *t.download_dir() == to {
                continue;
            }
            let asked = if with_data {
                t.life.on_move_requested(to.clone())
            } else {
                t.life.on_relocated()
            };
            let actions = asked.map_err(|Refused::Busy(what)| {
                format!("torrent {}: busy {what}; try again", t.name())
            })?;
            if with_data {
                info!(
                    "torrent {}: moving its data to {} over the RPC",
                    t.name(),
                    to.display()
                );
            } else {
                info!(
                    "torrent {}: its data is now looked for in {} (set over the RPC)",
                    t.name(),
                    to.display()
                );
                t.record.download_dir.clone_from(&to);
            }
            self.apply(index, actions);
        }
        Ok(Map::new())
    }

    /// `torrent-rename-path`: `ids` names one torrent, `path` a file or directory of it as its
    /// file list spells it, `name` the new last component. The file list (and the torrent's
    /// name, for its top) changes at once; the files on disk are renamed once no run holds
    /// them: at once when it is not running, else its run is stopped and it starts again
    /// after the rename (its resume data follows the rename, so nothing is hashed again). The
    /// record keeps each rename done on disk, so it survives restarts.
    fn rpc_rename_path(&mut self, args: &Args) -> Result<Args, String> {
        let selected = self.rpc_select(args)?;
        let [index] = selected[..] else {
            return Err(format!(
                "torrent-rename-path needs `ids` naming exactly one torrent; it names {}",
                selected.len()
            ));
        };
        let text = |key: &str| {
            args.get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("torrent-rename-path needs `{key}`, a string"))
        };
        let (path, name) = (text("path")?, text("name")?);
        let t = &self.torrents[index];
        let Some(meta) = &t.meta else {
            return Err(format!(
                "torrent {}: its metadata is not known yet; nothing to rename",
                t.name()
            ));
        };
        let mut renamed = Metainfo::clone(meta);
        let (old, new) = renamed
            .rename_path(path, name)
            .map_err(|e| format!("torrent {}: {e}; not renamed", t.name()))?;
        let answer = object(json!({"path": path, "name": name, "id": t.id}));
        if old == new {
            return Ok(answer);
        }
        let target = t.download_dir().join(t.path_on_disk(&new));
        if target.symlink_metadata().is_ok() {
            return Err(format!(
                "torrent {}: {} already exists on disk; not renamed",
                t.name(),
                target.display()
            ));
        }
        let t = &mut self.torrents[index];
        // A running torrent's coordinator holds the files open, checks their paths and saves
        // resume data under them: the core stops its run, and it runs again once they are
        // renamed.
        let actions = t
            .life
            .on_rename_requested()
            .map_err(|Refused::Busy(what)| {
                format!("torrent {}: busy {what}; try again", t.name())
            })?;
        info!(
            "torrent {}: renaming {path} to {name} over the RPC",
            t.name()
        );
        self.renames_waiting = true;
        let t = &mut self.torrents[index];
        t.pending_renames.push(PendingRename {
            asked: PathRename {
                path: path.to_owned(),
                name: name.to_owned(),
            },
            old,
            new,
        });
        t.name.clone_from(&renamed.name);
        t.meta = Some(Arc::new(renamed));
        self.apply(index, actions);
        match self.apply_renames_of(index) {
            Some(Err(reason)) => Err(reason),
            _ => Ok(answer),
        }
    }

    /// Does on disk the renames that wait for their torrents' runs to have ended.
    pub(super) fn apply_renames(&mut self) {
        if !self.renames_waiting {
            return; // the usual sweep: no torrent to look at
        }
        for index in 0..self.torrents.len() {
            let _ = self.apply_renames_of(index);
        }
        self.renames_waiting = self.torrents.iter().any(|t| !t.pending_renames.is_empty());
    }

    /// Does on disk the renames of the torrent at `index`, unless a run still holds its files
    /// (`None`, as with none waiting). Each is a rename (nothing to do for a file not created
    /// yet); its resume data follows, and the record keeps it. A rename that fails is undone
    /// in the file list, with those after it, and the reason is logged and returned.
    fn apply_renames_of(&mut self, index: usize) -> Option<Result<(), String>> {
        let t = &mut self.torrents[index];
        if t.pending_renames.is_empty() || t.life.files_in_use() {
            return None;
        }
        let pending = std::mem::take(&mut t.pending_renames);
        let dir = t.download_dir().to_owned();
        let resume_path = t.resume_path(&self.config.state_dir);
        let mut resume = ResumeData::load(&resume_path).ok().flatten();
        let mut result = Ok(());
        for (done, rename) in pending.iter().enumerate() {
            let (from, to) = (dir.join(&rename.old), dir.join(&rename.new));
            let outcome = if to.symlink_metadata().is_ok() {
                Err(format!("{} already exists", to.display()))
            } else if from.symlink_metadata().is_err() {
                Ok(()) // not created yet: the check creates it under its new name
            } else {
                std::fs::rename(&from, &to)
                    .map_err(|e| format!("renaming {} to {}: {e}", from.display(), to.display()))
            };
            if let Err(reason) = outcome {
                error!("torrent {}: {reason}; its old name stays", t.name());
                if let Some(meta) = &t.meta {
                    let mut meta = Metainfo::clone(meta);
                    for undo in pending[done..].iter().rev() {
                        let old_name = undo.old.file_name().unwrap_or_default();
                        let _ = meta
                            .rename_path(&undo.new.to_string_lossy(), &old_name.to_string_lossy());
                    }
                    t.name.clone_from(&meta.name);
                    t.meta = Some(Arc::new(meta));
                }
                result = Err(format!("torrent {}: {reason}; not renamed", t.name()));
                break;
            }
            if let Some(resume) = &mut resume {
                resume.rename_path(&rename.old, &rename.new);
            }
            t.record.renames.push(rename.asked.clone());
            info!(
                "torrent {}: renamed {} to {}",
                t.name(),
                rename.old.display(),
                rename.new.display()
            );
        }
        if let Some(resume) = resume
            && let Err(e) = resume.save(&resume_path)
        {
            warn!("torrent {}: {e}; its data will be checked again", t.name());
        }
        t.save_record(&self.config.state_dir, &self.writer);
        Some(result)
    }

    /// `torrent-stop` (pause) and `torrent-start`: kept across restarts in the record.
    fn rpc_start_stop(&mut self, args: &Args, pause: bool) -> Result<Args, String> {
        for index in self.rpc_select(args)? {
            let t = &mut self.torrents[index];
            if !t.has_record() {
                continue;
            }
            t.record.paused = Some(pause);
            let actions = if pause {
                if *t.life.phase() != Phase::Paused {
                    info!("torrent {}: paused over the RPC", t.name());
                }
                t.life.on_pause_requested()
            } else {
                let actions = t.life.on_resume_requested();
                if !actions.is_empty() {
                    info!("torrent {}: started over the RPC", t.name());
                    // A new idle count, as Transmission's starts one (else a torrent finished
                    // by its idle limit would finish again at once).
                    t.record.idle_secs = 0;
                }
                actions
            };
            self.apply(index, actions);
            self.torrents[index].save_record(&self.config.state_dir, &self.writer);
        }
        Ok(Map::new())
    }

    /// `torrent-verify`: the data is hashed again, resume data ignored; a running torrent
    /// stops for it and runs again after, a paused one stays paused.
    fn rpc_verify(&mut self, args: &Args) -> Result<Args, String> {
        for index in self.rpc_select(args)? {
            let t = &mut self.torrents[index];
            if t.meta.is_none() {
                continue;
            }
            info!("torrent {}: verifying over the RPC", t.name());
            let actions = t.life.on_verify_requested();
            self.apply(index, actions);
        }
        Ok(Map::new())
    }

    /// `torrent-remove`, with `delete-local-data` removing the torrent's own files. A torrent
    /// of a `[[torrent]]` entry is not removed (the next SIGHUP would add it again).
    fn rpc_remove(&mut self, args: &Args) -> Result<Args, String> {
        let delete = args
            .get("delete-local-data")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut refused = Vec::new();
        let mut selected = self.rpc_select(args)?;
        // Highest index first, so the others stay valid.
        selected.sort_unstable_by(|a, b| b.cmp(a));
        for index in selected {
            let t = &self.torrents[index];
            if let Source::Config(_) = t.source {
                refused.push(t.name().to_owned());
                continue;
            }
            if let Source::Watch(file) = &t.source
                && let Err(e) = std::fs::remove_file(file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(format!("{}: cannot remove: {e}", file.display()));
            }
            // Where they are on disk now (a rename may still wait for the run to end).
            let files: Vec<PathBuf> = t
                .meta
                .as_ref()
                .map(|m| {
                    m.files
                        .iter()
                        .map(|f| t.download_dir().join(t.path_on_disk(&f.path)))
                        .collect()
                })
                .unwrap_or_default();
            let top = t
                .meta
                .as_ref()
                .map(|m| t.download_dir().join(t.path_on_disk(Path::new(&m.name))));
            let root = t.download_dir().to_owned();
            let resume = t.resume_path(&self.config.state_dir);
            let part = TorrentRecord::part_path_in(&self.config.state_dir, &t.info_hash);
            self.removed_ids.push(t.id);
            self.remove(index);
            if delete {
                delete_torrent_files(&files, top.as_deref(), &root);
                let _ = std::fs::remove_file(resume);
                let _ = std::fs::remove_file(part);
            }
        }
        if refused.is_empty() {
            Ok(Map::new())
        } else {
            Err(format!(
                "not removed: {} (from [[torrent]] entries of {}: remove the entries and send \
                 SIGHUP)",
                refused.join(", "),
                self.config_path.display()
            ))
        }
    }
}

/// The `.torrent` file a torrent was read from or saved to (empty: none yet, a magnet link
/// still fetching its metadata).
fn torrent_file(t: &Managed, state_dir: &Path) -> PathBuf {
    match &t.source {
        Source::Config(EntryKey::Path(path)) | Source::Watch(path) => path.clone(),
        _ if t.meta.is_some() => saved_torrent_path(state_dir, &t.info_hash),
        _ => PathBuf::new(),
    }
}

/// The verified pieces as a BitTorrent bitfield in base64 (Transmission's `pieces`): a
/// running torrent's, all when complete; a stopped incomplete torrent's are not kept in
/// memory, so none.
fn pieces_base64(t: &Managed) -> String {
    let Some(meta) = &t.meta else {
        return String::new();
    };
    let have = t
        .have_pieces()
        .unwrap_or_else(|| Bitfield::new(meta.geometry.num_pieces));
    base64::engine::general_purpose::STANDARD.encode(have.as_bytes())
}

/// Transmission's `peers`: the connected peers as the coordinator's last tick saw them. btd
/// neither encrypts nor speaks uTP.
fn peer_list(run: Option<&Arc<TorrentStats>>) -> Vec<Value> {
    let Some(run) = run else {
        return Vec::new();
    };
    run.peer_list
        .lock()
        .iter()
        .map(|p| {
            json!({
                "address": p.addr.ip().to_string(),
                "port": p.addr.port(),
                "clientName": p.client,
                "clientIsChoked": p.peer_choking,
                "clientIsInterested": p.am_interested,
                "peerIsChoked": p.am_choking,
                "peerIsInterested": p.peer_interested,
                "flagStr": p.flags(),
                "isDownloadingFrom": p.rate_down > 0 && !p.peer_choking,
                "isUploadingTo": p.rate_up > 0 && !p.am_choking,
                "isEncrypted": false,
                "isIncoming": p.incoming,
                "isUTP": false,
                "progress": p.progress,
                "rateToClient": p.rate_down,
                "rateToPeer": p.rate_up,
            })
        })
        .collect()
}

/// Transmission 4's `trackerList`: the announce URLs one a line, a blank line between tiers.
fn tracker_list(t: &Managed) -> String {
    tracker_tiers(t)
        .iter()
        .map(|tier| tier.join("\n"))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// `torrent-added` or `torrent-duplicate` with the torrent's id, name and hash.
fn added(key: &str, t: &Managed) -> Args {
    let mut out = Map::new();
    out.insert(
        key.to_owned(),
        json!({"id": t.id, "name": t.name, "hashString": t.info_hash.to_hex()}),
    );
    out
}

fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A magnet link for the torrent: its hash, name and trackers.
fn magnet_link(t: &Managed) -> String {
    let mut uri = format!("magnet:?xt=urn:btih:{}", t.info_hash.to_hex());
    uri.push_str("&dn=");
    crate::percent::encode_into(&mut uri, t.name.as_bytes());
    for tracker in tracker_urls(t) {
        uri.push_str("&tr=");
        crate::percent::encode_into(&mut uri, tracker.as_bytes());
    }
    uri
}

/// The torrent's trackers by tier, from its metainfo or its magnet link.
fn tracker_tiers(t: &Managed) -> Vec<Vec<String>> {
    match (&t.meta, &t.magnet) {
        (Some(meta), _) => match (&meta.announce_list, &meta.announce) {
            (Some(list), _) if !list.is_empty() => list.clone(),
            (_, Some(one)) => vec![vec![one.clone()]],
            _ => Vec::new(),
        },
        (None, Some(magnet)) => magnet.trackers.iter().map(|t| vec![t.clone()]).collect(),
        (None, None) => Vec::new(),
    }
}

fn tracker_urls(t: &Managed) -> Vec<String> {
    tracker_tiers(t).into_iter().flatten().collect()
}

fn trackers(t: &Managed) -> Vec<Value> {
    let mut id = 0;
    let mut out = Vec::new();
    for (tier, urls) in tracker_tiers(t).into_iter().enumerate() {
        for url in urls {
            out.push(json!({
                "id": id,
                "tier": tier,
                "announce": url,
                "scrape": scrape_url(&url),
                "sitename": host_of(&url),
            }));
            id += 1;
        }
    }
    out
}

/// Transmission's `announceState` and `scrapeState` (`tr_tracker_state`).
const TRACKER_INACTIVE: u8 = 0;
const TRACKER_WAITING: u8 = 1;

/// Per-tracker state: btd keeps the swarm counts of the torrent, not of each tracker, so each
/// tracker shows them (or -1, unknown, as Transmission does before an answer). Each tracker's
/// last announce (`SwarmStats::outcomes`) gives `hasAnnounced`, `lastAnnounceSucceeded`,
/// `lastAnnounceResult` ("Success", or the refusal or error) and its time. The announcer does
/// not publish its next announce or scrapes per tracker: those fields carry Transmission's
/// values for "never" (0, false, ""), and a running torrent's trackers are "waiting" (between
/// announces), a stopped one's "inactive".
fn tracker_stats(t: &Managed, run: Option<&Arc<TorrentStats>>) -> Vec<Value> {
    let outcomes = run.map(|s| s.swarm.outcomes()).unwrap_or_default();
    let swarm = run.filter(|s| s.swarm.known.load(Ordering::Acquire));
    let count =
        |f: fn(&crate::tracker::SwarmStats) -> u32| swarm.map_or(-1, |s| i64::from(f(&s.swarm)));
    let state = if run.is_some() {
        TRACKER_WAITING
    } else {
        TRACKER_INACTIVE
    };
    trackers(t)
        .into_iter()
        .map(|mut v| {
            // This tracker's last announce: Transmission says "Success" or what went wrong
            // (a refusal in the tracker's words).
            let last = outcomes
                .iter()
                .find(|o| v["announce"].as_str() == Some(o.url.as_str()));
            let (announced, succeeded, result, at) = match last {
                Some(o) => match &o.result {
                    Ok(()) => (true, true, "Success".to_owned(), o.at_unix),
                    Err(
                        crate::tracker::AnnounceFailure::Refused(why)
                        | crate::tracker::AnnounceFailure::Failed(why),
                    ) => (true, false, why.clone(), o.at_unix),
                },
                None => (swarm.is_some(), swarm.is_some(), String::new(), 0),
            };
            let extra = json!({
                "host": v["sitename"].clone(),
                "seederCount": count(|s| s.seeders.load(Ordering::Relaxed)),
                "leecherCount": count(|s| s.leechers.load(Ordering::Relaxed)),
                "downloadCount": count(|s| s.completed.load(Ordering::Relaxed)),
                "hasAnnounced": announced,
                "lastAnnounceSucceeded": succeeded,
                "lastAnnounceResult": result,
                "isBackup": false,
            });
            // Two literals: one would pass `json!`'s recursion limit.
            let never = json!({
                "announceState": state,
                "scrapeState": TRACKER_INACTIVE,
                "hasScraped": false,
                "lastAnnouncePeerCount": 0,
                "lastAnnounceStartTime": at,
                "lastAnnounceTime": at,
                "lastAnnounceTimedOut": false,
                "nextAnnounceTime": 0,
                "lastScrapeResult": "",
                "lastScrapeStartTime": 0,
                "lastScrapeSucceeded": false,
                "lastScrapeTime": 0,
                "lastScrapeTimedOut": false,
                "nextScrapeTime": 0,
            });
            for more in [extra, never] {
                if let (Value::Object(v), Value::Object(more)) = (&mut v, more) {
                    v.extend(more);
                }
            }
            v
        })
        .collect()
}

fn scrape_url(announce: &str) -> String {
    match announce.rfind("/announce") {
        Some(at) => format!("{}/scrape{}", &announce[..at], &announce[at + 9..]),
        None => String::new(),
    }
}

fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .unwrap_or_default()
        .to_owned()
}

/// Bytes of each file that lie in verified pieces: the running torrent's pieces, else all of
/// them when complete, else none known.
fn file_done(t: &Managed) -> Vec<u64> {
    let Some(meta) = &t.meta else {
        return Vec::new();
    };
    let Some(have) = t.have_pieces() else {
        return vec![0; meta.files.len()];
    };
    let g = meta.geometry;
    meta.files
        .iter()
        .map(|f| {
            if f.len == 0 {
                return 0;
            }
            let first = f.offset / u64::from(g.piece_len);
            let last = (f.offset + f.len - 1) / u64::from(g.piece_len);
            (first..=last)
                .filter(|&p| u32::try_from(p).is_ok_and(|p| p < have.len() && have.get(p)))
                .map(|p| {
                    let start = p * u64::from(g.piece_len);
                    let end = start + u64::from(g.piece_len);
                    end.min(f.offset + f.len) - start.max(f.offset)
                })
                .sum()
        })
        .collect()
}

fn file_list(t: &Managed) -> Vec<Value> {
    let Some(meta) = &t.meta else {
        return Vec::new();
    };
    meta.files
        .iter()
        .zip(file_done(t))
        .map(|(f, done)| {
            json!({
                "name": f.path.to_string_lossy(),
                "length": f.len,
                "bytesCompleted": done,
                "begin_piece": f.offset / u64::from(meta.geometry.piece_len),
                "end_piece": (f.offset + f.len).div_ceil(u64::from(meta.geometry.piece_len)),
            })
        })
        .collect()
}

fn file_stats(t: &Managed) -> Vec<Value> {
    file_done(t)
        .into_iter()
        .enumerate()
        .map(|(i, done)| {
            let priority = t.record.files.get(i);
            json!({
                "bytesCompleted": done,
                "wanted": priority.is_wanted(),
                "priority": priority.transmission(),
            })
        })
        .collect()
}

fn file_count(t: &Managed) -> usize {
    t.meta.as_ref().map_or(0, |m| m.files.len())
}

/// The RPC's file-selection arguments, in the order they apply.
const FILE_ARGS: [&str; 5] = [
    "priority-high",
    "priority-normal",
    "priority-low",
    "files-wanted",
    "files-unwanted",
];

/// Applies the file-selection arguments in `args` to `selection` of a torrent with `files`
/// files: priorities first (a file that is not wanted stays so), then `files-wanted` (a file
/// not wanted becomes wanted at normal priority) and `files-unwanted`. Each is a list of file
/// indices; with `empty_is_all` (torrent-set, as Transmission) an empty list means every file.
///
/// # Errors
/// An argument that is not a list of file indices of this torrent, named; nothing is changed.
fn apply_file_args(
    selection: &mut Selection,
    files: usize,
    args: &Args,
    empty_is_all: bool,
) -> Result<(), String> {
    let mut out = selection.clone();
    for key in FILE_ARGS {
        let Some(value) = args.get(key) else {
            continue;
        };
        let Some(list) = value.as_array() else {
            return Err(format!("{key}: not a list of file indices"));
        };
        let mut indices = Vec::with_capacity(list.len());
        for v in list {
            match v.as_u64().and_then(|i| usize::try_from(i).ok()) {
                Some(i) if i < files => indices.push(i),
                _ => {
                    return Err(format!(
                        "{key}: {v} is not a file index of this torrent (it has {files} files)"
                    ));
                }
            }
        }
        if indices.is_empty() && empty_is_all {
            indices = (0..files).collect();
        }
        for i in indices {
            let now = out.get(i);
            let new = match key {
                "priority-high" if now.is_wanted() => Priority::High,
                "priority-normal" if now.is_wanted() => Priority::Normal,
                "priority-low" if now.is_wanted() => Priority::Low,
                "files-wanted" if !now.is_wanted() => Priority::Normal,
                "files-unwanted" => Priority::Skip,
                _ => now,
            };
            out.set(files, i, new);
        }
    }
    *selection = out;
    Ok(())
}

/// Deletes a removed torrent's own files, then the directories of its top directory that are
/// left empty (never `root` itself, never a file the torrent does not name).
fn delete_torrent_files(files: &[PathBuf], top: Option<&Path>, root: &Path) {
    for file in files {
        if let Err(e) = std::fs::remove_file(file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!("{}: cannot delete: {e}", file.display());
        }
    }
    let Some(top) = top.filter(|top| *top != root && top.starts_with(root)) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .flat_map(|f| {
            f.ancestors()
                .skip(1)
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
        })
        .filter(|d| d.starts_with(top))
        .collect();
    // Deepest first; a directory that is not empty stays.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for dir in dirs {
        let _ = std::fs::remove_dir(&dir);
    }
}

/// The `labels` argument (a list of strings), if given.
fn labels_arg(args: &Args) -> Result<Option<Vec<String>>, String> {
    let Some(value) = args.get("labels") else {
        return Ok(None);
    };
    let list = value
        .as_array()
        .ok_or_else(|| format!("labels: {value} is not a list of strings"))?;
    list.iter()
        .map(|l| {
            l.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("labels: {l} is not a string"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The map of a `json!({...})` object literal.
fn object(literal: Value) -> Args {
    match literal {
        Value::Object(map) => map,
        _ => unreachable!("called with JSON object literals only"),
    }
}

/// `free-space`: the bytes free (and in all) where `path` is.
fn rpc_free_space(args: &Args) -> Result<Args, String> {
    let path = args
        .get("path")
        .and_then(Value::as_str)
        .ok_or("free-space needs `path`")?;
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| format!("{path}: {e}"))?;
    let block = stat.fragment_size();
    Ok(object(json!({
        "path": path,
        "size-bytes": stat.blocks_available() * block,
        "total_size": stat.blocks() * block,
    })))
}

/// Free bytes where `path` is, if it can be told.
fn free_bytes(path: &Path) -> Option<i64> {
    i64::try_from(free_bytes_at(path)?).ok()
}

/// Appends `value` as JSON.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("values of the daemon serialise");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TempDir;

    fn file_args(json: Value) -> Args {
        match json {
            Value::Object(args) => args,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn file_arguments_apply_priorities_then_wanted_and_an_empty_list_is_every_file_only_in_set() {
        let mut sel = Selection::all();
        let args =
            file_args(json!({"files-unwanted": [1], "priority-high": [2], "priority-low": [0]}));
        apply_file_args(&mut sel, 3, &args, false).unwrap();
        assert_eq!(
            (0..3).map(|i| sel.get(i)).collect::<Vec<_>>(),
            [Priority::Low, Priority::Skip, Priority::High]
        );
        // A priority leaves a skipped file skipped; wanting it again makes it normal.
        apply_file_args(&mut sel, 3, &file_args(json!({"priority-high": [1]})), true).unwrap();
        assert_eq!(sel.get(1), Priority::Skip);
        apply_file_args(&mut sel, 3, &file_args(json!({"files-wanted": [1]})), true).unwrap();
        assert_eq!(sel.get(1), Priority::Normal);
        // torrent-set: [] is every file; torrent-add: [] is none.
        let none = file_args(json!({"files-unwanted": []}));
        let mut added = Selection::all();
        apply_file_args(&mut added, 3, &none, false).unwrap();
        assert!(added.is_all());
        apply_file_args(&mut sel, 3, &none, true).unwrap();
        assert!((0..3).all(|i| sel.get(i) == Priority::Skip));
    }

    #[test]
    fn bad_file_arguments_are_refused_naming_them_and_change_nothing() {
        let mut sel = Selection::all();
        for (args, says) in [
            (
                json!({"files-wanted": [3]}),
                "files-wanted: 3 is not a file index",
            ),
            (json!({"priority-low": "all"}), "priority-low: not a list"),
            (json!({"files-unwanted": [0, -1]}), "files-unwanted: -1"),
        ] {
            let err = apply_file_args(&mut sel, 3, &file_args(args), true).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        let partly_bad = file_args(json!({"files-unwanted": [0], "files-wanted": [9]}));
        assert!(apply_file_args(&mut sel, 3, &partly_bad, true).is_err());
        assert!(sel.is_all(), "nothing applied");
    }

    #[test]
    fn scrape_urls_and_hosts_of_announce_urls() {
        assert_eq!(
            scrape_url("http://t.example:6969/announce?passkey=x"),
            "http://t.example:6969/scrape?passkey=x"
        );
        assert_eq!(
            scrape_url("udp://t.example:1337/announce"),
            "udp://t.example:1337/scrape"
        );
        assert_eq!(scrape_url("http://t.example/a"), "");
        assert_eq!(host_of("http://t.example:6969/announce"), "t.example");
        assert_eq!(host_of("udp://10.0.0.1/announce"), "10.0.0.1");
        assert_eq!(host_of("garbage"), "");
    }

    #[test]
    fn deleting_a_torrents_data_removes_its_files_and_emptied_dirs_only() {
        let dir = TempDir::new("rpc-delete");
        let root = dir.0.join("downloads");
        let top = root.join("t");
        let files = [top.join("a.bin"), top.join("sub/b.bin")];
        std::fs::create_dir_all(top.join("sub")).unwrap();
        for f in &files {
            std::fs::write(f, "x").unwrap();
        }
        let stranger = top.join("mine.txt");
        std::fs::write(&stranger, "not the torrent's").unwrap();
        let neighbour = root.join("other.bin");
        std::fs::write(&neighbour, "another torrent's").unwrap();

        delete_torrent_files(&files, Some(&top), &root);
        assert!(files.iter().all(|f| !f.exists()));
        assert!(!top.join("sub").exists(), "its emptied directory stays");
        assert!(
            stranger.exists() && top.exists(),
            "a file it does not name went"
        );
        assert!(neighbour.exists());

        // A single-file torrent: its file, never the download directory.
        let single = root.join("single.iso");
        std::fs::write(&single, "x").unwrap();
        delete_torrent_files(std::slice::from_ref(&single), Some(&single), &root);
        assert!(!single.exists() && root.exists());
    }
}
