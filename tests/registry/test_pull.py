"""``lcow pull`` against Debian's docker-registry 2.8: TLS from a test CA, htpasswd auth.

The pulled layers are judged by independent oracles: ``e2fsck -fn`` on each ``layer.vhd``, and
GNU ``tar -df`` of each source layer tar against the layer image mounted read-only by the kernel.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcow.cli.main import main
from lcow.cli.status import ExitStatus
from lcow.images.chainid import chain_ids, layer_id, sha256
from tests.containerd.images import goarch
from tests.helpers import assert_e2fsck_clean, assert_tar_diff_clean, loop_mount, requires
from tests.registry.conftest import (
    PASSWORD,
    USER,
    DockerConfig,
    MultiImage,
    Pki,
    TokenRegistry,
    basic_auth,
)

pytestmark = [requires("registry", "htpasswd", "openssl", "e2fsck", "loop"), pytest.mark.slow]


def lcow(root: Path, *args: str | Path, config: Path | None = None, timeout: float = 300,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``lcow --root ROOT ARGS`` in a fresh process, with ``DOCKER_CONFIG=config`` and
    ``env`` added to the environment."""
    full = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}
    full["HOME"] = str(root.parent / "home")  # never the user's ~/.docker
    if config is not None:
        full["DOCKER_CONFIG"] = str(config)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lcow", "--root", str(root), *map(str, args)],
        capture_output=True, text=True, env=full, timeout=timeout, check=False,
    )  # fmt: skip


def diff_ids(tars: tuple[Path, ...]) -> list[str]:
    return [sha256(t.read_bytes()) for t in tars]


def check_layers(root: Path, tars: tuple[Path, ...], mnt: Path) -> None:
    """Every layer of ``tars`` is in ``root`` under its chain ID, e2fsck-clean, and holds
    exactly its tar (GNU tar's compare against the kernel's mount of the image)."""
    for tar, chain in zip(tars, chain_ids(diff_ids(tars)), strict=True):
        image = root / layer_id(chain) / "layer.vhd"
        assert_e2fsck_clean(image)
        meta = json.loads((root / layer_id(chain) / "lcow-layer.json").read_text())
        assert meta["chain_id"] == chain
        with loop_mount(image, mnt / layer_id(chain)[:12]) as mounted:
            assert_tar_diff_clean(tar, mounted)


def test_pull_multi_platform_with_docker_config_credentials(
    multi_image: MultiImage, docker_config: DockerConfig, pki: Pki, tmp_path: Path
) -> None:
    registry = multi_image.registry.address
    config = docker_config({"auths": {f"https://{registry}": {"auth": basic_auth(USER, PASSWORD)}}})
    root = tmp_path / "root"
    ca = pki.ca
    proc = lcow(root, "pull", "--ca-file", ca, "--json", multi_image.reference, config=config)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    chains = chain_ids(diff_ids(multi_image.native))
    assert result["Name"] == multi_image.reference
    assert result["Digest"] == multi_image.index_digest
    assert result["Platform"] == f"linux/{goarch()}"
    assert [layer["Id"] for layer in result["Layers"]] == [layer_id(c) for c in chains]
    assert [layer["DiffID"] for layer in result["Layers"]] == diff_ids(multi_image.native)
    assert all(layer["Created"] for layer in result["Layers"])
    assert [layer["Compression"] for layer in result["Layers"]] == ["gzip", "zstd", "none"]
    check_layers(root, multi_image.native, tmp_path / "mnt")

    # `lcow images` lists it; a second pull reuses every verified layer.
    listed = json.loads(lcow(root, "images", "--json").stdout)
    assert [(i["Name"], i["Digest"], i["Top"], i["Present"]) for i in listed] == [
        (multi_image.reference, multi_image.index_digest, layer_id(chains[-1]), True)
    ]
    again = lcow(root, "pull", "--ca-file", ca, multi_image.reference, config=config)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == [layer_id(c) for c in chains]
    assert "3 layers, 0 new, 3 already present" in again.stderr


