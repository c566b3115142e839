#!/usr/bin/python3
"""Many seeding torrents in one transmission-daemon, for scripts/bench's case scale.

    tr_scale.py --torrents FILE... --dir DIR --bind IP --config-dir DIR [--timeout SECONDS]

Starts transmission-daemon in the foreground with the settings of transmission.py (DHT, LPD,
PEX, uTP, port mapping and blocklists off, peers on IP, RPC on 127.0.0.1 at a free port) in
--config-dir, which it keeps: a second run on the same directory is a restart (transmission
resumes the torrents it holds there; nothing is added). A first run adds every --torrents file
over the RPC (`torrent-add` with `metainfo`, the data being DIR/<torrent name>). Reports on
stdout, one line each, flushed:
    PID <pid>                           transmission-daemon's process id
    SEEDING <seconds> <list_max_s>      every torrent seeding (status 6), seconds since this
                                        script started; list_max_s: the slowest `torrent-get` of
                                        id, name, status and percentDone for all (polled every
                                        second meanwhile)
    EXIT <seconds>                      after SIGTERM or SIGINT: seconds until transmission-daemon
                                        exited (its `stopped` announces included); then exits 0
Errors go to stderr and exit 1 (timeout, daemon died).
"""

import argparse
import base64
import os
import signal
import subprocess
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transmission as tr  # noqa: E402

STATUS_SEED = 6


def own_group_dying_with_parent():
    """In the child, before exec."""
    os.setpgid(0, 0)
    tr.set_pdeathsig()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torrents", nargs="+", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--bind", required=True)
    p.add_argument("--config-dir", required=True)
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    start = time.monotonic()
    signal.signal(signal.SIGTERM, tr.on_signal)
    signal.signal(signal.SIGINT, tr.on_signal)
    os.makedirs(args.config_dir, exist_ok=True)
    restart = os.path.isdir(os.path.join(args.config_dir, "torrents")) and bool(
        os.listdir(os.path.join(args.config_dir, "torrents"))
    )
    rpc_port = tr.free_port("127.0.0.1")
    opts = types.SimpleNamespace(bind=args.bind, dir=args.dir, encryption="tolerated")
    settings = tr.settings(opts, tr.free_port(args.bind), rpc_port)
    with open(os.path.join(args.config_dir, "settings.json"), "w") as f:
        tr.json.dump(settings, f, indent=1)
    daemon = subprocess.Popen(
        ["transmission-daemon", "--foreground", "--config-dir", args.config_dir, "--log-error"],
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        # Its own process group: a SIGTERM to ours (the bench's stop) reaches this script
        # alone, which then stops the daemon once (transmission 3.00 aborts on a second one
        # during its shutdown: "corrupted double-linked list"). It still dies with us.
        preexec_fn=own_group_dying_with_parent,
    )
    try:
        tr.say("PID %d" % daemon.pid)
        rpc = tr.Rpc(rpc_port)
        deadline = start + args.timeout
        while not tr.tcp_listening("127.0.0.1", rpc_port):
            if daemon.poll() is not None:
                raise tr.Failure("transmission-daemon exited with status %d" % daemon.returncode)
            if time.monotonic() > deadline:
                raise tr.Failure("its RPC did not listen within %.0f s" % args.timeout)
            time.sleep(0.05)
        if not restart:
            for path in args.torrents:
                with open(path, "rb") as f:
                    meta = base64.b64encode(f.read()).decode()
                rpc.call(
                    "torrent-add",
                    {"metainfo": meta, "download-dir": os.path.abspath(args.dir)},
                )
        list_max = 0.0
        while True:
            t0 = time.monotonic()
            got = rpc.call("torrent-get", {"fields": ["id", "name", "status", "percentDone"]})
            list_max = max(list_max, time.monotonic() - t0)
            torrents = got.get("torrents", [])
            seeding = sum(1 for t in torrents if t["status"] == STATUS_SEED)
            if seeding == len(args.torrents):
                break
            if daemon.poll() is not None:
                raise tr.Failure("transmission-daemon exited with status %d" % daemon.returncode)
            if time.monotonic() > deadline or tr.Stop.requested:
                raise tr.Failure(
                    "%d of %d seeding after %.0f s" % (seeding, len(args.torrents), args.timeout)
                )
            time.sleep(1)
        tr.say("SEEDING %.3f %.3f" % (time.monotonic() - start, list_max))
        while not tr.Stop.requested:
            if daemon.poll() is not None:
                raise tr.Failure("transmission-daemon exited with status %d" % daemon.returncode)
            time.sleep(0.05)
        t0 = time.monotonic()
        rc = tr.stop_daemon(daemon)
        tr.say("EXIT %.3f" % (time.monotonic() - t0))
        return 0 if rc == 0 else 1
    except tr.Failure as e:
        sys.stderr.write("tr_scale.py: %s\n" % e)
        return 1
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
