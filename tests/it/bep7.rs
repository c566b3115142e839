//! BEP 7: while btd listens on both families (`::`), its HTTP announces carry `ipv4=` and
//! `ipv6=`, so a tracker reached over one family lists it under the other too. Run in a
//! network namespace of the test's own, where loopback holds a "global" address of each family
//! (documentation prefixes) and the default routes point at it: no real network is touched.

use std::ffi::OsString;
use std::process::Command;

use crate::support::daemon::within;
use crate::support::{
    Btd, RecordingTracker, SHORT, TempDir, describe_announces, download_args, run_to_end,
    seed_payload, wait_until,
};

/// Runs `f` on a thread of its own in a new network namespace (loopback up, 203.0.113.5 and
/// 2001:db8:1::5 on it, default routes from them); the processes `f` starts inherit it, and
/// it goes away with them. Needs root, as the tmpfs tests do.
fn in_own_network_namespace(f: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): the integration tests run as root");
        for args in [
            "link set lo up",
            "addr add 203.0.113.5/32 dev lo",
            "addr add 2001:db8:1::5/128 dev lo",
            "route add default dev lo src 203.0.113.5",
            "-6 route add default dev lo src 2001:db8:1::5",
        ] {
            let mut cmd = Command::new("ip");
            cmd.args(args.split(' '));
            run_to_end(&format!("ip {args}"), cmd, SHORT).assert_success();
        }
        f();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn http_announces_tell_the_tracker_our_ipv4_and_ipv6_addresses_when_listening_on_both() {
    in_own_network_namespace(|| {
        let tmp = TempDir::new("bep7");
        let seed_dir = seed_payload(&tmp, "bep7", &[("bep7.bin", 100_000)]);
        let tracker = RecordingTracker::start();
        let torrent = tmp.join("bep7.torrent");
        Btd::run([
            OsString::from("create"),
            seed_dir.join("bep7.bin").into(),
            "-o".into(),
            torrent.clone().into(),
            "-t".into(),
            tracker.announce_url().into(),
        ])
        .assert_success();

        // On both families: ipv4= and ipv6= (the tracker is reached over IPv4).
        let out = tmp.subdir("both");
        let mut btd = Btd::spawn(
            "btd on ::",
            Btd::command(download_args(torrent.clone(), &out, "::")),
        );
        wait_until(within(SHORT), "an announce from btd on ::", || {
            !tracker.announces().is_empty()
        });
        btd.terminate_and_assert_ok(SHORT);
        let all = tracker.announces();
        let first = &all[0];
        assert!(
            first.target.contains("&ipv4=203.0.113.5")
                && first.target.contains("&ipv6=2001%3Adb8%3A1%3A%3A5"),
            "announce without our addresses:\n{}",
            describe_announces(&all)
        );

        // On one family only: neither (the tracker sees the address itself).
        let seen = all.len();
        let out = tmp.subdir("v4");
        let mut btd = Btd::spawn(
            "btd on 0.0.0.0",
            Btd::command(download_args(torrent, &out, "0.0.0.0")),
        );
        wait_until(within(SHORT), "an announce from btd on 0.0.0.0", || {
            tracker.announces().len() > seen
        });
        btd.terminate_and_assert_ok(SHORT);
        let all = tracker.announces();
        assert!(
            !all[seen].target.contains("ipv4=") && !all[seen].target.contains("ipv6="),
            "an IPv4-only btd told its addresses:\n{}",
            describe_announces(&all)
        );
    });
}
