#!/usr/bin/python3
"""A transmission-daemon peer for btd's tests, driven from the command line.

    transmission.py {seed|leech} --torrent FILE --dir DIR --bind IP [--port N]
                    [--timeout SECONDS] [--config-dir DIR] [--poll SECONDS] [--rusage]

Starts transmission-daemon in the foreground with a config dir of its own (a fresh temporary one
unless --config-dir is given): DHT, LPD, PEX, uTP, port mapping and blocklists off, peers on
IP:PORT (PORT 0: a free one), RPC on 127.0.0.1 at a free port with no authentication. Adds the
torrent with transmission-remote, the data being DIR/<torrent name>, and reports on stdout, one
line each, flushed, in the same words as lt_client.py:
    LISTENING <port>                    the daemon listens for peers on IP:<port>
    RPC <port>                          right after LISTENING: its RPC answers on 127.0.0.1:<port>
                                        (no authentication; for tests that ask it themselves)
    PROGRESS <fraction> <download_rate_Bps> <upload_rate_Bps> <num_peers>   every second
    SEEDING                             (seed) the data in DIR verified complete
    COMPLETE <seconds since start>      (leech) every piece verified and the daemon stopped
                                        cleanly (its cache flushed); then exits 0
    RUSAGE <user_s> <sys_s> <maxrss_kib> (leech, with --rusage) just before COMPLETE: the CPU
                                        time and peak RSS of transmission-daemon itself (all its
                                        threads, from its start to its exit; getrusage of the
                                        reaped child, so exact, not sampled)
The daemon's state is polled over RPC every --poll seconds (default 0.2), which bounds how late
COMPLETE can come.
Errors go to stderr and exit 1 (timeout, incomplete data in seed mode, daemon died).
A seeder runs until SIGTERM or SIGINT, stops the daemon and exits 0.

Transmission 3.00 does not dial peers in 127.0.0.0/8, so on loopback the other side must connect
to the port printed after LISTENING. The daemon is killed if this script dies; with the
environment variable DIE_WITH_PARENT=1 this script is killed (SIGKILL) when its parent dies.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

STATUS_CHECK_WAIT = 1
STATUS_CHECK = 2
STOP_TIMEOUT_S = 15.0


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Failure(Exception):
    pass


def set_pdeathsig():
    """In the child, before exec: SIGKILL it when this script dies."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def free_port(ip):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def tcp_listening(ip, port):
    """True when some socket listens on ip:port (read from /proc, so no connection is made)."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(ip.split("."))), port)
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


class Rpc:
    def __init__(self, port):
        self.port = port
        self.url = "http://127.0.0.1:%d/transmission/rpc" % port
        self.session_id = ""

    def call(self, method, arguments):
        body = json.dumps({"method": method, "arguments": arguments}).encode()
        for _ in range(3):
            req = urllib.request.Request(
                self.url,
                data=body,
                headers={"X-Transmission-Session-Id": self.session_id},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    reply = json.loads(resp.read().decode())
            except urllib.error.HTTPError as err:
                if err.code == 409:
                    self.session_id = err.headers.get("X-Transmission-Session-Id", "")
                    continue
                raise
            if reply.get("result") != "success":
                raise Failure("rpc %s: %s" % (method, reply.get("result")))
            return reply.get("arguments", {})
        raise Failure("rpc %s: no session id" % method)


def settings(args, peer_port, rpc_port):
    return {
        "bind-address-ipv4": args.bind,
        "bind-address-ipv6": "::1",
        "peer-port": peer_port,
        "peer-port-random-on-start": False,
        "port-forwarding-enabled": False,
        "dht-enabled": False,
        "lpd-enabled": False,
        "pex-enabled": False,
        "utp-enabled": False,
        "blocklist-enabled": False,
        # 0: prefer plaintext (tolerated), 1: prefer encryption, 2: require it (--encryption).
        "encryption": {"tolerated": 0, "preferred": 1, "required": 2}[args.encryption],
        "download-dir": os.path.abspath(args.dir),
        "incomplete-dir-enabled": False,
        "watch-dir-enabled": False,
        "rename-partial-files": False,
        "start-added-torrents": True,
        "download-queue-enabled": False,
        "seed-queue-enabled": False,
        "queue-stalled-enabled": False,
        "ratio-limit-enabled": False,
        "idle-seeding-limit-enabled": False,
        "speed-limit-down-enabled": False,
        "speed-limit-up-enabled": False,
        "alt-speed-enabled": False,
        "peer-limit-global": 500,
        "peer-limit-per-torrent": 200,
        "cache-size-mb": 16,
        "rpc-enabled": True,
        "rpc-bind-address": "127.0.0.1",
        "rpc-port": rpc_port,
        "rpc-authentication-required": False,
        "rpc-whitelist-enabled": False,
        "rpc-host-whitelist-enabled": False,
        "message-level": 1,
        "umask": 18,
    }


class Stop:
    requested = False


def on_signal(_signum, _frame):
    Stop.requested = True


def stop_daemon(daemon, rusage=None):
    """SIGTERM the daemon and wait for it; returns its exit status. With a list as rusage, the
    daemon is reaped with wait4 and its resource usage appended to the list."""
    if daemon.poll() is not None:
        return daemon.returncode
    daemon.send_signal(signal.SIGTERM)
    if rusage is not None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(daemon.pid, os.WNOHANG)
            if pid == daemon.pid:
                daemon.returncode = os.waitstatus_to_exitcode(status)
                rusage.append(usage)
                return daemon.returncode
            if time.monotonic() > deadline:
                daemon.kill()
                daemon.wait()
                raise Failure(
                    "transmission-daemon did not stop within %.0f s of SIGTERM" % STOP_TIMEOUT_S
                )
            time.sleep(0.01)
    try:
        return daemon.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
        raise Failure("transmission-daemon did not stop within %.0f s of SIGTERM" % STOP_TIMEOUT_S)


def run(args, config_dir, start):
    deadline = None if args.timeout is None else start + args.timeout

    def check_deadline(what):
        if deadline is not None and time.monotonic() > deadline:
            raise Failure("timeout after %.0f s %s" % (args.timeout, what))

    if args.mode == "seed" and not os.path.isdir(args.dir):
        raise Failure("seed: data directory %s does not exist" % args.dir)
    os.makedirs(args.dir, exist_ok=True)
    peer_port = args.port or free_port(args.bind)
    rpc_port = free_port("127.0.0.1")
    with open(os.path.join(config_dir, "settings.json"), "w") as f:
        json.dump(settings(args, peer_port, rpc_port), f, indent=1)

    daemon = subprocess.Popen(
        ["transmission-daemon", "--foreground", "--config-dir", config_dir, "--log-error"],
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        preexec_fn=set_pdeathsig,
    )
    try:
        return drive(args, daemon, Rpc(rpc_port), peer_port, start, check_deadline)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def drive(args, daemon, rpc, peer_port, start, check_deadline):
    def alive():
        if daemon.poll() is not None:
            raise Failure("transmission-daemon exited with status %d" % daemon.returncode)

    # Wait for the RPC port, then add the torrent.
    while True:
        alive()
        check_deadline("waiting for transmission-daemon's RPC")
        try:
            rpc.call("session-get", {})
            break
        except (OSError, urllib.error.URLError):
            time.sleep(0.1)
    remote = subprocess.run(
        [
            "transmission-remote",
            "127.0.0.1:%d" % rpc.port,
            "--add",
            os.path.abspath(args.torrent),
            "--download-dir",
            os.path.abspath(args.dir),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if remote.returncode != 0 or "success" not in remote.stdout:
        raise Failure(
            "transmission-remote --add %s failed: %s %s"
            % (args.torrent, remote.stdout.strip(), remote.stderr.strip())
        )
    torrents = rpc.call("torrent-get", {"fields": ["id"]})["torrents"]
    if len(torrents) != 1:
        raise Failure("expected one torrent in the daemon, found %d" % len(torrents))
    tid = torrents[0]["id"]

    verify_requested = None
    if args.mode == "seed":
        # Verify explicitly: whether an added torrent is checked on its own depends on the version.
        rpc.call("torrent-verify", {"ids": [tid]})
        verify_requested = time.monotonic()

    while not tcp_listening(args.bind, peer_port):
        alive()
        check_deadline("waiting for transmission to listen on %s:%d" % (args.bind, peer_port))
        time.sleep(0.05)
    say("LISTENING %d" % peer_port)
    say("RPC %d" % rpc.port)

    fields = [
        "percentDone",
        "rateDownload",
        "rateUpload",
        "peersConnected",
        "status",
        "error",
        "errorString",
        "haveValid",
        "sizeWhenDone",
        "leftUntilDone",
    ]
    seeding_announced = False
    seen_checking = False
    last_progress = 0.0
    while not Stop.requested:
        alive()
        t = rpc.call("torrent-get", {"ids": [tid], "fields": fields})["torrents"][0]
        now = time.monotonic()
        if now - last_progress >= 1.0:
            last_progress = now
            say(
                "PROGRESS %.6f %d %d %d"
                % (t["percentDone"], t["rateDownload"], t["rateUpload"], t["peersConnected"])
            )
        if t["error"] in (3,):  # local error: the data cannot be read or written
            raise Failure("transmission: %s" % t["errorString"])
        checking = t["status"] in (STATUS_CHECK_WAIT, STATUS_CHECK)
        seen_checking = seen_checking or checking
        done = t["leftUntilDone"] == 0 and t["haveValid"] == t["sizeWhenDone"]
        if args.mode == "seed" and not seeding_announced and not checking:
            # A small torrent verifies between two polls, so "never seen checking" is not proof
            # that the check has not run: after a few seconds, take what we see as the result.
            if done:
                seeding_announced = True
                say("SEEDING")
            elif seen_checking or now - verify_requested > 5.0:
                raise Failure(
                    "seed: the data in %s is incomplete: %d of %d bytes verified"
                    % (args.dir, t["haveValid"], t["sizeWhenDone"])
                )
        if args.mode == "leech" and done and not checking:
            usage = []
            code = stop_daemon(daemon, usage)
            if code != 0:
                raise Failure("transmission-daemon exited with status %d after completing" % code)
            if args.rusage:
                if not usage:
                    raise Failure("transmission-daemon exited on its own: no resource usage")
                ru = usage[0]
                say("RUSAGE %.3f %.3f %d" % (ru.ru_utime, ru.ru_stime, ru.ru_maxrss))
            say("COMPLETE %.3f" % (time.monotonic() - start))
            return 0
        check_deadline("(%s, progress %.4f)" % (args.mode, t["percentDone"]))
        time.sleep(args.poll)
    stop_daemon(daemon)
    return 0


def main(argv):
    if os.environ.get("DIE_WITH_PARENT") == "1":
        set_pdeathsig()
    p = argparse.ArgumentParser(prog="transmission.py", description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["seed", "leech"])
    p.add_argument("--torrent", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--config-dir", default=None)
    p.add_argument("--poll", type=float, default=0.2, help="seconds between RPC status polls")
    p.add_argument(
        "--rusage", action="store_true", help="leech: print the daemon's RUSAGE before COMPLETE"
    )
    p.add_argument(
        "--encryption",
        choices=["tolerated", "preferred", "required"],
        default="tolerated",
        help="transmission's encryption setting (default: tolerated, plaintext preferred)",
    )
    args = p.parse_args(argv)
    start = time.monotonic()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if shutil.which("transmission-daemon") is None or shutil.which("transmission-remote") is None:
        sys.stderr.write("transmission.py: transmission-daemon/transmission-remote not found; "
                         "install transmission-daemon (scripts/test does)\n")
        return 1
    own_config = args.config_dir is None
    config_dir = tempfile.mkdtemp(prefix="btd-transmission-") if own_config else args.config_dir
    os.makedirs(config_dir, exist_ok=True)
    try:
        return run(args, config_dir, start)
    except Failure as err:
        sys.stderr.write("transmission.py: %s\n" % err)
        return 1
    finally:
        if own_config:
            shutil.rmtree(config_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
