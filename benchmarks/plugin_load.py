"""Part ``load`` of ``bench_plugin.py``: ``docker load`` of D1 into dockerd on the plugin and on
overlay2, alternating, timed wall-clock.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

# plugin_common first: it puts the repository's src and root on sys.path.
from plugin_common import log

# isort: split
from tests.plugin.dockerd import Daemon, PluginProcess, leftovers, unique_name

__all__ = ["IMAGE", "bench_load", "d1_image"]


IMAGE = "lcowbench/d1:1"


# -- the image ---------------------------------------------------------------------------------


def d1_image(data: Path) -> Path:
    """``DIR/d1-image.tar``: a ``docker save`` archive with D1 as its one layer (cached)."""
    image = data / "d1-image.tar"
    layer = data / "d1.tar"
    if image.exists() and image.stat().st_mtime >= layer.stat().st_mtime:
        return image
    log(f"packing {layer} into {image}")
    digest = hashlib.sha256()
    with open(layer, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    diff_id = f"sha256:{digest.hexdigest()}"
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "datasets.py d1"}],
        },
        separators=(",", ":"),
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_dir = digest.hexdigest()
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [IMAGE], "Layers": [f"{layer_dir}/layer.tar"]}]
    ).encode()
    part = image.with_suffix(".tar.part")
    with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, payload in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        info = tarfile.TarInfo(layer_dir)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
        tf.add(layer, f"{layer_dir}/layer.tar")
    part.rename(image)
    return image


# -- docker load -------------------------------------------------------------------------------


def sync() -> None:
    subprocess.run(["sync"], check=True)


def timed_load(daemon: Daemon, image: Path) -> float:
    sync()
    started = time.monotonic()
    daemon.docker("load", "-i", str(image), timeout=900)
    elapsed = time.monotonic() - started
    daemon.docker("rmi", IMAGE)
    sync()
    return elapsed


def bench_load(data: Path, runs: int) -> dict[str, Any]:
    image = d1_image(data)
    base = Path(tempfile.mkdtemp(prefix="lcow-bench-plugin-", dir="/var/tmp"))
    plugin = PluginProcess(base, unique_name())
    daemons: list[Daemon] = []
    samples: dict[str, list[float]] = {"lcow": [], "overlay2": []}
    try:
        plugin.start()
        lcow = Daemon(base, "lcow", plugin.name)
        daemons.append(lcow)
        lcow.start()
        overlay2 = Daemon(base, "overlay2", "overlay2")
        daemons.append(overlay2)
        overlay2.start()
        pair = {"lcow": lcow, "overlay2": overlay2}
        log("warm-up: one load into each (page cache, containerd, plugin)")
        for daemon in pair.values():
            timed_load(daemon, image)
        for run in range(runs):
            order = ["lcow", "overlay2"] if run % 2 == 0 else ["overlay2", "lcow"]
            for name in order:
                seconds = timed_load(pair[name], image)
                samples[name].append(seconds)
                log(f"run {run + 1}/{runs} {name}: {seconds:.2f} s")
    finally:
        for daemon in daemons:
            daemon.stop()
        status = plugin.stop()
        left = leftovers(base, [plugin.socket])
        plugin_log = plugin.log()
        shutil.rmtree(base, ignore_errors=True)
    if status != 0 or left:
        raise SystemExit(f"plugin exit {status}, left behind: {left}\n{plugin_log}")
    lcow_median = statistics.median(samples["lcow"])
    overlay2_median = statistics.median(samples["overlay2"])
    paired = [a / b for a, b in zip(samples["lcow"], samples["overlay2"], strict=True)]
    return {
        "image": str(image),
        "image_bytes": image.stat().st_size,
        "samples": samples,
        "median": {"lcow": lcow_median, "overlay2": overlay2_median},
        "min": {k: min(v) for k, v in samples.items()},
        "max": {k: max(v) for k, v in samples.items()},
        "ratio_of_medians": lcow_median / overlay2_median,
        "median_paired_ratio": statistics.median(paired),
        "target": 1.2,
    }
