"""Safe, random access to the members of an image tarball (``docker save``, OCI layout).

The outer tarball is indexed once. Every member name and link target is checked: an absolute
name or one that climbs out with ``..`` makes the whole archive unusable (:class:`UnsafeMember`),
before anything is imported. Links between members (``docker save`` writes a relative symlink
``<id>/layer.tar -> ../<other>/layer.tar`` for a layer it already stored) are followed inside the
archive only.

A compressed outer tarball (``docker save | gzip``) or a non-seekable input (a pipe) is first
copied, decompressed, into an anonymous temporary file, so blobs can be read in any order.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Any, BinaryIO, cast

from lcow._util.decompress import detect
from lcow._util.escape import quoted
from lcow._util.stricttar import StrictTarInfo
from lcow.convert.input import sniff, tar_work
from lcow.errors import NotFound
from lcow.images.errors import ImageError, MissingBlob, UnsafeMember

__all__ = ["MAX_JSON_SIZE", "ImageArchive", "normalize_member"]

#: largest JSON document (manifest, index, config) read into memory.
MAX_JSON_SIZE = 16 << 20
_MAX_LINK_HOPS = 40


def normalize_member(name: str, *, what: str) -> str:
    """A member name or reference in canonical form (``a/b``), refusing ones that escape.

    Args:
        name: the name as stored or referenced (``./x/layer.tar``).
        what: where the name comes from, for the message.

    Returns:
        The normalised relative name (``""`` for the archive's root).

    Raises:
        UnsafeMember: the name is absolute or leaves the archive through ``..``.
    """
    if name.startswith("/") or "\x00" in name:
        raise UnsafeMember(f"{what}: {quoted(name)} escapes the image archive", subject=name)
    norm = posixpath.normpath(name) if name else "."
    if norm == ".." or norm.startswith("../"):
        raise UnsafeMember(f"{what}: {quoted(name)} escapes the image archive", subject=name)
    return "" if norm == "." else norm


class ImageArchive:
    """An indexed image tarball; use :meth:`open` and close it (or use ``with``).

    Attributes:
        name: what the archive is called in messages (its path, or ``<stdin>``).
    """

    def __init__(self, fileobj: BinaryIO, *, name: str, owned: bool) -> None:
        self.name = name
        self._file = fileobj
        self._owned = owned
        self._members: dict[str, tarfile.TarInfo] = {}
        self._links: dict[str, str] = {}
        try:
            self._tar = tarfile.open(  # noqa: SIM115 - closed by close()
                fileobj=cast(IO[bytes], fileobj), mode="r:", tarinfo=StrictTarInfo
            )
            self._index()
        except tarfile.TarError as exc:
            self.close()
            raise ImageError(f"{name}: {_tar_problem(exc)}", subject=name) from exc
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> ImageArchive:
        """Open and index an image tarball.

        Args:
            source: a path, or a readable binary file object (``sys.stdin.buffer``).
            spool_dir: where a temporary copy goes when one is needed (default: the system's).

        Returns:
            The archive.

        Raises:
            NotFound: the path does not exist.
            ImageError: not a tar archive, a corrupt compressed stream, or an unsafe member.
        """
        if isinstance(source, str | os.PathLike):
            name = os.fspath(source)
            try:
                fileobj: BinaryIO = open(name, "rb")  # noqa: SIM115 - owned by the archive
            except FileNotFoundError as exc:
                raise NotFound(f"{name}: no such file", subject=name) from exc
            owned = True
        else:
            given = getattr(source, "name", None)
            name = given if isinstance(given, str) else "<stream>"
            fileobj, owned = source, False
        try:
            head, seekable = _peek(fileobj)
            if detect(head) is not None or not seekable:
                spooled = _spool(fileobj, seekable, name=name, spool_dir=spool_dir)
                if owned:
                    fileobj.close()
                fileobj, owned = spooled, True
        except BaseException:
            if owned:
                fileobj.close()
            raise
        return cls(fileobj, name=name, owned=owned)

    def _index(self) -> None:
        for info in self._tar:
            name = normalize_member(info.name, what=f"{self.name}: member")
            if info.issym():
                target = info.linkname
                if target.startswith("/"):
                    raise UnsafeMember(
                        f"{self.name}: member {quoted(info.name)}: link target {quoted(target)} "
                        "escapes the image archive",
                        subject=info.name,
                    )
                try:
                    self._links[name] = normalize_member(
                        posixpath.join(posixpath.dirname(name), target), what=self.name
                    )
                except UnsafeMember:
                    raise UnsafeMember(
                        f"{self.name}: member {quoted(info.name)}: link target {quoted(target)} "
                        "escapes the image archive",
                        subject=info.name,
                    ) from None
            elif info.islnk():
                self._links[name] = normalize_member(
                    info.linkname, what=f"{self.name}: member {quoted(info.name)}: link target"
                )
            elif name:
                self._links.pop(name, None)  # a later member replaces an earlier link
            if name and not info.isdir():
                self._members[name] = info

    # -- access ------------------------------------------------------------------------------

    def _resolve(self, name: str) -> tarfile.TarInfo:
        current = name
        for _ in range(_MAX_LINK_HOPS):
            target = self._links.get(current)
            if target is None:
                break
            current = target
        else:
            raise ImageError(f"{self.name}: {name}: too many levels of links", subject=name)
        info = self._members.get(current)
        if info is None:
            raise MissingBlob(f"{self.name}: {name}: missing from the image archive", subject=name)
        if not info.isreg():
            raise ImageError(f"{self.name}: {name}: not a regular file", subject=name)
        return info

    def has(self, name: str) -> bool:
        """Whether ``name`` (normalised) names a readable file of the archive."""
        try:
            self._resolve(name)
        except ImageError:
            return False
        return True

    def size(self, name: str) -> int:
        """The size of a member (links followed).

        Raises:
            MissingBlob: no such member.
        """
        return self._resolve(name).size

    def open_member(self, name: str) -> BinaryIO:
        """A readable stream over a member (links followed).

        Raises:
            MissingBlob: no such member.
        """
        stream = self._tar.extractfile(self._resolve(name))
        if stream is None:  # pragma: no cover - _resolve only returns regular files
            raise ImageError(f"{self.name}: {name}: not a regular file", subject=name)
        return cast(BinaryIO, stream)

    def member_range(self, name: str) -> tuple[int, int, int] | None:
        """``(fd, offset, size)`` of a member's bytes in the archive's file, when it is one.

        Raises:
            MissingBlob: no such member.
        """
        info = self._resolve(name)
        try:
            fd = self._file.fileno()
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
            return None
        if info.sparse is not None:  # pragma: no cover - docker/OCI blobs are never sparse
            return None
        return fd, info.offset_data, info.size

    def read_bytes(self, name: str, *, limit: int = MAX_JSON_SIZE) -> bytes:
        """A whole (small) member.

        Raises:
            MissingBlob: no such member.
            ImageError: larger than ``limit`` or truncated.
        """
        size = self.size(name)
        if size > limit:
            raise ImageError(
                f"{self.name}: {name}: {size} bytes is too large for image metadata "
                f"(limit {limit})",
                subject=name,
            )
        with self.open_member(name) as stream:
            try:
                return stream.read()
            except tarfile.TarError as exc:
                raise ImageError(f"{self.name}: {name}: {exc}", subject=name) from exc

    def read_json(self, name: str, *, data: bytes | None = None) -> Any:
        """Parse a member (or ``data`` already read from it) as JSON.

        Raises:
            MissingBlob: no such member.
            ImageError: not valid JSON (the message names the member).
        """
        raw = self.read_bytes(name) if data is None else data
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise ImageError(f"{self.name}: {name}: not valid JSON: {exc}", subject=name) from exc

    def names(self) -> Iterator[str]:
        """Names of the files (and links) in the archive."""
        yield from sorted({*self._members, *self._links})

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the tarball (and delete its temporary copy, if one was made)."""
        tar = getattr(self, "_tar", None)
        if tar is not None:
            tar.close()
        if self._owned:
            self._file.close()

    def __enter__(self) -> ImageArchive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _peek(fileobj: BinaryIO) -> tuple[bytes, bool]:
    """The first bytes of a stream and whether it is seekable (a seekable one is rewound)."""
    try:
        seekable = fileobj.seekable() and stat.S_ISREG(os.fstat(fileobj.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        try:
            seekable = bool(fileobj.seekable())  # e.g. an in-memory buffer
        except (OSError, ValueError, AttributeError):
            seekable = False
    if not seekable:
        return b"", False
    start = fileobj.tell()
    head = fileobj.read(4)
    fileobj.seek(start)
    return head, True


def _spool(
    fileobj: BinaryIO,
    seekable: bool,
    *,
    name: str,
    spool_dir: str | os.PathLike[str] | None,
) -> BinaryIO:
    """Copy ``fileobj`` (decompressed) into an anonymous temporary file, rewound."""
    spool = cast(BinaryIO, tempfile.TemporaryFile(dir=spool_dir))  # noqa: SIM115
    try:
        # A seekable stream was rewound after its head was peeked at: read it again.
        work = tar_work(name, head=None if seekable else sniff(fileobj.read), error=ImageError)
        work(fileobj.read, spool.write)  # a cut or corrupt stream fails, never spools less
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def _tar_problem(exc: tarfile.TarError) -> str:
    """The text after the archive's name: strict reading says what it found, other tarfile
    errors (raised before any header was read) mean the input is no tar at all."""
    text = str(exc)
    if text.startswith(("not a tar archive", "empty input", "truncated", "invalid", "unexpected")):
        return text
    return f"not a tar archive: {text}"
