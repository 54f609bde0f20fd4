"""Two ``lcow pull`` processes on one data root, and pulls killed at random moments, against
Debian's docker-registry 2.8 on loopback, for both the converting pull and the converted one.

The rules under test (README "Safety"): a layer is visible whole or not at all; what a killed
pull leaves is garbage Cleanup sweeps; nothing that existed is lost; a second process pulling the
same layers waits for the first's or reuses them and never corrupts them. Oracles: ``e2fsck -fn``
on every visible ``layer.vhd`` and GNU ``tar -df`` of its source tar against the kernel's mount.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lcow.images.chainid import chain_ids, layer_id
from tests.containerd.daemons import Registry
from tests.containerd.images import BuiltImage, push_image, write_index, write_manifest
from tests.helpers import (
    TarEntry,
    assert_e2fsck_clean,
    assert_tar_diff_clean,
    loop_mount,
    requires,
    write_tar,
)
from tests.registry.test_pull import check_layers, diff_ids, lcow

pytestmark = [requires("registry", "skopeo", "e2fsck", "loop"), pytest.mark.slow]

KILLS = 8  # per kind of pull: enough to land in the download, the write and the rename


def _layer_tars(work: Path, tag: str) -> tuple[Path, ...]:
    """Three layers of a few MiB each (incompressible bodies, so the download and the write of
    each layer take long enough for a kill to land inside them)."""
    rng = random.Random(tag)
    tars = []
    for n in range(3):
        entries = [
            TarEntry(f"{tag}{n}", kind="dir", mode=0o755),
            TarEntry(f"{tag}{n}/body.bin", data=rng.randbytes((3 + n) << 20)),
            TarEntry(f"{tag}{n}/small.txt", data=f"layer {n}\n".encode()),
            TarEntry(f"{tag}{n}/link", kind="symlink", target="small.txt"),
        ]
        tars.append(write_tar(work / f"{tag}-{n}.tar", entries))
    return tuple(tars)


def _push(registry: Registry, work: Path) -> tuple[str, tuple[Path, ...]]:
    tag = f"r{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True, exist_ok=True)
    tars = _layer_tars(work, tag)
    layout = work / "layout"
    descriptor, _, layers = write_manifest(layout, [t.read_bytes() for t in tars])
    digest = write_index(layout, [descriptor], "v1")
    reference = push_image(
        BuiltImage(layout, "v1", digest, "", layers), registry.address, f"lcowtest/{tag}", work
    )
    return reference, tars


def _published(registry: Registry, tmp_path: Path) -> tuple[str, tuple[Path, ...]]:
    """An image whose converted layers are published (the fallback tag of registry 2.8)."""
    reference, tars = _push(registry, tmp_path / "image")
    publisher = tmp_path / "publisher"
    for argv in (("pull", "--plain-http", reference), ("publish", "--plain-http", reference)):
        proc = lcow(publisher, *argv)
        assert proc.returncode == 0, proc.stderr
    return reference, tars


def _pull_argv(root: Path, reference: str, converted: bool) -> list[str]:
    mode = [] if converted else ["--no-converted"]
    return [
        sys.executable,
        "-m",
        "lcow",
        "--root",
        str(root),
        "pull",
        "--plain-http",
        "--json",
        *mode,
        reference,
    ]


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}
    env["HOME"] = str(root.parent / "home")
    return env


def _visible_layers(root: Path) -> dict[str, str]:
    """``lcow ls --json``: id → kind of disk, for every layer the driver shows (none when the
    kill came before the pull made the data root)."""
    if not root.exists():
        return {}
    proc = lcow(root, "ls", "--json", "--no-trunc")
    assert proc.returncode == 0, proc.stderr
    return {row["Id"]: row["Kind"] for row in json.loads(proc.stdout)}


def _temporaries(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith("-removing")]


def _check_whole(root: Path, tars: tuple[Path, ...], mnt: Path) -> int:
    """Every visible layer is one of the image's, whole (e2fsck-clean, holding its tar); no other
    layer is visible. Returns how many are."""
    by_id = dict(zip((layer_id(c) for c in chain_ids(diff_ids(tars))), tars, strict=True))
    visible = _visible_layers(root)
    assert set(visible) <= set(by_id), (
        f"layers that are not the image's: {set(visible) - set(by_id)}"
    )
    for lid, kind in visible.items():
        assert kind == "layer.vhd", f"layer {lid} is visible without its image ({kind})"
        image = root / lid / "layer.vhd"
        assert_e2fsck_clean(image)
        with loop_mount(image, mnt / lid[:12]) as mounted:
            assert_tar_diff_clean(by_id[lid], mounted)
    return len(visible)


@pytest.mark.parametrize("converted", [False, True], ids=["converting", "converted"])
def test_two_pulls_of_one_image_into_one_root(
    plain_registry: Registry, tmp_path: Path, converted: bool
) -> None:
    """Both processes succeed with the same layers, which are whole and hold their tars; no
    temporary file is left."""
    reference, tars = _published(plain_registry, tmp_path)
    root = tmp_path / "root"
    procs = [
        subprocess.Popen(
            _pull_argv(root, reference, converted),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(root),
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    expected = [layer_id(c) for c in chain_ids(diff_ids(tars))]
    for result in results:
        assert [layer["Id"] for layer in result["Layers"]] == expected
    check_layers(root, tars, tmp_path / "mnt")
    assert _check_whole(root, tars, tmp_path / "mnt2") == 3
    for lid in expected:  # each layer came the way asked, whichever process landed it
        meta = json.loads((root / lid / "lcow-layer.json").read_text())
        assert ("converted_from" in meta) is converted, meta
    assert _temporaries(root) == []


def _pull_completes(root: Path, reference: str, converted: bool) -> None:
    """Pull ``reference`` into ``root`` in a process of its own; it must succeed."""
    proc = subprocess.run(
        _pull_argv(root, reference, converted),
        capture_output=True,
        text=True,
        env=_env(root),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("converted", [False, True], ids=["converting", "converted"])
def test_killed_pulls_leave_layers_whole_or_absent(
    plain_registry: Registry, tmp_path: Path, converted: bool
) -> None:
    """SIGKILL at random moments of a pull: every layer still visible is whole; Cleanup sweeps
    what the kill left; the next pull completes the image, reusing what was whole."""
    reference, tars = _published(plain_registry, tmp_path)
    root = tmp_path / "root"
    started = time.monotonic()
    _pull_completes(tmp_path / "timing", reference, converted)
    duration = time.monotonic() - started
    rng = random.Random(f"{reference}/{converted}")
    finished = 0
    for kill in range(KILLS):
        # Start-up takes a good part of a pull: aim the kills at its second half mostly.
        delay = rng.uniform(0.3, 1.0) * duration
        child = subprocess.Popen(
            _pull_argv(root, reference, converted),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_env(root),
        )
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        if child.returncode == 0:
            finished += 1
        whole_before = _check_whole(root, tars, tmp_path / f"mnt{kill}")
        swept = lcow(root, "cleanup")
        assert swept.returncode == 0, swept.stderr
        assert _temporaries(root) == [], f"kill {kill}: Cleanup left temporaries"
        # Nothing that was whole is lost to the kill or to Cleanup.
        assert _check_whole(root, tars, tmp_path / f"mnt{kill}b") == whole_before
        if kill % 2:  # every other round, start the next kill from an empty root
            for lid in reversed(list(_visible_layers(root))):  # children first
                removed = lcow(root, "remove", lid)
                assert removed.returncode == 0, removed.stderr
    assert finished < KILLS, "every pull finished before its kill: the kills tested nothing"
    _pull_completes(root, reference, converted)
    check_layers(root, tars, tmp_path / "mnt-final")
    assert _temporaries(root) == []
