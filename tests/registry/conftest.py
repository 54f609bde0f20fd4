"""Fixtures of the registry tests: Debian's docker-registry 2.8 on loopback, TLS and htpasswd.

* ``pki`` (session): a CA and a server certificate for ``127.0.0.1`` made with ``openssl``
  (``.ca``, ``.cert``, ``.key``).
* ``secure_registry`` (session): a :class:`~tests.containerd.daemons.Registry` serving HTTPS
  with that certificate and requiring Basic auth (``htpasswd -B``) for :data:`USER`.
* ``plain_registry`` (session): one on plain HTTP without auth, for tests that edit its storage.
* ``multi_image`` (session): :class:`MultiImage`, a two-platform image index pushed to the
  secure registry with ``skopeo copy --all``: this machine's architecture with a gzip, a zstd
  and a plain layer, and ``arm64`` (or ``amd64`` on an arm64 machine) with its own two layers.
* ``token_registry`` (session): :class:`TokenRegistry`, a plain-HTTP registry requiring Bearer
  tokens from a token server run by the test (:mod:`tests.registry.tokenserver`: GET with
  Basic credentials, or the OAuth2 POST with :data:`IDENTITY_TOKEN`), with a two-layer gzip
  image pushed.
* ``docker_config``: a factory writing ``config.json`` into a new ``DOCKER_CONFIG`` folder.

Daemons are stopped by pid at the end of the session.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.containerd.daemons import Registry, short_dir
from tests.containerd.images import BuiltImage, goarch, push_image, write_index, write_manifest
from tests.helpers import TarEntry, ensure, write_tar
from tests.registry.tokenserver import TokenServer

USER = "lcowtester"
PASSWORD = "s3cret-pass"  # a throwaway test password, only in the test registry's htpasswd
#: The refresh token the test token server's OAuth2 POST accepts (a throwaway test value).
IDENTITY_TOKEN = "lcow-test-refresh-9f3c2e7a"

__all__ = ["IDENTITY_TOKEN", "PASSWORD", "USER", "MultiImage", "Pki", "TokenRegistry"]


@dataclass(frozen=True)
class Pki:
    """A test CA (``ca``) and the server's certificate and key, all PEM files."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class MultiImage:
    """The pushed two-platform image.

    Attributes:
        reference: ``127.0.0.1:PORT/lcowtest/multi:v1``.
        index_digest: what the tag names (the image index).
        native: the layer tars of this machine's platform, base first.
        native_compression: how each native layer is stored.
        other_arch: the second platform's architecture.
        other: its layer tars.
        registry: the registry it lives in.
    """

    reference: str
    index_digest: str
    native: tuple[Path, ...]
    native_compression: tuple[str, ...]
    other_arch: str
    other: tuple[Path, ...]
    registry: Registry


def _openssl(*args: str | Path) -> None:
    proc = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, f"openssl {' '.join(map(str, args))}: {proc.stderr}"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ensure("openssl")
    work = tmp_path_factory.mktemp("pki")
    ca, ca_key = work / "ca.pem", work / "ca.key"
    cert, key, csr, ext = (
        work / "server.pem",
        work / "server.key",
        work / "server.csr",
        work / "ext",
    )
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
             "-days", "2", "-subj", "/CN=lcow test CA")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", "/CN=127.0.0.1")  # fmt: skip
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
    return Pki(ca, cert, key)


