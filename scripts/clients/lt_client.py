#!/usr/bin/python3
"""A libtorrent 2.0 peer for btd's tests and benchmark, driven from the command line.

    lt_client.py {seed|leech} --torrent FILE [--torrent FILE]... --dir DIR --bind IP [--port N]
                 [--peer HOST:PORT]... [--timeout SECONDS] [--announce] [--upload-limit BYTES]
                 [--seed-mode] [--log-uploads] [--log-peers] [--skip-file INDEX]...
                 [--keep-redundant]

Output on stdout, one line each, flushed:
    LISTENING <port>                    once the TCP listen socket is open
    PROGRESS <fraction> <download_rate_Bps> <upload_rate_Bps> <num_peers>   every second
    COMPLETE <seconds since start>      (leech) every piece verified; then exits 0
    SEEDING                             (seed) the data in DIR checked complete
    UPLOADED <piece> <block>            (--log-uploads) a block was sent to a peer
    PEER <ip>:<port> rc4=.. plaintext_header=..   (--log-peers) a connection past its handshakes
    UPLOAD_ONLY <ip>:<port>             (--log-peers) that peer said it only uploads (BEP 21)
    GONE <ip>:<port> <error>            (--log-peers) a connection closed, and why ("End of file":
                                        the other side closed it)
With several --torrent, all of them run in the one session and share DIR: PROGRESS sums them
(the fraction is of all their bytes), SEEDING and COMPLETE wait for every torrent.
--upload-limit caps each torrent's upload rate (bytes per second; 0, the default, is no cap); it
applies to loopback peers too, which libtorrent otherwise exempts from the session's limits.
--seed-mode (seed only) adds the torrents with libtorrent's torrent_flags.seed_mode: the data in DIR
is trusted without the check at start, so SEEDING comes at once; libtorrent instead hashes each
piece the first time a peer requests it (and leaves seed mode to check everything if one fails).
Errors go to stderr and exit 1 (timeout, incomplete data in seed mode, listen failure).
A seeder runs until SIGTERM or SIGINT and then exits 0.

Settings: DHT, LSD, UPnP, NAT-PMP and uTP are off (they stop libtorrent from talking to other
processes on loopback, and would reach outside it), several connections per IP are allowed, and the
limits start from libtorrent's high_performance_seed() pack, so that the benchmark compares btd with
a well-tuned libtorrent rather than a throttled one. Without --announce the torrent's trackers are
removed: peers come only from --peer, which is dialled again every few seconds while not connected.

Run with the environment variable DIE_WITH_PARENT=1 to be killed (SIGKILL) when the
process that started this one dies, so a crashed test run leaves nothing behind.
"""

import argparse
import os
import signal
import sys
import time

try:
    import libtorrent as lt
except ImportError as err:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        "lt_client: cannot import libtorrent (%s); install python3-libtorrent "
        "(scripts/test does) and run with /usr/bin/python3\n" % err
    )
    sys.exit(1)

RECONNECT_INTERVAL_S = 3.0
PROGRESS_INTERVAL_S = 1.0


