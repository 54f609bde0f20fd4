"""Baseline: Debian's containerd 1.6 on its own overlayfs snapshotter, with the test image.

``ctr images pull --plain-http`` from the loopback registry, ``ctr run`` (runc) and
``ctr images rm --sync``: the kernel's overlayfs, fed by containerd's own differ, says which
union the image makes, so these tests check the hand-written expectation of
:mod:`tests.containerd.images` and the fixtures, and are what the lcow snapshotter is compared
with.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.containerd.daemons import Containerd, ContainerdFactory, Registry
from tests.containerd.images import CMD_OUTPUT, LIST_SCRIPT, MEDIA_MANIFEST, PushedImage
from tests.helpers import requires

pytestmark = [requires("root", "containerd", "registry", "busybox"), pytest.mark.timeout(300)]

SNAPSHOTTER = "overlayfs"


def pulled(containerd: ContainerdFactory, image: PushedImage) -> Containerd:
    daemon = containerd()
    daemon.ctr("images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER, image.reference)
    return daemon


def run(daemon: Containerd, image: PushedImage, name: str, *command: str) -> str:
    """``ctr run --rm`` on the baseline snapshotter; the container's stdout."""
    argv = ["run", "--rm", "--snapshotter", SNAPSHOTTER, image.reference, name, *command]
    return daemon.ctr(*argv).stdout


def snapshots(daemon: Containerd) -> list[tuple[str, str, str]]:
    """``(key, parent, kind)`` of each line of ``ctr snapshots ls`` (the header skipped)."""
    out = daemon.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()
    assert out[0].split() == ["KEY", "PARENT", "KIND"], out
    rows = []
    for line in out[1:]:
        fields = line.split()
        parent = fields[1] if len(fields) == 3 else ""
        rows.append((fields[0], parent, fields[-1]))
    return rows


def test_the_registry_serves_the_manifest_built_here(
    registry: Registry, pushed_image: PushedImage
) -> None:
    request = urllib.request.Request(
        f"http://{registry.address}/v2/lcowtest/union/manifests/{pushed_image.image.tag}",
        headers={"Accept": MEDIA_MANIFEST},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Docker-Content-Digest"] == pushed_image.image.manifest_digest
        manifest = json.loads(answer.read())
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer.digest for layer in pushed_image.image.layers
    ]


def test_pull_and_run_see_the_union(
    containerd: ContainerdFactory, pushed_image: PushedImage
) -> None:
    daemon = pulled(containerd, pushed_image)
    images = daemon.ctr("images", "ls").stdout
    assert pushed_image.reference in images
    assert pushed_image.image.manifest_digest in images

    listing = sorted(run(daemon, pushed_image, "c1", "sh", "-c", LIST_SCRIPT).splitlines())
    assert listing == pushed_image.listing
    # What the whiteouts say, spelled out (the listing above already implies it):
    paths = {line.split()[1] for line in listing}
    assert not any("/.wh." in p for p in paths)
    assert "srv/gone" not in paths and "bin/mv" not in paths
    assert {p for p in paths if p.startswith("srv/old/")} == {"srv/old/c", "srv/old/d"}
    assert {p for p in paths if p.startswith("srv/dir/")} == {"srv/dir/z"}

    assert run(daemon, pushed_image, "c2") == CMD_OUTPUT  # the config's Cmd


def test_a_container_writes_into_its_own_snapshot(
    containerd: ContainerdFactory, pushed_image: PushedImage
) -> None:
    daemon = pulled(containerd, pushed_image)
    script = (
        "echo written > /srv/written && echo more >> /srv/keep && rm /srv/old/c"
        " && cat /srv/written /srv/keep && ls /srv/old"
    )
    assert run(daemon, pushed_image, "writer", "sh", "-c", script) == "written\nkeep\nmore\nd\n"
    # A new container starts from the image again.
    listing = sorted(run(daemon, pushed_image, "reader", "sh", "-c", LIST_SCRIPT).splitlines())
    assert listing == pushed_image.listing


def test_images_rm_sync_frees_every_snapshot(
    containerd: ContainerdFactory, pushed_image: PushedImage
) -> None:
    daemon = pulled(containerd, pushed_image)
    rows = snapshots(daemon)
    assert [kind for _, _, kind in rows] == ["Committed"] * len(pushed_image.image.layers)
    keys = {key for key, _, _ in rows}
    parents = [parent for _, parent, _ in rows]
    assert parents.count("") == 1 and set(parents) - {""} < keys  # one chain from the base

    run(daemon, pushed_image, "c1", "true")
    assert len(snapshots(daemon)) == len(pushed_image.image.layers)  # --rm removed its own

    daemon.ctr("images", "rm", "--sync", pushed_image.reference)
    assert snapshots(daemon) == []
    store = daemon.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    assert sorted(Path(store).iterdir()) == []
