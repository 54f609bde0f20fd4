"""Crash-safety harness: SIGKILL a driver operation at a random moment, recover, verify.

Part 3 of the hardening issue. One *kill* is:

1. **prepare** (in the harness process, with its own :class:`~lcow.graphdriver.driver.Driver`):
   make the data root hold what the operation needs — a fresh Create-only layer for ApplyDiff, a
   layer with content for Remove, no layers of the image for import, an outstanding Get for Put —
   while it keeps a model of every layer as last verified (kind, disk identity, content);
2. **kill**: start a child process (``python -m tests.harness.crash child …``) that opens a
   driver, logs ``start``, runs the one operation, logs ``done``; SIGKILL it after a delay drawn
   uniformly over 1.1 times the median duration of the operation's variant (each variant —
   ApplyDiff into a new layer or over a sandbox, Get of a read-only chain or of a sandbox … — is
   first run three times unkilled to measure it), so kills land in every phase and some after
   the end;
3. **recover** in a fresh process (``python -m tests.harness.crash recover …``): open the driver
   (the host backend reconciles its mount table with the kernel here), check the counts the table
   then holds against what the child's log allows, run ``cleanup``, check that nothing is mounted,
   attached or running for the root, re-run an interrupted import, then Get + readdir + Put every
   layer and read every new ``layer.vhd`` back through ``Driver.diff`` against the tar it must
   hold;
4. **verify** the files (harness process): no ``*.tmp-*`` or ``-removing`` left anywhere, every
   ``layerchain.json`` names existing folders, every ``layer.vhd`` passes ``e2fsck -fn``, every
   sandbox ``qemu-img check``; a sandbox written through a view also passes ``e2fsck -fn`` after
   ``qemu-img convert``; each layer is *whole or absent* against the outcomes the operation
   allows (absent, Create-only, or complete with the expected content); layers the operation did
   not touch are unchanged; files fsynced through a view before the kill are still there.

Operations: ``apply_diff`` (a tar of ~5.7 MB and 1,265 entries into a new layer, or over a
layer's sandbox), ``create_rw`` (default size: a copy of the cached template), ``remove`` (a
leaf with content; on the host backend sometimes while mounted), ``import`` (``lcow import`` of a
three-layer ``docker save`` tarball, run through the CLI's ``main``), and on the host backend
``get`` (mounting a chain, exporting sandboxes through qemu-storage-daemon, writing and fsyncing
a file into a writable view) and ``put``.

:func:`run_kills` runs a campaign and returns a :class:`Campaign`; ``tools/crash_harness.py`` is
the command line and ``tests/hardening/test_crash_kills.py`` the CI-sized run.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from tests.harness.spawn import child_env, python_module

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = [
    "HOST_OPS",
    "USERSPACE_OPS",
    "Campaign",
    "Fixtures",
    "Harness",
    "KillRecord",
    "host_leftovers",
    "make_fixtures",
    "run_kills",
    "tar_manifest",
    "temporaries",
]

USERSPACE_OPS = ("apply_diff", "create_rw", "remove", "import")
HOST_OPS = (*USERSPACE_OPS, "get", "put")
SPAN = 1.1  # kills fall uniformly within this many typical (median) durations of the operation
CALIBRATION_RUNS = 3
MAX_LAYERS = 10  # besides the image's; the harness removes leaves beyond this
LOOP_GRACE = 5.0  # seconds an auto-clearing loop device may take to detach after cleanup
CHILD_TIMEOUT = 120.0
RECOVER_TIMEOUT = 300.0
_EXT4_MAGIC = (1024 + 56, b"\x53\xef")


def _log(message: str) -> None:
    print(f"[crash {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- fixtures: tars and an image ---------------------------------------------------------------


def _add(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    *,
    target: str = "",
    mode: int = 0o644,
    mtime: int = 1_600_000_000,
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, mtime, target
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def write_layer_tar(path: Path, seed: int, *, dirs: int, files: int) -> Path:
    """A layer tar of ``dirs`` directories of ``files`` files (0 B to 16 KiB, random bytes), a
    hard link and a symlink per directory, a whiteout and an opaque directory."""
    rng = random.Random(seed)
    top = f"s{seed}"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, top, tarfile.DIRTYPE, mode=0o755)
        for d in range(dirs):
            folder = f"{top}/d{d:03d}"
            _add(tar, folder, tarfile.DIRTYPE, mode=0o755, mtime=1_600_000_000 + d)
            for f in range(files):
                size = rng.choice((0, 9, 200, 1500, 4096, 5000, 16384))
                _add(tar, f"{folder}/f{f:03d}", data=rng.randbytes(size), mtime=1_600_000_100 + f)
            _add(tar, f"{folder}/hard", tarfile.LNKTYPE, target=f"{folder}/f001")
            _add(tar, f"{folder}/sym", tarfile.SYMTYPE, target="../d000/f000", mode=0o777)
        _add(tar, "opaque", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "opaque/.wh..wh..opq")
        _add(tar, "opaque/kept", data=f"layer {seed}\n".encode())
        _add(tar, f".wh.gone-{seed}")
    return path


def tar_manifest(stream: IO[bytes]) -> str:
    """A digest of a layer tar's content: names, types, modes, mtimes, owners, file bytes (hard
    links as their target's bytes), link targets, whiteouts (by name only). Equal for a tar and
    the layer ``Driver.diff`` exports after ApplyDiff of it (the empty ``lost+found`` left
    out)."""
    entries: dict[str, str] = {}
    content: dict[str, str] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = member.name.lstrip("/").removeprefix("./").rstrip("/")
            if not name or name == ".":
                continue
            meta = f"{member.mode & 0o7777:o}:{member.uid}:{member.gid}:{int(member.mtime)}"
            if name.rsplit("/", 1)[-1].startswith(".wh."):
                entries[name] = "w"  # a whiteout's own metadata is not kept (overlay form)
            elif member.isreg():
                reader = tar.extractfile(member)
                digest = hashlib.sha256(reader.read() if reader else b"").hexdigest()
                content[name] = digest
                entries[name] = f"f:{meta}:{digest}"
            elif member.islnk():
                target = member.linkname.lstrip("/").removeprefix("./")
                entries[name] = f"h:{content.get(target, '?' + target)}"  # shares the inode
            elif member.isdir():
                entries[name] = f"d:{meta}"
            elif member.issym():
                entries[name] = f"l:{member.linkname}"
            else:
                entries[name] = f"{member.type.decode()}:{meta}:{member.devmajor}:{member.devminor}"
    if entries.get("lost+found", "").startswith("d:") and not any(
        n.startswith("lost+found/") for n in entries
    ):
        del entries["lost+found"]  # an exported image's own empty lost+found
    text = json.dumps(sorted(entries.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _manifest_of_file(path: Path) -> str:
    with open(path, "rb") as f:
        return tar_manifest(f)


@dataclass(frozen=True)
class ImageLayer:
    """One layer of the fixture image: its id (chain ID hex), parent and tar's manifest."""

    layer_id: str
    parent: str | None
    manifest: str


