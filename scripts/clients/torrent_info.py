#!/usr/bin/python3
"""Print what libtorrent reads from a .torrent file, as one JSON object on stdout.

    torrent_info.py FILE.torrent
    torrent_info.py --each FILE.torrent...


Keys: name, info_hash (v1, 40 hex digits), piece_length, num_pieces, total_size,
files ([{path, size}], paths relative to the torrent's root, '/'-separated, the torrent name
first for a multi-file torrent), trackers ([{url, tier}]), private, comment, creator.
btd's tests use it to read back what `btd create` wrote with a reader that is not ours.
Exit 1 with a message when libtorrent cannot read the file. With --each, one JSON object per
line for each file in turn, {"file": FILE, "error": MESSAGE} for one libtorrent refuses, exit 0.
"""

import json
import sys

try:
    import libtorrent as lt
except ImportError as err:  # pragma: no cover - depends on the machine
    sys.stderr.write("torrent_info: cannot import libtorrent (%s); install python3-libtorrent\n" % err)
    sys.exit(1)


def describe(ti):
    fs = ti.files()
    return {
        "name": ti.name(),
        "info_hash": str(ti.info_hashes().v1),
        "piece_length": ti.piece_length(),
        "num_pieces": ti.num_pieces(),
        "total_size": ti.total_size(),
        "files": [
            {"path": fs.file_path(i).replace("\\", "/"), "size": fs.file_size(i)}
            for i in range(fs.num_files())
            if not fs.file_flags(i) & lt.file_storage.flag_pad_file
        ],
        "trackers": [{"url": t.url, "tier": t.tier} for t in ti.trackers()],
        "private": bool(ti.priv()),
        "comment": ti.comment(),
        "creator": ti.creator(),
    }


def main(argv):
    if len(argv) >= 1 and argv[0] == "--each":
        for path in argv[1:]:
            try:
                out = describe(lt.torrent_info(path))
            except RuntimeError as err:
                out = {"error": str(err)}
            out["file"] = path
            json.dump(out, sys.stdout)
            sys.stdout.write("\n")
        return 0
    if len(argv) != 1:
        sys.stderr.write("usage: torrent_info.py FILE.torrent | --each FILE.torrent...\n")
        return 2
    try:
        ti = lt.torrent_info(argv[0])
    except RuntimeError as err:
        sys.stderr.write("torrent_info: %s: %s\n" % (argv[0], err))
        return 1
    json.dump(describe(ti), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
