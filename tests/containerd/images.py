"""A four-layer OCI image built here, without docker or the network, and pushed with skopeo.

The base layer is the busybox root filesystem of the plugin tests (:func:`busybox_rootfs`);
three more layers add tools and files, white files and a directory out (AUFS ``.wh.<name>``),
make directories opaque (``.wh..wh..opq``, once over a lower directory and once on a new one),
recreate a whited-out directory, replace files, change owners and modes, add a symlink, a hard
link and remove an applet. Each layer is a PAX tar, gzip-compressed, in an OCI image layout
(``oci-layout``, ``index.json``, ``blobs/sha256/...``) whose digests and ``rootfs.diff_ids`` are
computed here.

:data:`EXPECTED` is the union a container must see below ``/bin``, ``/etc`` and ``/srv`` after
the whiteouts, written out by hand (not computed from the layers, so that it is an independent
statement); :data:`LIST_SCRIPT` prints what a container sees in the same format
(:func:`expected_listing`), so a test compares two sorted lists of lines. containerd's own
overlayfs snapshotter checks this expectation (``test_containerd_baseline.py``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import TarEntry, write_tar
from tests.plugin.dockerd import APPLETS, BUSYBOX, busybox_rootfs

__all__ = [
    "CMD",
    "CMD_OUTPUT",
    "EXPECTED",
    "LIST_SCRIPT",
    "BuiltImage",
    "Layer",
    "Node",
    "PushedImage",
    "build_image",
    "expected_listing",
    "goarch",
    "push_image",
    "write_index",
    "write_manifest",
]

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_LAYER_MEDIA = {
    "gzip": MEDIA_LAYER,
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}

BASE_MTIME = 1_700_000_000  # what busybox_rootfs gives every entry
MTIME = 1_600_000_000  # seconds of TarEntry's default mtime_ns

TOOLS = ("find", "sort", "stat", "sha256sum", "cut", "readlink")  # LIST_SCRIPT needs them
REMOVED_APPLET = "mv"  # whited out in the last layer

CMD = ["/bin/sh", "-c", "cat /etc/motd"]
CMD_OUTPUT = "motd from layer 1\n"

# One line per path below bin, etc and srv: ``dir PATH MODE UID:GID``,
# ``file PATH MODE UID:GID NLINK MTIME SHA256`` or ``symlink PATH TARGET``.
LIST_SCRIPT = (
    "cd / && find bin etc srv | sort | while read -r p; do"
    ' if [ -L "$p" ]; then echo "symlink $p $(readlink "$p")";'
    ' elif [ -d "$p" ]; then echo "dir $p $(stat -c "%a %u:%g" "$p")";'
    ' else echo "file $p $(stat -c "%a %u:%g %h %Y" "$p") $(sha256sum "$p" | cut -d" " -f1)";'
    " fi; done"
)


@dataclass(frozen=True)
class Node:
    """What a container sees at one path.

    Attributes:
        kind: ``dir``, ``file`` or ``symlink``.
        mode: permission bits (files and directories).
        data: a file's content.
        target: a symlink's target.
        uid, gid: numeric owner (files and directories).
        nlink: a file's link count.
        mtime: a file's modification time in seconds.
    """

    kind: str
    mode: int = 0o755
    data: bytes = b""
    target: str = ""
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    mtime: int = MTIME


def _dir(mode: int = 0o755) -> Node:
    return Node("dir", mode)


def _file(data: bytes, mode: int = 0o644, *, uid: int = 0, gid: int = 0, nlink: int = 1) -> Node:
    return Node("file", mode, data=data, uid=uid, gid=gid, nlink=nlink)


def _base_file(data: bytes, mode: int = 0o644) -> Node:
    return Node("file", mode, data=data, mtime=BASE_MTIME)


def _expected() -> dict[str, Node]:
    busybox = Path(BUSYBOX).read_bytes() if Path(BUSYBOX).exists() else b""
    tree: dict[str, Node] = {
        "bin": _dir(),
        "bin/busybox": _base_file(busybox, 0o755),
        "etc": _dir(),
        "etc/group": _base_file(b"root:x:0:\n"),
        "etc/motd": _file(CMD_OUTPUT.encode()),
        "etc/passwd": _base_file(b"root:x:0:0:root:/root:/bin/sh\n"),
        "srv": _dir(),
        "srv/dir": _dir(0o750),  # whited out in layer 2 with x and sub/y, recreated in 3
        "srv/dir/z": _file(b"z\n"),
        "srv/fresh": _dir(),  # a new directory that is opaque from the start
        "srv/fresh/f": _file(b"f\n"),
        "srv/keep": _base_file(b"keep\n"),
        "srv/link": _file(b"new in layer 3\n", 0o755, nlink=2),
        "srv/new": _file(b"new in layer 3\n", 0o755, nlink=2),
        "srv/old": _dir(),  # opaque in layer 2: the base's a and b are gone
        "srv/old/c": _file(b"c from layer 2\n"),
        "srv/old/d": _file(b"d from layer 3\n"),
        "srv/owned": _file(b"owned\n", 0o600, uid=1000, gid=1000),
        "srv/replaced": _file(b"v2\n", 0o640),
        "srv/sym": Node("symlink", target="keep"),
    }  # srv/gone: whited out in layer 2
    for applet in {*APPLETS, *TOOLS} - {REMOVED_APPLET}:
        tree[f"bin/{applet}"] = Node("symlink", target="busybox")
    return tree


EXPECTED: dict[str, Node] = _expected()


def expected_listing(tree: dict[str, Node]) -> list[str]:
    """The lines :data:`LIST_SCRIPT` prints for ``tree``, sorted."""
    lines = []
    for path, node in tree.items():
        owner = f"{node.uid}:{node.gid}"
        if node.kind == "dir":
            lines.append(f"dir {path} {node.mode:o} {owner}")
        elif node.kind == "symlink":
            lines.append(f"symlink {path} {node.target}")
        else:
            digest = hashlib.sha256(node.data).hexdigest()
            lines.append(f"file {path} {node.mode:o} {owner} {node.nlink} {node.mtime} {digest}")
    return sorted(lines)


def _layers() -> list[list[TarEntry]]:
    """The three layers above the base, as tar entries (parents always listed, as docker does)."""
    d = "dir"
    tools = [TarEntry("bin", d, mode=0o755)] + [
        TarEntry(f"bin/{tool}", "symlink", target="busybox") for tool in TOOLS
    ]
    layer1 = [
        *tools,
        TarEntry("etc", d, mode=0o755),
        TarEntry("etc/motd", data=CMD_OUTPUT.encode()),
        TarEntry("srv", d, mode=0o755),
        TarEntry("srv/dir", d, mode=0o755),
        TarEntry("srv/dir/sub", d, mode=0o700),
        TarEntry("srv/dir/sub/y", data=b"y\n"),
        TarEntry("srv/dir/x", data=b"x\n"),
        TarEntry("srv/gone", data=b"whited out in layer 2\n"),
        TarEntry("srv/owned", data=b"owned\n", mode=0o600, uid=1000, gid=1000),
        TarEntry("srv/replaced", data=b"v1\n"),
    ]
    layer2 = [
        TarEntry("srv", d, mode=0o755),
        TarEntry("srv/.wh.dir"),  # a directory with content
        TarEntry("srv/.wh.gone"),  # a file
        TarEntry("srv/old", d, mode=0o755),
        TarEntry("srv/old/.wh..wh..opq"),
        TarEntry("srv/old/c", data=b"c from layer 2\n"),
        TarEntry("srv/replaced", data=b"v2\n", mode=0o640),
        TarEntry("srv/sym", "symlink", target="keep"),
    ]
    layer3 = [
        TarEntry("bin", d, mode=0o755),
        TarEntry(f"bin/.wh.{REMOVED_APPLET}"),
        TarEntry("srv", d, mode=0o755),
        TarEntry("srv/dir", d, mode=0o750),
        TarEntry("srv/dir/z", data=b"z\n"),
        TarEntry("srv/fresh", d, mode=0o755),
        TarEntry("srv/fresh/.wh..wh..opq"),
        TarEntry("srv/fresh/f", data=b"f\n"),
        TarEntry("srv/new", data=b"new in layer 3\n", mode=0o755),
        TarEntry("srv/link", "hardlink", target="srv/new", mode=0o755),  # as tar records it
        TarEntry("srv/old", d, mode=0o755),
        TarEntry("srv/old/d", data=b"d from layer 3\n"),
    ]
    return [layer1, layer2, layer3]


@dataclass(frozen=True)
class Layer:
    """One layer blob: ``digest`` of the gzip stream, ``diff_id`` of the tar inside it."""

    digest: str
    diff_id: str
    size: int


@dataclass(frozen=True)
class BuiltImage:
    """An OCI image layout on disk.

    Attributes:
        layout: the layout directory (``oci:<layout>:<tag>`` for skopeo).
        tag: the ``org.opencontainers.image.ref.name`` of its one manifest.
        manifest_digest: ``sha256:...`` of the manifest (a registry keeps it with
            ``--preserve-digests``).
        config_digest: ``sha256:...`` of the image config (containerd's image id).
        layers: base first.
    """

    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layers: tuple[Layer, ...]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(layout: Path, data: bytes) -> str:
    digest = _sha256(data)
    (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return digest


def _compress(raw: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    if compression == "zstd":
        return subprocess.run(["zstd", "-q", "-c", "-3"], input=raw, capture_output=True,
                              check=True).stdout  # fmt: skip
    assert compression == "none", compression
    return raw


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def goarch() -> str:
    """This machine's architecture as Go (and image configs) name it."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def write_manifest(
    layout: Path,
    tars: list[bytes],
    *,
    compression: str | Sequence[str] = "gzip",
    arch: str | None = None,
    config: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str, tuple[Layer, ...]]:
    """Write one image's layer blobs, config and manifest into the OCI ``layout`` (its
    ``blobs/sha256`` made if needed).

    Args:
        layout: the layout directory.
        tars: the layer tars, base first.
        compression: ``gzip``, ``zstd`` (the ``zstd`` tool) or ``none``: how layers are stored
            (one for all, or one per layer).
        arch: the config's architecture (default: this machine's).
        config: the config's ``config`` object (default: PATH=/bin, :data:`CMD`).

    Returns:
        The manifest's descriptor (with its ``platform``), the config digest and the layers.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    arch = arch or goarch()
    kinds = [compression] * len(tars) if isinstance(compression, str) else list(compression)
    layers = []
    for raw, kind in zip(tars, kinds, strict=True):
        packed = _compress(raw, kind)
        layers.append(Layer(_blob(layout, packed), _sha256(raw), len(packed)))
    config_blob = _json(
        {
            "architecture": arch,
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": config or {"Env": ["PATH=/bin"], "Cmd": CMD, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": f"lcow tests: layer {n}"} for n in range(len(layers))],
        }
    )
    config_digest = _blob(layout, config_blob)
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest,
                       "size": len(config_blob)},
            "layers": [
                {"mediaType": _LAYER_MEDIA[kind], "digest": layer.digest, "size": layer.size}
                for layer, kind in zip(layers, kinds, strict=True)
            ],
        }
    )  # fmt: skip
    descriptor = {
        "mediaType": MEDIA_MANIFEST,
        "digest": _blob(layout, manifest),
        "size": len(manifest),
        "platform": {"architecture": arch, "os": "linux"},
    }
    return descriptor, config_digest, tuple(layers)


def write_index(layout: Path, manifests: list[dict[str, Any]], tag: str) -> str:
    """Finish an OCI layout: ``index.json`` naming ``tag`` and ``oci-layout``.

    One manifest is listed in ``index.json`` itself (skopeo pushes it as a plain manifest);
    several become a multi-platform image index blob (pushed with ``skopeo copy --all``).

    Returns:
        The digest the tag names in a registry (the manifest's, or the nested index's).
    """
    if len(manifests) == 1:
        entry = {k: v for k, v in manifests[0].items() if k != "platform"}
    else:
        nested = _json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests})
        entry = {"mediaType": MEDIA_INDEX, "digest": _blob(layout, nested), "size": len(nested)}
    entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [entry]}
    (layout / "index.json").write_bytes(_json(index))
    (layout / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
    return str(entry["digest"])


def build_image(workdir: Path, tag: str = "v1", base: Path | None = None) -> BuiltImage:
    """Write the image's layer tars and its OCI layout below ``workdir`` (created).

    ``base`` replaces the busybox root filesystem as the first layer (a benchmark's bigger
    root filesystem, which must still hold ``bin/busybox``); :data:`EXPECTED` then no longer
    describes ``/bin`` and ``/etc``.

    Raises:
        AssertionError: the host's busybox is not statically linked (install busybox-static).
    """
    busybox = Path(BUSYBOX).read_bytes()
    assert b"/lib64/ld-linux" not in busybox and b"/lib/ld-linux" not in busybox, (
        f"{BUSYBOX} is dynamically linked: install busybox-static"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    layout = workdir / "layout"
    tars = [base if base is not None else busybox_rootfs(workdir / "layer0.tar")]
    for number, entries in enumerate(_layers(), start=1):
        tars.append(write_tar(workdir / f"layer{number}.tar", entries))
    descriptor, config_digest, layers = write_manifest(layout, [t.read_bytes() for t in tars])
    manifest_digest = write_index(layout, [descriptor], tag)
    return BuiltImage(layout, tag, manifest_digest, config_digest, layers)


@dataclass(frozen=True)
class PushedImage:
    """The image of :func:`build_image` in a registry.

    Attributes:
        reference: ``127.0.0.1:PORT/NAME:TAG``, for ``ctr images pull --plain-http``.
        image: what was pushed (digests, layers, the layout directory).
        expected: the union a container sees below /bin, /etc and /srv (:data:`EXPECTED`).
        listing: :func:`expected_listing` of it: what :data:`LIST_SCRIPT` must print, sorted.
    """

    reference: str
    image: BuiltImage
    expected: dict[str, Node]
    listing: list[str]


def push_image(
    image: BuiltImage,
    registry: str,
    name: str,
    tmpdir: Path,
    *,
    all_platforms: bool = False,
    creds: str | None = None,
) -> str:
    """Push ``image`` to ``registry`` (``host:port``) as ``name:<tag>`` with ``skopeo copy``,
    digests preserved; the pushed reference.

    ``tmpdir`` takes skopeo's temporary files; the trust policy is skipped
    (``--insecure-policy``), so the host's /etc/containers does not matter; TLS is not verified
    (a test registry's own CA). ``all_platforms`` pushes every manifest of a multi-platform
    index (``--all``); ``creds`` is ``user:password`` for a registry with htpasswd auth.
    """
    reference = f"{registry}/{name}:{image.tag}"
    argv = ["skopeo", "--insecure-policy", "--tmpdir", str(tmpdir), "copy", "--quiet",
            "--preserve-digests", "--dest-tls-verify=false"]  # fmt: skip
    if all_platforms:
        argv.append("--all")
    if creds is not None:
        argv += ["--dest-creds", creds]
    argv += [f"oci:{image.layout}:{image.tag}", f"docker://{reference}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        shown = ["USER:PASSWORD" if a == creds else a for a in argv]
        raise AssertionError(
            f"skopeo copy exited {proc.returncode}\n$ {' '.join(shown)}\n"
            f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
        )
    return reference
