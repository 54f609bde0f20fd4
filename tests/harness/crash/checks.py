"""Step 4 of a kill: judge the recovered data root (see :mod:`tests.harness.crash`).

:class:`RootChecks` holds what the checks need of one data root (its folder, backend and
fixtures) and which disks already passed ``e2fsck``/``qemu-img check`` (a disk that did not
change is not checked again).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.harness.crash.fixtures import Fixtures
from tests.harness.crash.records import KillRecord, LayerState
from tests.harness.crash.rootstate import disk_key, settled_leftovers, temporaries

__all__ = ["RootChecks"]

_EXT4_MAGIC = (1024 + 56, b"\x53\xef")


class RootChecks:
    """The checks of one data root after each kill."""

    def __init__(self, work: Path, root: Path, backend: str, fixtures: Fixtures) -> None:
        self.work = work
        self.root = root
        self.backend = backend
        self.fixtures = fixtures
        self.qemu_checked: set[tuple[int, ...]] = set()
        self.fsck_checked: set[tuple[int, ...]] = set()

    def judge(  # noqa: PLR0912, PLR0915 - one verdict per operation kind, each branch the outcomes that operation allows
        self,
        plan: dict[str, Any],
        lines: list[list[str]],
        found: dict[str, Any],
        record: KillRecord,
        known: dict[str, LayerState],
    ) -> None:
        """Check the recovered root (``found``, from the recovery process) against the outcomes
        ``plan``'s operation allows, given how far the child got (its log ``lines``) and the
        model of the root before the operation (``known``); findings go to ``record``."""
        problems = record.problems
        problems += found["problems"]
        problems += [f"temporary left: {x}" for x in temporaries(self.root)]
        if self.backend == "host":
            left, waited = settled_leftovers(self.root)
            problems += [f"left at the end: {x}" for x in left]
            record.loop_wait_ms = round(found["timings"].get("loop_wait", 0.0) * 1000, 1)
            del waited
        layers: dict[str, dict[str, Any]] = found["layers"]
        target = plan["layer"]
        kinds = [p[1] for p in lines]
        image = {layer.layer_id: layer for layer in self.fixtures.image_layers}
        # the state before recovery's Get gave empty layers a sandbox
        observed = {lid: info["kind"] for lid, info in layers.items()}
        for lid in layers:
            problems += self.check_disk(lid, self.root / lid)
        problems += self.check_disk("cache", self.root / "cache")
        outcome = ""
        op = plan["op"]
        for lid, previous in list(known.items()):
            if lid == target or (op == "import" and lid in image):
                continue
            seen = layers.get(lid)
            if seen is None:
                problems.append(f"{lid}: vanished although {op} did not touch it")
            elif seen["kind"] != previous.kind:
                problems.append(f"{lid}: was {previous.kind}, now {seen['kind']}")
            elif previous.kind == "layer.vhd" and seen.get("key") != previous.key:
                problems.append(f"{lid}: layer.vhd changed although {op} did not touch it")
        extra = set(layers) - set(known) - ({target} if target else set()) - set(image)
        problems += [f"{lid}: a layer nobody made" for lid in sorted(extra)]
        if op == "apply_diff":
            kind = observed.get(target)
            want = self.fixtures.tars[plan["tar"]]
            if kind == "layer.vhd":
                outcome = "new content"
                if layers[target].get("manifest", want) != want:
                    problems.append(f"{target}: layer.vhd does not hold the applied tar")
                if (self.root / target / "sandbox.vhdx").exists():
                    problems.append(f"{target}: sandbox.vhdx left beside the new layer.vhd")
            elif kind == known[target].kind:
                outcome = "as before" if kind == "empty" else "sandbox kept"
            else:
                problems.append(f"{target}: {kind} after ApplyDiff over {known[target].kind}")
            if "done" in kinds and kind != "layer.vhd":
                problems.append(f"{target}: ApplyDiff finished but no layer.vhd")
        elif op == "create_rw":
            kind = observed.get(target)
            outcome = {None: "absent", "empty": "create-only", "sandbox.vhdx": "sandbox"}.get(
                kind, f"wrong: {kind}"
            )
            if kind not in (None, "empty", "sandbox.vhdx"):
                problems.append(f"{target}: {kind} after CreateReadWrite")
            if "done" in kinds and kind != "sandbox.vhdx":
                problems.append(f"{target}: CreateReadWrite finished but {kind}")
            if kind is not None and layers[target].get("parent") != plan["parent"]:
                problems.append(
                    f"{target}: parent {layers[target].get('parent')} != {plan['parent']}"
                )
        elif op == "remove":
            kind = observed.get(target)
            outcome = "absent" if kind is None else "whole"
            if kind is not None and kind != known[target].kind:
                problems.append(
                    f"{target}: {kind} after an interrupted Remove of {known[target].kind}"
                )
            if "done" in kinds and kind is not None:
                problems.append(f"{target}: Remove finished but the layer is still there")
        elif op == "import":
            earlier: dict[str, str] = found.get("before_reimport", {})
            states = [earlier.get(layer.layer_id) for layer in self.fixtures.image_layers]
            whole = states.count("layer.vhd")
            outcome = f"{whole}/{len(image)} whole" + (
                f" + {states.count('empty')} create-only" if "empty" in states else ""
            )
            if "done" in kinds and whole != len(image):
                problems.append(f"import finished but only {whole} layers whole")
            for below, above in itertools.pairwise(states):
                if above is not None and below != "layer.vhd":
                    problems.append(f"image layers torn: {states} (bottom first)")
                    break
            for state in states:  # staged layers: never an empty folder under a chain ID
                if state not in (None, "layer.vhd"):
                    problems.append(f"image layer left as {state}")
            for layer in self.fixtures.image_layers:
                now = layers.get(layer.layer_id)
                if now is None:
                    problems.append(f"{layer.layer_id}: missing after re-import")
                    continue
                if now.get("manifest", layer.manifest) != layer.manifest:
                    problems.append(f"{layer.layer_id}: image layer with the wrong content")
                if now["kind"] != "layer.vhd":
                    problems.append(f"{layer.layer_id}: {now['kind']} after re-import")
        elif op in ("get", "put"):
            got = found["counts"].get(target, 0)
            before = plan["counts_before"].get(target, 0)
            outcome = f"count {before}→{got}"
            if op == "get" and "wrote" in kinds:
                outcome += ", write fsynced"
        record.outcome = outcome

    def check_disk(self, lid: str, folder: Path) -> list[str]:
        """``e2fsck -fn`` of a new ``layer.vhd`` (and its footer), ``qemu-img check`` of a new
        ``sandbox.vhdx``."""
        from lcow.formats.vhd.footer import FOOTER_SIZE, read_footer

        problems = []
        vhd, vhdx = folder / "layer.vhd", folder / "sandbox.vhdx"
        if vhd.exists():
            key = tuple(disk_key(vhd))
            if key not in self.fsck_checked:
                footer = read_footer(vhd)
                size = vhd.stat().st_size - FOOTER_SIZE
                if footer is None or footer.disk_type != 2 or footer.current_size > size:
                    problems.append(f"{lid}: layer.vhd has no valid fixed-VHD footer")
                proc = _tool(["e2fsck", "-fn", str(vhd)])
                if proc.returncode != 0:
                    problems.append(
                        f"{lid}: e2fsck -fn layer.vhd exit {proc.returncode}: {proc.stdout[-1500:]}"
                    )
                else:
                    self.fsck_checked.add(key)
        elif vhdx.exists():
            key = tuple(disk_key(vhdx))
            if key not in self.qemu_checked:
                proc = _tool(["qemu-img", "check", "-f", "vhdx", str(vhdx)])
                if proc.returncode != 0:
                    problems.append(
                        f"{lid}: qemu-img check exit {proc.returncode}: {proc.stdout[-800:]}"
                    )
                else:
                    self.qemu_checked.add(key)
        return problems

    def fsck_sandbox(self, lid: str) -> list[str]:
        """``e2fsck -fn`` of a sandbox's ext4 (converted to a sparse raw file first)."""
        vhdx = self.root / lid / "sandbox.vhdx"
        if not vhdx.exists():
            return []
        raw = self.work / "sandbox.raw"
        raw.unlink(missing_ok=True)
        try:
            proc = _tool(["qemu-img", "convert", "-f", "vhdx", "-O", "raw", str(vhdx), str(raw)])
            if proc.returncode != 0:
                return [f"{lid}: qemu-img convert exit {proc.returncode}: {proc.stderr[-800:]}"]
            with open(raw, "rb") as f:
                f.seek(_EXT4_MAGIC[0])
                if f.read(2) != _EXT4_MAGIC[1]:
                    return [f"{lid}: the sandbox holds no ext4"]
            proc = _tool(["e2fsck", "-fn", str(raw)])
            if proc.returncode != 0:
                return [
                    f"{lid}: e2fsck -fn of the sandbox exit {proc.returncode}: "
                    f"{proc.stdout[-1500:]}"
                ]
            return []
        finally:
            raw.unlink(missing_ok=True)


def _tool(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LC_ALL": "C",
        "PATH": os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin",
    }
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, env=env)
