"""Layer export (Diff) round trips against the moby UnpackLayer model of :mod:`tests.treemodel`
(issue 3, SPEC §5.3): the tar cases of :mod:`tests.integration.cases` and a Hypothesis-drawn
family, written with Python's tarfile, converted, exported and compared member by member.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from lcow import ConvertOptions, tar2ext4
from tests.helpers import TarEntry, write_tar
from tests.integration.cases import CASES
from tests.integration.export_roundtrip import (
    Member,
    assert_order,
    export,
    link_groups,
    member_name,
    read_members,
    resolve,
)
from tests.property.strategies import layer_entries
from tests.treemodel import Expected, expect_from_tar

# --------------------------------------------------------------------------------------------
# tarfile-built tars against the UnpackLayer model


def _member_matches(name: bytes, m: Member, e: Expected) -> list[str]:
    kind = {"reg": "reg", "dir": "dir", "lnk": "lnk", "chr": "chr", "blk": "blk", "fifo": "fifo"}
    out = []
    checks = {
        "kind": (kind[m.kind], e.kind),
        "perm": (m.perm, e.perm),
        "uid": (m.uid, e.uid),
        "gid": (m.gid, e.gid),
        "mtime_ns": (m.mtime_ns, e.mtime_ns),
        "target": (m.target, e.target),
        "rdev": (m.rdev, e.rdev),
        "xattrs": (m.xattrs, e.xattrs),
    }
    if e.kind == "reg":
        checks["size"] = (m.size, e.size)
    for key, (got, want) in checks.items():
        if want is not None and got != want:
            out.append(f"{name!r} {key}: exported {got!r}, expected {want!r}")
    return out


def _content_of(tar: Path) -> dict[bytes, bytes]:
    with tarfile.open(tar, encoding="utf-8", errors="surrogateescape") as tf:
        return {
            member_name(m.name): tf.extractfile(m).read()  # type: ignore[union-attr]
            for m in tf
            if m.isreg()
        }


def check_against_model(src: Path, out: Path, *, overlay: bool) -> None:
    """Exported members (overlay forms, no AUFS conversion) equal the model of ``src``."""
    from tests.treemodel import digest_bytes

    expected = {p: e for p, e in expect_from_tar(src, convert_whiteouts=overlay).items() if p}
    members = read_members(out)
    got = resolve(members)
    lost = expected.get(b"lost+found")
    if lost is not None and not [p for p in expected if p.startswith(b"lost+found/")]:
        del expected[b"lost+found"]  # an empty lost+found is never exported
    assert sorted(got) == sorted(expected)
    content = _content_of(out)
    problems: list[str] = []
    for name, e in expected.items():
        problems += _member_matches(name, got[name], e)
        if e.digest is not None and got[name].kind == "reg":
            data = content[name] if name in content else content[_first_name(members, name)]
            if digest_bytes(data) != e.digest:
                problems.append(f"{name!r}: content differs")
    assert not problems, "\n".join(problems[:20])
    groups: dict[int, set[bytes]] = {}
    for name, e in expected.items():
        if e.group is not None:
            groups.setdefault(e.group, set()).add(name)
    assert link_groups(members) == {frozenset(g) for g in groups.values() if len(g) > 1}


def _first_name(members: Sequence[tuple[bytes, Member]], name: bytes) -> bytes:
    m = dict(members)[name]
    while m.link is not None:
        name = m.link
        m = dict(members)[name]
    return name


@pytest.mark.parametrize("case", sorted(n for n, c in CASES.items() if not c.convert_slash))
def test_tar_cases_against_the_model(case: str, tmp_path: Path) -> None:
    spec = CASES[case]
    src = write_tar(tmp_path / "case.tar", spec.entries)
    image = tmp_path / "case.vhd"
    tar2ext4(src, image, ConvertOptions(convert_whiteouts=spec.overlay, inline_data=spec.inline))
    out, _ = export(image, tmp_path, aufs=False)
    assert_order(read_members(out))
    check_against_model(src, out, overlay=spec.overlay)


_HYPOTHESIS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}


@settings(max_examples=int(os.environ.get("LCOW_PROPERTY_EXAMPLES", "0")) or 40, **_HYPOTHESIS)  # type: ignore[arg-type]
@given(entries=layer_entries(whiteouts=True))
def test_random_layers_against_the_model(entries: list[TarEntry]) -> None:
    with tempfile.TemporaryDirectory(prefix="lcow-export-") as tmp:
        work = Path(tmp)
        src = write_tar(work / "layer.tar", entries)
        image = work / "layer.vhd"
        tar2ext4(src, image, ConvertOptions(convert_whiteouts=True, vhd_footer=True))
        out, _ = export(image, work, aufs=False)
        assert_order(read_members(out))
        check_against_model(src, out, overlay=True)
        # The AUFS export converts back into the same content — but a 0/0 character device
        # *is* a whiteout: it comes back with mode 0000, and each name of a hard-linked one
        # becomes its own marker.
        aufs, _ = export(image, work, aufs=True)
        again = work / "again.vhd"
        tar2ext4(aufs, again, ConvertOptions(convert_whiteouts=True))
        out2, _ = export(again, work, aufs=False)
        first, second = read_members(out), read_members(out2)
        assert _whiteout_perms_dropped(second) == _whiteout_perms_dropped(first)
        assert _groups_without_whiteouts(second) == _groups_without_whiteouts(first)


def _whiteout_perms_dropped(members: Sequence[tuple[bytes, Member]]) -> dict[bytes, Member]:
    return {
        n: dataclasses.replace(m, perm=0) if m.kind == "chr" and m.rdev == (0, 0) else m
        for n, m in resolve(members).items()
    }


def _groups_without_whiteouts(members: Sequence[tuple[bytes, Member]]) -> set[frozenset[bytes]]:
    resolved = resolve(members)
    return {
        g
        for g in link_groups(members)
        if not any(resolved[n].kind == "chr" and resolved[n].rdev == (0, 0) for n in g)
    }
