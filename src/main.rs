//! btd's command line: parses arguments (clap), picks the config file, sets up logging
//! (env_logger) and signals (ctrlc), runs the command, and prints its error as `btd: error: ...`
//! on stderr with the exit status of its kind. No logic of its own.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use clap::{Parser, Subcommand};

use btd::commands::{self, CommandError, CreateOptions, TransferOptions};
use btd::config::{Config, ConfigError};
use btd::daemon::{self, Daemon, LogFile};
use btd::peer::mse::Encryption;
use btd::remote::{self, Action, FileChanges, Settings};
use btd::tracker_server::{self, TrackerOptions};

#[derive(Parser)]
#[command(name = "btd", version, about = "A BitTorrent client and daemon")]
struct Cli {
    /// Config file [default: config/btd.toml when it exists, else the built-in defaults, whose
    /// paths are relative to the working directory: ./state, ./downloads].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The daemon's RPC, e.g. http://127.0.0.1:9091, for list, info, add, pause, resume, verify,
    /// reannounce, move, files, set and remove [default: the config's [rpc] listen].
    /// Credentials: BTD_RPC_AUTH=user:pass, else the config's [rpc] username and password.
    #[arg(long, global = true, value_name = "URL")]
    rpc: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a v1 .torrent of a file or directory.
    Create {
        path: PathBuf,
        /// Where to write the .torrent.
        #[arg(short = 'o', long = "output", value_name = "FILE.torrent")]
        output: PathBuf,
        /// Announce URL; repeat for several (one tier each).
        #[arg(short = 't', long = "tracker", value_name = "ANNOUNCE_URL")]
        trackers: Vec<String>,
        /// Piece length in bytes, a power of two (default: 1,000-2,000 pieces).
        #[arg(long, value_name = "BYTES")]
        piece_length: Option<u32>,
        /// Set the private flag (BEP 27).
        #[arg(long)]
        private: bool,
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// Web seed URL (BEP 19 `url-list`); repeat for several. For a directory, the URL
        /// of the directory that holds the torrent's top directory.
        #[arg(long = "web-seed", value_name = "URL")]
        web_seeds: Vec<String>,
    },
    /// Download a torrent into DIR/<name>, then exit (or keep seeding with --seed).
    Download {
        /// A .torrent file, or a magnet link (quote it: `'magnet:?xt=urn:btih:...'`), whose
        /// metadata is fetched from its peers (x.pe, --peer) and trackers (tr) first.
        #[arg(value_name = "TORRENT|MAGNET")]
        torrent: PathBuf,
        #[arg(short = 'o', long = "output", value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        net: NetArgs,
        /// Keep seeding after the download completes, until SIGINT/SIGTERM.
        #[arg(long)]
        seed: bool,
        /// Magnet links only: give up (exit 1) when no verified metadata has arrived after
        /// SECS seconds.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        metadata_timeout: u64,
    },
    /// Run as a service: many torrents, configured by the config file, controlled by signals.
    Daemon,
    /// Show the running daemon's torrents.
    Status,
    /// List the daemon's torrents (over its RPC).
    List,
    /// Show torrents in detail: state, progress, totals, trackers, files.
    ///
    /// An argument that is a `magnet:` link or the path of an existing file is read locally
    /// (no daemon needed): name, info hashes, size, pieces, trackers, web seeds, the files with
    /// the paths btd will write (beside the torrent's own when they differ; pad files hidden),
    /// creator, comment, source and warnings; exit 0 when btd can load it, 2 with the reason
    /// when not. Anything else is a torrent of the running daemon (number, name or hash prefix).
    #[command(verbatim_doc_comment)]
    Info {
        #[arg(value_name = "ID|TORRENT|MAGNET", required = true)]
        ids: Vec<String>,
        /// With a .torrent file or a magnet link: print one JSON object instead (keys in
        /// README.md).
        #[arg(long)]
        json: bool,
    },
    /// Hand a .torrent or a magnet link to the running daemon: over its RPC, else through its
    /// watch directory.
    Add {
        #[arg(value_name = "TORRENT|MAGNET")]
        torrent: String,
        /// Add it paused (RPC only).
        #[arg(long)]
        paused: bool,
        /// Where its data goes [default: the daemon's download_dir] (RPC only).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Pause torrents: their peers are dropped, their state kept across restarts.
    Pause {
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },
    /// Resume paused, finished or failed torrents.
    Resume {
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },
    /// Hash torrents' data again, ignoring resume data.
    Verify {
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },
    /// Announce torrents to their trackers now.
    Reannounce {
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },
    /// Move a torrent's data to DIR (relative to the current directory) and keep it there.
    Move {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// List a torrent's files, or choose which to get and their priorities (numbers as listed:
    /// 0,2,5-7 or all).
    Files {
        #[arg(value_name = "ID")]
        id: String,
        /// Get these files.
        #[arg(long, value_name = "LIST")]
        want: Option<String>,
        /// Do not get these files.
        #[arg(long, value_name = "LIST")]
        skip: Option<String>,
        /// Give these files a priority: high, normal or low; repeatable.
        #[arg(long, num_args = 2, value_names = ["LEVEL", "LIST"])]
        priority: Vec<String>,
    },
    /// Change torrents' own limits and labels.
    Set {
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
        /// Download limit in KiB/s (0: none of its own).
        #[arg(long, value_name = "KIB")]
        down: Option<u64>,
        /// Upload limit in KiB/s (0: none of its own).
        #[arg(long, value_name = "KIB")]
        up: Option<u64>,
        /// Stop seeding at this ratio (0: no limit of its own).
        #[arg(long, value_name = "R")]
        ratio: Option<f64>,
        /// A label; repeat for several (they replace the torrent's labels).
        #[arg(long = "label", value_name = "L")]
        labels: Vec<String>,
    },
    /// Stop and forget torrents; their data stays unless --delete-data. Without the RPC, one
    /// added through the watch directory, by name or info hash.
    Remove {
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
        /// Delete the torrent's own files too (RPC only).
        #[arg(long)]
        delete_data: bool,
    },
    /// Verify complete data in DIR/<name> and seed it until SIGINT/SIGTERM.
    Seed {
        torrent: PathBuf,
        #[arg(short = 'd', long = "dir", value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Run a BitTorrent tracker (HTTP and UDP on one port) until SIGINT/SIGTERM.
    Tracker {
        /// Address for HTTP and UDP; port 0 picks a number free for both.
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// Seconds between a client's announces [default: 1800].
        #[arg(long, value_name = "SECS")]
        interval: Option<u64>,
        /// Seconds a client waits at least between announces [default: half the interval].
        #[arg(long, value_name = "SECS")]
        min_interval: Option<u64>,
        /// Peers listed per torrent [default: 1000].
        #[arg(long, value_name = "N")]
        max_peers_per_torrent: Option<usize>,
        /// Torrents tracked at once [default: 1000].
        #[arg(long, value_name = "N")]
        max_torrents: Option<usize>,
    },
}

#[derive(clap::Args)]
struct NetArgs {
    /// TCP listen port (0 picks a free one).
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Listen address, also the source address of outgoing connections.
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// A peer to connect to; repeatable.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    peers: Vec<String>,
    /// No local service discovery (BEP 14), whatever the config file's `[lsd] enabled` says.
    #[arg(long)]
    no_lsd: bool,
    /// Message stream encryption: tolerated (plaintext first), preferred (encrypted first) or
    /// required (encrypted only). Overrides `[network] encryption`.
    #[arg(long, value_name = "MODE")]
    encryption: Option<Encryption>,
    /// Run without the DHT (`[dht] enabled = false`).
    #[arg(long)]
    no_dht: bool,
    /// A DHT bootstrap node; repeatable, replaces `[dht] bootstrap`.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", value_parser = host_port)]
    dht_bootstrap: Vec<String>,
}

fn host_port(s: &str) -> Result<String, String> {
    btd::config::check_host_port(s).map(|()| s.to_owned())
}

fn main() {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Daemon) {
        std::process::exit(run_daemon(cli.config.as_deref()));
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("btd: error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// The config file read when `--config` is not given, if it exists.
const DEFAULT_CONFIG: &str = "config/btd.toml";

/// The config file of every command: `--config FILE`, else [`DEFAULT_CONFIG`] when it exists;
/// `None` means the built-in defaults.
fn config_file(given: Option<&Path>) -> Option<PathBuf> {
    given.map(Path::to_path_buf).or_else(|| {
        Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| DEFAULT_CONFIG.into())
    })
}

fn read_config(file: Option<&Path>) -> Result<Config, ConfigError> {
    file.map_or_else(|| Ok(Config::default()), Config::load)
}

fn load_config(given: Option<&Path>) -> Result<Config, CommandError> {
    read_config(config_file(given).as_deref()).map_err(|e| CommandError::BadInput(e.to_string()))
}

/// `btd status`, also while the config file is broken (that is when the admin is fixing it):
/// then only its `[paths] state_dir` is read, after a warning naming the config error.
fn status(given: Option<&Path>) -> Result<(), CommandError> {
    let file = config_file(given);
    let state_dir = match read_config(file.as_deref()) {
        Ok(config) => config.state_dir,
        Err(e) => {
            let Some(state_dir) = file.as_deref().and_then(Config::state_dir_only) else {
                return Err(CommandError::BadInput(e.to_string()));
            };
            let error = e.to_string().replace('\n', " ");
            eprintln!(
                "btd: warning: {error}; showing the status from {}",
                state_dir.display()
            );
            state_dir
        }
    };
    commands::status(&state_dir, file.as_deref())
}

/// SIGINT/SIGTERM arrive on the returned channel; a second one exits at once.
fn signals() -> Result<crossbeam_channel::Receiver<()>, CommandError> {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let (tx, rx) = crossbeam_channel::bounded(4);
    ctrlc::set_handler(move || {
        if COUNT.fetch_add(1, Ordering::SeqCst) > 0 {
            std::process::exit(130);
        }
        let _ = tx.try_send(());
    })
    .map_err(|e| CommandError::Runtime(format!("cannot install signal handler: {e}")))?;
    Ok(rx)
}

/// `btd daemon`: the config decides the log level and target, so it is read before logging
/// starts. Errors go to stderr as `btd: error: ...`, and also to the log when it is a file.
fn run_daemon(config_path: Option<&Path>) -> i32 {
    daemon::with_malloc_tunables();
    let file = config_file(config_path);
    let config = match read_config(file.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("btd: error: {e}");
            return 2;
        }
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(config.log_level);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    let log_file = match &config.log_file {
        Some(file) => match LogFile::open(file) {
            Ok(log) => {
                builder.target(env_logger::Target::Pipe(Box::new(log.clone())));
                Some(log)
            }
            Err(e) => {
                eprintln!("btd: error: {}: log.file: {e}", file.display());
                return 2;
            }
        },
        None => None,
    };
    builder.init();
    let to_file = log_file.is_some();
    let fail = |e: &dyn std::fmt::Display| {
        if to_file {
            log::error!("{e}");
        }
        eprintln!("btd: error: {e}");
        1
    };
    let signals = match daemon::signals() {
        Ok(signals) => signals,
        Err(e) => return fail(&e),
    };
    if file.is_none() {
        log::info!(
            "no --config and no {DEFAULT_CONFIG}: running on the built-in defaults (state {}, \
             downloads {}); SIGHUP reads {DEFAULT_CONFIG} once it exists",
            config.state_dir.display(),
            config.download_dir.display()
        );
    }
    let path = file.unwrap_or_else(|| DEFAULT_CONFIG.into());
    match Daemon::start(config, &path, log_file) {
        Ok(daemon) => {
            daemon.run(&signals);
            0
        }
        Err(e) => fail(&e),
    }
}

fn run(cli: Cli) -> Result<(), CommandError> {
    let rpc = cli.rpc.as_deref();
    let act = |action: Action<'_>, ids: &[String]| {
        remote::act(&load_config(cli.config.as_deref())?, rpc, action, ids)
    };
    match cli.command {
        Command::Daemon => unreachable!("handled before logging starts"),
        Command::Status => status(cli.config.as_deref()),
        Command::List => remote::list(&load_config(cli.config.as_deref())?, rpc),
        Command::Info { ids, json } => match ids.as_slice() {
            [one] if btd::inspect::is_local(one) => btd::inspect::run(one, json),
            _ if json => Err(CommandError::BadInput(
                "--json is for one .torrent file or magnet link".into(),
            )),
            _ => remote::info(&load_config(cli.config.as_deref())?, rpc, &ids),
        },
        Command::Add {
            torrent,
            paused,
            dir,
        } => remote::add(
            &load_config(cli.config.as_deref())?,
            rpc,
            &torrent,
            paused,
            dir.as_deref(),
        ),
        Command::Pause { ids } => act(Action::plain("torrent-stop", "paused"), &ids),
        Command::Resume { ids } => act(Action::plain("torrent-start", "resumed"), &ids),
        Command::Verify { ids } => act(Action::plain("torrent-verify", "verifying"), &ids),
        Command::Reannounce { ids } => {
            act(Action::plain("torrent-reannounce", "reannouncing"), &ids)
        }
        Command::Move { id, dir } => {
            remote::move_to(&load_config(cli.config.as_deref())?, rpc, &id, &dir)
        }
        Command::Files {
            id,
            want,
            skip,
            priority,
        } => {
            let changes = FileChanges {
                want,
                skip,
                priorities: priority
                    .chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect(),
            };
            remote::files(&load_config(cli.config.as_deref())?, rpc, &id, &changes)
        }
        Command::Set {
            ids,
            down,
            up,
            ratio,
            labels,
        } => {
            let settings = Settings {
                down,
                up,
                ratio,
                labels,
            };
            let action = Action {
                method: "torrent-set",
                arguments: settings.arguments()?,
                verb: "set",
            };
            act(action, &ids)
        }
        Command::Remove { ids, delete_data } => {
            remote::remove(&load_config(cli.config.as_deref())?, rpc, &ids, delete_data)
        }
        Command::Create {
            path,
            output,
            trackers,
            piece_length,
            private,
            comment,
            web_seeds,
        } => commands::create(&CreateOptions {
            path,
            output,
            trackers,
            piece_length,
            private,
            comment,
            web_seeds,
        }),
        Command::Download {
            torrent,
            dir,
            net,
            seed,
            metadata_timeout,
        } => {
            let config = load_config(cli.config.as_deref())?;
            let signals = signals()?;
            let metadata_timeout = std::time::Duration::from_secs(metadata_timeout);
            commands::download(
                &transfer(torrent, dir, net, config),
                seed,
                metadata_timeout,
                &signals,
            )
        }
        Command::Seed { torrent, dir, net } => {
            let config = load_config(cli.config.as_deref())?;
            let signals = signals()?;
            commands::seed(&transfer(torrent, dir, net, config), &signals)
        }
        Command::Tracker {
            listen,
            interval,
            min_interval,
            max_peers_per_torrent,
            max_torrents,
        } => {
            let options = TrackerOptions {
                listen,
                interval_secs: interval,
                min_interval_secs: min_interval,
                max_peers_per_torrent,
                max_torrents,
            };
            let signals = signals()?;
            tracker_server::run_until(&options, &signals).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidInput => CommandError::BadInput(e.to_string()),
                _ => CommandError::Runtime(e.to_string()),
            })
        }
    }
}

fn transfer(torrent: PathBuf, dir: PathBuf, net: NetArgs, mut config: Config) -> TransferOptions {
    if net.no_lsd {
        config.lsd = false;
    }
    if let Some(mode) = net.encryption {
        config.encryption = mode;
    }
    if net.no_dht {
        config.dht = None;
    } else if let Some(dht) = &mut config.dht
        && !net.dht_bootstrap.is_empty()
    {
        dht.bootstrap = net.dht_bootstrap;
    }
    TransferOptions {
        torrent,
        dir,
        port: net.port,
        bind: net.bind,
        peers: net.peers,
        config,
    }
}