@dataclass(frozen=True)
class Fixtures:
    """Inputs of a campaign, written once.

    Attributes:
        tars: the ApplyDiff tars (path → manifest digest).
        image: a three-layer ``docker save`` tarball (the middle layer stored gzip).
        image_gz: the same tarball gzip-compressed (import spools it to an anonymous file).
        image_layers: its layers bottom-up.
    """

    tars: dict[str, str]
    image: Path
    image_gz: Path
    image_layers: tuple[ImageLayer, ...]


def make_fixtures(folder: Path, *, scale: float = 1.0) -> Fixtures:
    """Write the tars and the image under ``folder``. ``scale`` 1.0: ApplyDiff tars of ~5.7 MB
    and 1,265 entries (image layers a third of that); 0.5 for quick runs."""
    from lcow.images.chainid import chain_id, layer_id

    folder.mkdir(parents=True, exist_ok=True)
    dirs = max(2, round(20 * scale))
    tars = {}
    for seed in (1, 2):
        path = write_layer_tar(folder / f"layer-{seed}.tar", seed, dirs=dirs, files=60)
        tars[str(path)] = _manifest_of_file(path)
    blobs: list[tuple[str, bytes, str]] = []  # (member, stored bytes, diff id)
    layers: list[ImageLayer] = []
    parent_chain: str | None = None
    parent: str | None = None
    for index, seed in enumerate((11, 12, 13)):
        path = write_layer_tar(folder / f"image-{seed}.tar", seed, dirs=max(2, dirs // 3), files=60)
        raw = path.read_bytes()
        diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        stored = gzip.compress(raw, compresslevel=1, mtime=0) if index == 1 else raw
        blobs.append((f"{hashlib.sha256(stored).hexdigest()}/layer.tar", stored, diff_id))
        chain = chain_id(parent_chain, diff_id)
        lid = layer_id(chain)
        layers.append(ImageLayer(lid, parent, _manifest_of_file(path)))
        parent_chain, parent = chain, lid
        path.unlink()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [d for _, _, d in blobs]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": ["crash:1"], "Layers": [m for m, _, _ in blobs]}]
    ).encode()
    image = folder / "image.tar"
    with tarfile.open(image, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, config_name, data=config)
        for member, stored, _ in blobs:
            _add(tar, member.split("/")[0], tarfile.DIRTYPE, mode=0o755)
            _add(tar, member, data=stored)
        _add(tar, "manifest.json", data=manifest)
    image_gz = folder / "image.tar.gz"
    image_gz.write_bytes(gzip.compress(image.read_bytes(), compresslevel=1, mtime=0))
    return Fixtures(tars, image, image_gz, tuple(layers))


# -- what must not be left ---------------------------------------------------------------------


def temporaries(root: Path) -> list[str]:
    """``*.tmp-*`` and ``*.tmp`` names and ``-removing`` folders anywhere below ``root`` (mounts
    skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
        for name in [*dirnames, *filenames]:
            if ".tmp-" in name or name.endswith((".tmp", "-removing")):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def host_leftovers(root: Path) -> list[str]:
    """Mounts at or below ``root``, loop devices on files below it, and live processes whose
    command line names it (the storage daemon, an orphaned mount(8) or mke2fs)."""
    from lcow.backends.host.kernel import mounts_below

    prefix = os.fspath(root.resolve())
    found = [f"mount {point}" for point, _ in mounts_below(Path(prefix))]
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            target = backing.read_text().strip()
            if target.startswith(prefix + "/"):
                found.append(f"loop {backing.parent.parent.name} on {target}")
    needle = os.fsencode(prefix)
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes()
            if needle in argv:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    shown = argv.replace(b"\0", b" ")[:160].decode(errors="replace")
                    found.append(f"process {proc.name}: {shown}")
    return found


def settled_leftovers(root: Path, grace: float = LOOP_GRACE) -> tuple[list[str], float]:
    """:func:`host_leftovers` once auto-clearing loop devices (detached asynchronously by the
    kernel after the last unmount) have had ``grace`` seconds; also the seconds waited."""
    started = time.monotonic()
    while True:
        left = host_leftovers(root)
        waited = time.monotonic() - started
        if not left or waited > grace or any(not x.startswith("loop ") for x in left):
            return left, waited
        time.sleep(0.02)


# -- the child ---------------------------------------------------------------------------------


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


def _recover(args: dict[str, Any]) -> dict[str, Any]:
    """Open the driver, check the adopted counts, Cleanup, check leftovers, re-import, then
    Get/Put and read back every layer. Returns findings as JSON-able data."""
    from lcow.graphdriver.driver import Driver
    from lcow.storage.dataroot import DataRoot

    out: dict[str, Any] = {"problems": [], "counts": {}, "layers": {}, "timings": {}}
    problems: list[str] = out["problems"]
    root = Path(args["root"])
    backend = args["backend"]
    started = time.monotonic()
    driver = Driver(root, [f"lcow.backend={backend}"])
    out["timings"]["open"] = time.monotonic() - started
    if backend == "host":
        _check_adopted(driver, args["counts"], out)
    mark = time.monotonic()
    driver.cleanup()
    out["timings"]["cleanup"] = time.monotonic() - mark
    if backend == "host":
        left, waited = settled_leftovers(root)
        out["timings"]["loop_wait"] = waited
        problems += [f"after cleanup: {x}" for x in left]
        counts = {lid: driver.view_count(lid) for lid in driver.root.layer_ids()}
        problems += [f"{lid}: count {n} after cleanup" for lid, n in counts.items() if n]
    problems += [f"after cleanup: temporary {x}" for x in temporaries(root)]
    if args.get("reimport"):
        from lcow.images.importer import import_image

        out["before_reimport"] = {
            lid: _kind(driver.root.layer_dir(lid)) for lid in driver.root.layer_ids()
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
            info["key"] = _key(disk.path)
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
        left, _ = settled_leftovers(root)
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


def _kind(folder: Path) -> str:
    from lcow.storage.dataroot import DataRoot

    disk = DataRoot.layer_file(folder)
    return "empty" if disk is None else disk.path.name


def _key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns]


# -- the harness -------------------------------------------------------------------------------


@dataclass
class LayerState:
    """What a layer holds, as last verified."""

    kind: str  # "empty", "layer.vhd", "sandbox.vhdx"
    parent: str | None
    key: list[int] | None = None  # of its disk
    manifest: str | None = None  # of a layer.vhd's content
    files: dict[str, str] = field(default_factory=dict)  # fsynced through a view: name → sha256


@dataclass
class KillRecord:
    """One kill: what ran, when it died, what recovery found."""

    number: int
    backend: str
    op: str
    variant: str
    layer: str | None
    delay_ms: float
    phase: str  # "before start", "in flight", "after done"
    outcome: str = ""
    recover_seconds: float = 0.0
    loop_wait_ms: float = 0.0
    problems: list[str] = field(default_factory=list)


@dataclass
class Campaign:
    """The result of :func:`run_kills`."""

    seed: int
    kills: list[KillRecord] = field(default_factory=list)
    durations: dict[str, list[float]] = field(default_factory=dict)  # per backend/op/variant
    unkilled: int = 0  # calibration runs (checked like kills)
    seconds: float = 0.0
    load: list[float] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Every finding, prefixed by its kill."""
        return [
            f"kill {k.number} ({k.backend} {k.op}/{k.variant}, {k.phase}, {k.delay_ms} ms): {p}"
            for k in self.kills
            for p in k.problems
        ]

    def table(self) -> dict[str, dict[str, Any]]:
        """Per ``backend op``: kills, phases hit and outcomes counted."""
        rows: dict[str, dict[str, Any]] = {}
        for k in self.kills:
            row = rows.setdefault(
                f"{k.backend} {k.op}",
                {"kills": 0, "phases": Counter(), "outcomes": Counter(), "problems": 0},
            )
            row["kills"] += 1
            row["phases"][k.phase] += 1
            row["outcomes"][k.outcome] += 1
            row["problems"] += len(k.problems)
        return rows

    def to_json(self) -> dict[str, Any]:
        """Everything, for ``--out``."""
        return {
            "seed": self.seed,
            "kills": len(self.kills),
            "unkilled_runs": self.unkilled,
            "seconds": round(self.seconds, 1),
            "load": self.load,
            "durations_ms": {
                k: {
                    "finished_runs": len(v),
                    "median": round(statistics.median(v) * 1000, 2),
                    "max": round(max(v) * 1000, 2),
                }
                for k, v in self.durations.items()
            },
            "table": {
                k: {**v, "phases": dict(v["phases"]), "outcomes": dict(v["outcomes"])}
                for k, v in self.table().items()
            },
            "problems": self.problems,
            "records": [asdict(k) for k in self.kills],
        }


def _run_json(argv: list[str], timeout: float) -> Any:
    proc = subprocess.run(
        argv, capture_output=True, timeout=timeout, check=False, env=child_env()
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])}… exit {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')[-4000:]}"
        )
    return json.loads(proc.stdout)


