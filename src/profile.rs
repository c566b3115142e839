//! Where the time goes, for benchmarks: CPU seconds per kind of thread, added up as each thread
//! ends ([`run_as`]), and each coordinator's event-loop figures ([`LoopStats`]). Reported under
//! the log target `btd::profile` at debug level, so `RUST_LOG=info,btd::profile=debug` turns the
//! report on; it costs one `getrusage` per thread exit and two clock reads per coordinator
//! wake-up, so it is always collected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::resource::{Usage, UsageWho, getrusage};

/// The log target of the report.
pub const TARGET: &str = "btd::profile";

/// Kinds of thread, as in DESIGN.md's thread table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Peer,
    Coordinator,
    Disk,
    Listener,
    Announcer,
    Metadata,
    Tracker,
    Rpc,
}

const ROLES: [Role; 8] = [
    Role::Peer,
    Role::Coordinator,
    Role::Disk,
    Role::Listener,
    Role::Announcer,
    Role::Metadata,
    Role::Tracker,
    Role::Rpc,
];

impl Role {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Coordinator => "coordinator",
            Role::Disk => "disk",
            Role::Listener => "listener",
            Role::Announcer => "announcer",
            Role::Metadata => "metadata",
            Role::Tracker => "tracker",
            Role::Rpc => "rpc",
        }
    }
}

/// CPU microseconds (user + system) of the threads of each role that have ended.
static CPU_MICROS: [AtomicU64; ROLES.len()] = [const { AtomicU64::new(0) }; ROLES.len()];
/// Threads of each role that have ended.
static ENDED: [AtomicU64; ROLES.len()] = [const { AtomicU64::new(0) }; ROLES.len()];

fn micros(usage: &Usage) -> u64 {
    let (user, system) = (usage.user_time(), usage.system_time());
    let us = |t: nix::sys::time::TimeVal| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec()).unwrap_or(0)
    };
    us(user) + us(system)
}

/// Runs a thread's body `f`, then adds the thread's CPU time to `role`'s total.
pub fn run_as<T>(role: Role, f: impl FnOnce() -> T) -> T {
    let out = f();
    if let Ok(usage) = getrusage(UsageWho::RUSAGE_THREAD) {
        CPU_MICROS[role.index()].fetch_add(micros(&usage), Ordering::Relaxed);
        ENDED[role.index()].fetch_add(1, Ordering::Relaxed);
    }
    out
}

/// The report: CPU seconds per role of the threads that ended, and the rest of the process
/// (the main thread and threads still running).
pub fn report() -> String {
    let mut out = String::from("CPU user+sys by thread kind:");
    let mut accounted = 0u64;
    for role in ROLES {
        let (us, n) = (
            CPU_MICROS[role.index()].load(Ordering::Relaxed),
            ENDED[role.index()].load(Ordering::Relaxed),
        );
        accounted += us;
        if n > 0 {
            out.push_str(&format!(
                " {} {:.2} s ({n} threads);",
                role.name(),
                seconds(us)
            ));
        }
    }
    if let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) {
        let total = micros(&usage);
        out.push_str(&format!(
            " main and running threads {:.2} s; process {:.2} s",
            seconds(total.saturating_sub(accounted)),
            seconds(total)
        ));
    }
    out
}

/// Logs [`report`] if the `btd::profile` target is enabled at debug level.
pub fn log_report() {
    if log::log_enabled!(target: TARGET, log::Level::Debug) {
        log::debug!(target: TARGET, "{}", report());
    }
}

#[allow(clippy::cast_precision_loss)] // microseconds of CPU fit f64's 52 bits for 142 years
fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// One coordinator's event loop: wake-ups, peer events, time spent handling them, and the
/// deepest its peer-event queue was seen.
#[derive(Debug, Default)]
pub struct LoopStats {
    pub wakeups: u64,
    pub events: u64,
    pub busy: Duration,
    pub max_queue: usize,
}

impl LoopStats {
    /// Logs the figures for torrent `name` under `btd::profile` (debug).
    pub fn log(&self, name: &str, capacity: usize) {
        #[allow(clippy::cast_precision_loss)] // an average for a log line
        let per_event = if self.events == 0 {
            0.0
        } else {
            self.busy.as_secs_f64() * 1e6 / self.events as f64
        };
        log::debug!(
            target: TARGET,
            "torrent {name}: coordinator woke {} times, handled {} peer events in {:.3} s \
             ({per_event:.1} us each), deepest peer-event queue {}/{capacity}",
            self.wakeups,
            self.events,
            self.busy.as_secs_f64(),
            self.max_queue
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_burns_cpu_is_counted_under_its_role() {
        let before = CPU_MICROS[Role::Tracker.index()].load(Ordering::Relaxed);
        std::thread::spawn(|| {
            run_as(Role::Tracker, || {
                // Burn 20 ms of this thread's own CPU (however loaded the machine), 5 s at most.
                let give_up = std::time::Instant::now() + Duration::from_secs(5);
                let mut x = 0u64;
                while getrusage(UsageWho::RUSAGE_THREAD).map_or(0, |u| micros(&u)) < 20_000
                    && std::time::Instant::now() < give_up
                {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
            });
        })
        .join()
        .unwrap();
        let after = CPU_MICROS[Role::Tracker.index()].load(Ordering::Relaxed);
        assert!(after - before >= 20_000, "{before} -> {after}");
        assert!(ENDED[Role::Tracker.index()].load(Ordering::Relaxed) >= 1);
        let report = report();
        assert!(report.contains("tracker "), "{report}");
        assert!(report.contains("process "), "{report}");
    }
}
