"""TarOptions decode and encode Docker's ``archive.TarOptions`` JSON (SPEC §4.8)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lcow.backends.taroptions import OVERLAY_WHITEOUTS, TarOptions
from lcow.errors import InvalidArgument

# What dockerd 18.x marshals for ``docker cp`` into a container (field order as Go's).
DOCKERD_JSON = (
    '{"IncludeFiles":null,"ExcludePatterns":null,"Compression":0,"NoLchown":false,'
    '"UIDMaps":null,"GIDMaps":null,"ChownOpts":null,"IncludeSourceDir":false,'
    '"WhiteoutFormat":0,"NoOverwriteDirNonDir":true,"RebaseNames":null,"InUserNS":false}'
)

FULL = TarOptions(
    include_files=("etc", "usr/bin/ls", "sp ace\n"),
    exclude_patterns=("*.tmp", "!keep.tmp", "**/cache"),
    no_lchown=True,
    chown=(1000, 1001),
    include_source_dir=True,
    whiteout_format=OVERLAY_WHITEOUTS,
    no_overwrite_dir_non_dir=True,
    rebase_names={"etc": "config", "usr": "/"},
    compression=0,
)


def test_dockerd_json_decodes() -> None:
    opts = TarOptions.from_json(DOCKERD_JSON)
    assert opts == TarOptions(no_overwrite_dir_non_dir=True)
    assert opts.chown is None and opts.include_files == () and dict(opts.rebase_names) == {}


@pytest.mark.parametrize("text", ["null", "{}", b"{}"])
def test_null_and_empty_mean_defaults(text: str | bytes) -> None:
    assert TarOptions.from_json(text) == TarOptions()


def test_go_object_round_trip() -> None:
    assert TarOptions.from_go(FULL.to_go()) == FULL
    assert TarOptions.from_json(FULL.to_json()) == FULL


def test_encoding_uses_go_field_names_and_nulls() -> None:
    go = json.loads(TarOptions().to_json())
    assert go == json.loads(DOCKERD_JSON) | {"NoOverwriteDirNonDir": False}
    full = json.loads(FULL.to_json())
    assert full["ChownOpts"] == {"UID": 1000, "GID": 1001}
    assert full["RebaseNames"] == {"etc": "config", "usr": "/"}
    assert full["IncludeFiles"] == ["etc", "usr/bin/ls", "sp ace\n"]
    assert full["WhiteoutFormat"] == 1


def test_chown_defaults_missing_ids_to_zero() -> None:
    assert TarOptions.from_go({"ChownOpts": {"UID": 5}}).chown == (5, 0)


@pytest.mark.parametrize(
    "data",
    [
        {"IncludeFiles": "etc"},
        {"IncludeFiles": [1]},
        {"ExcludePatterns": [None]},
        {"NoLchown": 1},
        {"NoLchown": "false"},
        {"IncludeSourceDir": None},
        {"Compression": "0"},
        {"Compression": True},
        {"Compression": 1.5},
        {"WhiteoutFormat": False},
        {"ChownOpts": {"UID": "0"}},
        {"ChownOpts": [0, 0]},
        {"RebaseNames": {"a": 1}},
        {"RebaseNames": ["a"]},
        {"NoOverwriteDirNonDir": "yes"},
    ],
)
def test_wrong_types_are_invalid_arguments(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument) as info:
        TarOptions.from_go(data)
    assert isinstance(info.value, ValueError)
    assert "TarOptions" in str(info.value)


@pytest.mark.parametrize("text", ["[]", '"x"', "3", "{", b"\xff"])
def test_not_an_object_or_not_json(text: str | bytes) -> None:
    with pytest.raises(InvalidArgument):
        TarOptions.from_json(text)