class Harness:
    """Kills on one data root with one backend (see the module docstring)."""

    def __init__(
        self,
        work: Path,
        backend: str,
        fixtures: Fixtures,
        rng: random.Random,
        calibration_runs: int = CALIBRATION_RUNS,
    ) -> None:
        self.work = work
        self.root = work / f"root-{backend}"
        self.backend = backend
        self.fixtures = fixtures
        self.rng = rng
        self.known: dict[str, LayerState] = {}
        self.durations: dict[str, list[float]] = {}  # "backend/op/variant" → unkilled seconds
        self.counter = 0
        self.calibration_runs = calibration_runs
        self.unkilled = 0  # calibration runs, checked like kills
        self.qemu_checked: set[tuple[int, ...]] = set()
        self.fsck_checked: set[tuple[int, ...]] = set()
        self.image_ids = {layer.layer_id for layer in fixtures.image_layers}
        self.work.mkdir(parents=True, exist_ok=True)

    # -- helpers ---------------------------------------------------------------------------

    def driver(self) -> Driver:
        """A driver of this root, as a fresh process would open it."""
        from lcow.graphdriver.driver import Driver

        return Driver(self.root, [f"lcow.backend={self.backend}"])

    def _new_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:04d}"

    def _leaves(self, kinds: Iterable[str]) -> list[str]:
        parents = {s.parent for s in self.known.values()}
        wanted = set(kinds)
        return sorted(
            lid
            for lid, s in self.known.items()
            if lid not in parents and lid not in self.image_ids and s.kind in wanted
        )

    def _parent_choice(self) -> str | None:
        options = sorted(
            lid
            for lid, s in self.known.items()
            if s.kind in ("layer.vhd", "sandbox.vhdx") and lid not in self.image_ids
        )
        return self.rng.choice(options) if options and self.rng.random() < 0.7 else None

    def _tar(self) -> str:
        return self.rng.choice(sorted(self.fixtures.tars))

    def _content_layer(self, driver: Driver, parent: str | None) -> str:
        lid = self._new_id("base")
        driver.create(lid, parent)
        tar = self._tar()
        driver.apply_diff(lid, parent, tar)
        self.known[lid] = LayerState(
            "layer.vhd", parent, _key(self.root / lid / "layer.vhd"), self.fixtures.tars[tar]
        )
        return lid

    def _trim(self, driver: Driver) -> None:
        """Keep the root at most MAX_LAYERS layers (the image's aside) by removing leaves."""
        while sum(1 for lid in self.known if lid not in self.image_ids) > MAX_LAYERS:
            leaves = self._leaves(("empty", "layer.vhd", "sandbox.vhdx"))
            if not leaves:
                return
            driver.remove(leaves[0])
            self.known.pop(leaves[0])

    def _counts(self) -> dict[str, int]:
        if self.backend != "host":
            return {}
        from lcow.backends.host.table import MountTable

        state = MountTable(self.root / "mounts").peek()
        return {lid: v.count for lid, v in state.views.items()}

    # -- one operation -----------------------------------------------------------------------

    def prepare(self, op: str) -> dict[str, Any]:
        """Make the root ready for ``op``; returns the child's arguments plus what judging the
        outcome needs (``variant``, the target ``layer``, ``counts_before`` on host, ``key``
        naming the variant's durations)."""
        driver = self.driver()
        self._trim(driver)
        plan: dict[str, Any] = {"op": op, "variant": op, "layer": None}
        if op == "apply_diff":
            over = self._leaves(("sandbox.vhdx",))
            if over and self.rng.random() < 0.3:
                lid = self.rng.choice(over)
                parent = self.known[lid].parent
                plan["variant"] = "over a sandbox"
            else:
                lid, parent = self._new_id("apply"), self._parent_choice()
                driver.create(lid, parent)
                self.known[lid] = LayerState("empty", parent)
                plan["variant"] = "new layer"
            plan.update(layer=lid, parent=parent, tar=self._tar())
        elif op == "create_rw":
            plan.update(layer=self._new_id("rw"), parent=self._parent_choice())
            plan["variant"] = "template cached"
            if self.rng.random() < 0.25:  # the template is made first (mke2fs, VHDX packing)
                (self.root / "cache" / "sandbox.vhdx").unlink(missing_ok=True)
                plan["variant"] = "template missing"
        elif op == "remove":
            leaves = self._leaves(("layer.vhd", "sandbox.vhdx"))
            lid = self.rng.choice(leaves) if leaves else self._content_layer(driver, None)
            plan["layer"] = lid
            plan["variant"] = self.known[lid].kind
            if self.backend == "host" and self.rng.random() < 0.4:
                driver.get(lid)  # removed while mounted: Remove tears the view down
                plan["variant"] += " mounted"
        elif op == "import":
            for layer in reversed(self.fixtures.image_layers):
                driver.remove(layer.layer_id)
                self.known.pop(layer.layer_id, None)
            spooled = self.rng.random() < 0.3
            plan["image"] = str(self.fixtures.image_gz if spooled else self.fixtures.image)
            plan["variant"] = "gzip tarball" if spooled else "plain tarball"
        elif op == "get":
            choices = sorted(lid for lid in self.known if lid not in self.image_ids)
            lid = self.rng.choice(choices) if choices else self._content_layer(driver, None)
            if self.rng.random() < 0.2:  # a Create-only child: Get materialises its sandbox
                lid_parent = lid
                lid = self._new_id("get")
                driver.create(lid, lid_parent)
                self.known[lid] = LayerState("empty", lid_parent)
            state = self.known[lid]
            plan["layer"] = lid
            plan["variant"] = {"empty": "create-only", "layer.vhd": "read-only chain"}.get(
                state.kind, "sandbox"
            )
            if state.kind != "layer.vhd":
                plan["write"] = f"w{self.counter:04d}-{self.rng.getrandbits(24):06x}"
            if self.rng.random() < 0.3:
                driver.get(lid)  # already mounted: this Get only counts
                plan["variant"] += " counted"
        elif op == "put":
            choices = sorted(lid for lid in self.known if lid not in self.image_ids)
            lid = self.rng.choice(choices) if choices else self._content_layer(driver, None)
            held = 2 if self.rng.random() < 0.3 else 1
            for _ in range(held):
                driver.get(lid)
            plan["layer"] = lid
            plan["variant"] = f"{_kind(self.root / lid)} held {held}"
        target = plan["layer"]
        if target in self.known:  # a Get in preparation gives a Create-only layer a sandbox
            self.known[target].kind = _kind(self.root / target)
        plan["counts_before"] = self._counts()
        plan["key"] = f"{self.backend}/{op}/{plan['variant']}"
        return plan

    def run_child(self, plan: dict[str, Any], delay: float | None) -> tuple[list[list[str]], str]:
        """Run the operation in a child; SIGKILL it ``delay`` seconds after it logs ``start``
        (``None``: let it finish). Returns the log lines and the phase the kill hit."""
        log = self.work / "child.log"
        log.unlink(missing_ok=True)
        args: dict[str, Any] = {
            "root": str(self.root),
            "backend": self.backend,
            "log": str(log),
            **{k: plan[k] for k in ("op", "layer", "parent", "tar", "image", "write") if k in plan},
        }
        with open(self.work / "child.err", "wb") as err:
            proc = subprocess.Popen(
                python_module("tests.harness.crash", "child", json.dumps(args)),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=child_env(),
            )
        try:
            deadline = time.monotonic() + CHILD_TIMEOUT
            while not any(p[1] == "start" for p in _read_log(log)):
                if proc.poll() is not None:
                    raise RuntimeError(f"child exited {proc.returncode} before starting: "
                                       f"{(self.work / 'child.err').read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("child did not start")
                time.sleep(0.0005)
            if delay is None:
                proc.wait(CHILD_TIMEOUT)
            else:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        lines = _read_log(log)
        kinds = [p[1] for p in lines]
        if "error" in kinds:
            raise RuntimeError(
                f"the child's {plan['op']} failed: {lines}\n"
                f"{(self.work / 'child.err').read_text()[-3000:]}"
            )
        if delay is None and "done" not in kinds:
            raise RuntimeError(f"the child's {plan['op']} did not finish: exit {proc.returncode}")
        phase = "after done" if "done" in kinds else "in flight"
        stamps = {p[1]: float(p[0]) for p in lines}
        if delay is None:
            self.durations.setdefault(plan["key"], []).append(stamps["done"] - stamps["start"])
        return lines, phase

    def allowed_counts(self, plan: dict[str, Any], lines: list[list[str]]) -> dict[str, list[int]]:
        """Counts the adopted table may hold per layer, given how far the child got."""
        counts = {lid: [n] for lid, n in plan["counts_before"].items()}
        lid, kinds = plan["layer"], [p[1] for p in lines]
        before = plan["counts_before"].get(lid, 0)
        if plan["op"] == "get":
            counts[lid] = [before + 1] if "got" in kinds else [before, before + 1]
        elif plan["op"] == "put":
            counts[lid] = [before - 1] if "done" in kinds else [before, before - 1]
        elif plan["op"] == "remove":
            counts[lid] = [0] if "done" in kinds else [before, 0]
        return counts

    def recover(self, plan: dict[str, Any], lines: list[list[str]]) -> dict[str, Any]:
        """The fresh recovery process (see :func:`_recover`)."""
        files = {lid: dict(s.files) for lid, s in self.known.items() if s.files}
        wrote = [p for p in lines if p[1] == "wrote"]
        if wrote:
            name, digest = wrote[-1][2].split(" ")
            files.setdefault(plan["layer"], {})[name] = digest
        args = {
            "root": str(self.root),
            "backend": self.backend,
            "counts": self.allowed_counts(plan, lines) if self.backend == "host" else {},
            "verified": {lid: s.key for lid, s in self.known.items() if s.manifest and s.key},
            "files": files,
            "reimport": str(self.fixtures.image) if plan["op"] == "import" else None,
        }
        out: dict[str, Any] = _run_json(
            python_module("tests.harness.crash", "recover", json.dumps(args)),
            RECOVER_TIMEOUT,
        )
        out["files"] = files
        return out

    # -- verification ----------------------------------------------------------------------

    def verify(self, plan: dict[str, Any], lines: list[list[str]], found: dict[str, Any],
               record: KillRecord) -> None:
        """Check the recovered root against the outcomes ``plan``'s operation allows; update
        the model of the root."""
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
            problems += self._check_disk(lid, self.root / lid)
        problems += self._check_disk("cache", self.root / "cache")
        outcome = ""
        op = plan["op"]
        for lid, previous in list(self.known.items()):
            if lid == target or (op == "import" and lid in image):
                continue
            seen = layers.get(lid)
            if seen is None:
                problems.append(f"{lid}: vanished although {op} did not touch it")
            elif seen["kind"] != previous.kind:
                problems.append(f"{lid}: was {previous.kind}, now {seen['kind']}")
            elif previous.kind == "layer.vhd" and seen.get("key") != previous.key:
                problems.append(f"{lid}: layer.vhd changed although {op} did not touch it")
        extra = set(layers) - set(self.known) - ({target} if target else set()) - set(image)
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
            elif kind == self.known[target].kind:
                outcome = "as before" if kind == "empty" else "sandbox kept"
            else:
                problems.append(f"{target}: {kind} after ApplyDiff over {self.known[target].kind}")
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
                problems.append(f"{target}: parent {layers[target].get('parent')} "
                                f"!= {plan['parent']}")
        elif op == "remove":
            kind = observed.get(target)
            outcome = "absent" if kind is None else "whole"
            if kind is not None and kind != self.known[target].kind:
                problems.append(f"{target}: {kind} after an interrupted Remove of "
                                f"{self.known[target].kind}")
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
            for state in states:
                if state not in (None, "empty", "layer.vhd"):
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
        self._update_model(layers, found["files"])

    def _check_disk(self, lid: str, folder: Path) -> list[str]:
        """``e2fsck -fn`` of a new ``layer.vhd`` (and its footer), ``qemu-img check`` of a new
        ``sandbox.vhdx``."""
        from lcow.formats.vhd.footer import FOOTER_SIZE, read_footer

        problems = []
        vhd, vhdx = folder / "layer.vhd", folder / "sandbox.vhdx"
        if vhd.exists():
            key = tuple(_key(vhd))
            if key not in self.fsck_checked:
                footer = read_footer(vhd)
                size = vhd.stat().st_size - FOOTER_SIZE
                if footer is None or footer.disk_type != 2 or footer.current_size > size:
                    problems.append(f"{lid}: layer.vhd has no valid fixed-VHD footer")
                proc = _tool(["e2fsck", "-fn", str(vhd)])
                if proc.returncode != 0:
                    problems.append(f"{lid}: e2fsck -fn layer.vhd exit {proc.returncode}: "
                                    f"{proc.stdout[-1500:]}")
                else:
                    self.fsck_checked.add(key)
        elif vhdx.exists():
            key = tuple(_key(vhdx))
            if key not in self.qemu_checked:
                proc = _tool(["qemu-img", "check", "-f", "vhdx", str(vhdx)])
                if proc.returncode != 0:
                    problems.append(f"{lid}: qemu-img check exit {proc.returncode}: "
                                    f"{proc.stdout[-800:]}")
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
                return [f"{lid}: e2fsck -fn of the sandbox exit {proc.returncode}: "
                        f"{proc.stdout[-1500:]}"]
            return []
        finally:
            raw.unlink(missing_ok=True)

    def _update_model(self, layers: dict[str, dict[str, Any]], files: dict[str, Any]) -> None:
        known: dict[str, LayerState] = {}
        for lid, info in layers.items():
            kind = info.get("after_get") or info["kind"]
            old = self.known.get(lid)
            manifest = info.get("manifest") or (old.manifest if old else None)
            if kind != "layer.vhd":
                manifest = None
            key = info.get("key") if kind == info["kind"] else None
            if kind == "layer.vhd" and manifest is None:
                for layer in self.fixtures.image_layers:
                    if layer.layer_id == lid:
                        manifest = layer.manifest
            known[lid] = LayerState(kind, info.get("parent"), key, manifest,
                                    dict(files.get(lid, {})) if kind == "sandbox.vhdx" else {})
        self.known = known

    # -- the campaign ----------------------------------------------------------------------

    def _unkilled(self, plan: dict[str, Any]) -> None:
        """Run a prepared operation to its end (to learn its duration); it must pass the same
        checks."""
        lines, _ = self.run_child(plan, None)
        found = self.recover(plan, lines)
        record = KillRecord(-1, self.backend, plan["op"], plan["variant"], plan["layer"], 0, "")
        self.verify(plan, lines, found, record)
        self.unkilled += 1
        if record.problems:
            raise RuntimeError(f"{plan['op']} fails without a kill: {record.problems}")

    def kill(self, number: int, op: str) -> KillRecord:
        """One kill of ``op`` at a random moment, recovery and verification. A variant of the
        operation not measured yet is first run unkilled :attr:`calibration_runs` times."""
        while True:
            plan = self.prepare(op)
            if len(self.durations.get(plan["key"], [])) >= self.calibration_runs:
                break
            self._unkilled(plan)
        typical = statistics.median(self.durations[plan["key"]])
        delay = self.rng.uniform(0, typical * SPAN)
        lines, phase = self.run_child(plan, delay)
        record = KillRecord(
            number, self.backend, op, plan["variant"], plan["layer"],
            round(delay * 1000, 2), phase,
        )  # fmt: skip
        found = self.recover(plan, lines)
        record.recover_seconds = round(found["timings"]["total"], 3)
        self.verify(plan, lines, found, record)
        if op in ("get", "put", "remove") and self.backend == "host":
            layer: str | None = plan["layer"]  # its sandbox and its ancestors' were mounted
            while layer is not None and layer in self.known:
                record.problems += self.fsck_sandbox(layer)
                layer = self.known[layer].parent
        return record

    def finish(self) -> list[str]:
        """Cleanup with a fresh driver and remove the root; what was left behind."""
        if not self.root.exists():
            return []
        self.driver().cleanup()
        left = temporaries(self.root)
        if self.backend == "host":
            left += settled_leftovers(self.root)[0]
        if not any(x.startswith(("mount ", "loop ", "process ")) for x in left):
            shutil.rmtree(self.root, ignore_errors=True)
        return left


def _read_log(path: Path) -> list[list[str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.split(" ", 2) for line in text.splitlines() if line.count(" ") >= 1]


def _tool(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LC_ALL": "C",
           "PATH": os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"}
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, env=env)


def schedule(kills: int, pairs: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """``kills`` (backend, op) pairs, round robin."""
    for number in range(kills):
        yield pairs[number % len(pairs)]


def run_kills(
    work: Path,
    kills: int,
    *,
    backends: Sequence[str] = ("userspace", "host"),
    ops: Sequence[str] | None = None,
    seed: int = 20261128,
    scale: float = 1.0,
    calibration_runs: int = CALIBRATION_RUNS,
    progress: Callable[[KillRecord], None] | None = None,
) -> Campaign:
    """Run ``kills`` kills spread round robin over every (backend, operation) pair.

    Args:
        work: a scratch folder (fixtures, data roots, logs); data roots are removed at the end
            when nothing is left mounted in them.
        kills: how many kills in all.
        backends: ``userspace`` and/or ``host``.
        ops: operations to kill (default: all the backend has; ``get``/``put`` only on host).
        seed: the random seed (delays, choices).
        scale: size of the fixtures (see :func:`make_fixtures`).
        calibration_runs: unkilled runs per operation variant, to learn its duration.
        progress: called after each kill.
    """
    rng = random.Random(seed)
    started = time.monotonic()
    campaign = Campaign(seed, load=list(os.getloadavg()))
    fixtures = make_fixtures(work / "fixtures", scale=scale)
    harnesses = {
        b: Harness(work, b, fixtures, random.Random(rng.getrandbits(32)), calibration_runs)
        for b in backends
    }
    pairs = [
        (b, op)
        for b in backends
        for op in (HOST_OPS if b == "host" else USERSPACE_OPS)
        if ops is None or op in ops
    ]
    try:
        for number, (backend, op) in enumerate(schedule(kills, pairs)):
            record = harnesses[backend].kill(number, op)
            campaign.kills.append(record)
            if progress is not None:
                progress(record)
    finally:
        for harness in harnesses.values():
            campaign.durations.update(harness.durations)
            campaign.unkilled += harness.unkilled
            left = harness.finish()
            if left:
                campaign.kills.append(
                    KillRecord(len(campaign.kills), harness.backend, "finish", "", None, 0, "",
                               problems=[f"left after the campaign: {x}" for x in left])
                )
    campaign.seconds = time.monotonic() - started
    campaign.load += list(os.getloadavg())
    return campaign


def main(argv: Sequence[str]) -> int:
    """``python -m tests.harness.crash child|recover JSON`` (what the harness starts)."""
    if len(argv) != 2 or argv[0] not in ("child", "recover"):
        print("usage: python -m tests.harness.crash child|recover JSON", file=sys.stderr)
        return 2
    args = json.loads(argv[1])
    if argv[0] == "child":
        return _child(args)
    json.dump(_recover(args), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
