"""The data root's named-image records (``.images.json``) and ``lcow images``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lcow.cli.main import main
from lcow.images.store import IMAGES_FILE, ImageRecord, read_records, record_image
from lcow.storage.dataroot import DataRoot, is_valid_id


def _record(name: str, digest: str = "sha256:" + "a" * 64, top: str = "b" * 64) -> ImageRecord:
    return ImageRecord(name=name, digest=digest, manifest=digest, config="sha256:" + "c" * 64,
                       layers=(top,), platform="linux/amd64", source="registry")  # fmt: skip


def test_records_are_kept_by_name_and_replaced(tmp_path: Path) -> None:
    root = DataRoot(tmp_path)
    root.create()
    assert read_records(root) == []
    record_image(root, _record("r.example/b:1"))
    record_image(root, _record("r.example/a:1"))
    record_image(root, _record("r.example/b:1", digest="sha256:" + "d" * 64))
    records = read_records(root)
    assert [r.name for r in records] == ["r.example/a:1", "r.example/b:1"]
    assert records[1].digest == "sha256:" + "d" * 64
    assert not is_valid_id(IMAGES_FILE)  # no layer id can be the records' file
    assert (tmp_path / IMAGES_FILE).stat().st_mode & 0o777 == 0o600


def test_a_damaged_file_is_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = DataRoot(tmp_path)
    root.create()
    (tmp_path / IMAGES_FILE).write_text('{"images": [{"name": 1}, ')
    with caplog.at_level(logging.WARNING):
        assert read_records(root) == []
    assert "unreadable image records" in caplog.text
    (tmp_path / IMAGES_FILE).write_text(json.dumps({"images": [{"name": "x"}, "junk"]}))
    assert read_records(root) == []
    record_image(root, _record("r.example/a:1"))
    assert [r.name for r in read_records(root)] == ["r.example/a:1"]


def test_lcow_images_shows_a_removed_top_layer_as_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = DataRoot(tmp_path)
    root.create()
    record_image(root, _record("r.example/a:1"))
    assert main(["--root", str(tmp_path), "images"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DIGEST", "PLATFORM", "TOP", "LAYER"]
    assert lines[2].split() == ["r.example/a:1", "a" * 12, "linux/amd64", "missing"]
    assert main(["--root", str(tmp_path), "images", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["Present"] is False and listed[0]["Top"] == "b" * 64
