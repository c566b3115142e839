//! btd's CLI as a client of a running daemon's Transmission RPC (`rpc::client`): `list`, `info`,
//! `pause`, `resume`, `verify`, `reannounce`, `move`, `files`, `set`, `remove` and `add`. Owns
//! finding the daemon (`--rpc URL`, else the config's `[rpc] listen`), its credentials
//! (`BTD_RPC_AUTH`, else the config's `[rpc] username` and password), turning the IDs users type (a
//! numeric id, a name, an info-hash prefix) into the daemon's ids, and printing the daemon's
//! answers. `add` and `remove` fall back to the watch directory (`commands.rs`) when the daemon has
//! no RPC. Runs on the main thread; one blocking call at a time.
//!
//! Exit statuses: an ID that names no torrent or several is bad usage (2); a daemon that is not
//! there or refuses is a failure (1), with its reason.

use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::commands::{self, CommandError, ToAdd};
use crate::config::Config;
use crate::rpc::client::{ClientError, Credentials, Endpoint, RpcClient};
use crate::status::{self, SwarmCounts, TorrentStatus};

/// The environment variable with `user:pass` for the RPC; it wins over the config's.
pub const AUTH_ENV: &str = "BTD_RPC_AUTH";

/// How many hex digits of an info hash an ID needs at least to be taken as a prefix.
pub const MIN_HASH_PREFIX: usize = 4;

/// How a command reaches the daemon.
pub enum Target {
    /// Over the RPC; `given` when `--rpc` named it (then nothing falls back).
    Rpc { client: RpcClient, given: bool },
    /// The config says there is no RPC to reach: why.
    NoRpc(String),
}

/// The daemon's RPC: `rpc_url` (`--rpc`) when given, else the config's `[rpc] listen` (none
/// when `[rpc]` is disabled or its port is 0, which only the daemon knows). Credentials:
/// [`AUTH_ENV`] when set, else the config's `[rpc] username` and password.
///
/// # Errors
/// `BadInput` for a URL or an [`AUTH_ENV`] that does not parse.
pub fn target(config: &Config, rpc_url: Option<&str>) -> Result<Target, CommandError> {
    let credentials = match std::env::var(AUTH_ENV) {
        Ok(text) if !text.is_empty() => Some(
            Credentials::parse(&text)
                .map_err(|e| CommandError::BadInput(format!("{AUTH_ENV}: {e}")))?,
        ),
        _ if config.rpc.auth_required() => Some(Credentials {
            username: config.rpc.username.clone(),
            password: config.rpc.password.clone(),
        }),
        _ => None,
    };
    let shown = config
        .source
        .as_ref()
        .map_or_else(|| "<defaults>".to_owned(), |p| p.display().to_string());
    let (endpoint, given) = if let Some(url) = rpc_url {
        let endpoint =
            Endpoint::parse(url).map_err(|e| CommandError::BadInput(format!("--rpc: {e}")))?;
        (endpoint, true)
    } else if !config.rpc.enabled {
        return Ok(Target::NoRpc(format!(
            "config {shown}: [rpc] enabled = false, so the daemon serves no RPC; give --rpc URL \
             for one that does"
        )));
    } else if config.rpc.listen.port() == 0 {
        // Only the daemon knows the port it got; its status file says.
        let running = crate::status::DaemonStatus::load(&crate::status::DaemonStatus::path_in(
            &config.state_dir,
        ))
        .ok()
        .and_then(|s| s.rpc)
        .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok());
        if let Some(addr) = running {
            return Ok(Target::Rpc {
                client: RpcClient::new(Endpoint::of_listen(addr), credentials),
                given: false,
            });
        }
        return Ok(Target::NoRpc(format!(
            "config {shown}: [rpc] listen = \"{}\" has port 0, which only the daemon knows (its \
             log says `rpc serving HTTP on ADDR`); give --rpc http://ADDR",
            config.rpc.listen
        )));
    } else {
        (Endpoint::of_listen(config.rpc.listen), false)
    };
    Ok(Target::Rpc {
        client: RpcClient::new(endpoint, credentials),
        given,
    })
}

/// The RPC client, or a `Runtime` error saying why there is none.
fn client(config: &Config, rpc_url: Option<&str>) -> Result<RpcClient, CommandError> {
    match target(config, rpc_url)? {
        Target::Rpc { client, .. } => Ok(client),
        Target::NoRpc(why) => Err(CommandError::Runtime(format!(
            "{why} (`btd status` works without the RPC)"
        ))),
    }
}

fn failed(e: ClientError) -> CommandError {
    CommandError::Runtime(e.to_string())
}

/// One call; every failure exits 1 with the client's words.
fn call(
    client: &mut RpcClient,
    method: &str,
    args: Value,
) -> Result<Map<String, Value>, CommandError> {
    client.call(method, args).map_err(failed)
}

