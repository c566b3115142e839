//! Session settings changed over the RPC (`session-set`), kept in
//! `<state_dir>/session.json` so they survive restarts: the daemon never rewrites its TOML file.
//! Which wins: a setting changed over the RPC stands until the TOML file's own value for it
//! changes; then (at the next start or SIGHUP) the file's new value applies and the RPC's is
//! forgotten. Pure apart from loading and saving the file; the daemon's main thread owns it.
//!
//! Speeds are in Transmission's RPC unit, kB/s of 1000 bytes (`session-get` says so in
//! `units`); the config's rates are bytes per second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::atomic_file;
use crate::config::Config;

/// The format version this build writes and reads.
const VERSION: u32 = 1;

/// Bytes in the RPC's speed unit (kB/s).
const SPEED_UNIT: u64 = 1000;

/// Transmission's idle seeding limit when it is turned on without a value, in minutes.
const DEFAULT_IDLE_MINS: u64 = 30;

/// One setting changed over the RPC.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Setting {
    /// What the RPC set.
    pub value: Value,
    /// The TOML file's value for it then: a different one now means the file changed since.
    pub file_value: Value,
}

/// Every setting changed over the RPC, by `session-set` key.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionSettings {
    pub version: u32,
    pub settings: BTreeMap<String, Setting>,
}

impl SessionSettings {
    /// `<state_dir>/session.json`.
    #[must_use]
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("session.json")
    }

    /// Reads the file; none (or one that cannot be used, which is said in the `Err`) is empty.
    ///
    /// # Errors
    /// Why the file could not be used; the caller logs it and goes on with none.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let settings: Self = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not valid session settings: {e}", path.display()))?;
        if settings.version != VERSION {
            return Err(format!(
                "{}: format version {}, this btd reads {VERSION}",
                path.display(),
                settings.version
            ));
        }
        Ok(settings)
    }

    /// Replaces the file atomically.
    ///
    /// # Errors
    /// The step that failed, naming the file.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let versioned = Self {
            version: VERSION,
            ..self.clone()
        };
        atomic_file::write_json(path, &versioned).map_err(|e| e.to_string())
    }

    /// Forgets the settings whose TOML value is no longer what it was when they were set
    /// (`file` is the file's config as loaded now); returns their keys.
    pub fn drop_changed_in(&mut self, file: &Config) -> Vec<String> {
        let changed: Vec<String> = self
            .settings
            .iter()
            .filter(|(key, s)| get(file, key).as_ref() != Some(&s.file_value))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &changed {
            self.settings.remove(key);
        }
        changed
    }

    /// `file` (the TOML file's config) with these settings applied: what the daemon runs.
    #[must_use]
    pub fn apply_to(&self, file: &Config) -> Config {
        let mut config = file.clone();
        // The switches (`-enabled`, `seedRatioLimited`) before the values they switch on,
        // whatever the map's order: a value applies only while its switch is on.
        let (switches, values): (Vec<_>, Vec<_>) = self
            .settings
            .iter()
            .partition(|(key, _)| key.ends_with("-enabled") || key.ends_with("Limited"));
        for (key, setting) in switches.into_iter().chain(values) {
            // Checked when set; a hand-edited file's bad value is skipped.
            let _ = set(&mut config, key, &setting.value);
        }
        config
    }

    /// Records `value` for `key` (checked against a copy of `running`, the config in force),
    /// with the TOML file's value for it.
    ///
    /// # Errors
    /// The key is not one btd applies, or the value is not one it takes.
    pub fn set(
        &mut self,
        running: &Config,
        file: &Config,
        key: &str,
        value: &Value,
    ) -> Result<(), String> {
        set(&mut running.clone(), key, value)?;
        let file_value = get(file, key).ok_or_else(|| format!("{key}: not supported"))?;
        self.settings.insert(
            key.to_owned(),
            Setting {
                value: value.clone(),
                file_value,
            },
        );
        Ok(())
    }
}

/// A setting's value in `config`, as `session-get` shows it; `None` for a key btd does not
/// apply.
#[must_use]
pub fn get(config: &Config, key: &str) -> Option<Value> {
    Some(match key {
        "speed-limit-down" => Value::from(config.download_rate / SPEED_UNIT),
        "speed-limit-down-enabled" => Value::from(config.download_rate > 0),
        "speed-limit-up" => Value::from(config.upload_rate / SPEED_UNIT),
        "speed-limit-up-enabled" => Value::from(config.upload_rate > 0),
        "seedRatioLimit" => Value::from(config.ratio_limit),
        "seedRatioLimited" => Value::from(config.ratio_limit > 0.0),
        "idle-seeding-limit" => Value::from(idle_limit_mins(config)),
        "idle-seeding-limit-enabled" => Value::from(!config.seed_idle_limit.is_zero()),
        "download-queue-size" => Value::from(config.max_active_downloads),
        "seed-queue-size" => Value::from(config.max_active_seeds),
        "peer-limit-global" => Value::from(config.max_peers_global),
        "peer-limit-per-torrent" => Value::from(config.limits.max_peers),
        "download-dir" => Value::from(config.download_dir.display().to_string()),
        "start-added-torrents" => Value::from(config.start_added_torrents),
        "encryption" => Value::from(config.encryption.as_str()),
        _ => return None,
    })
}

