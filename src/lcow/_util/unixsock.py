"""Connecting to a Unix socket whose path is longer than ``sockaddr_un`` holds.

``sun_path`` is 108 bytes on Linux, so Python refuses ``connect()`` to a longer path with
"AF_UNIX path too long", while QEMU (which binds its sockets through a short alias) happily
creates one under a deep data root. The socket is reached instead through an ``O_PATH``
descriptor of its folder: ``/proc/self/fd/N/NAME`` is short whatever the folder's depth, and
the kernel resolves it to the same inode.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["SUN_PATH_MAX", "connect_unix"]

#: Bytes of ``sockaddr_un.sun_path`` on Linux, the terminating NUL included.
SUN_PATH_MAX = 108


def connect_unix(sock: socket.socket, path: str | os.PathLike[str]) -> None:
    """``sock.connect(path)``, also for a ``path`` too long for ``sockaddr_un``.

    Raises:
        OSError: the connection failed (as :meth:`socket.socket.connect`).
    """
    path = Path(path)
    if len(os.fsencode(path)) < SUN_PATH_MAX:
        sock.connect(str(path))
        return
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{folder}/{path.name}")
    finally:
        os.close(folder)