/// `torrent-get` of `fields` for `ids` (all torrents when `None`), each read as a `T`: an
/// object (`Map`) or typed fields ([`RowFields`]).
fn torrents<T: DeserializeOwned>(
    client: &mut RpcClient,
    ids: Option<&[u64]>,
    fields: &[&str],
) -> Result<Vec<T>, CommandError> {
    #[derive(Deserialize)]
    struct Answer<T> {
        torrents: Option<Vec<T>>,
    }
    let mut args = json!({ "fields": fields });
    if let Some(ids) = ids {
        args["ids"] = json!(ids);
    }
    let answer: Option<Answer<T>> = client.call_as("torrent-get", args).map_err(failed)?;
    answer.and_then(|a| a.torrents).ok_or_else(|| {
        CommandError::Runtime(format!(
            "btd RPC at {}: torrent-get answered without `torrents`",
            client.endpoint().shown()
        ))
    })
}

// ---- naming torrents ------------------------------------------------------------------------

/// A torrent as IDs name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub id: u64,
    pub name: String,
    /// Lower-case hex; empty while unknown.
    pub hash: String,
}

impl Named {
    fn from_row(t: &RowFields) -> Named {
        Named {
            id: t.id,
            name: t.name.clone(),
            hash: t.hash_string.to_ascii_lowercase(),
        }
    }

    fn from_fields(t: &Map<String, Value>) -> Named {
        Named {
            id: t.get("id").and_then(Value::as_u64).unwrap_or(0),
            name: str_field(t, "name").to_owned(),
            hash: str_field(t, "hashString").to_ascii_lowercase(),
        }
    }

    /// `ID NAME (HASH)`.
    fn shown(&self) -> String {
        let name = status::printable(&self.name);
        if self.hash.is_empty() {
            format!("{} {name}", self.id)
        } else {
            format!("{} {name} ({})", self.id, self.hash)
        }
    }
}

