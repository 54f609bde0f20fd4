"""Docker's ``archive.TarOptions``: how remotefs's ``extractarchive``/``archivepath`` pack and
unpack (SPEC §4.8). The wire form is JSON with Go's field names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lcow.errors import InvalidArgument

__all__ = ["AUFS_WHITEOUTS", "OVERLAY_WHITEOUTS", "TarOptions"]

AUFS_WHITEOUTS = 0  # archive.AUFSWhiteoutFormat
OVERLAY_WHITEOUTS = 1  # archive.OverlayWhiteoutFormat


@dataclass(frozen=True)
class TarOptions:
    """The fields of ``archive.TarOptions`` lcow honours.

    ``compression`` (0 = none) and the ID maps are accepted on the wire; lcow writes
    uncompressed tars and ignores ID maps, as LCOW did.
    """

    include_files: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    no_lchown: bool = False
    chown: tuple[int, int] | None = None  # ChownOpts {UID, GID}
    include_source_dir: bool = False
    whiteout_format: int = AUFS_WHITEOUTS
    no_overwrite_dir_non_dir: bool = False
    rebase_names: Mapping[str, str] = field(default_factory=dict)
    compression: int = 0

    @classmethod
    def from_go(cls, data: Mapping[str, Any] | None) -> TarOptions:
        """Decode the Go JSON object (``null`` or missing fields = defaults).

        Raises:
            InvalidArgument: a field of the wrong type.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidArgument("TarOptions: expected a JSON object", subject="TarOptions")
        try:
            chown_raw = data.get("ChownOpts")
            chown = None
            if chown_raw is not None:
                chown = (_int(chown_raw.get("UID", 0)), _int(chown_raw.get("GID", 0)))
            rebase = data.get("RebaseNames") or {}
            return cls(
                include_files=tuple(_strings(data.get("IncludeFiles"))),
                exclude_patterns=tuple(_strings(data.get("ExcludePatterns"))),
                no_lchown=_bool(data.get("NoLchown", False)),
                chown=chown,
                include_source_dir=_bool(data.get("IncludeSourceDir", False)),
                whiteout_format=_int(data.get("WhiteoutFormat", 0)),
                no_overwrite_dir_non_dir=_bool(data.get("NoOverwriteDirNonDir", False)),
                rebase_names={str(k): _str(v) for k, v in dict(rebase).items()},
                compression=_int(data.get("Compression", 0)),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"TarOptions: {exc}", subject="TarOptions") from exc

    @classmethod
    def from_json(cls, text: bytes | str) -> TarOptions:
        """Decode the JSON text remotefs sends."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
            raise InvalidArgument(f"TarOptions: bad JSON: {exc}", subject="TarOptions") from exc
        return cls.from_go(data)

    def to_go(self) -> dict[str, Any]:
        """The Go JSON object."""
        return {
            "IncludeFiles": list(self.include_files) or None,
            "ExcludePatterns": list(self.exclude_patterns) or None,
            "Compression": self.compression,
            "NoLchown": self.no_lchown,
            "UIDMaps": None,
            "GIDMaps": None,
            "ChownOpts": (
                None if self.chown is None else {"UID": self.chown[0], "GID": self.chown[1]}
            ),
            "IncludeSourceDir": self.include_source_dir,
            "WhiteoutFormat": self.whiteout_format,
            "NoOverwriteDirNonDir": self.no_overwrite_dir_non_dir,
            "RebaseNames": dict(self.rebase_names) or None,
            "InUserNS": False,
        }

    def to_json(self) -> bytes:
        """Compact JSON text."""
        return json.dumps(self.to_go(), separators=(",", ":")).encode()


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {value!r}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return [_str(v) for v in value]
