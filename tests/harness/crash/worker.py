"""The processes a crash campaign starts: the *child* runs one driver operation and is killed
meanwhile, the *recovery* opens the data root afresh and reports what it finds.

    python -m tests.harness.crash.worker child|recover JSON
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from tests.harness.crash.fixtures import tar_manifest
from tests.harness.crash.rootstate import (
    attached_loops,
    disk_key,
    layer_kind,
    settled_leftovers,
    temporaries,
)

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = ["main"]


def _child(args: dict[str, Any]) -> int:
    """Run one operation, logging ``start``/``done`` with monotonic times; killed meanwhile."""
    from lcow.graphdriver.driver import Driver

    log = os.open(args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def note(*words: object) -> None:
        os.write(log, (" ".join([f"{time.monotonic():.6f}", *map(str, words)]) + "\n").encode())

    root, backend, op = args["root"], args["backend"], args["op"]
    options = [f"lcow.backend={backend}"]
    try:
        if op == "import":
            from lcow.cli.main import main

            argv = ["--root", root, "--backend", backend, "import", args["image"]]
            note("start")
            status = main(argv)
            if status != 0:
                note("error", f"import exit {status}")
                return 1
            note("done")
            return 0
        driver = Driver(root, options)
        if args.get("linger"):
            driver.linger(float(args["linger"]))
        layer: str = args.get("layer") or ""
        note("start")
        if op == "apply_diff":
            driver.apply_diff(layer, args["parent"], args["tar"])
        elif op == "create_rw":
            driver.create_read_write(layer, args["parent"], None)
        elif op == "remove":
            driver.remove(layer)
        elif op == "get":
            view = driver.get(layer)
            note("got")
            name = args.get("write")
            if name:
                data = f"{name} written by pid {os.getpid()}\n".encode() * 64
                path = os.path.join(view.path, name)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                note("wrote", name, hashlib.sha256(data).hexdigest())
        elif op == "put":
            driver.put(layer)
        else:
            raise ValueError(f"unknown operation {op}")
        note("done")
        return 0
    except Exception as exc:
        note("error", repr(exc).replace("\n", " ")[:500])
        traceback.print_exc()
        return 1


# -- recovery, in a fresh process --------------------------------------------------------------


def _recover(args: dict[str, Any]) -> dict[str, Any]:  # noqa: PLR0912, PLR0915 - the recovery steps in the order a restarted daemon runs them, sharing one driver and the findings
    """Open the driver, check the adopted counts, Cleanup, check leftovers, re-import, then
    Get/Put and read back every layer. Returns findings as JSON-able data."""
    from lcow.graphdriver.driver import Driver
    from lcow.storage.dataroot import DataRoot

    out: dict[str, Any] = {"problems": [], "counts": {}, "layers": {}, "timings": {}}
    problems: list[str] = out["problems"]
    root = Path(args["root"])
    backend = args["backend"]
    # The loop devices the killed child left: each must be gone after Cleanup, superblock and
    # all, whatever its backing file looks like by then.
    devices = attached_loops(root) if backend == "host" else {}
    started = time.monotonic()
    driver = Driver(root, [f"lcow.backend={backend}"])
    out["timings"]["open"] = time.monotonic() - started
    if backend == "host":
        _check_adopted(driver, args["counts"], out)
    mark = time.monotonic()
    driver.cleanup()
    out["timings"]["cleanup"] = time.monotonic() - mark
    if backend == "host":
        left, waited = settled_leftovers(root, devices=devices)
        out["timings"]["loop_wait"] = waited
        problems += [f"after cleanup: {x}" for x in left]
        counts = {lid: driver.view_count(lid) for lid in driver.root.layer_ids()}
        problems += [f"{lid}: count {n} after cleanup" for lid, n in counts.items() if n]
    problems += [f"after cleanup: temporary {x}" for x in temporaries(root)]
    if args.get("reimport"):
        from lcow.images.importer import import_image

        out["before_reimport"] = {
            lid: layer_kind(driver.root.layer_dir(lid)) for lid in driver.root.layer_ids()
        }

        mark = time.monotonic()
        try:
            result = import_image(driver, args["reimport"])
            out["reimported"] = result.created
        except Exception as exc:
            problems.append(f"re-import after the kill failed: {exc!r}")
        out["timings"]["reimport"] = time.monotonic() - mark
    verified: dict[str, list[int]] = args["verified"]
    for lid in driver.root.layer_ids():
        folder = driver.root.layer_dir(lid)
        disk = DataRoot.layer_file(folder)
        info: dict[str, Any] = {"kind": "empty" if disk is None else disk.path.name}
        out["layers"][lid] = info
        try:
            chain = driver.root.read_chain(lid)
        except Exception as exc:
            problems.append(f"{lid}: layerchain.json: {exc!r}")
            continue
        if not (folder / "layerchain.json").is_file():
            problems.append(f"{lid}: no layerchain.json")
        info["parent"] = chain[0].name if chain else None
        missing = [str(p) for p in chain if not p.is_dir()]
        if missing:
            problems.append(f"{lid}: ancestors missing: {missing}")
            continue
        if disk is not None:
            info["key"] = disk_key(disk.path)
        if disk is not None and not disk.writable and info["key"] != verified.get(lid):
            try:
                stream = driver.diff(lid, info["parent"])
                try:
                    info["manifest"] = tar_manifest(cast(IO[bytes], stream))
                finally:
                    stream.close()
            except Exception as exc:
                problems.append(f"{lid}: Diff: {exc!r}")
        try:
            view = driver.get(lid)
            if backend == "host":
                devices.update(attached_loops(root))
            try:
                view.readdir("/")
                written = args["files"].get(lid, {}) if disk and disk.writable else {}
                for name, digest in written.items():  # ApplyDiff may have replaced a sandbox
                    data = view.readfile("/" + name)
                    if hashlib.sha256(data).hexdigest() != digest:
                        problems.append(f"{lid}: /{name} fsynced before the kill reads back wrong")
            finally:
                driver.put(lid)
        except Exception as exc:
            problems.append(f"{lid}: Get/readdir/Put: {exc!r}")
        if disk is None:  # Get gave a Create-only layer a sandbox (host): record what is now
            now = DataRoot.layer_file(folder)
            info["after_get"] = None if now is None else now.path.name
    if backend == "host":
        left, _ = settled_leftovers(root, devices=devices)
        problems += [f"after Get/Put of every layer: {x}" for x in left]
    out["timings"]["total"] = time.monotonic() - started
    return out


def _check_adopted(driver: Driver, allowed: dict[str, list[int]], out: dict[str, Any]) -> None:
    """Host backend, before Cleanup: the table the new process adopted counts what the log
    allows, and every view it keeps is mounted and readable."""
    from lcow.backends.host import HostBackend

    backend = driver.backend
    assert isinstance(backend, HostBackend)
    state = backend.table.peek()
    for lid, view in state.views.items():
        out["counts"][lid] = view.count
        path = backend.home / view.path
        try:
            os.listdir(path)
        except OSError as exc:
            out["problems"].append(f"{lid}: adopted view {path} unreadable: {exc!r}")
        if view.overlay and not os.path.ismount(path):
            out["problems"].append(f"{lid}: adopted overlay view {path} is not mounted")
        for key in view.disks:
            disk = state.disks.get(key)
            if disk is None or not os.path.ismount(backend.home / "d" / disk.slot):
                out["problems"].append(f"{lid}: adopted view's disk {key} is not mounted")
    mounted = {d.slot for d in state.disks.values()}
    for slot in os.listdir(backend.home / "d"):
        if os.path.ismount(backend.home / "d" / slot) and slot not in mounted:
            out["problems"].append(f"d/{slot}: mounted but not in the adopted table")
    for lid, counts in allowed.items():
        got = state.views[lid].count if lid in state.views else 0
        if got not in counts:
            out["problems"].append(f"{lid}: count {got} after recovery, expected one of {counts}")
    for lid in state.views:
        if lid not in allowed:
            out["problems"].append(f"{lid}: adopted a view nobody took")


def main(argv: Sequence[str]) -> int:
    """``python -m tests.harness.crash.worker child|recover JSON`` (what the harness starts)."""
    if len(argv) != 2 or argv[0] not in ("child", "recover"):
        print("usage: python -m tests.harness.crash.worker child|recover JSON", file=sys.stderr)
        return 2
    args = json.loads(argv[1])
    if argv[0] == "child":
        return _child(args)
    json.dump(_recover(args), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
