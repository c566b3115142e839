#!/usr/bin/python3
"""Make a .torrent of DIR with libtorrent's create_torrent and its default flags, as
libtorrent 2 and qBittorrent make them: a hybrid (v1 + v2) with BEP 47 pad files aligning
every file to a piece, `x` on executable files.

    lt_create.py DIR OUT.torrent [--piece-length N] [--symlinks]

--symlinks records symbolic links as BEP 47 `l` entries instead of following them.
btd's tests use it for torrents only libtorrent makes. Exit 1 with a message on failure.
"""

import argparse
import os
import sys

try:
    import libtorrent as lt
except ImportError as err:  # pragma: no cover - depends on the machine
    sys.stderr.write("lt_create: cannot import libtorrent (%s); install python3-libtorrent\n" % err)
    sys.exit(1)


def main(argv):
    p = argparse.ArgumentParser(prog="lt_create.py")
    p.add_argument("dir")
    p.add_argument("out")
    p.add_argument("--piece-length", type=int, default=0)
    p.add_argument("--symlinks", action="store_true")
    args = p.parse_args(argv)
    flags = lt.create_torrent.symlinks if args.symlinks else 0
    fs = lt.file_storage()
    lt.add_files(fs, args.dir, flags=flags)
    if fs.num_files() == 0:
        sys.stderr.write("lt_create: %s: no files\n" % args.dir)
        return 1
    ct = lt.create_torrent(fs, args.piece_length, flags=flags)
    lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(args.dir)))
    with open(args.out, "wb") as f:
        f.write(lt.bencode(ct.generate()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
