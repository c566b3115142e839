//! SIGHUP: reading the config again and applying what changed (rates, limits, seeding limits,
//! entries, the embedded tracker, the log file) without dropping peers.

use super::*;

impl Daemon {
    // ---- reload --------------------------------------------------------------------------

    pub(super) fn reload(&mut self) {
        let file = match Config::load(&self.config_path) {
            Ok(file) => file,
            Err(e) => {
                error!("config reload failed: {e}; keeping the running configuration");
                return;
            }
        };
        self.drop_session_settings_changed_in(&file);
        let new = self.session.apply_to(&file);
        self.file_config = file;
        if !self.level_from_env {
            log::set_max_level(new.log_level);
        }
        if let Some(log_file) = &self.log_file {
            log_file.reopen();
        }
        self.apply_config(new);
        info!("config reloaded from {}", self.config_path.display());
        self.scan_watch_dir();
    }

    /// Forgets the RPC's session settings whose value in the config file changed (the file's
    /// new value wins), saying so.
    pub(super) fn drop_session_settings_changed_in(&mut self, file: &Config) {
        drop_settings_changed_in(&mut self.session, file, &self.config_path);
    }

    pub(super) fn save_session_settings(&self) {
        save_settings(&self.session, &self.config.state_dir);
    }

    /// Puts `new` (the config file's, with the RPC's session settings) in force: rates, limits,
    /// seeding limits, entries, the embedded tracker and the RPC, without dropping peers.
    pub(super) fn apply_config(&mut self, new: Config) {
        if new.listen_address != self.config.listen_address
            || new.listen_port != self.config.listen_port
        {
            warn!("config reload: a new listen address takes effect at the next start");
        }
        if new.dht != self.config.dht {
            warn!("config reload: [dht] changes take effect at the next start");
        }
        if new.lsd != self.config.lsd {
            warn!("config reload: lsd.enabled takes effect at the next start");
        }
        if new.state_dir != self.config.state_dir {
            warn!("config reload: a new state_dir takes effect at the next start");
        }
        if new.download_dir != self.config.download_dir {
            info!(
                "config reload: paths.download_dir is now {}: torrents added from now on go \
                 there; those already added keep their data where it is",
                new.download_dir.display()
            );
        }
        self.engine.reconfigure(
            new.limits.clone(),
            new.download_rate,
            new.upload_rate,
            new.max_peers_global,
            new.max_peers_per_ip,
        );
        if new.encryption != self.engine.encryption() {
            info!(
                "config reload: network.encryption is now {}, for connections opened from now on",
                new.encryption
            );
            self.engine.set_encryption(new.encryption);
        }
        let limits_changed = new.limits != self.config.limits;
        self.reload_tracker(new.tracker);
        self.reload_rpc(new.rpc.clone());
        let old_entries = std::mem::take(&mut self.config.torrents);
        // The state directory holds our pid file: it changes only with a restart.
        let state_dir = self.config.state_dir.clone();
        let old_limits = self.seed_limits();
        self.config = Config { state_dir, ..new };
        if limits_changed {
            for t in &self.torrents {
                if let Some(handle) = &t.handle {
                    handle.send(Control::SetLimits(self.torrent_limits(t)));
                }
            }
        }
        if self.seed_limits() != old_limits {
            self.apply_seed_limits();
        }
        self.apply_entries(&old_entries);
        self.retry_errors_now();
    }

    /// New seeding limits: running torrents get their new upload allowance, and finished ones
    /// that are under the limits now go back to the queue to seed.
    pub(super) fn apply_seed_limits(&mut self) {
        let global = self.seed_limits();
        for t in &mut self.torrents {
            let limits = global.for_torrent(&t.record);
            if let Some(handle) = &t.handle {
                handle
                    .stats
                    .set_upload_allowance(limits.upload_allowance(t.size(), t.totals().0));
            }
            if *t.life.phase() != Phase::Finished {
                continue;
            }
            let reached = t.seed_limit_reached(global).is_some();
            t.life.on_limits_changed(reached);
            if *t.life.phase() != Phase::Finished {
                info!(
                    "torrent {}: under its seeding limits again (ratio {:.3}, seeded {} s, \
                     idle {} s); queued",
                    t.name(),
                    t.ratio(),
                    t.seeding_secs(),
                    t.idle_secs()
                );
            }
        }
    }

    /// Brings the RPC in line with `[rpc]`: started, stopped, or reconfigured in place (a new
    /// address is bound before the old one is let go). A failure is logged; the old RPC stays.
    pub(super) fn reload_rpc(&mut self, wanted: crate::rpc::RpcConfig) {
        match (&mut self.rpc, wanted.enabled) {
            (None, false) => {}
            (Some(_), false) => {
                info!("config reload: [rpc] disabled");
                if let Some(rpc) = self.rpc.take() {
                    rpc.stop();
                }
            }
            (Some(rpc), true) => {
                if let Err(e) = rpc.set_config(wanted) {
                    error!("config reload: rpc.listen: {e}; the RPC keeps its settings");
                }
            }
            (None, true) => match RpcServer::start(wanted, self.rpc_tx.clone()) {
                Ok(rpc) => self.rpc = Some(rpc),
                Err(e) => error!("config reload: rpc.listen: {e}; running without the RPC"),
            },
        }
    }

