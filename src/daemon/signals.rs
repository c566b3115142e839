//! Signals and the log file: the `signals` thread turning INT, TERM, HUP and USR1 into
//! [`Signal`]s for the main loop, and a log file that SIGHUP can reopen.

use super::*;

/// What the signal threads tell the main loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM: stop gracefully.
    Stop,
    /// SIGHUP: reload the config, rescan the watch directory, reopen the log file.
    Reload,
    /// SIGUSR1: write the status table to the log.
    Status,
}

/// A log file that SIGHUP can reopen (for logrotate): env_logger writes through it.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl LogFile {
    /// Opens `path` for appending.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(open_append(path)?)),
        })
    }

    /// Opens the path again (the old file may have been renamed away).
    pub(super) fn reopen(&self) {
        match open_append(&self.path) {
            Ok(file) => *self.file.lock() = file,
            Err(e) => error!("log file {}: cannot reopen: {e}", self.path.display()),
        }
    }
}

pub(super) fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.lock().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.lock().flush()
    }
}

/// Installs the daemon's signal handlers (signal-hook) for INT, TERM, HUP and USR1; everything
/// arrives on the returned channel, and a second INT/TERM exits at once. Not ctrlc: with its
/// `termination` feature (which the one-shot commands need for SIGTERM) it also takes SIGHUP as
/// a stop, and the daemon must reload on SIGHUP.
///
/// # Errors
/// When a handler cannot be installed.
pub fn signals() -> Result<Receiver<Signal>, DaemonError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let (tx, rx) = crossbeam_channel::bounded(16);
    let mut hooks = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])
        .map_err(|e| DaemonError::Signals(e.to_string()))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = 0;
            for sig in hooks.forever() {
                let signal = match sig {
                    SIGHUP => Signal::Reload,
                    SIGUSR1 => Signal::Status,
                    _ => {
                        stops += 1;
                        if stops > 1 {
                            std::process::exit(1);
                        }
                        Signal::Stop
                    }
                };
                if tx.send(signal).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| DaemonError::Signals(e.to_string()))?;
    Ok(rx)
}