@pytest.fixture(scope="session")
def secure_registry(pki: Pki) -> Iterator[Registry]:
    ensure("registry", "htpasswd")
    base = short_dir("lcowreg-")
    htpasswd = base / "htpasswd"
    proc = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True,
                          check=True)  # fmt: skip
    htpasswd.write_bytes(proc.stdout)
    registry = Registry(base / "registry", tls=(pki.cert, pki.key), htpasswd=htpasswd)
    try:
        yield registry.start()
    finally:
        registry.stop()
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture(scope="session")
def plain_registry() -> Iterator[Registry]:
    ensure("registry")
    base = short_dir("lcowreg-")
    registry = Registry(base / "registry")
    try:
        yield registry.start()
    finally:
        registry.stop()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def layer_tars(work: Path, tag: str, count: int) -> list[Path]:
    """``count`` small layer tars (directories, files, a symlink, a hard link, owners and modes)
    whose content carries ``tag``, so that different images never share blobs."""
    tars = []
    for n in range(count):
        entries = [
            TarEntry(f"{tag}{n}", kind="dir", mode=0o755),
            TarEntry(f"{tag}{n}/hello.txt", data=f"layer {n} of {tag}\n".encode() * 50),
            TarEntry(
                f"{tag}{n}/big.bin",
                data=bytes(range(256)) * (1024 + 97 * n),
                mode=0o600,
                uid=1000,
                gid=100,
            ),
            TarEntry(f"{tag}{n}/link", kind="symlink", target="hello.txt"),
            TarEntry(f"{tag}{n}/hard", kind="hardlink", target=f"{tag}{n}/hello.txt"),
            TarEntry(f"{tag}{n}/sub", kind="dir", mode=0o700, uid=7, gid=8),
            TarEntry(f"{tag}{n}/sub/empty", data=b""),
        ]
        tars.append(write_tar(work / f"{tag}-{n}.tar", entries))
    return tars


def other_arch() -> str:
    """A second platform's architecture: arm64, or amd64 on an arm64 machine."""
    return "amd64" if goarch() == "arm64" else "arm64"


@pytest.fixture(scope="session")
def multi_image(secure_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> MultiImage:
    work = tmp_path_factory.mktemp("multi")
    layout = work / "layout"
    native = layer_tars(work, "native", 3)
    kinds = ("gzip", "zstd", "none")
    first, _, _ = write_manifest(layout, [t.read_bytes() for t in native], compression=kinds)
    other = layer_tars(work, "other", 2)
    second, _, _ = write_manifest(layout, [t.read_bytes() for t in other], arch=other_arch())
    digest = write_index(layout, [first, second], "v1")
    built = BuiltImage(layout, "v1", digest, "", ())
    reference = push_image(built, secure_registry.address, "lcowtest/multi", work,
                           all_platforms=True, creds=f"{USER}:{PASSWORD}")  # fmt: skip
    return MultiImage(reference, digest, tuple(native), kinds, other_arch(), tuple(other),
                      secure_registry)  # fmt: skip


DockerConfig = Callable[[dict[str, object]], Path]


@pytest.fixture
def docker_config(tmp_path: Path) -> DockerConfig:
    """``docker_config(auths_or_config) -> DOCKER_CONFIG folder`` with that ``config.json``."""
    count = 0

    def make(config: dict[str, object]) -> Path:
        nonlocal count
        count += 1
        folder = tmp_path / f"docker-config-{count}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    return make


def basic_auth(user: str, password: str) -> str:
    """The ``auth`` value of a ``config.json`` entry."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class TokenRegistry:
    """A registry requiring Bearer tokens from :attr:`tokens` (plain HTTP), with an image.

    Attributes:
        registry: the registry.
        tokens: its token server (which records what it was asked).
        reference: the pushed image (``127.0.0.1:PORT/lcowtest/bearer:v1``).
        tars: its layer tars.
    """

    registry: Registry
    tokens: TokenServer
    reference: str
    tars: tuple[Path, ...]


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    ensure("registry", "openssl")
    work = tmp_path_factory.mktemp("bearer")
    key, cert = work / "token.key", work / "token.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
             "-days", "2", "-subj", "/CN=lcow test token issuer")  # fmt: skip
    base = short_dir("lcowreg-")
    with TokenServer(key, cert, (USER, PASSWORD), IDENTITY_TOKEN) as tokens:
        registry = Registry(base / "registry", token=tokens.registry_config())
        try:
            registry.start()
            tars = layer_tars(work, "bearer", 2)
            layout = work / "layout"
            descriptor, _, layers = write_manifest(layout, [t.read_bytes() for t in tars])
            digest = write_index(layout, [descriptor], "v1")
            reference = push_image(BuiltImage(layout, "v1", digest, "", layers), registry.address,
                                   "lcowtest/bearer", work, creds=f"{USER}:{PASSWORD}")  # fmt: skip
            yield TokenRegistry(registry, tokens, reference, tuple(tars))
        finally:
            registry.stop()
            subprocess.run(["rm", "-rf", str(base)], check=False)