    /// Brings the embedded tracker in line with `[tracker]`: started, stopped, reconfigured in
    /// place (peers kept), or restarted on a new address. A tracker that cannot start is
    /// logged; the daemon carries on without it.
    pub(super) fn reload_tracker(&mut self, wanted: Option<TrackerConfig>) {
        match (&self.tracker, wanted) {
            (None, None) => {}
            (Some(_), None) => {
                info!("config reload: [tracker] disabled");
                if let Some(tracker) = self.tracker.take() {
                    tracker.stop();
                }
            }
            (Some(tracker), Some(config)) if tracker.config().listen == config.listen => {
                if let Err(e) = tracker.set_config(config) {
                    error!("config reload: {e}; the tracker keeps its settings");
                }
            }
            (running, Some(config)) => {
                if running.is_some() {
                    info!("config reload: the tracker moves to {}", config.listen);
                }
                // Free the old address first: the new one may share its port.
                if let Some(tracker) = self.tracker.take() {
                    tracker.stop();
                }
                match TrackerServer::start(config) {
                    Ok(tracker) => self.tracker = Some(tracker),
                    Err(e) => error!("config reload: embedded tracker: {e}; running without it"),
                }
            }
        }
    }

    /// Brings the `[[torrent]]`-sourced torrents in line with the (new) config entries.
    pub(super) fn apply_entries(&mut self, old: &[TorrentEntry]) {
        let new = self.config.torrents.clone();
        let keys: Vec<EntryKey> = new.iter().map(EntryKey::of).collect();
        let removed: Vec<InfoHash> = self
            .torrents
            .iter()
            .filter(|t| matches!(&t.source, Source::Config(key) if !keys.contains(key)))
            .map(|t| t.info_hash)
            .collect();
        for info_hash in removed {
            if let Some(index) = self.index_of(&info_hash) {
                self.remove(index);
            }
        }
        for (entry, key) in new.iter().zip(keys) {
            let existing = self
                .torrents
                .iter()
                .position(|t| t.source == Source::Config(key.clone()));
            let Some(index) = existing else {
                self.add_entry(entry);
                continue;
            };
            if !self.torrents[index].has_record() {
                // Its .torrent could not be read: try again.
                self.torrents.remove(index);
                self.add_entry(entry);
                continue;
            }
            if old.iter().any(|o| o == entry) {
                continue;
            }
            let t = &mut self.torrents[index];
            if let Some(dir) = &entry.download_dir
                && *dir != t.record.download_dir
            {
                info!(
                    "torrent {}: download_dir is now {} (was {}); data is not moved, the next \
                     start uses it",
                    t.name(),
                    dir.display(),
                    t.record.download_dir.display()
                );
                t.record.download_dir.clone_from(dir);
                t.save_record(&self.config.state_dir, &self.writer);
            }
            let mut peers = entry.peers.clone();
            if let TorrentRef::Magnet(magnet) = &entry.torrent {
                merge_peers(&mut peers, &magnet.peers);
                t.magnet = Some(magnet.clone());
            }
            if peers != t.peers {
                if let Some(handle) = &t.handle {
                    handle.send(Control::AddPeers(
                        crate::torrent::PeerSource::Manual,
                        peers.clone(),
                    ));
                }
                t.peers = peers;
            }
            let actions = if entry.paused != t.life.paused() {
                if entry.paused {
                    info!("torrent {}: paused", t.name());
                    t.life.on_pause_requested()
                } else {
                    info!("torrent {}: resumed", t.name());
                    t.life.on_resume_requested()
                }
            } else {
                // A fetch asks the entry's new peers and trackers.
                t.life.on_peers_changed()
            };
            self.apply(index, actions);
        }
    }
}

/// Forgets the settings of `session` whose value in `file` (read from `config_path`) changed
/// since they were set over the RPC, saying so and saving the rest.
pub(super) fn drop_settings_changed_in(
    session: &mut SessionSettings,
    file: &Config,
    config_path: &Path,
) {
    let dropped = session.drop_changed_in(file);
    if !dropped.is_empty() {
        info!(
            "config: {} changed in {}; the value set over the RPC is dropped",
            dropped.join(", "),
            config_path.display()
        );
        save_settings(session, &file.state_dir);
    }
}

fn save_settings(session: &SessionSettings, state_dir: &Path) {
    if let Err(e) = session.save(&SessionSettings::path_in(state_dir)) {
        warn!("session settings: {e}");
    }
}
