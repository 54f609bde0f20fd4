"""``lcow pull`` against registries that misbehave: bad documents, loops, stalls, tampering.

Every case must exit with a clear message naming the registry or the blob, in bounded time, and
leave no layer behind (nothing at all when the failure comes before any layer: the data root is
opened only once the manifest and config are verified).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from lcow.storage.dataroot import is_valid_id
from tests.containerd.daemons import Registry
from tests.containerd.images import BuiltImage, push_image, write_index, write_manifest
from tests.helpers import requires
from tests.registry.conftest import layer_tars
from tests.registry.hostile import HostileRegistry, hostile_layers, layer_digest
from tests.registry.test_pull import lcow


@pytest.mark.parametrize(
    ("mode", "status", "message"),
    [
        ("not-json", 3, ": not JSON (Expecting value"),
        ("too-big", 3, f"manifest v1: {5 << 20} bytes is more than the {4 << 20} allowed"),
        ("too-big-unannounced", 3, f"manifest v1: more than the {4 << 20} bytes allowed"),
        ("schema1", 3, "a Docker schema 1 manifest; only schema 2 and OCI images"),
        ("redirect-loop", 3, "manifest v1: more than 5 redirects"),
        ("stall", 1, "manifest v1: no answer within 1 s"),
        ("flaky", 3, "not JSON"),
    ],
)
def test_hostile_registry(mode: str, status: int, message: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    with HostileRegistry(mode) as server:
        started = time.monotonic()
        proc = lcow(root, "pull", "--plain-http", "--timeout", "1", "--retries", "2",
                    f"{server.address}/hostile/img:v1", timeout=60)  # fmt: skip
        elapsed = time.monotonic() - started
        requests = server.requests
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.startswith(f"lcow: {server.address}/hostile/img"), proc.stderr
    assert message in proc.stderr, proc.stderr
    assert not root.exists()
    if mode == "stall":  # 3 attempts of 1 s with 0.5 s and 1 s pauses: bounded
        assert requests == 3 and "after 3 attempts" in proc.stderr
        assert elapsed < 30
    if mode == "flaky":  # two 503s retried, then the bad answer
        assert requests == 3


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("long-blob", "the registry sends 24576 bytes, its descriptor says 20480"),
        ("short-blob", "the registry sends 16384 bytes, its descriptor says 20480"),
        ("long-blob-unannounced", "is longer than its descriptor's 20480 bytes"),
        ("short-blob-unannounced", "the blob ended after 16384 of its 20480 bytes"),
    ],
)
def test_blob_size_is_enforced_while_streaming(mode: str, message: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    with HostileRegistry(mode) as server:
        proc = lcow(root, "pull", "--plain-http", "--timeout", "5",
                    f"{server.address}/hostile/img:v1", timeout=60)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert layer_digest() in proc.stderr and message in proc.stderr, proc.stderr
    assert [e.name for e in root.iterdir() if is_valid_id(e.name)] == []
    assert not (root / ".images.json").exists()


# Conversion slots, which also bound --parallel (the default is the CPU count).
_SLOTS = {"LCOW_MAX_CONVERSIONS": "3"}


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_layers_download_in_parallel_bounded(parallel: int, tmp_path: Path) -> None:
    """Three layers, each answered 1.5 s after it is asked for: ``--parallel N`` has exactly
    N blob requests in flight at once (bounded), and every layer lands."""
    root = tmp_path / "root"
    with HostileRegistry("parallel") as server:
        proc = lcow(root, "pull", "--plain-http", "--parallel", str(parallel),
                    f"{server.address}/hostile/img:v1", timeout=60, env=_SLOTS)  # fmt: skip
        most = server.most_in_flight
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 3
    assert all((root / lid / "layer.vhd").is_file() for lid in proc.stdout.split())
    assert most == parallel


def test_a_failed_layer_stops_the_other_downloads(tmp_path: Path) -> None:
    """Layer 1 of 3 ends before its Content-Length while layers 2 and 3 stall mid-body: the
    pull fails at once with layer 1's error (not after the stalled downloads' 60 s timeouts),
    leaving no layer."""
    root = tmp_path / "root"
    with HostileRegistry("one-fails") as server:
        started = time.monotonic()
        proc = lcow(root, "pull", "--plain-http", "--timeout", "60", "--parallel", "3",
                    f"{server.address}/hostile/img:v1", timeout=120, env=_SLOTS)  # fmt: skip
        elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    first = next(iter(hostile_layers(3)))
    assert proc.stderr.startswith(
        f"lcow: {server.address}/hostile/img: blob {first}: download failed: peer closed"
    ), proc.stderr
    assert elapsed < 30, elapsed
    assert [e.name for e in root.iterdir() if is_valid_id(e.name)] == []


@requires("registry")
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_tampered_blob_leaves_no_layer(
    compression: str, plain_registry: Registry, tmp_path: Path
) -> None:
    """A layer blob edited in the registry's storage (same size, one byte flipped): exit 3
    naming its digest; the good layer below it, created first, is removed again."""
    work = tmp_path / "image"
    work.mkdir()
    tars = layer_tars(work, f"t{uuid.uuid4().hex[:8]}", 2)  # blobs no other test shares
    layout = work / "layout"
    descriptor, _, layers = write_manifest(
        layout, [t.read_bytes() for t in tars], compression=("gzip", compression)
    )
    digest = write_index(layout, [descriptor], "v1")
    ref = push_image(BuiltImage(layout, "v1", digest, "", layers), plain_registry.address,
                     "lcowtest/tampered", work)  # fmt: skip
    bad = layers[1].digest.removeprefix("sha256:")
    blob = plain_registry.storage / "docker/registry/v2/blobs/sha256" / bad[:2] / bad / "data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x55
    blob.write_bytes(bytes(data))

    root = tmp_path / "root"
    proc = lcow(root, "pull", "--plain-http", ref)
    assert proc.returncode == 3, proc.stderr
    assert f"sha256:{bad}" in proc.stderr, proc.stderr
    assert [e.name for e in root.iterdir() if is_valid_id(e.name)] == []
    assert not (root / ".images.json").exists()
    listed = lcow(root, "images")
    assert listed.returncode == 0 and listed.stdout.splitlines()[2:] == []  # headers only


@pytest.mark.parametrize(("mode", "message"), [
    ("referrers-huge", f"more than the {4 << 20} bytes allowed"),
    ("referrers-not-json", ": not JSON (Expecting value"),
    ("referrers-wrong-type", "not an OCI image index (media type "),
])  # fmt: skip
def test_hostile_referrers(mode: str, message: str, tmp_path: Path) -> None:
    """A bad answer of the referrers API: a pull warns naming it and converts the tars; a
    publish fails with exit 3 naming it."""
    root = tmp_path / "root"
    with HostileRegistry(mode) as server:
        ref = f"{server.address}/hostile/img:v1"
        pulled = lcow(root, "pull", "--plain-http", "--timeout", "5", "--json", ref, timeout=60)
        assert pulled.returncode == 0, pulled.stderr
        assert f"{server.address}/hostile/img: referrers of sha256:" in pulled.stderr
        assert message in pulled.stderr, pulled.stderr
        assert "not using converted layers" in pulled.stderr, pulled.stderr
        layers = json.loads(pulled.stdout)["Layers"]
        assert [(layer["Converted"], layer["Created"]) for layer in layers] == [(False, True)]

        published = lcow(root, "publish", "--plain-http", "--timeout", "5", ref, timeout=60)
    assert published.returncode == 3, published.stderr
    assert published.stderr.startswith(f"lcow: {server.address}/hostile/img: referrers of sha256:")
    assert message in published.stderr, published.stderr