def die_with_parent():
    """Ask Linux to SIGKILL us when our parent dies (prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            sys.exit(1)
    except OSError:
        pass


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fail(message):
    sys.stderr.write("lt_client: " + message + "\n")
    sys.stderr.flush()
    sys.exit(1)


def parse_peer(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError("peer must be HOST:PORT, got %r" % text)
    return (host.strip("[]"), int(port))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="lt_client.py", description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["seed", "leech", "dht"], help="dht: a bare DHT node")
    p.add_argument("--torrent", action="append", default=[], help=".torrent file; repeatable")
    p.add_argument("--magnet", default=None, help="leech: a magnet link instead of --torrent")
    p.add_argument(
        "--dht-bootstrap",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="run the DHT, bootstrapping only from these nodes (loopback ones in tests)",
    )
    p.add_argument("--dir", required=True, help="save path: the data is DIR/<torrent name>")
    p.add_argument("--bind", required=True, help="IP to listen on and to connect from")
    p.add_argument("--port", type=int, default=0, help="TCP listen port (0: any free port)")
    p.add_argument("--peer", type=parse_peer, action="append", default=[], help="HOST:PORT to dial")
    p.add_argument("--timeout", type=float, default=None, help="give up (exit 1) after SECONDS")
    p.add_argument("--announce", action="store_true", help="use the torrent's trackers")
    p.add_argument(
        "--lsd",
        action="store_true",
        help="local service discovery (BEP 14) on; only inside a network namespace of the test's own",
    )
    p.add_argument(
        "--upload-limit",
        type=int,
        default=0,
        metavar="BYTES",
        help="upload at most BYTES per second per torrent (0: no limit)",
    )
    p.add_argument(
        "--seed-mode",
        action="store_true",
        help="seed: trust the data without checking it at start (libtorrent's seed_mode)",
    )
    p.add_argument(
        "--log-uploads",
        action="store_true",
        help="print UPLOADED <piece> <block> for every block sent to a peer",
    )
    p.add_argument(
        "--encryption",
        choices=["plaintext", "enabled", "forced"],
        default=None,
        help="libtorrent's in/out_enc_policy: pe_disabled, pe_enabled or pe_forced (default: "
        "plaintext out, enabled in)",
    )
    p.add_argument(
        "--enc-level",
        choices=["rc4", "plaintext", "both"],
        default="both",
        help="allowed_enc_level: what an encrypted connection may carry after the handshake",
    )
    p.add_argument(
        "--log-peers",
        action="store_true",
        help="print PEER <ip>:<port> rc4=<0|1> plaintext_header=<0|1> once per connection, after "
        "its handshakes; UPLOAD_ONLY <ip>:<port> once the peer said it only uploads (BEP 21); "
        "GONE <ip>:<port> <error> when a connection is closed",
    )
    p.add_argument(
        "--skip-file",
        type=int,
        action="append",
        default=[],
        metavar="INDEX",
        help="do not download file INDEX (priority 0); a seed is then one with every other file",
    )
    p.add_argument(
        "--keep-redundant",
        action="store_true",
        help="keep connections where neither side wants anything (close_redundant_connections "
        "off), so that only the other side can close them",
    )
    args = p.parse_args(argv)
    if args.mode != "dht" and not args.torrent and not args.magnet:
        p.error("--torrent or --magnet is required")
    if args.magnet and args.mode != "leech":
        p.error("--magnet is for leech only")
    if args.seed_mode and args.mode != "seed":
        p.error("--seed-mode is for seed only")
    return args


def dht_settings(bootstrap):
    """The DHT on, bootstrapping only from `bootstrap` (HOST:PORT strings), with loopback and
    several nodes per IP allowed (libtorrent refuses both by default)."""
    return {
        "enable_dht": True,
        "dht_bootstrap_nodes": ",".join(bootstrap),
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_prefer_verified_node_ids": False,
        "dht_announce_interval": 10,
    }


def session_settings(bind_ip, port, lsd=False):
    settings = dict(lt.high_performance_seed())
    settings.update(
        {
            "enable_dht": False,
            "enable_lsd": lsd,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_tcp": True,
            "enable_outgoing_tcp": True,
            "allow_multiple_connections_per_ip": True,
            "listen_interfaces": ("[%s]:%d" if ":" in bind_ip else "%s:%d") % (bind_ip, port),
            "outgoing_interfaces": bind_ip,
            "listen_system_port_fallback": False,
            # Plaintext first: an encrypted attempt to a peer without MSE costs a reconnect.
            "out_enc_policy": int(lt.enc_policy.pe_disabled),
            "in_enc_policy": int(lt.enc_policy.pe_enabled),
            "connections_limit": 8000,
            "active_downloads": -1,
            "active_seeds": -1,
            "active_limit": -1,
            "unchoke_slots_limit": -1,
            "max_failcount": 1000,
            "min_reconnect_time": 1,
            "stop_tracker_timeout": 1,
            "min_announce_interval": 5,
            "alert_mask": int(
                lt.alert.category_t.error_notification | lt.alert.category_t.status_notification
            ),
            "user_agent": "btd-test-libtorrent/" + lt.__version__,
        }
    )
    return settings


def log_peers(handles, logged, upload_only):
    """--log-peers: PEER once a connection is past its handshakes, UPLOAD_ONLY once the peer
    said it only uploads. (GONE comes from libtorrent's peer_disconnected_alert.)"""
    for handle in handles:
        for peer in handle.get_peer_info():
            key = (peer.ip[0], peer.ip[1])
            if peer.flags & (lt.peer_info.handshake | lt.peer_info.connecting):
                continue
            if key not in logged:
                logged.add(key)
                say(
                    "PEER %s:%d rc4=%d plaintext_header=%d"
                    % (
                        key[0],
                        key[1],
                        int(bool(peer.flags & lt.peer_info.rc4_encrypted)),
                        int(bool(peer.flags & lt.peer_info.plaintext_encrypted)),
                    )
                )
            if key not in upload_only and peer.flags & lt.peer_info.upload_only:
                upload_only.add(key)
                say("UPLOAD_ONLY %s:%d" % key)


class Stop:
    requested = False


def on_signal(_signum, _frame):
    Stop.requested = True


def main(argv):
    if os.environ.get("DIE_WITH_PARENT") == "1":
        die_with_parent()
    args = parse_args(argv)
    start = time.monotonic()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    infos = []
    for path in args.torrent:
        try:
            infos.append(lt.torrent_info(path))
        except RuntimeError as err:
            fail("cannot read torrent %s: %s" % (path, err))
    if not os.path.isdir(args.dir):
        if args.mode == "seed":
            fail("seed: data directory %s does not exist" % args.dir)
        os.makedirs(args.dir, exist_ok=True)

    settings = session_settings(args.bind, args.port, args.lsd)
    if args.encryption is not None:
        policy = {
            "plaintext": lt.enc_policy.pe_disabled,
            "enabled": lt.enc_policy.pe_enabled,
            "forced": lt.enc_policy.pe_forced,
        }[args.encryption]
        settings["out_enc_policy"] = int(policy)
        settings["in_enc_policy"] = int(policy)
        settings["allowed_enc_level"] = int(
            {
                "rc4": lt.enc_level.rc4,
                "plaintext": lt.enc_level.plaintext,
                "both": lt.enc_level.both,
            }[args.enc_level]
        )
        settings["prefer_rc4"] = args.enc_level != "plaintext"
    if args.dht_bootstrap or args.mode == "dht":
        settings.update(dht_settings(args.dht_bootstrap))
    if args.keep_redundant:
        settings["close_redundant_connections"] = False
    if args.log_peers:
        settings["alert_mask"] |= int(lt.alert.category_t.connect_notification)
    if args.log_uploads:
        settings["alert_mask"] |= int(lt.alert.category_t.upload_notification)
    ses = lt.session(settings)

    handles = []
    for info in infos:
        atp = lt.add_torrent_params()
        atp.ti = info
        atp.save_path = args.dir
        # Not auto-managed, so libtorrent's queueing never holds the torrent back; paused until
        # the trackers are settled, so nothing is announced to a tracker we were told not to use.
        atp.flags = (atp.flags & ~lt.torrent_flags.auto_managed) | lt.torrent_flags.paused
        if args.seed_mode:
            atp.flags |= lt.torrent_flags.seed_mode
        if args.skip_file:
            priorities = [4] * info.num_files()
            for index in args.skip_file:
                if not 0 <= index < info.num_files():
                    fail("--skip-file %d: the torrent has %d files" % (index, info.num_files()))
                priorities[index] = 0
            atp.file_priorities = priorities
        handle = ses.add_torrent(atp)
        if not args.announce:
            handle.replace_trackers([])
        if args.upload_limit > 0:
            # A torrent's own limit applies to every peer of it, local ones included.
            handle.set_upload_limit(args.upload_limit)
        handle.resume()
        handles.append(handle)
    if args.magnet:
        atp = lt.parse_magnet_uri(args.magnet)
        atp.save_path = args.dir
        atp.flags &= ~lt.torrent_flags.auto_managed
        handle = ses.add_torrent(atp)
        handle.resume()  # added paused by default, and not auto-managed
        handles.append(handle)
    total_size = sum(info.total_size() for info in infos) or 1
    if args.mode == "dht":
        # A bare node: say where it listens, then answer the DHT until stopped.
        while not Stop.requested:
            for alert in ses.pop_alerts():
                if isinstance(alert, lt.listen_failed_alert):
                    fail("cannot listen on %s:%d: %s" % (args.bind, args.port, alert.message()))
            if ses.is_listening() and ses.listen_port() != 0:
                say("LISTENING %d" % ses.listen_port())
                break
            ses.wait_for_alert(100)
        while not Stop.requested:
            ses.pop_alerts()
            ses.wait_for_alert(500)
        return 0

    deadline = None if args.timeout is None else start + args.timeout
    listening = False
    checked = False
    last_dial = 0.0
    last_progress = 0.0
    logged_peers = set()
    upload_only_peers = set()

    while not Stop.requested:
        now = time.monotonic()
        statuses = [h.status() for h in handles]
        if deadline is not None and now > deadline:
            done = sum(st.total_wanted_done for st in statuses)
            fail(
                "timeout after %.0f s (%s, progress %.4f, %d peers)"
                % (
                    args.timeout,
                    args.mode,
                    float(done) / total_size,
                    sum(st.num_peers for st in statuses),
                )
            )

        for alert in ses.pop_alerts():
            if isinstance(alert, lt.listen_failed_alert):
                fail("cannot listen on %s:%d: %s" % (args.bind, args.port, alert.message()))
            if isinstance(alert, (lt.torrent_error_alert, lt.file_error_alert)):
                fail("torrent error: %s" % alert.message())
            if isinstance(alert, lt.block_uploaded_alert):
                say("UPLOADED %d %d" % (alert.piece_index, alert.block_index))
            if args.log_peers and isinstance(alert, lt.peer_disconnected_alert):
                key = (alert.ip[0], alert.ip[1])
                logged_peers.discard(key)
                upload_only_peers.discard(key)
                say("GONE %s:%d %s" % (key[0], key[1], alert.error.message()))

        if not listening and ses.is_listening() and ses.listen_port() != 0:
            listening = True
            say("LISTENING %d" % ses.listen_port())

        checking = any(
            st.state
            in (lt.torrent_status.checking_files, lt.torrent_status.checking_resume_data)
            for st in statuses
        )
        paused = any(st.paused for st in statuses)

        if args.mode == "seed" and not checked and not checking and not paused:
            checked = True
            for info, st in zip(infos, statuses):
                # With --skip-file, every wanted piece is a seed's worth (libtorrent: finished).
                if not (st.is_seeding or (args.skip_file and st.is_finished)):
                    have = sum(1 for x in st.pieces if x)
                    fail(
                        "seed: the data in %s is incomplete: %d of %d pieces verified"
                        % (os.path.join(args.dir, info.name()), have, info.num_pieces())
                    )
            say("SEEDING")

        down = sum(st.download_payload_rate for st in statuses)
        up = sum(st.upload_payload_rate for st in statuses)
        npeers = sum(st.num_peers for st in statuses)
        if (
            args.mode == "leech"
            and not checking
            and all(
                (st.is_seeding or st.is_finished)
                and st.state in (lt.torrent_status.seeding, lt.torrent_status.finished)
                for st in statuses
            )
        ):
            say("PROGRESS 1.000000 %d %d %d" % (down, up, npeers))
            say("COMPLETE %.3f" % (time.monotonic() - start))
            break

        if listening and args.peer and now - last_dial >= RECONNECT_INTERVAL_S:
            last_dial = now
            for handle in handles:
                # An incoming connection comes from an ephemeral port, so match on the address
                # too (every process in a test has its own loopback address).
                peers = handle.get_peer_info()
                connected = {(p.ip[0], p.ip[1]) for p in peers} | {p.ip[0] for p in peers}
                for peer in args.peer:
                    if peer not in connected and peer[0] not in connected:
                        handle.connect_peer(peer)

        if args.log_peers:
            log_peers(handles, logged_peers, upload_only_peers)

        if now - last_progress >= PROGRESS_INTERVAL_S:
            last_progress = now
            done = sum(st.total_wanted_done for st in statuses)
            say("PROGRESS %.6f %d %d %d" % (float(done) / total_size, down, up, npeers))

        ses.wait_for_alert(100)

    ses.pause()
    del ses
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
