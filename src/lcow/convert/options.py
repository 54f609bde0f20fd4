"""Options and result of a tar -> ext4 conversion (SPEC §6, hcsshim's tar2ext4 flags)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lcow.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_NAME_LEN",
    "DEFAULT_MAX_PATH_LEN",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MAX_XATTR_NAME_LEN",
    "DEFAULT_MAX_XATTR_VALUE_LEN",
    "ConvertOptions",
    "ConvertResult",
]

#: moby's limit for a layer image: 128 GiB.
DEFAULT_MAX_SIZE = 128 << 30
#: Most tar entries one conversion reads (the namespace costs about 300 bytes of memory per
#: entry, so this keeps a hostile layer under about 640 MiB).
DEFAULT_MAX_ENTRIES = 1 << 21
#: Longest name component: ext4's own limit (and Linux's NAME_MAX).
DEFAULT_MAX_NAME_LEN = 255
#: Longest path of an entry or hard-link target, in bytes once normalised: Linux's PATH_MAX,
#: past which Docker's own unpacking fails with ENAMETOOLONG.
DEFAULT_MAX_PATH_LEN = 4096
#: Deepest directory nesting of an entry (half the ext4 reader's walk limit of 2048).
DEFAULT_MAX_DEPTH = 1024
#: Longest extended attribute name, prefix included (Linux's XATTR_NAME_MAX).
DEFAULT_MAX_XATTR_NAME_LEN = 255
#: Largest extended attribute value (Linux's XATTR_SIZE_MAX); ext4 without ``ea_inode`` also
#: needs all of an inode's attributes to fit its spare area and one 4 KiB block.
DEFAULT_MAX_XATTR_VALUE_LEN = 1 << 16


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    """How a tar stream becomes an image.

    Attributes:
        convert_whiteouts: AUFS ``.wh.`` markers become overlay whiteouts (0/0 character devices and
            ``trusted.overlay.opaque=y``), hcsshim's ``-overlay``. Off: markers are stored verbatim.
        inline_data: small files live in the inode (``-inline``; ext4 ``inline_data`` feature).
        convert_slash: ``\\`` in names becomes ``/`` (``-convert-slash``).
        max_size: largest ext4 image allowed, in bytes (rounded up to 4096). Exceeding it is an
            error naming the entry that crossed it.
        vhd_footer: append a fixed-VHD footer (``-vhd``), making the file a ``layer.vhd``.
        dm_verity: append a dm-verity hash area between the image and the footer.
        progress: called with the number of input bytes consumed so far, now and then.
        fsync: flush an output path to disk before the final rename, and the rename after it
            (an output descriptor is the caller's to sync).
        max_entries: most tar entries read (PAX and long-name records not counted).
        max_name_len: longest name component in bytes (at most 255, ext4's limit).
        max_path_len: longest normalised entry path or hard-link target in bytes.
        max_depth: most components in an entry's path (``a/b/c`` is 3).
        max_xattr_name_len: longest extended attribute name, prefix included (at most 255).
        max_xattr_value_len: largest extended attribute value in bytes.
        slot_timeout: seconds to wait for a conversion slot when the process-wide cap on
            concurrent conversions (:mod:`lcow.convert.limits`) is reached; ``None`` waits as long
            as it takes. Running out raises :class:`~lcow.errors.Busy`.

    Every limit exceeded raises :class:`~lcow.errors.LimitExceeded` naming the entry and the
    limit; a limit outside its allowed range raises :class:`~lcow.errors.InvalidArgument`.
    """

    convert_whiteouts: bool = False
    inline_data: bool = False
    convert_slash: bool = False
    max_size: int = DEFAULT_MAX_SIZE
    vhd_footer: bool = False
    dm_verity: bool = False
    progress: Callable[[int], None] | None = None
    fsync: bool = False
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_name_len: int = DEFAULT_MAX_NAME_LEN
    max_path_len: int = DEFAULT_MAX_PATH_LEN
    max_depth: int = DEFAULT_MAX_DEPTH
    max_xattr_name_len: int = DEFAULT_MAX_XATTR_NAME_LEN
    max_xattr_value_len: int = DEFAULT_MAX_XATTR_VALUE_LEN
    slot_timeout: float | None = None

    def __post_init__(self) -> None:
        for name, low, high in (
            ("max_entries", 0, None),
            ("max_name_len", 1, DEFAULT_MAX_NAME_LEN),
            ("max_path_len", 1, None),
            ("max_depth", 1, None),
            ("max_xattr_name_len", 1, DEFAULT_MAX_XATTR_NAME_LEN),
            ("max_xattr_value_len", 0, None),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low or (high is not None and value > high):
                allowed = f"{low}..{high}" if high is not None else f">= {low}"
                raise InvalidArgument(
                    f"{name}: {value!r} is out of range ({allowed})", subject=name
                )
        if self.slot_timeout is not None and not self.slot_timeout >= 0:
            raise InvalidArgument(
                f"slot_timeout: {self.slot_timeout!r} must be >= 0 or None", subject="slot_timeout"
            )


@dataclass(frozen=True, kw_only=True)
class ConvertResult:
    """What a conversion produced.

    Attributes:
        entries: tar entries read (PAX and long-name records not counted).
        content_size: sum of every entry's size field, moby's unpack size (ApplyDiff's result).
        image_size: bytes of the ext4 filesystem.
        file_size: bytes of the output file (image + verity area + footer).
        inodes: inodes in use in the image.
        blocks: 4 KiB blocks in use in the image.
        root_hash: dm-verity root hash as hex, when requested.
        hash_offset: byte offset of the dm-verity superblock, when requested.
    """

    entries: int
    content_size: int
    image_size: int
    file_size: int
    inodes: int
    blocks: int
    root_hash: str | None = None
    hash_offset: int | None = None