/// Applies one `session-set` key to `config`.
fn set(config: &mut Config, key: &str, value: &Value) -> Result<(), String> {
    let count = || -> Result<u64, String> {
        value
            .as_u64()
            .ok_or_else(|| format!("{key}: {value} is not a whole number >= 0"))
    };
    let positive = || -> Result<usize, String> {
        count().and_then(|n| {
            usize::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{key}: {value} is not a number > 0"))
        })
    };
    let flag = || {
        value
            .as_bool()
            .ok_or_else(|| format!("{key}: {value} is not true or false"))
    };
    // A speed limit is on when its rate is not 0; its value while off is not kept.
    let rate = |current: u64, n: u64| if current == 0 { 0 } else { n * SPEED_UNIT };
    match key {
        "speed-limit-down" => config.download_rate = rate(config.download_rate, count()?),
        "speed-limit-up" => config.upload_rate = rate(config.upload_rate, count()?),
        "speed-limit-down-enabled" => {
            config.download_rate = enabled_rate(config.download_rate, flag()?);
        }
        "speed-limit-up-enabled" => config.upload_rate = enabled_rate(config.upload_rate, flag()?),
        "seedRatioLimit" => {
            let ratio = value
                .as_f64()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| format!("{key}: {value} is not a number > 0"))?;
            if config.ratio_limit > 0.0 {
                config.ratio_limit = ratio;
            }
        }
        "seedRatioLimited" => {
            if !flag()? {
                config.ratio_limit = 0.0;
            } else if config.ratio_limit == 0.0 {
                config.ratio_limit = 2.0;
            }
        }
        "idle-seeding-limit" => {
            let mins = u64::try_from(positive()?).unwrap_or(u64::MAX);
            if !config.seed_idle_limit.is_zero() {
                config.seed_idle_limit = Duration::from_secs(mins.saturating_mul(60));
            }
        }
        "idle-seeding-limit-enabled" => {
            if !flag()? {
                config.seed_idle_limit = Duration::ZERO;
            } else if config.seed_idle_limit.is_zero() {
                config.seed_idle_limit = Duration::from_secs(DEFAULT_IDLE_MINS * 60);
            }
        }
        "download-queue-size" => config.max_active_downloads = positive()?,
        "seed-queue-size" => config.max_active_seeds = positive()?,
        "peer-limit-global" => config.max_peers_global = positive()?,
        "peer-limit-per-torrent" => config.limits.max_peers = positive()?,
        "download-dir" => {
            let dir = value
                .as_str()
                .filter(|d| Path::new(d).is_absolute())
                .ok_or_else(|| format!("{key}: {value} is not an absolute path"))?;
            config.download_dir = PathBuf::from(dir);
        }
        "start-added-torrents" => config.start_added_torrents = flag()?,
        "encryption" => {
            config.encryption = value
                .as_str()
                .ok_or_else(|| format!("{key}: {value} is not a string"))?
                .parse()
                .map_err(|e| format!("{key}: {e}"))?;
        }
        _ => return Err(format!("{key}: not supported by btd (yet)")),
    }
    Ok(())
}

/// The idle seeding limit in the RPC's minutes; while there is none, Transmission's default,
/// which turning it on gives.
#[must_use]
pub fn idle_limit_mins(config: &Config) -> u64 {
    match config.seed_idle_limit.as_secs() / 60 {
        0 => DEFAULT_IDLE_MINS,
        mins => mins,
    }
}

