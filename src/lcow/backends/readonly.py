"""The write half of :class:`~lcow.backends.base.ContainerFS` for views that cannot write."""

from __future__ import annotations

from typing import BinaryIO, NoReturn

from lcow.backends.taroptions import TarOptions
from lcow.errors import NotSupported

__all__ = ["ReadOnlyWrites"]


class ReadOnlyWrites:
    """Every write operation raises :class:`NotSupported` naming the operation and the layer."""

    layer_id: str
    backend_name = "userspace"

    def _read_only(self, op: str) -> NoReturn:
        raise NotSupported(
            f"{op}: not supported by the {self.backend_name} backend; use lcow.backend=host or vm",
            subject=self.layer_id,
        )

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Not supported here."""
        self._read_only("mkdir")

    def mkdir_all(self, path: str, mode: int = 0o755) -> None:
        """Not supported here."""
        self._read_only("mkdirall")

    def remove(self, path: str) -> None:
        """Not supported here."""
        self._read_only("remove")

    def remove_all(self, path: str) -> None:
        """Not supported here."""
        self._read_only("removeall")

    def link(self, old: str, new: str) -> None:
        """Not supported here."""
        self._read_only("link")

    def symlink(self, target: str, new: str) -> None:
        """Not supported here."""
        self._read_only("symlink")

    def lchmod(self, path: str, mode: int) -> None:
        """Not supported here."""
        self._read_only("lchmod")

    def lchown(self, path: str, uid: int, gid: int) -> None:
        """Not supported here."""
        self._read_only("lchown")

    def mknod(self, path: str, mode: int, major: int, minor: int) -> None:
        """Not supported here."""
        self._read_only("mknod")

    def mkfifo(self, path: str, mode: int) -> None:
        """Not supported here."""
        self._read_only("mkfifo")

    def open_file(self, path: str, flags: int, perm: int = 0o644) -> BinaryIO:
        """Not supported here."""
        self._read_only("openfile")

    def write_file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        """Not supported here."""
        self._read_only("writefile")

    def extract_archive(
        self, dest: str, stream: BinaryIO, options: TarOptions | None = None
    ) -> None:
        """Not supported here."""
        self._read_only("extractarchive")