def test_pull_other_platform_with_username_and_password(
    multi_image: MultiImage, docker_config: DockerConfig, pki: Pki, tmp_path: Path
) -> None:
    registry = multi_image.registry.address
    config = docker_config({"auths": {registry: {"username": USER, "password": PASSWORD}}})
    root = tmp_path / "root"
    ca = pki.ca
    platform = f"linux/{multi_image.other_arch}"
    proc = lcow(root, "pull", "--ca-file", ca, "--platform", platform, multi_image.reference,
                config=config)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [layer_id(c) for c in chain_ids(diff_ids(multi_image.other))]
    check_layers(root, multi_image.other, tmp_path / "mnt")

    missing = lcow(tmp_path / "r2", "pull", "--ca-file", ca, "--platform", "linux/s390x",
                   multi_image.reference, config=config)  # fmt: skip
    assert missing.returncode == 4, missing.stderr
    assert "no manifest for linux/s390x" in missing.stderr
    assert f"linux/{multi_image.other_arch}" in missing.stderr
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("how", ["wrong password", "no credentials"])
def test_refused_credentials_create_nothing(
    how: str, multi_image: MultiImage, docker_config: DockerConfig, pki: Pki, tmp_path: Path
) -> None:
    registry = multi_image.registry.address
    auths = {registry: {"auth": basic_auth(USER, "wrong")}} if how == "wrong password" else {}
    config = docker_config({"auths": auths})
    root = tmp_path / "root"
    proc = lcow(root, "pull", "--ca-file", pki.ca, multi_image.reference,
                config=config)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"lcow: {registry}/lcowtest/multi: manifest v1: access denied")
    assert (USER in proc.stderr) == (how == "wrong password")
    assert "wrong" not in proc.stderr  # the password is never printed
    assert not root.exists()


def test_tls_is_verified(multi_image: MultiImage, docker_config: DockerConfig,
                         tmp_path: Path) -> None:  # fmt: skip
    config = docker_config({"auths": {}})
    root = tmp_path / "root"
    proc = lcow(root, "pull", "--retries", "0", multi_image.reference, config=config)
    assert proc.returncode == 1, proc.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in proc.stderr
    assert not root.exists()


def test_pull_with_a_bearer_token(
    token_registry: TokenRegistry, docker_config: DockerConfig, tmp_path: Path
) -> None:
    """The 401's challenge names the token realm; the token is asked for with the service, the
    repository's pull scope and the config's credentials as Basic auth."""
    registry = token_registry.registry.address
    good = docker_config({"auths": {registry: {"auth": basic_auth(USER, PASSWORD)}}})
    before = len(token_registry.tokens.asked)
    root = tmp_path / "root"
    proc = lcow(root, "pull", "--plain-http", token_registry.reference, config=good)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [layer_id(c) for c in chain_ids(diff_ids(token_registry.tars))]
    check_layers(root, token_registry.tars, tmp_path / "mnt")
    asked = token_registry.tokens.asked[before:]
    assert asked == [
        {"user": USER, "service": "lcow-test-registry", "scope": "repository:lcowtest/bearer:pull"}
    ]

    bad = docker_config({"auths": {registry: {"auth": basic_auth(USER, "wrong")}}})
    refused = lcow(tmp_path / "r2", "pull", "--plain-http", token_registry.reference, config=bad)
    assert refused.returncode == 1, refused.stderr
    assert f"lcow: {registry}/lcowtest/bearer: manifest v1: access denied (HTTP 401)" in (
        refused.stderr
    )
    assert not (tmp_path / "r2").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(
    multi_image: MultiImage,
    docker_config: DockerConfig,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = multi_image.registry.address
    config = docker_config({"auths": {registry: {"auth": basic_auth(USER, PASSWORD)}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    root = tmp_path / "root"
    argv = ["--root", str(root), "pull", "--ca-file", str(pki.ca), multi_image.reference]
    assert main(argv) == ExitStatus.OK
    assert "pull" in terminal.getvalue() and "B/s" in terminal.getvalue()
    assert "3 layers, 3 new" in terminal.getvalue()
