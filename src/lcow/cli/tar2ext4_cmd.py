"""``lcow tar2ext4``: hcsshim's command line over :func:`lcow.tar2ext4` (SPEC §6, §7.1, §8).

Flags keep hcsshim's single-dash spelling (``-i``, ``-o``, ``-overlay``, ``-vhd``, ``-only-vhd``,
``-inline``) and also accept the double-dash one; ``--max-size``, ``--dm-verity`` and ``--json`` are
lcow's, as are the other limits (``--max-entries``, ``--max-depth``, ``--max-path``,
``--max-name``, ``--max-xattr-name``, ``--max-xattr-value``). The input is a path or ``-``
(stdin, also when ``-i`` is omitted), plain, gzip or zstd. ``-only-vhd`` copies an existing
ext4 image and appends a fixed VHD footer, ignoring the other options. The output is always
written to a temporary name beside ``OUT`` and renamed on success.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from lcow.cli._format import format_size, parse_size
from lcow.cli._output import write_json, write_lines
from lcow.cli._progress import byte_progress
from lcow.cli.status import ExitStatus, UsageError
from lcow.convert.options import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_NAME_LEN,
    DEFAULT_MAX_PATH_LEN,
    DEFAULT_MAX_SIZE,
    DEFAULT_MAX_XATTR_NAME_LEN,
    DEFAULT_MAX_XATTR_VALUE_LEN,
    ConvertOptions,
    ConvertResult,
)
from lcow.convert.tar2ext4 import tar2ext4
from lcow.errors import CorruptImage

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "convert a tar stream (plain, gzip or zstd) into an ext4 layer image"

_STDIN = "-"
_EXT4_MAGIC_OFFSET = 1024 + 56  # s_magic inside the superblock at byte 1024
_EXT4_MAGIC = b"\x53\xef"  # 0xEF53 little-endian
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_COPY_CHUNK = 1 << 20


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


#: The conversion limits as flags: flag, option name, parser, default, metavar, help.
_LIMIT_FLAGS = (
    ("--max-entries", "max_entries", _count_arg, DEFAULT_MAX_ENTRIES, "N",
     "most tar entries read"),
    ("--max-depth", "max_depth", _count_arg, DEFAULT_MAX_DEPTH, "N",
     "deepest directory nesting of an entry"),
    ("--max-path", "max_path_len", _count_arg, DEFAULT_MAX_PATH_LEN, "BYTES",
     "longest entry path or hard-link target"),
    ("--max-name", "max_name_len", _count_arg, DEFAULT_MAX_NAME_LEN, "BYTES",
     "longest name component (at most 255)"),
    ("--max-xattr-name", "max_xattr_name_len", _count_arg, DEFAULT_MAX_XATTR_NAME_LEN, "BYTES",
     "longest xattr name (at most 255)"),
    ("--max-xattr-value", "max_xattr_value_len", _size_arg, DEFAULT_MAX_XATTR_VALUE_LEN, "SIZE",
     "largest xattr value: bytes or K/M suffix"),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``lcow tar2ext4``.

    Args:
        parser: the command's parser.
    """
    parser.add_argument(
        "-i", "--input", "-input", dest="input", default=_STDIN, metavar="IN",
        help="input tar, plain/gzip/zstd ('-' or omitted: stdin)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", "-output", dest="output", required=True, metavar="OUT",
        help="output image file",
    )  # fmt: skip
    parser.add_argument(
        "-overlay", "--overlay", action="store_true",
        help="convert AUFS .wh. whiteouts to overlay whiteouts (0/0 char devices, opaque xattr)",
    )  # fmt: skip
    parser.add_argument(
        "-vhd", "--vhd", action="store_true", help="append a fixed VHD footer (a layer.vhd)"
    )
    parser.add_argument(
        "-only-vhd", "--only-vhd", dest="only_vhd", action="store_true",
        help="IN is already an ext4 image: copy it to OUT and append a VHD footer",
    )  # fmt: skip
    parser.add_argument(
        "-inline", "--inline", action="store_true", help="store small files inline in the inode"
    )
    parser.add_argument(
        "-convert-slash", "--convert-slash", dest="convert_slash", action="store_true",
        help="treat '\\' in tar names as '/'",
    )  # fmt: skip
    parser.add_argument(
        "--max-size", "-max-size", dest="max_size", type=_size_arg, default=DEFAULT_MAX_SIZE,
        metavar="SIZE",
        help="largest ext4 image allowed: bytes or K/M/G/T suffix (default: 128G)",
    )  # fmt: skip
    for flag, dest, kind, default, metavar, text in _LIMIT_FLAGS:
        parser.add_argument(
            flag, "-" + flag.lstrip("-"), dest=dest, type=kind, default=default,
            metavar=metavar, help=f"{text} (default: {default})",
        )  # fmt: skip
    parser.add_argument(
        "--dm-verity", "-dm-verity", dest="dm_verity", action="store_true",
        help="append a dm-verity hash tree and print its root hash",
    )  # fmt: skip
    parser.add_argument(
        "--json", "-json", dest="json", action="store_true",
        help="print the result as JSON instead of a summary",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run ``lcow tar2ext4``.

    Args:
        args: parsed flags (see :func:`add_arguments`).

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    if args.output == _STDIN:
        raise UsageError("-o: the output must be a file path (it is written then renamed)")
    if args.input == _STDIN and sys.stdin.isatty():
        raise UsageError("no input: give -i IN or pipe a tar into stdin")
    if args.only_vhd:
        return _only_vhd(args)

    started = time.monotonic()
    with _progress_bar(args.input) as progress:
        options = ConvertOptions(
            convert_whiteouts=args.overlay,
            inline_data=args.inline,
            convert_slash=args.convert_slash,
            max_size=args.max_size,
            vhd_footer=args.vhd,
            dm_verity=args.dm_verity,
            progress=progress,
            **{dest: getattr(args, dest) for _, dest, *_ in _LIMIT_FLAGS},
        )
        source: int | str = sys.stdin.fileno() if args.input == _STDIN else args.input
        result = tar2ext4(source, args.output, options)
    elapsed = time.monotonic() - started
    if args.json:
        import dataclasses

        write_json(dataclasses.asdict(result))
    else:
        write_lines(_summary(args.output, result, elapsed))
    return ExitStatus.OK


def _summary(output: str, result: ConvertResult, seconds: float) -> list[str]:
    lines = [
        f"{output}: {result.entries} entries, {format_size(result.content_size)} content"
        f" -> ext4 {format_size(result.image_size)}, file {format_size(result.file_size)},"
        f" {result.inodes} inodes, {result.blocks} blocks, {seconds:.2f} s"
    ]
    if result.root_hash is not None:
        lines.append(f"dm-verity root hash: {result.root_hash}")
        lines.append(f"dm-verity hash offset: {result.hash_offset}")
    return lines


@contextmanager
def _progress_bar(source: str) -> Iterator[Callable[[int], None] | None]:
    """A bar on stderr fed with cumulative byte counts, only when stderr is a terminal."""
    with byte_progress("tar2ext4", _input_total(source)) as bar:
        if bar is None:
            yield None
            return
        seen = 0

        def update(done: int) -> None:
            nonlocal seen
            if done > seen:
                bar.add(done - seen)
                seen = done

        yield update


def _input_total(source: str) -> int | None:
    """Bytes the converter will report for ``source``, when knowable (uncompressed regular file)."""
    try:
        if source == _STDIN:
            fd = sys.stdin.fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            offset = os.lseek(fd, 0, os.SEEK_CUR)
            head = os.pread(fd, 4, offset)
        else:
            st = os.stat(source)
            if not stat.S_ISREG(st.st_mode):
                return None
            offset = 0
            with open(source, "rb") as f:
                head = f.read(4)
    except OSError:
        return None
    if head.startswith((_GZIP_MAGIC, _ZSTD_MAGIC)):
        return None
    return max(st.st_size - offset, 0)


def _only_vhd(args: argparse.Namespace) -> int:
    """Copy the ext4 image IN to OUT (temp name, then rename) and append a fixed VHD footer."""
    import tempfile
    from pathlib import Path

    from lcow.formats.vhd.footer import append_fixed_footer

    out = Path(args.output)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        if args.input == _STDIN:
            size = _copy(sys.stdin.fileno(), fd)
            name = "<stdin>"
        else:
            src = os.open(args.input, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = _copy(src, fd)
            finally:
                os.close(src)
            name = args.input
        magic = os.pread(fd, 2, _EXT4_MAGIC_OFFSET)
        if magic != _EXT4_MAGIC:
            raise CorruptImage(f"{name}: not an ext4 image (no superblock magic)", subject=name)
        if size % 512:
            raise CorruptImage(
                f"{name}: image size {size} is not a multiple of 512 bytes", subject=name
            )
        append_fixed_footer(fd, size)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        fd = -1
        os.replace(tmp, out)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if args.json:
        write_json({"image_size": size, "file_size": size + 512})
    else:
        write_lines(f"{out}: ext4 image {format_size(size)} + VHD footer = {size + 512} bytes")
    return ExitStatus.OK


def _copy(src: int, dst: int) -> int:
    """Copy ``src`` to the start of ``dst`` in the kernel when possible; return bytes copied."""
    total = 0
    try:
        while n := os.copy_file_range(src, dst, 1 << 30):
            total += n
        return total
    except OSError as exc:
        if total or exc.errno not in {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}:
            raise
    while chunk := os.read(src, _COPY_CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        total += len(chunk)
    return total


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
