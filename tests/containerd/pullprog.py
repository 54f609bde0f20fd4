"""Build ``tests/containerd/gopull``: a pull as containerd's CRI plugin does it.

``ctr images pull`` unpacks through ``image.Unpack``, which never tells the snapshotter which
layer it prepares; ``client.Pull`` with ``WithPullUnpack`` and CRI's image handler does (the
``containerd.io/snapshot.ref`` and ``containerd.io/snapshot/cri.layer-digest`` labels), and
that is what the snapshotter's content-store fast path needs. The program is built with
Debian's Go 1.19 in GOPATH mode against Debian's containerd 1.6 source
(``golang-github-containerd-containerd-dev``, the daemon's version), into a directory outside
the repository; a build is reused while the source is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

__all__ = ["GOPATH_SOURCE", "SOURCE", "build_gopull"]

SOURCE = Path(__file__).resolve().parent / "gopull"
#: Where Debian's Go packages (containerd's source and its dependencies) live.
GOPATH_SOURCE = Path("/usr/share/gocode")


def build_gopull(out_dir: Path) -> Path:
    """The ``gopull`` binary built into ``out_dir`` (built only when its source changed).

    Raises:
        subprocess.CalledProcessError: the build failed (its output is in the exception).
    """
    digest = hashlib.sha256()
    for path in sorted(SOURCE.glob("*.go")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    binary = out_dir / f"gopull-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{out_dir / 'gopath'}:{GOPATH_SOURCE}",
        "GOCACHE": str(out_dir / "gocache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    staged = binary.with_name(binary.name + ".tmp")
    subprocess.run(
        ["go", "build", "-o", str(staged), "."],
        cwd=SOURCE, env=env, check=True, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    staged.rename(binary)
    return binary
