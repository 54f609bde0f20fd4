"""The test machinery itself: the requires/CI rule, content digests, the moby tree model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import TarEntry as E
from tests.helpers import ensure, pax_time, write_tar
from tests.treemodel import digest_bytes, digest_path, expect_from_tar


def test_missing_requirement_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-xyz not found"):
        ensure("no-such-tool-xyz")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_missing_requirement_fails_in_ci(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        ensure("no-such-tool-xyz")


def test_present_requirement_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    ensure("sh")


def test_pax_time() -> None:
    assert pax_time(1_500_000_000) == "1.500000000"
    assert pax_time(-1_500_000_000) == "-1.500000000"
    assert pax_time(-1) == "-0.000000001"


def test_digest_ignores_how_zeros_are_stored(tmp_path: Path) -> None:
    data = b"a" * 5000 + bytes(3 * 4096) + b"b" * 10
    dense, sparse = tmp_path / "dense", tmp_path / "sparse"
    dense.write_bytes(data)
    fd = os.open(sparse, os.O_WRONLY | os.O_CREAT, 0o644)
    os.pwrite(fd, data[:5000], 0)
    os.pwrite(fd, data[-10:], len(data) - 10)
    os.close(fd)
    expected = digest_bytes(data)
    assert digest_path(os.fsencode(dense)) == expected == digest_path(os.fsencode(sparse))
    assert digest_bytes(data + b"\0") != expected, "the size counts"
    assert digest_bytes(data.replace(b"b", b"c")) != expected


def test_model_follows_moby(tmp_path: Path) -> None:
    tar = write_tar(
        tmp_path / "t.tar",
        [
            E("a/b/f", data=b"1"),
            E("a", kind="dir", mode=0o700, xattrs={"user.x": b"1"}),
            E("a", kind="dir", mode=0o750, xattrs={"user.y": b"2"}),
            E("a/b", data=b"file replaces dir"),
            E("h", kind="hardlink", target="a/b"),
            E("a/b", data=b"new"),
            E("d/.wh.gone"),
            E("d/.wh..wh..opq"),
        ],
    )
    plain = expect_from_tar(tar)
    assert plain[b"a"].perm == 0o750 and plain[b"a"].xattrs == {"user.x": b"1", "user.y": b"2"}
    assert b"a/b/f" not in plain
    assert plain[b"h"].digest == digest_bytes(b"file replaces dir")
    assert plain[b"h"].group != plain[b"a/b"].group
    assert plain[b"d/.wh.gone"].kind == "reg"
    assert plain[b"d"].perm is None, "a placeholder's metadata is unknown"
    overlay = expect_from_tar(tar, convert_whiteouts=True)
    assert overlay[b"d/gone"].kind == "chr" and overlay[b"d/gone"].rdev == (0, 0)
    assert overlay[b"d"].xattrs == {"trusted.overlay.opaque": b"y"}
