"""Crash safety: SIGKILL a process in the middle of driver operations (SPEC §3, issue 4 item 5).

A child process (``python -c`` :data:`CHILD`) opens a :class:`~lcow.graphdriver.driver.Driver`
on a shared data root and runs operations in a loop — ApplyDiff of a generated tar of tens of MB
and thousands of entries into a new layer or over an existing one, CreateReadWrite (the cached
20 GB sandbox, or a sized one that runs mke2fs), Create, Remove of a leaf — logging
``start``/``done`` lines. The parent names an operation for the child to begin with and kills it
with SIGKILL at a seeded random moment inside it (uniform over the longest duration seen for that
operation so far), so kills land in every phase of every operation. After each kill a fresh
driver on the same root runs ``cleanup()`` and every layer must be whole or absent:

* no ``*.tmp-*`` file and no ``-removing`` folder anywhere;
* every layer folder has a ``layerchain.json`` that parses, naming existing folders;
* every ``layer.vhd`` has a valid fixed-VHD footer and its ext4 passes ``e2fsck -fn``;
* every ``sandbox.vhdx`` (and ``cache/sandbox.vhdx``) opens with our VHDX reader and holds an
  ext4 superblock; new ones are checked with ``qemu-img check`` (one per round, a sample);
* Get + readdir + Put works on every layer.

``LCOW_KILL_TEST_KILLS`` (default 50, the CI minimum) scales the run; ``LCOW_KILL_TEST_SEED``
picks another seed; ``LCOW_KILL_TEST_LOG=FILE`` writes the record of every kill (operation hit,
delay, what was found) as JSON. The record is also printed (``pytest -s``).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from lcow.formats.vhd.footer import FOOTER_SIZE, read_footer
from lcow.formats.vhd.vhdx import VhdxImage
from lcow.graphdriver.driver import Driver
from lcow.testing.backend_suite import leftovers
from tests.helpers import requires, run

pytestmark = [requires("mke2fs", "e2fsck", "qemu-img"), pytest.mark.slow]

KILLS = int(os.environ.get("LCOW_KILL_TEST_KILLS", "50"))
SEED = int(os.environ.get("LCOW_KILL_TEST_SEED", "20260104"))
OPS = ("apply_new", "apply_replace", "create_rw", "create_rw_sized", "create", "remove")
MAX_LAYERS = 8
FOCUS = 0.7  # the child repeats the targeted operation this often
SPAN = 3  # the kill falls within this many durations of the targeted operation
MIN_SPAN_SECONDS = 0.004
PRIOR_SECONDS = 0.5  # assumed duration of an operation not yet seen to complete
EXT4_MAGIC_OFFSET = 1024 + 56

# The child: python -c CHILD '<json args>'. Runs operations until killed.
CHILD = r"""
import json, os, random, sys, time, traceback
from pathlib import Path
from lcow.graphdriver.driver import Driver

