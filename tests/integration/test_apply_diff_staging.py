"""ApplyDiff stages its image once: one temporary name, synced, renamed into place, the folder
synced after the rename — as the kernel sees it (``strace`` is the oracle)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.helpers import TarEntry, requires, run, write_tar

pytestmark = requires("strace")

_APPLY = """
import sys
from lcow.graphdriver.driver import Driver
driver = Driver(sys.argv[1], ["lcow.backend=userspace"])
driver.create("l1", None)
driver.apply_diff("l1", None, sys.argv[2])
"""


def test_apply_diff_renames_its_image_once(tmp_path: Path) -> None:
    tar = write_tar(
        tmp_path / "layer.tar",
        [TarEntry("d", kind="dir", mode=0o755), TarEntry("d/f", data=b"x" * 5000)],
    )
    root, trace = tmp_path / "root", tmp_path / "strace.log"
    proc = run(
        [
            "strace", "-f", "-qq", "-y", "-o", trace,
            "-e", "trace=rename,renameat,renameat2,fsync,fdatasync",
            sys.executable, "-c", _APPLY, root, tar,
        ]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    folder = str(root / "l1")
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if "(" in line]
    renames = [i for i, call in enumerate(calls) if call.startswith("rename") and "vhd" in call]
    assert len(renames) == 1, "\n".join(calls)
    (rename,) = renames
    names = re.findall(r'"([^"]*)"', calls[rename])
    assert names[-1] == f"{folder}/layer.vhd"
    assert re.fullmatch(rf"{re.escape(folder)}/\.layer\.vhd\.tmp-[0-9a-f]{{12}}", names[0])

    def synced(path: str) -> list[int]:
        return [i for i, call in enumerate(calls) if re.match(rf"f(data)?sync\(\d+<{path}>", call)]

    assert [i for i in synced(re.escape(names[0])) if i < rename], "image not synced first"
    assert [i for i in synced(re.escape(folder)) if i > rename], "rename not made durable"
