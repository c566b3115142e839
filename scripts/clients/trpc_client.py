#!/usr/bin/env python3
"""A client of a Transmission RPC server through the Python library transmission-rpc (PyPI), for
btd's tests: one operation per run, its outcome as one line of JSON on stdout.

    trpc_client.py --host IP --port N [--user U --password P] COMMAND [ARGS]

    session                      version, rpc_version, download_dir, and `unreadable`: each
                                 property of the library's Session and SessionStats that raised
                                 when read (name -> error), which should be none
    add FILE --dir DIR [--paused] [--label L]...
                                 torrent-add of FILE's bytes: {"id", "hash", "name"}
    list                         every torrent: [{"id", "hash", "name", "status", "progress"}]
    get HASH                     the torrent read with every field the library asks for, through
                                 its properties (status, percent_done, files, trackers, ...), and
                                 `unreadable` as above for the Torrent's properties
    start HASH | stop HASH | verify HASH
    remove HASH [--delete]       torrent-remove, with delete-local-data when --delete
    rename HASH PATH NAME        torrent-rename-path: {"path", "name"} as the library returns them

Run it with the interpreter of the venv that scripts/install-deps makes (transmission-rpc is not
a Debian package). Errors go to stderr and exit 1.
"""

import argparse
import json
import sys

try:
    from transmission_rpc import Client
    from transmission_rpc.session import Session, SessionStats
    from transmission_rpc.torrent import Torrent
except ImportError as err:
    sys.stderr.write(
        "trpc_client.py: cannot import transmission_rpc (%s): run scripts/install-deps and use "
        "its venv's python\n" % err
    )
    sys.exit(1)


def out(value):
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


def unreadable(obj, cls):
    """Each property of `cls` that raises when read on `obj`: name -> the error."""
    failed = {}
    for name in dir(cls):
        if name.startswith("_") or not isinstance(getattr(cls, name, None), property):
            continue
        try:
            getattr(obj, name)
        except Exception as err:  # what the library raises is the finding
            failed[name] = "%s: %s" % (type(err).__name__, err)
    return failed


def connect(args):
    return Client(
        host=args.host,
        port=args.port,
        username=args.user,
        password=args.password,
        timeout=15,
    )


def torrent_summary(t):
    return {
        "id": t.id,
        "hash": t.hash_string,
        "name": t.name,
        "status": str(t.status),
        "progress": t.progress,
    }


def run(args):
    c = connect(args)
    if args.command == "session":
        s = c.get_session()
        stats = c.session_stats()
        bad = unreadable(s, Session)
        bad.update({"stats." + k: v for k, v in unreadable(stats, SessionStats).items()})
        out(
            {
                "version": s.version,
                "rpc_version": s.rpc_version,
                "download_dir": s.download_dir,
                "torrent_count": stats.torrent_count,
                "unreadable": bad,
            }
        )
    elif args.command == "add":
        with open(args.file, "rb") as f:
            t = c.add_torrent(
                f, download_dir=args.dir, paused=args.paused, labels=args.label or None
            )
        out({"id": t.id, "hash": t.hash_string, "name": t.name})
    elif args.command == "list":
        out([torrent_summary(t) for t in c.get_torrents()])
    elif args.command == "get":
        t = c.get_torrent(args.hash)
        out(
            dict(
                torrent_summary(t),
                percent_done=t.percent_done,
                total_size=t.total_size,
                left_until_done=t.left_until_done,
                download_dir=t.download_dir,
                is_finished=t.is_finished,
                eta=None if t.eta is None else t.eta.total_seconds(),
                file_count=t.file_count,
                files=[
                    {"name": f.name, "size": f.size, "completed": f.completed,
                     "selected": f.selected, "priority": int(f.priority)}
                    for f in t.get_files()
                ],
                trackers=[tr.announce for tr in t.trackers],
                labels=t.labels,
                piece_count=t.piece_count,
                date_added=t.added_date.isoformat(),
                unreadable=unreadable(t, Torrent),
            )
        )
    elif args.command == "start":
        c.start_torrent(args.hash)
        out({"started": args.hash})
    elif args.command == "stop":
        c.stop_torrent(args.hash)
        out({"stopped": args.hash})
    elif args.command == "verify":
        c.verify_torrent(args.hash)
        out({"verifying": args.hash})
    elif args.command == "remove":
        c.remove_torrent(args.hash, delete_data=args.delete)
        out({"removed": args.hash})
    elif args.command == "rename":
        path, name = c.rename_torrent_path(args.hash, location=args.path, name=args.name)
        out({"path": path, "name": name})
    return 0


def main(argv):
    p = argparse.ArgumentParser(prog="trpc_client.py", description=__doc__.split("\n")[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default=None)
    p.add_argument("--password", default=None)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("session")
    add = sub.add_parser("add")
    add.add_argument("file")
    add.add_argument("--dir", required=True)
    add.add_argument("--paused", action="store_true")
    add.add_argument("--label", action="append")
    sub.add_parser("list")
    for name in ("get", "start", "stop", "verify"):
        sub.add_parser(name).add_argument("hash")
    remove = sub.add_parser("remove")
    remove.add_argument("hash")
    remove.add_argument("--delete", action="store_true")
    rename = sub.add_parser("rename")
    rename.add_argument("hash")
    rename.add_argument("path")
    rename.add_argument("name")
    args = p.parse_args(argv)
    try:
        return run(args)
    except Exception as err:
        sys.stderr.write("trpc_client.py %s: %s: %s\n" % (args.command, type(err).__name__, err))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