args = json.loads(sys.argv[1])
root = Path(args["root"])
rng = random.Random(args["seed"])
log = os.open(args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
ops = args["ops"]

def note(*words):
    os.write(log, (" ".join([f"{time.monotonic():.6f}", *map(str, words)]) + "\n").encode())

def layers():
    skip = {"cache", "scratch"}
    return sorted(
        e.name for e in os.scandir(root)
        if e.is_dir() and e.name not in skip and not e.name.startswith(".")
        and not e.name.endswith("-removing")
    )

def leaves():
    named = set()
    for layer in layers():
        try:
            chain = json.loads((root / layer / "layerchain.json").read_bytes()) or []
        except (OSError, ValueError):
            chain = []
        named.update(p.replace("\\", "/").rsplit("/", 1)[-1] for p in chain)
    return [x for x in layers() if x not in named]

def new_id(op):
    return f"{op.split('_')[0]}-{rng.getrandbits(40):010x}"

def parent():
    options = layers()
    return rng.choice(options) if options and rng.random() < 0.8 else None

driver = Driver(root)
note("ready", "-")
op = args["first"]
while True:
    if op != "remove" and len(layers()) >= args["max_layers"]:
        op = "remove"
    if op == "remove" and not leaves():
        op = "apply_new"
    if op == "apply_replace" and not leaves():
        op = "apply_new"
    tar = rng.choice(args["tars"])
    try:
        if op == "apply_new":
            layer, p = new_id(op), parent()
            driver.create(layer, p)
            note("start", op, layer)
            driver.apply_diff(layer, p, tar)
        elif op == "apply_replace":
            layer = rng.choice(leaves())
            note("start", op, layer)
            driver.apply_diff(layer, None, tar)
        elif op in ("create_rw", "create_rw_sized"):
            layer = new_id(op)
            sized = op.endswith("sized")
            opts = {"lcow.sandboxsize": str(rng.choice([21, 25, 40]))} if sized else None
            note("start", op, layer)
            driver.create_read_write(layer, parent(), opts)
        elif op == "create":
            layer = new_id(op)
            note("start", op, layer)
            driver.create(layer, parent())
        else:
            layer = rng.choice(leaves())
            note("start", op, layer)
            driver.remove(layer)
        note("done", op, layer)
    except Exception as exc:
        note("error", op, repr(exc).replace("\n", " "))
        traceback.print_exc()
    op = args["first"] if rng.random() < args["focus"] else rng.choice(ops)
"""


def _entry(tar: tarfile.TarFile, name: str, data: bytes | None, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.mode, info.size = 0o644, len(data)
        tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def tars(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A ~40 MB tar of ~3,000 entries (dirs, files up to 256 KiB, links, whiteouts) and a
    small one."""
    out = tmp_path_factory.mktemp("kill-tars")
    rng = random.Random(SEED)
    big = out / "big.tar"
    with tarfile.open(big, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(30):
            _entry(tar, f"dir-{d}", None, 1_600_000_000 + d)
            for f in range(100):
                size = rng.choice([0, 17, 700, 4096, 9000, 30_000, 70_000, 262_144])
                _entry(tar, f"dir-{d}/file-{f}", rng.randbytes(size), 1_600_000_000 + f)
            link = tarfile.TarInfo(f"dir-{d}/hard")
            link.type, link.linkname = tarfile.LNKTYPE, f"dir-{d}/file-1"
            tar.addfile(link)
            sym = tarfile.TarInfo(f"dir-{d}/sym")
            sym.type, sym.linkname = tarfile.SYMTYPE, "../dir-0/file-0"
            tar.addfile(sym)
        _entry(tar, "etc/.wh.removed", b"", 0)
    small = out / "small.tar"
    with tarfile.open(small, "w", format=tarfile.PAX_FORMAT) as tar:
        _entry(tar, "etc", None, 1)
        _entry(tar, "etc/hostname", b"kill\n", 1)
        _entry(tar, ".wh.dir-0", b"", 1)
    assert big.stat().st_size > 20 << 20
    return [str(big), str(big), str(small)]


@dataclass
class Kill:
    """One kill: what was running, when it died, what the check found."""

    number: int
    target: str
    hit: str
    delay_ms: float
    completed_ops: int
    layers: int = 0
    layer_vhds: int = 0
    sandboxes: int = 0
    empty_layers: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Verifier:
    """Checks a data root after a kill; remembers files already verified (inode, size, mtime)."""

    scratch: Path
    seen: set[tuple[int, int, int]] = field(default_factory=set)
    qemu_checked: set[tuple[int, int, int]] = field(default_factory=set)

    @staticmethod
    def key(path: Path) -> tuple[int, int, int]:
        st = path.stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def layer_vhd(self, path: Path) -> list[str]:
        footer = read_footer(path)
        if footer is None:
            return [f"{path}: no valid VHD footer"]
        size = path.stat().st_size - FOOTER_SIZE
        if footer.current_size != size or footer.disk_type != 2:
            return [f"{path}: footer size {footer.current_size} != {size} or not fixed"]
        key = self.key(path)
        if key in self.seen:
            return []
        copy = self.scratch / "image.ext4"
        with open(path, "rb") as src, open(copy, "wb") as dst:
            done = 0
            while done < size:
                done += os.copy_file_range(src.fileno(), dst.fileno(), size - done)
        try:
            proc = run(["e2fsck", "-fn", copy])
        finally:
            copy.unlink()
        if proc.returncode != 0:
            return [f"{path}: e2fsck -fn exit {proc.returncode}: {proc.stdout[-1500:]}"]
        self.seen.add(key)
        return []

    def sandbox(self, path: Path, *, qemu: bool) -> list[str]:
        key = self.key(path)
        if key not in self.seen:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                with VhdxImage(fd, name=str(path), owns_fd=True) as image:
                    if image.size < 20 << 30:
                        return [f"{path}: virtual size {image.size}"]
                    if image.pread(EXT4_MAGIC_OFFSET, 2) != b"\x53\xef":
                        return [f"{path}: no ext4 superblock"]
            except Exception as exc:  # any failure of our reader is a finding
                return [f"{path}: VHDX reader: {exc!r}"]
            self.seen.add(key)
        if qemu and key not in self.qemu_checked:
            proc = run(["qemu-img", "check", "-f", "vhdx", path])
            if proc.returncode != 0:
                return [f"{path}: qemu-img check exit {proc.returncode}: {proc.stdout[-800:]}"]
            self.qemu_checked.add(key)
        return []

    def root(self, root: Path, record: Kill) -> None:
        """Cleanup with a fresh driver, then check every layer."""
        driver = Driver(root)
        driver.cleanup()
        problems = record.problems
        left = leftovers(root)
        orphans = f" (helper processes still running: {_orphans(root)})" if left else ""
        problems += [f"leftover after cleanup: {name}{orphans}" for name in left]
        qemu_budget = 1
        template = root / "cache" / "sandbox.vhdx"
        if template.exists():
            problems += self.sandbox(template, qemu=False)
        layer_ids = driver.root.layer_ids()
        record.layers = len(layer_ids)
        for layer_id in layer_ids:
            folder = root / layer_id
            chain_file = folder / "layerchain.json"
            try:
                chain = json.loads(chain_file.read_bytes())
            except (OSError, ValueError) as exc:
                problems.append(f"{layer_id}: layerchain.json: {exc!r}")
                continue
            if chain is not None and not (
                isinstance(chain, list) and all(isinstance(p, str) for p in chain)
            ):
                problems.append(f"{layer_id}: layerchain.json holds {chain!r}")
                continue
            for entry in chain or []:
                name = entry.replace("\\", "/").rsplit("/", 1)[-1]
                if not (root / name).is_dir():
                    problems.append(f"{layer_id}: ancestor {entry} is missing")
            vhd, vhdx = folder / "layer.vhd", folder / "sandbox.vhdx"
            if vhd.exists():
                record.layer_vhds += 1
                problems += self.layer_vhd(vhd)
            elif vhdx.exists():
                record.sandboxes += 1
                new = self.key(vhdx) not in self.qemu_checked
                problems += self.sandbox(vhdx, qemu=new and qemu_budget > 0)
                qemu_budget -= new
            else:
                record.empty_layers += 1
            try:
                view = driver.get(layer_id)
                try:
                    view.readdir("/")
                finally:
                    driver.put(layer_id)
            except Exception as exc:  # a layer the driver cannot open is a finding
                problems.append(f"{layer_id}: Get/readdir: {exc!r}")


# -- kills at chosen points -------------------------------------------------------------------

# The child for one chosen point: python -c CHILD_AT '<json args>'. It patches the step after
# which it must die with SIGKILL, then runs one operation; reaching the end is an error (exit 3).
CHILD_AT = r"""
import json, os, shutil, signal, sys
args = json.loads(sys.argv[1])
point = args["point"]

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

import lcow.sandboxes.copies as sandbox_copies
import lcow.sandboxes.make as sandbox_make
from lcow.graphdriver.driver import Driver
from lcow.storage.dataroot import DataRoot

real_replace = os.replace

def replace(src, dst, *rest, **kwargs):
    if point == "apply: before the rename" and str(dst).endswith("layer.vhd"):
        die()
    real_replace(src, dst, *rest, **kwargs)
    if point == "apply: after the rename" and str(dst).endswith("layer.vhd"):
        die()

os.replace = replace
if point == "create: after mkdir, before layerchain.json":
    DataRoot.write_chain = die
elif point == "remove: after the rename to -removing":
    shutil.rmtree = die
elif point == "create-rw: sandbox linked, temporary not yet unlinked":
    sandbox_copies.fsync_dir = die
elif point == "create-rw: template formatted, not yet packed":
    sandbox_make.raw_to_dynamic_vhdx = die

driver = Driver(args["root"])
op, layer, parent = args["op"], args["layer"], args["parent"]
if op == "create":
    driver.create(layer, parent)
elif op == "apply":
    driver.apply_diff(layer, parent, args["tar"])
elif op == "create-rw":
    driver.create_read_write(layer, parent, args["opts"])
elif op == "remove":
    driver.remove(layer)
sys.exit(3)
"""

# (point, operation, layer, parent, options, what must hold afterwards)
POINTS: tuple[tuple[str, str, str, str | None, dict[str, str] | None, str], ...] = (
    ("create: after mkdir, before layerchain.json", "create", "new", "base", None, "whole"),
    ("apply: before the rename", "apply", "fresh", None, None, "no-vhd"),
    ("apply: before the rename", "apply", "base", None, None, "unchanged"),
    ("apply: after the rename", "apply", "rw", None, None, "vhd"),
    ("remove: after the rename to -removing", "remove", "base-child", None, None, "absent"),
    (
        "create-rw: sandbox linked, temporary not yet unlinked",
        "create-rw",
        "sb",
        "base",
        None,
        "sandbox",
    ),
    ("create-rw: template formatted, not yet packed", "create-rw", "sb", None, None, "no-sandbox"),
)


def _setup_root(root: Path, tars: list[str]) -> None:
    driver = Driver(root)
    driver.create("base", None)
    driver.apply_diff("base", None, tars[-1])
    driver.create("base-child", "base")
    driver.apply_diff("base-child", "base", tars[-1])
    driver.create("fresh", None)
    driver.create_read_write("rw", "base", None)


def _orphans(root: Path) -> list[int]:
    """Processes whose command line names something below ``root`` (helpers a killed driver
    started)."""
    pids = []
    needle = os.fsencode(root)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if needle in f.read():
                        pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _run_child_at(root: Path, args: dict[str, object], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_AT, json.dumps({"root": str(root), **args})],
        capture_output=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"the child was not killed at the point: exit {proc.returncode}\n"
        f"{proc.stderr.decode(errors='replace')[-3000:]}"
    )


@pytest.mark.parametrize(
    ("point", "op", "layer", "parent", "opts", "expect"),
    POINTS,
    ids=[f"{p[0]} [{p[2]}]" for p in POINTS],
)
def test_kill_at_point(
    tmp_path: Path,
    tars: list[str],
    point: str,
    op: str,
    layer: str,
    parent: str | None,
    opts: dict[str, str] | None,
    expect: str,
) -> None:
    """SIGKILL right after one chosen step of an operation; cleanup leaves the layer whole or
    absent (and an existing layer exactly as it was)."""
    root = tmp_path / "root"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _setup_root(root, tars)
    if point.startswith("create-rw: template"):
        (root / "cache" / "sandbox.vhdx").unlink()
    before = Verifier.key(root / "base" / "layer.vhd")
    _run_child_at(
        root,
        {"point": point, "op": op, "layer": layer, "parent": parent, "opts": opts, "tar": tars[0]},
    )
    record = Kill(number=0, target=point, hit=point, delay_ms=0, completed_ops=0)
    Verifier(scratch).root(root, record)
    assert not record.problems, "\n".join(record.problems)
    folder = root / layer
    if expect == "absent":
        assert not folder.exists()
    elif expect == "no-vhd":
        assert not (folder / "layer.vhd").exists()
    elif expect == "unchanged":
        assert Verifier.key(folder / "layer.vhd") == before
    elif expect == "vhd":
        assert (folder / "layer.vhd").exists()
    elif expect == "sandbox":
        assert (folder / "sandbox.vhdx").exists()
    elif expect == "no-sandbox":
        assert not (folder / "sandbox.vhdx").exists()
        assert not (root / "cache" / "sandbox.vhdx").exists()
        Driver(root).create_read_write("after", None, None)  # the cache is seeded again
        assert (root / "cache" / "sandbox.vhdx").exists()


def test_kill_leaves_no_orphan_mke2fs(tmp_path: Path, tars: list[str]) -> None:
    """A driver killed while mke2fs formats a sandbox must not leave mke2fs running: an orphan
    re-creates the raw temporary (mke2fs creates a missing file) after Cleanup swept it."""
    root = tmp_path / "root"
    _setup_root(root, tars)
    real = run(["sh", "-c", "command -v mke2fs || echo /usr/sbin/mke2fs"]).stdout.strip()
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "mke2fs"
    # Kill the driver (our parent), then run the real mke2fs a little later.
    wrapper.write_text(f'#!/bin/sh\nkill -9 $PPID\nsleep 0.5\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrapper_dir}:{os.environ.get('PATH', '')}"}
    try:
        _run_child_at(
            root,
            {
                "point": "none",
                "op": "create-rw",
                "layer": "sized",
                "parent": None,
                "opts": {"lcow.sandboxsize": "25"},
                "tar": "",
            },
            env,
        )
        Driver(root).cleanup()
        deadline = time.monotonic() + 10
        while _orphans(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftovers(root) == [], "an orphaned mke2fs re-created a swept temporary"
    finally:
        for pid in _orphans(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- kills at random moments --------------------------------------------------------------------


def _read_log(path: Path) -> list[list[str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.split(" ", 3) for line in text.splitlines() if line.count(" ") >= 2]


def _wait_for_start(proc: subprocess.Popen[bytes], log: Path, skip: int, deadline: float) -> int:
    """Wait until the child logs its first ``start`` after line ``skip``; return the line count."""
    while time.monotonic() < deadline:
        lines = _read_log(log)
        if any(parts[1] == "start" for parts in lines[skip:]):
            return len(lines)
        if proc.poll() is not None:
            raise AssertionError(f"child exited with {proc.returncode} before starting an op")
        time.sleep(0.0005)
    raise AssertionError("child did not start an operation in time")


def test_sigkill_leaves_layers_whole_or_absent(
    tmp_path: Path, tars: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """≥ 50 SIGKILLs at random moments; after each, cleanup leaves every layer whole or absent."""
    root = tmp_path / "root"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rng = random.Random(SEED)
    longest: dict[str, float] = {}
    verifier = Verifier(scratch)
    records: list[Kill] = []
    errors: list[str] = []
    started = time.monotonic()
    try:
        _kill_loop(tmp_path, root, tars, rng, longest, verifier, records, errors)
    finally:
        for pid in _orphans(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    _report(records, errors, longest, elapsed, capsys)


def _kill_loop(
    tmp_path: Path,
    root: Path,
    tars: list[str],
    rng: random.Random,
    longest: dict[str, float],
    verifier: Verifier,
    records: list[Kill],
    errors: list[str],
) -> None:
    for number in range(KILLS):
        target = OPS[number % len(OPS)]
        log = tmp_path / f"child-{number}.log"
        child_args = {
            "root": str(root),
            "seed": rng.getrandbits(32),
            "log": str(log),
            "tars": tars,
            "ops": list(OPS),
            "first": target,
            "focus": FOCUS,
            "max_layers": MAX_LAYERS,
        }
        stderr_path = tmp_path / f"child-{number}.err"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(child_args)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            _wait_for_start(proc, log, 0, time.monotonic() + 30)
            span = longest.get(target, PRIOR_SECONDS) * SPAN
            delay = rng.uniform(0, max(span, MIN_SPAN_SECONDS))
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        lines = _read_log(log)
        in_flight: dict[str, float] = {}
        for parts in lines:
            stamp, kind, op = float(parts[0]), parts[1], parts[2]
            if kind == "start":
                in_flight[op] = stamp
            elif kind == "done" and op in in_flight:
                longest[op] = max(longest.get(op, 0.0), stamp - in_flight.pop(op))
            elif kind == "error":
                errors.append(f"kill {number}: {' '.join(parts[2:])}")
        hit = next((p[2] for p in reversed(lines) if p[1] in ("start", "done")), "startup")
        last = next((p for p in reversed(lines) if p[1] in ("start", "done")), None)
        if last is not None and last[1] == "done":
            hit = "between ops"
        record = Kill(
            number=number,
            target=target,
            hit=hit,
            delay_ms=round(delay * 1000, 2),
            completed_ops=sum(1 for p in lines if p[1] == "done"),
        )
        verifier.root(root, record)
        records.append(record)


def _report(
    records: list[Kill],
    errors: list[str],
    longest: dict[str, float],
    elapsed: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = collections.Counter(r.hit for r in records)
    report = {
        "seed": SEED,
        "kills": len(records),
        "seconds": round(elapsed, 1),
        "hit": dict(summary),
        "longest_op_seconds": {k: round(v, 4) for k, v in longest.items()},
        "child_errors": errors,
        "records": [asdict(r) for r in records],
    }
    if os.environ.get("LCOW_KILL_TEST_LOG"):
        Path(os.environ["LCOW_KILL_TEST_LOG"]).write_text(json.dumps(report, indent=1))
    with capsys.disabled():
        print(
            f"\nkill test: {len(records)} kills in {elapsed:.1f} s, seed {SEED}; operation hit: "
            f"{dict(summary)}; layers at the end {records[-1].layers if records else 0}"
        )
    first_seen: dict[str, str] = {}
    for r in records:
        for problem in r.problems:
            first_seen.setdefault(problem, f"kill {r.number} (hit {r.hit}): {problem}")
    assert not first_seen, "\n".join(first_seen.values())
    assert not errors, "the child's operations failed:\n" + "\n".join(errors)
    assert len(records) >= KILLS
    assert summary["apply_new"] + summary["apply_replace"] > 0, summary
    assert sum(r.layer_vhds for r in records) > 0 and sum(r.sandboxes for r in records) > 0
