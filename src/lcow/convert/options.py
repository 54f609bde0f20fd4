"""Options and result of a tar -> ext4 conversion (SPEC §6, hcsshim's tar2ext4 flags)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_SIZE", "ConvertOptions", "ConvertResult"]

#: moby's limit for a layer image: 128 GiB.
DEFAULT_MAX_SIZE = 128 << 30


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
        fsync: flush the output to disk before the final rename.
    """

    convert_whiteouts: bool = False
    inline_data: bool = False
    convert_slash: bool = False
    max_size: int = DEFAULT_MAX_SIZE
    vhd_footer: bool = False
    dm_verity: bool = False
    progress: Callable[[int], None] | None = None
    fsync: bool = False


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