/// The torrents `wanted` name, each once, in the order named. An ID is a numeric id, a name, or
/// at least [`MIN_HASH_PREFIX`] hex digits starting an info hash; one that matches several
/// torrents in these ways is ambiguous.
///
/// # Errors
/// `BadInput` (exit 2) for an ID that names no torrent, or several (listing them).
pub fn resolve<'a>(
    torrents: &'a [Named],
    wanted: &[String],
) -> Result<Vec<&'a Named>, CommandError> {
    let mut out: Vec<&Named> = Vec::new();
    for id in wanted {
        let as_number = id.parse::<u64>().ok();
        let as_prefix = (id.len() >= MIN_HASH_PREFIX && id.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| id.to_ascii_lowercase());
        let matches: Vec<&Named> = torrents
            .iter()
            .filter(|t| {
                Some(t.id) == as_number
                    || t.name == *id
                    || as_prefix
                        .as_ref()
                        .is_some_and(|p| !t.hash.is_empty() && t.hash.starts_with(p.as_str()))
            })
            .collect();
        match matches.as_slice() {
            [one] => {
                if !out.contains(one) {
                    out.push(one);
                }
            }
            [] => {
                return Err(CommandError::BadInput(format!(
                    "no torrent {id:?} in the daemon: give its id, its name or at least \
                     {MIN_HASH_PREFIX} hex digits of its info hash (`btd list` shows them)"
                )));
            }
            several => {
                let list: Vec<String> = several.iter().map(|t| t.shown()).collect();
                return Err(CommandError::BadInput(format!(
                    "{id:?} names {} torrents: {}; give its id or more of its info hash",
                    several.len(),
                    list.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// Every torrent of the daemon, as IDs name them.
fn listing(client: &mut RpcClient) -> Result<Vec<Named>, ClientError> {
    let mut answer = client.call(
        "torrent-get",
        json!({ "fields": ["id", "name", "hashString"] }),
    )?;
    let list = match answer.remove("torrents") {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    Ok(list
        .iter()
        .filter_map(Value::as_object)
        .map(Named::from_fields)
        .collect())
}

/// The daemon's torrents that `wanted` names.
fn named(client: &mut RpcClient, wanted: &[String]) -> Result<Vec<Named>, CommandError> {
    let all = listing(client).map_err(failed)?;
    Ok(resolve(&all, wanted)?.into_iter().cloned().collect())
}

// ---- reading the daemon's fields ------------------------------------------------------------

fn str_field<'a>(t: &'a Map<String, Value>, key: &str) -> &'a str {
    t.get(key).and_then(Value::as_str).unwrap_or("")
}

fn u64_field(t: &Map<String, Value>, key: &str) -> u64 {
    t.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The `torrent-get` fields btd's CLI reads, typed: a listing of 10,000 torrents is read
/// straight into these, not into a map per torrent. A field the answer leaves out is its
/// default.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RowFields {
    id: u64,
    name: String,
    hash_string: String,
    status: u64,
    error: u64,
    error_string: String,
    is_finished: bool,
    metadata_percent_complete: f64,
    percent_done: f64,
    recheck_progress: f64,
    total_size: u64,
    have_valid: u64,
    eta: Option<i64>,
    rate_download: u64,
    rate_upload: u64,
    peers_connected: u64,
    webseeds_sending_to_us: u64,
    upload_ratio: f64,
    tracker_stats: Vec<TrackerStat>,
    download_dir: String,
    added_date: u64,
    seconds_seeding: u64,
    uploaded_ever: u64,
    downloaded_ever: u64,
    peers_from: PeersFrom,
}

/// The swarm counts of one `trackerStats` entry: -1 while the tracker has not told them.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct TrackerStat {
    seeder_count: i64,
    leecher_count: i64,
    download_count: i64,
}

/// Transmission's `peersFrom`: connected peers by where they came from.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PeersFrom {
    from_tracker: u64,
    from_dht: u64,
    from_pex: u64,
    from_lpd: u64,
    from_incoming: u64,
}

impl RowFields {
    /// The fields of a torrent read as an object (`btd info`, which reads more of them).
    fn of(t: &Map<String, Value>) -> Result<RowFields, CommandError> {
        RowFields::deserialize(t)
            .map_err(|e| CommandError::Runtime(format!("torrent-get answered: {e}")))
    }
}

/// The fields a state needs.
const STATE_FIELDS: [&str; 5] = [
    "status",
    "error",
    "isFinished",
    "metadataPercentComplete",
    "percentDone",
];

/// btd's word for a torrent's state (as `btd status` says it) from the RPC's `status` number.
fn state_of(t: &RowFields) -> String {
    match t.status {
        0 if t.error != 0 => "error",
        0 if t.is_finished => "finished",
        0 => "paused",
        1 | 3 => "queued",
        2 => "checking",
        4 if t.metadata_percent_complete < 1.0 => "metadata",
        4 => "downloading",
        5 => "queued_seed",
        6 => "seeding",
        other => return format!("status {other}"),
    }
    .to_owned()
}

/// The swarm counts of the first tracker that has them.
fn swarm_of(t: &RowFields) -> Option<SwarmCounts> {
    t.tracker_stats.iter().find_map(|s| {
        let count = |n: i64| u32::try_from(n).ok();
        Some(SwarmCounts {
            seeders: count(s.seeder_count)?,
            leechers: count(s.leecher_count)?,
            completed: count(s.download_count)?,
        })
    })
}

/// A row of the status table from `torrent-get` fields.
fn row_of(t: &RowFields) -> TorrentStatus {
    let state = state_of(t);
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    // Transmission's 1 and 2 are a tracker's warning or refusal; the torrent runs on.
    let from_tracker = matches!(t.error, 1 | 2);
    let error = &t.error_string;
    TorrentStatus {
        id: u32::try_from(t.id).unwrap_or(u32::MAX),
        name: t.name.clone(),
        info_hash: t.hash_string.clone(),
        check_progress: (state == "checking").then_some(t.recheck_progress),
        state,
        progress: t.percent_done,
        size_bytes: t.total_size,
        have_bytes: t.have_valid,
        eta_secs: t.eta.and_then(|e| u64::try_from(e).ok()),
        download_dir: t.download_dir.clone(),
        added_unix: t.added_date,
        seeding_secs: t.seconds_seeding,
        downloaded_bytes: t.downloaded_ever,
        uploaded_bytes: t.uploaded_ever,
        download_rate: t.rate_download,
        upload_rate: t.rate_upload,
        peers: clamp(t.peers_connected),
        // Transmission tells the web seeds sending to us, not those merely running.
        web_seeds: clamp(t.webseeds_sending_to_us),
        peers_by_source: crate::status::PeerSourceCounts {
            tracker: clamp(t.peers_from.from_tracker),
            dht: clamp(t.peers_from.from_dht),
            pex: clamp(t.peers_from.from_pex),
            lsd: clamp(t.peers_from.from_lpd),
            incoming: clamp(t.peers_from.from_incoming),
            ..Default::default()
        },
        ratio: t.upload_ratio.max(0.0),
        error: (!error.is_empty() && !from_tracker).then(|| error.clone()),
        source: String::new(),
        swarm: swarm_of(t),
        free_bytes: None,
        needed_bytes: None,
        tracker_error: (!error.is_empty() && from_tracker).then(|| error.clone()),
    }
}

/// Every field [`row_of`] reads.
const ROW_FIELDS: [&str; 23] = [
    "peersFrom",
    "id",
    "name",
    "hashString",
    "status",
    "error",
    "errorString",
    "isFinished",
    "metadataPercentComplete",
    "percentDone",
    "recheckProgress",
    "totalSize",
    "haveValid",
    "eta",
    "rateDownload",
    "rateUpload",
    "peersConnected",
    "webseedsSendingToUs",
    "uploadRatio",
    "trackerStats",
    "downloadDir",
    "uploadedEver",
    "downloadedEver",
];

// ---- the commands ---------------------------------------------------------------------------

/// `btd list`: the daemon's torrents as the RPC tells them, in `btd status`'s table.
///
/// # Errors
/// `Runtime` when the daemon's RPC cannot be reached or refuses.
pub fn list(config: &Config, rpc_url: Option<&str>) -> Result<(), CommandError> {
    let mut client = client(config, rpc_url)?;
    let rows: Vec<TorrentStatus> = torrents::<RowFields>(&mut client, None, &ROW_FIELDS)?
        .iter()
        .map(row_of)
        .collect();
    commands::emit(&status::torrent_table(&rows))
}

/// `btd info ID...`: each torrent's details, files and trackers.
///
/// # Errors
/// `BadInput` for an ID naming no torrent or several; `Runtime` when the RPC fails.
pub fn info(config: &Config, rpc_url: Option<&str>, ids: &[String]) -> Result<(), CommandError> {
    let mut client = client(config, rpc_url)?;
    let chosen: Vec<u64> = named(&mut client, ids)?.iter().map(|t| t.id).collect();
    let mut fields = ROW_FIELDS.to_vec();
    fields.extend([
        "addedDate",
        "doneDate",
        "secondsSeeding",
        "pieceCount",
        "pieceSize",
        "isPrivate",
        "magnetLink",
        "files",
    ]);
    let found: Vec<Map<String, Value>> = torrents(&mut client, Some(&chosen), &fields)?;
    let mut out = String::new();
    for (i, t) in found.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&details(t)?);
    }
    commands::emit(&out)
}

/// The text of `btd info` for one torrent.
fn details(t: &Map<String, Value>) -> Result<String, CommandError> {
    let row = row_of(&RowFields::of(t)?);
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        out.push_str(&format!("{key:<11} {}\n", status::printable(&value)));
    };
    line("id:", row.id.to_string());
    line("name:", row.name.clone());
    line("info hash:", row.info_hash.clone());
    let state = match row.check_progress {
        Some(p) => format!("{} {}", row.state, status::percent(p)),
        None => row.state.clone(),
    };
    line("state:", state);
    if let Some(error) = &row.error {
        line("error:", error.clone());
    }
    line(
        "progress:",
        format!(
            "{} ({} of {})",
            status::percent(row.progress),
            status::bytes(row.have_bytes),
            status::bytes(row.size_bytes)
        ),
    );
    line("location:", row.download_dir.clone());
    line(
        "rates:",
        format!(
            "down {}, up {}, eta {}",
            status::rate(row.download_rate),
            status::rate(row.upload_rate),
            row.eta_secs.map_or_else(|| "-".to_owned(), status::eta)
        ),
    );
    line("peers:", row.peers.to_string());
    if let Some(s) = row.swarm {
        line(
            "swarm:",
            format!(
                "{} seeders, {} leechers, {} completed",
                s.seeders, s.leechers, s.completed
            ),
        );
    }
    line(
        "totals:",
        format!(
            "downloaded {}, uploaded {}, ratio {}",
            status::bytes(row.downloaded_bytes),
            status::bytes(row.uploaded_bytes),
            status::ratio(row.ratio)
        ),
    );
    line(
        "pieces:",
        format!(
            "{} of {}",
            u64_field(t, "pieceCount"),
            status::bytes(u64_field(t, "pieceSize"))
        ),
    );
    line(
        "private:",
        if t.get("isPrivate").and_then(Value::as_bool) == Some(true) {
            "yes"
        } else {
            "no"
        }
        .to_owned(),
    );
    line("added:", utc(row.added_unix));
    let done = u64_field(t, "doneDate");
    line(
        "completed:",
        if done == 0 { "-".to_owned() } else { utc(done) },
    );
    line("seeding:", status::eta(row.seeding_secs));
    line("magnet:", str_field(t, "magnetLink").to_owned());
    if let Some(Value::Array(trackers)) = t.get("trackerStats") {
        for tracker in trackers {
            line(
                "tracker:",
                format!(
                    "tier {} {}",
                    tracker.get("tier").and_then(Value::as_u64).unwrap_or(0),
                    tracker
                        .get("announce")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                ),
            );
        }
    }
    if let Some(Value::Array(files)) = t.get("files") {
        for f in files {
            let len = f.get("length").and_then(Value::as_u64).unwrap_or(0);
            let done = f.get("bytesCompleted").and_then(Value::as_u64).unwrap_or(0);
            let fraction = if len == 0 {
                1.0
            } else {
                done as f64 / len as f64
            };
            line(
                "file:",
                format!(
                    "{:>6} {:>10}  {}",
                    status::percent(fraction),
                    status::bytes(len),
                    f.get("name").and_then(Value::as_str).unwrap_or("")
                ),
            );
        }
    }
    Ok(out)
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`; `-` for 0.
fn utc(secs: u64) -> String {
    if secs == 0 {
        return "-".to_owned();
    }
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let s = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// A method called on torrents by `pause`, `resume`, `verify`, `reannounce`, `move`, `set` and
/// `files` with changes: its arguments besides `ids`, and the word each answer line starts with.
pub struct Action<'a> {
    pub method: &'a str,
    pub arguments: Map<String, Value>,
    pub verb: &'a str,
}

impl<'a> Action<'a> {
    /// `method` with no arguments but `ids`.
    pub fn plain(method: &'a str, verb: &'a str) -> Action<'a> {
        Action {
            method,
            arguments: Map::new(),
            verb,
        }
    }
}

/// Calls `action` on the torrents `ids` name; then prints each one's state as the daemon tells
/// it afterwards (`paused 3 NAME (HASH): paused`).
///
/// # Errors
/// `BadInput` for an ID naming no torrent or several; `Runtime` when the RPC fails, or the
/// daemon's refusal (a method it does not do yet, say), in its words.
pub fn act(
    config: &Config,
    rpc_url: Option<&str>,
    action: Action<'_>,
    ids: &[String],
) -> Result<(), CommandError> {
    let mut client = client(config, rpc_url)?;
    commands::emit(&act_on(&mut client, action, ids)?)
}

/// [`act`] on a client; returns the lines to print.
fn act_on(
    client: &mut RpcClient,
    action: Action<'_>,
    ids: &[String],
) -> Result<String, CommandError> {
    let chosen = named(client, ids)?;
    let numbers: Vec<u64> = chosen.iter().map(|t| t.id).collect();
    let mut arguments = action.arguments;
    arguments.insert("ids".into(), json!(numbers));
    call(client, action.method, Value::Object(arguments))?;
    let mut fields = vec!["id", "name", "hashString"];
    fields.extend(STATE_FIELDS);
    let mut out = String::new();
    for t in torrents::<RowFields>(client, Some(&numbers), &fields)? {
        out.push_str(&format!(
            "{} {}: {}\n",
            action.verb,
            Named::from_row(&t).shown(),
            state_of(&t)
        ));
    }
    Ok(out)
}

/// `btd move ID DIR`: `torrent-set-location` with `move`, the data going along.
///
/// # Errors
/// As [`act`]; `BadInput` when `dir` cannot be made absolute.
pub fn move_to(
    config: &Config,
    rpc_url: Option<&str>,
    id: &str,
    dir: &Path,
) -> Result<(), CommandError> {
    let dir = absolute(dir, "DIR")?;
    let mut arguments = Map::new();
    arguments.insert("location".into(), json!(dir));
    arguments.insert("move".into(), json!(true));
    let verb = format!("moving to {dir}");
    let action = Action {
        method: "torrent-set-location",
        arguments,
        verb: &verb,
    };
    act(config, rpc_url, action, &[id.to_owned()])
}

/// What `btd set` changes; `None` leaves it.
#[derive(Debug, Default)]
pub struct Settings {
    /// KiB/s; 0: no limit of its own.
    pub down: Option<u64>,
    pub up: Option<u64>,
    /// Stop seeding at this ratio; 0: no limit of its own.
    pub ratio: Option<f64>,
    pub labels: Vec<String>,
}

impl Settings {
    /// `torrent-set`'s arguments.
    ///
    /// # Errors
    /// `BadInput` when nothing is to be set, or a ratio is negative or not a number.
    pub fn arguments(&self) -> Result<Map<String, Value>, CommandError> {
        let mut out = Map::new();
        for (key, limit) in [("downloadLimit", self.down), ("uploadLimit", self.up)] {
            if let Some(kib) = limit {
                // The RPC's unit is Transmission's kB/s of 1000 bytes; ours, as in the config,
                // KiB/s (rounded up, so a limit is never below what was asked).
                out.insert(key.into(), json!((kib * 1024).div_ceil(1000)));
                out.insert(format!("{key}ed"), json!(kib > 0));
            }
        }
        if let Some(ratio) = self.ratio {
            if !(ratio >= 0.0 && ratio.is_finite()) {
                return Err(CommandError::BadInput(format!(
                    "--ratio {ratio}: give 0 (no limit) or more"
                )));
            }
            out.insert("seedRatioLimit".into(), json!(ratio));
            // Transmission's modes: 1 this torrent's own ratio, 2 unlimited.
            out.insert(
                "seedRatioMode".into(),
                json!(if ratio > 0.0 { 1 } else { 2 }),
            );
        }
        if !self.labels.is_empty() {
            out.insert("labels".into(), json!(self.labels));
        }
        if out.is_empty() {
            return Err(CommandError::BadInput(
                "nothing to set: give --down, --up, --ratio or --label".into(),
            ));
        }
        Ok(out)
    }
}

/// A file selection of `btd files`: `all`, or indices and ranges as `btd files` numbers them
/// (`0,2,5-7`).
///
/// # Errors
/// `BadInput` naming what is not an index or range.
pub fn file_list(text: &str) -> Result<Vec<u64>, CommandError> {
    let bad = |part: &str| {
        CommandError::BadInput(format!(
            "{text:?}: {part:?} is not a file number or range (e.g. 0,2,5-7, or all)"
        ))
    };
    if text.trim() == "all" {
        // Transmission's "every file".
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to): (u64, u64) = (
                    from.parse().map_err(|_| bad(part))?,
                    to.parse().map_err(|_| bad(part))?,
                );
                if from > to || to - from > 1_000_000 {
                    return Err(bad(part));
                }
                out.extend(from..=to);
            }
            None => out.push(part.parse().map_err(|_| bad(part))?),
        }
    }
    Ok(out)
}

/// What `btd files ID` changes: files to get, to skip, and priorities (`high`, `normal`, `low`
/// with a list each).
#[derive(Debug, Default)]
pub struct FileChanges {
    pub want: Option<String>,
    pub skip: Option<String>,
    /// `LEVEL LIST` pairs.
    pub priorities: Vec<(String, String)>,
}

impl FileChanges {
    /// `torrent-set`'s arguments; `None` when nothing changes (then the files are listed).
    ///
    /// # Errors
    /// `BadInput` for a list that does not parse or a level that is none of the three.
    pub fn arguments(&self) -> Result<Option<Map<String, Value>>, CommandError> {
        let mut out = Map::new();
        if let Some(want) = &self.want {
            out.insert("files-wanted".into(), json!(file_list(want)?));
        }
        if let Some(skip) = &self.skip {
            out.insert("files-unwanted".into(), json!(file_list(skip)?));
        }
        for (level, list) in &self.priorities {
            let key = match level.as_str() {
                "high" | "normal" | "low" => format!("priority-{level}"),
                other => {
                    return Err(CommandError::BadInput(format!(
                        "--priority {other:?}: want high, normal or low"
                    )));
                }
            };
            out.insert(key, json!(file_list(list)?));
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

/// `btd files ID`: the torrent's files (number, progress, priority, wanted, size, path); with
/// changes, `torrent-set` with them.
///
/// # Errors
/// As [`act`].
pub fn files(
    config: &Config,
    rpc_url: Option<&str>,
    id: &str,
    changes: &FileChanges,
) -> Result<(), CommandError> {
    let ids = [id.to_owned()];
    if let Some(arguments) = changes.arguments()? {
        let action = Action {
            method: "torrent-set",
            arguments,
            verb: "changed files of",
        };
        return act(config, rpc_url, action, &ids);
    }
    let mut client = client(config, rpc_url)?;
    let chosen: Vec<u64> = named(&mut client, &ids)?.iter().map(|t| t.id).collect();
    let found: Vec<Map<String, Value>> =
        torrents(&mut client, Some(&chosen), &["files", "fileStats"])?;
    let Some(t) = found.first() else {
        return Err(CommandError::Runtime(format!("torrent {id} is gone")));
    };
    let empty = Vec::new();
    let list = |key: &str| t.get(key).and_then(Value::as_array).unwrap_or(&empty);
    let mut out = String::from("   #    DONE  PRIORITY  GET        SIZE  NAME\n");
    for (i, f) in list("files").iter().enumerate() {
        let stats = list("fileStats").get(i);
        let len = f.get("length").and_then(Value::as_u64).unwrap_or(0);
        let done = f.get("bytesCompleted").and_then(Value::as_u64).unwrap_or(0);
        let fraction = if len == 0 {
            1.0
        } else {
            done as f64 / len as f64
        };
        let priority = match stats
            .and_then(|s| s.get("priority"))
            .and_then(Value::as_i64)
        {
            Some(1) => "high",
            Some(-1) => "low",
            _ => "normal",
        };
        let wanted = stats.and_then(|s| s.get("wanted")).and_then(Value::as_bool) != Some(false);
        out.push_str(&format!(
            "{i:>4}  {:>6}  {priority:<8}  {:<3}  {:>10}  {}\n",
            status::percent(fraction),
            if wanted { "yes" } else { "no" },
            status::bytes(len),
            status::printable(f.get("name").and_then(Value::as_str).unwrap_or(""))
        ));
    }
    commands::emit(&out)
}

/// `dir` made absolute from the current directory (the daemon has its own), as text.
fn absolute(dir: &Path, what: &str) -> Result<String, CommandError> {
    let dir = std::path::absolute(dir)
        .map_err(|e| CommandError::BadInput(format!("{what} {}: {e}", dir.display())))?;
    dir.to_str()
        .map(str::to_owned)
        .ok_or_else(|| CommandError::BadInput(format!("{what} {}: not UTF-8", dir.display())))
}

/// `btd remove ID... [--delete-data]` over the RPC; without one (disabled, port 0, or nothing
/// listening at the config's address) and without `--delete-data`, through the watch directory
/// (`commands::remove`), one torrent per ID (a name or a whole info hash).
///
/// # Errors
/// `BadInput` for an ID naming no torrent or several; `Runtime` when the daemon cannot be
/// reached or refuses (a `[[torrent]]` torrent: the others named are removed all the same).
pub fn remove(
    config: &Config,
    rpc_url: Option<&str>,
    ids: &[String],
    delete_data: bool,
) -> Result<(), CommandError> {
    let watch_dir = |why: String| {
        if delete_data {
            return Err(CommandError::Runtime(format!(
                "{why}: --delete-data needs the daemon's RPC"
            )));
        }
        for id in ids {
            commands::remove(config, id)?;
        }
        Ok(())
    };
    let (mut client, given) = match target(config, rpc_url)? {
        Target::Rpc { client, given } => (client, given),
        Target::NoRpc(why) => return watch_dir(why),
    };
    let all = match listing(&mut client) {
        Ok(all) => all,
        Err(e @ ClientError::NoDaemon { .. }) if !given && !delete_data => {
            return watch_dir(e.to_string());
        }
        Err(e) => return Err(failed(e)),
    };
    let chosen: Vec<Named> = resolve(&all, ids)?.into_iter().cloned().collect();
    let numbers: Vec<u64> = chosen.iter().map(|t| t.id).collect();
    let result = client.call(
        "torrent-remove",
        json!({ "ids": numbers, "delete-local-data": delete_data }),
    );
    if let Err(e @ ClientError::Refused(_)) = &result {
        // Some may be gone all the same: say which, then the refusal.
        let left: Vec<u64> = torrents::<RowFields>(&mut client, Some(&numbers), &["id"])?
            .iter()
            .map(|t| t.id)
            .collect();
        for t in chosen.iter().filter(|t| !left.contains(&t.id)) {
            println!("removed {}{}", t.shown(), data_note(delete_data));
        }
        return Err(CommandError::Runtime(e.to_string()));
    }
    result.map_err(failed)?;
    for t in &chosen {
        println!("removed {}{}", t.shown(), data_note(delete_data));
    }
    Ok(())
}

fn data_note(deleted: bool) -> &'static str {
    if deleted {
        " and deleted its data"
    } else {
        "; its data stays"
    }
}

/// `btd add FILE|MAGNET [--paused] [--dir DIR]`: `torrent-add` over the RPC (the file's bytes as
/// `metainfo`, a magnet link as `filename`), printing `added NAME (HASH)`; a torrent the daemon
/// has is refused naming it (exit 1). Without an RPC (disabled, port 0, or nothing listening at
/// the config's address), through the watch directory as before, which cannot carry `--paused`
/// or `--dir`. A relative `--dir` is taken from the current directory.
///
/// # Errors
/// `BadInput` for an unreadable or invalid torrent or magnet link; `Runtime` when the daemon
/// cannot be reached, refuses, or has the torrent.
pub fn add(
    config: &Config,
    rpc_url: Option<&str>,
    torrent: &str,
    paused: bool,
    dir: Option<&Path>,
) -> Result<(), CommandError> {
    let to_add = ToAdd::read(torrent)?;
    let watch_dir = |why: String| {
        if paused || dir.is_some() {
            return Err(CommandError::Runtime(format!(
                "{why}: --paused and --dir need the daemon's RPC"
            )));
        }
        commands::add(config, &to_add)
    };
    let (mut client, given) = match target(config, rpc_url)? {
        Target::Rpc { client, given } => (client, given),
        Target::NoRpc(why) => return watch_dir(why),
    };
    let mut args = match &to_add.magnet {
        Some(uri) => json!({ "filename": uri }),
        None => json!({
            "metainfo": base64::engine::general_purpose::STANDARD.encode(&to_add.bytes)
        }),
    };
    args["paused"] = json!(paused);
    if let Some(dir) = dir {
        args["download-dir"] = json!(absolute(dir, "--dir")?);
    }
    let mut answer = match client.call("torrent-add", args) {
        Ok(answer) => answer,
        Err(e @ ClientError::NoDaemon { .. }) if !given => return watch_dir(e.to_string()),
        Err(e) => return Err(failed(e)),
    };
    if let Some(Value::Object(t)) = answer.remove("torrent-added") {
        let t = Named::from_fields(&t);
        println!(
            "added {} ({})",
            status::printable(&t.name),
            if t.hash.is_empty() {
                to_add.info_hash.to_hex()
            } else {
                t.hash
            }
        );
        return Ok(());
    }
    if let Some(Value::Object(t)) = answer.remove("torrent-duplicate") {
        return Err(to_add.already(&status::printable(str_field(&t, "name"))));
    }
    Err(CommandError::Runtime(format!(
        "btd RPC at {}: torrent-add answered neither torrent-added nor torrent-duplicate",
        client.endpoint().shown()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: u64, name: &str, hash: &str) -> Named {
        Named {
            id,
            name: name.into(),
            hash: hash.into(),
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ids_are_numbers_names_or_hash_prefixes_and_ambiguity_lists_the_matches() {
        let all = [
            t(1, "ubuntu.iso", &format!("abcd01{}", "0".repeat(34))),
            t(2, "debian.iso", &format!("abcd02{}", "0".repeat(34))),
            t(3, "7", &format!("ffff{}", "0".repeat(36))),
            t(4, "magnet", ""),
        ];
        let got = |wanted: &[&str]| -> Vec<u64> {
            resolve(&all, &ids(wanted))
                .unwrap_or_else(|e| panic!("{wanted:?}: {e}"))
                .iter()
                .map(|t| t.id)
                .collect()
        };
        assert_eq!(got(&["2"]), [2]);
        assert_eq!(got(&["ubuntu.iso", "ABCD02", "FFFF", "4"]), [1, 2, 3, 4]);
        assert_eq!(
            got(&["1", "ubuntu.iso", "abcd01"]),
            [1],
            "named thrice, once"
        );

        let err = resolve(&all, &ids(&["abcd"])).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(
            text.starts_with("\"abcd\" names 2 torrents: 1 ubuntu.iso (abcd01"),
            "{text}"
        );
        assert!(text.contains("2 debian.iso (abcd02"), "{text}");

        for unknown in ["9", "abc", "nope", "abcd03", "0000"] {
            let err = resolve(&all, &ids(&[unknown])).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{unknown}");
            assert!(
                err.to_string()
                    .starts_with(&format!("no torrent {unknown:?}")),
                "{err}"
            );
        }
        // A name that is no torrent's id names that torrent; one that is another's id is
        // ambiguous.
        assert_eq!(got(&["7"]), [3]);
        let mut more = all.to_vec();
        more.push(t(5, "1", ""));
        let err = resolve(&more, &ids(&["1"])).unwrap_err();
        assert!(
            err.to_string().starts_with("\"1\" names 2 torrents"),
            "{err}"
        );
    }

    /// A daemon of one seeding torrent (id 1, `a`): `torrent-stop` succeeds, any other method
    /// but `torrent-get` is refused as btd refuses what it does not do yet.
    fn one_torrent_daemon() -> (crate::rpc::RpcServer, RpcClient) {
        use crate::rpc::{RpcConfig, RpcServer, channel};
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for call in rx {
                let answer = match call.method.as_str() {
                    "torrent-get" => {
                        let Value::Object(m) = json!({"torrents": [{
                            "id": 1, "name": "a", "hashString": "ab".repeat(20),
                            "status": 6, "percentDone": 1.0, "metadataPercentComplete": 1.0,
                        }]}) else {
                            unreachable!()
                        };
                        Ok(m)
                    }
                    "torrent-stop" => Ok(Map::new()),
                    other => Err(format!("method not supported by btd (yet): {other}")),
                };
                call.answer(answer.map(crate::rpc::Arguments::Map));
            }
        });
        let config = RpcConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..RpcConfig::default()
        };
        let server = RpcServer::start(config, tx).unwrap();
        let client = RpcClient::new(Endpoint::of_listen(server.local_addr()), None);
        (server, client)
    }

    #[test]
    fn an_action_prints_the_state_after_or_the_daemons_refusal_exit_1() {
        let (server, mut client) = one_torrent_daemon();
        let out = act_on(
            &mut client,
            Action::plain("torrent-stop", "paused"),
            &ids(&["a"]),
        );
        assert_eq!(
            out.unwrap(),
            format!("paused 1 a ({}): seeding\n", "ab".repeat(20))
        );
        let settings = Settings {
            ratio: Some(2.0),
            ..Settings::default()
        };
        let action = Action {
            method: "torrent-set",
            arguments: settings.arguments().unwrap(),
            verb: "set",
        };
        let err = act_on(&mut client, action, &ids(&["abab"])).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.to_string(),
            "method not supported by btd (yet): torrent-set"
        );
        let err = act_on(
            &mut client,
            Action::plain("torrent-stop", "x"),
            &ids(&["b"]),
        );
        assert_eq!(err.unwrap_err().exit_code(), 2);
        server.stop();
    }

    #[test]
    fn settings_and_file_lists_become_torrent_set_arguments() {
        let s = Settings {
            down: Some(0),
            up: Some(50),
            ratio: Some(0.0),
            labels: vec!["tv".into()],
        };
        assert_eq!(
            Value::Object(s.arguments().unwrap()),
            // 50 KiB/s is 51.2 kB/s: 52 in the RPC's whole kB/s.
            json!({"downloadLimit": 0, "downloadLimited": false, "uploadLimit": 52,
                   "uploadLimited": true, "seedRatioLimit": 0.0, "seedRatioMode": 2,
                   "labels": ["tv"]})
        );
        assert_eq!(Settings::default().arguments().unwrap_err().exit_code(), 2);
        let nan = Settings {
            ratio: Some(f64::NAN),
            ..Settings::default()
        };
        assert!(nan.arguments().is_err());

        assert_eq!(file_list("0,2,5-7").unwrap(), [0, 2, 5, 6, 7]);
        assert_eq!(file_list("all").unwrap(), Vec::<u64>::new());
        for bad in ["", "x", "3-1", "1,,2", "-1"] {
            assert_eq!(file_list(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
        let changes = FileChanges {
            want: Some("0-1".into()),
            skip: None,
            priorities: vec![("high".into(), "1".into())],
        };
        assert_eq!(
            Value::Object(changes.arguments().unwrap().unwrap()),
            json!({"files-wanted": [0, 1], "priority-high": [1]})
        );
        assert!(FileChanges::default().arguments().unwrap().is_none());
        let wrong = FileChanges {
            priorities: vec![("urgent".into(), "1".into())],
            ..FileChanges::default()
        };
        assert_eq!(wrong.arguments().unwrap_err().exit_code(), 2);
    }

    #[test]
    fn states_from_the_rpc_status_numbers() {
        let state = |v: Value| {
            let Value::Object(m) = v else { unreachable!() };
            state_of(&RowFields::of(&m).unwrap())
        };
        assert_eq!(state(json!({"status": 0})), "paused");
        assert_eq!(state(json!({"status": 0, "error": 3})), "error");
        assert_eq!(state(json!({"status": 0, "isFinished": true})), "finished");
        assert_eq!(state(json!({"status": 2})), "checking");
        assert_eq!(
            state(json!({"status": 4, "metadataPercentComplete": 0.0})),
            "metadata"
        );
        assert_eq!(
            state(json!({"status": 4, "metadataPercentComplete": 1.0})),
            "downloading"
        );
        assert_eq!(state(json!({"status": 5})), "queued_seed");
        assert_eq!(state(json!({"status": 6})), "seeding");
    }

    #[test]
    fn dates_in_utc() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(1), "1970-01-01 00:00:01 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
