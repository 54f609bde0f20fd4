#!/usr/bin/env python3
"""Regenerate ``fuzz/agent/corpus/``: frame streams as the vm backend sends them.

Each seed is what a host writes to one port: commands (``C``), data (``D``), ends (``E``),
against the view ``/v`` the harness makes before every input (a file ``f``, a directory
``d``, symlinks ``abs`` → ``/f`` and ``up`` → ``../../..``).
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
V = b"/v"


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">cI", kind, len(payload)) + payload


def cmd(*argv: bytes | str | int) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in argv]
    return frame(b"C", b"".join(p + b"\0" for p in parts))


SEEDS: dict[str, bytes] = {
    "hello": cmd("hello", "nonce"),
    "reads": b"".join(
        [
            cmd("stat", V, "/abs"),
            cmd("lstat", V, "/up/f"),
            cmd("readlink", V, "/abs"),
            cmd("readdir", V, "/", 0),
            cmd("readdirx", V, "/d", 2),
            cmd("xattrs", V, "/f"),
            cmd("readfile", V, "/f"),
        ]
    ),
    "writes": b"".join(
        [
            cmd("writefile", V, "/d/new", 0o644, ""),
            frame(b"D", b"abc" * 20),
            frame(b"E"),
            cmd("mkdirall", V, "/a/b/c", 0o755),
            cmd("mkdir", V, "/e", 0o700),
            cmd("symlink", V, "../x", "/s"),
            cmd("link", V, "/f", "/h"),
            cmd("lchmod", V, "/f", 0o600),
            cmd("lchown", V, "/f", 1, 2),
            cmd("mknod", V, "/n", stat.S_IFCHR | 0o600, 1, 3),
            cmd("mkfifo", V, "/p", 0o644),
            cmd("setxattr", V, "/f", "user.x", b"hi".hex()),
            cmd("utimens", V, "/f", 10**18, -5),
            cmd("remove", V, "/h"),
            cmd("removeall", V, "/a"),
        ]
    ),
    "session": b"".join(
        [
            cmd("open", V, "/f", os.O_RDWR, 0o644),
            cmd("fread", 3),
            cmd("fwrite"),
            frame(b"D", b"xyz"),
            frame(b"E"),
            cmd("fseek", 0, 0),
            cmd("ftruncate", 2),
            cmd("fclose"),
        ]
    ),
    "batch": b"".join(
        [
            cmd("batch", V, "/d"),
            cmd("prepdirs", "/x/y/z"),
            cmd("prep", "/x/y/z", 0, 0),
            cmd("writefile", "/x/y/z", 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL),
            frame(b"D", b"data"),
            frame(b"E"),
            cmd("mkdirm", "/x", 0o755),
            cmd("lchown", "/x/y/z", 0, 0),
            cmd("setxattr", "/x", "trusted.overlay.opaque", "79"),
            cmd("utimens", "/x", 1, 2),
            frame(b"E"),
        ]
    ),
    "odd": frame(b"C")
    + frame(b"Z", b"\xff")
    + frame(b"D", b"stray")
    + cmd("hello")
    + struct.pack(">cI", b"C", 0xFFFFFFF0),
}


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    for name, data in SEEDS.items():
        (CORPUS / f"{name}.bin").write_bytes(data)
    print(f"{len(SEEDS)} seeds in {CORPUS}")


if __name__ == "__main__":
    main()