/// A rate turned on (at 100 kB/s when it had none, Transmission's default) or off.
fn enabled_rate(current: u64, on: bool) -> u64 {
    match (on, current) {
        (false, _) => 0,
        (true, 0) => 100 * SPEED_UNIT,
        (true, rate) => rate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::mse::Encryption;
    use serde_json::json;

    fn config() -> Config {
        Config::default()
    }

    #[test]
    fn speed_limits_are_kilobytes_of_1000_and_enabled_turns_them_on_and_off() {
        let file = config();
        let mut s = SessionSettings::default();
        s.set(&file, &file, "speed-limit-down-enabled", &json!(true))
            .unwrap();
        s.set(&file, &file, "speed-limit-down", &json!(250))
            .unwrap();
        let running = s.apply_to(&file);
        assert_eq!(running.download_rate, 250_000);
        assert_eq!(get(&running, "speed-limit-down"), Some(json!(250)));
        assert_eq!(get(&running, "speed-limit-down-enabled"), Some(json!(true)));
        s.set(&running, &file, "speed-limit-down-enabled", &json!(false))
            .unwrap();
        assert_eq!(s.apply_to(&file).download_rate, 0);
        assert_eq!(running.upload_rate, file.upload_rate, "untouched");
    }

    #[test]
    fn encryption_takes_transmissions_three_words_and_nothing_else() {
        let file = config();
        assert_eq!(get(&file, "encryption"), Some(json!("preferred")));
        let mut s = SessionSettings::default();
        s.set(&file, &file, "encryption", &json!("required"))
            .unwrap();
        assert_eq!(s.apply_to(&file).encryption, Encryption::Required);
        let e = s
            .set(&file, &file, "encryption", &json!("forced"))
            .unwrap_err();
        assert!(e.starts_with("encryption: unknown encryption mode"), "{e}");
        assert!(s.set(&file, &file, "encryption", &json!(2)).is_err());
        assert_eq!(
            s.apply_to(&file).encryption,
            Encryption::Required,
            "unchanged"
        );
    }

    #[test]
    fn the_idle_limit_is_in_minutes_and_enabled_turns_it_on_at_30_and_off() {
        let file = config();
        assert_eq!(get(&file, "idle-seeding-limit-enabled"), Some(json!(false)));
        assert_eq!(get(&file, "idle-seeding-limit"), Some(json!(30)));
        let mut s = SessionSettings::default();
        s.set(&file, &file, "idle-seeding-limit", &json!(10))
            .unwrap();
        assert!(
            s.apply_to(&file).seed_idle_limit.is_zero(),
            "off: a value alone"
        );
        s.set(&file, &file, "idle-seeding-limit-enabled", &json!(true))
            .unwrap();
        let running = s.apply_to(&file);
        assert_eq!(running.seed_idle_limit, Duration::from_secs(600));
        assert_eq!(get(&running, "idle-seeding-limit"), Some(json!(10)));
        assert_eq!(
            get(&running, "idle-seeding-limit-enabled"),
            Some(json!(true))
        );
        let mut on_only = SessionSettings::default();
        on_only
            .set(&file, &file, "idle-seeding-limit-enabled", &json!(true))
            .unwrap();
        assert_eq!(
            on_only.apply_to(&file).seed_idle_limit,
            Duration::from_secs(30 * 60)
        );
        s.set(&running, &file, "idle-seeding-limit-enabled", &json!(false))
            .unwrap();
        assert!(s.apply_to(&file).seed_idle_limit.is_zero());
        let err = s
            .set(&file, &file, "idle-seeding-limit", &json!(0))
            .unwrap_err();
        assert!(
            err.contains("idle-seeding-limit: 0 is not a number > 0"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused_naming_the_key() {
        let file = config();
        let mut s = SessionSettings::default();
        for (key, value, says) in [
            (
                "download-queue-size",
                json!(0),
                "download-queue-size: 0 is not a number > 0",
            ),
            ("speed-limit-up", json!("fast"), "speed-limit-up: \"fast\""),
            (
                "download-dir",
                json!("relative/dir"),
                "not an absolute path",
            ),
            (
                "alt-speed-enabled",
                json!(true),
                "alt-speed-enabled: not supported",
            ),
            (
                "start-added-torrents",
                json!("no"),
                "start-added-torrents: \"no\"",
            ),
        ] {
            let err = s.set(&file, &file, key, &value).unwrap_err();
            assert!(err.contains(says), "{key}: {err}");
        }
        assert!(s.settings.is_empty());
    }

    #[test]
    fn a_setting_stands_until_the_files_own_value_changes() {
        let mut file = config();
        let mut s = SessionSettings::default();
        s.set(&file, &file, "seed-queue-size", &json!(3)).unwrap();
        s.set(&file, &file, "peer-limit-global", &json!(77))
            .unwrap();
        assert!(s.drop_changed_in(&file).is_empty());
        assert_eq!(s.apply_to(&file).max_active_seeds, 3);

        // The admin edits the file's seed queue size: the file wins from then on.
        file.max_active_seeds += 1;
        assert_eq!(s.drop_changed_in(&file), ["seed-queue-size"]);
        let running = s.apply_to(&file);
        assert_eq!(running.max_active_seeds, file.max_active_seeds);
        assert_eq!(running.max_peers_global, 77);
    }

    #[test]
    fn settings_round_trip_through_their_file() {
        let dir = crate::test_dir::TempDir::new("session-settings");
        let path = SessionSettings::path_in(&dir.0);
        assert_eq!(
            SessionSettings::load(&path).unwrap(),
            SessionSettings::default()
        );
        let file = config();
        let mut s = SessionSettings::default();
        s.set(&file, &file, "seedRatioLimited", &json!(true))
            .unwrap();
        s.set(&file, &file, "download-dir", &json!("/srv/new"))
            .unwrap();
        s.save(&path).unwrap();
        let loaded = SessionSettings::load(&path).unwrap();
        assert_eq!(loaded.settings, s.settings);
        assert_eq!(loaded.apply_to(&file).download_dir, Path::new("/srv/new"));
        std::fs::write(&path, "{").unwrap();
        assert!(
            SessionSettings::load(&path)
                .unwrap_err()
                .contains("session.json")
        );
    }
}
