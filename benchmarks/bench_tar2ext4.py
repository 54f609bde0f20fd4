#!/usr/bin/env python3
"""Time tar -> ext4 converters against each other on the benchmark data sets.

    python benchmarks/bench_tar2ext4.py [--runs 3] [--data DIR] [--sets d1,d2,d3]
                                        [--tools cp,lcow,mke2fs,kernel,peer] [--out FILE.json]
    python benchmarks/bench_tar2ext4.py --linearity [--runs 3]      # lcow on D2 vs D4

Tools (all read DIR/dN.tar and write into a temporary directory under DIR/out, deleted after
every run):

  cp      ``cp d.tar OUT``                                   the floor
  lcow    ``lcow tar2ext4 -vhd -i d.tar -o OUT``            (.venv/bin/lcow of this repo)
  before  the same with the lcow executable given by ``--before`` (e.g. another checkout's
          .venv/bin/lcow): a before/after comparison in the same run
  peer    ``$TAR2EXT4 -vhd -i d.tar -o OUT``                (only when TAR2EXT4 is set)
  mke2fs  ``tar -x`` into a directory, then ``mke2fs -q -t ext4 -d DIR -b 4096 -I 256
          -O ^has_journal,^resize_inode IMG SIZE`` (both steps timed; sizing the image from
          the tree in between is not)
  kernel  ``mkfs.ext4`` an image file, ``mount -o loop``, ``tar -x`` into it, ``umount``
          (all timed; the image size comes from an untimed scan of the tar)

The lcow package is byte-compiled first, as a wheel install leaves it (an editable checkout
run with PYTHONDONTWRITEBYTECODE would otherwise recompile every module on every start), and
whether its C accelerators are loaded is recorded. Each data set's tar is read once untimed
first (warm cache). Then for every repetition the tools run one after another, in an order
rotated per repetition, each preceded by ``sync``; nothing else (no cache dropping). Reported:
median wall-clock seconds, its ratio to the median of ``cp``, the medians of user and system
CPU seconds (rusage of the command, its children included), and peak RSS (ru_maxrss from
os.wait4 of the child; for multi-step tools the largest step; kernel memory is not counted).
A tool that fails is recorded with its error and not retried on that data set; the run goes
on. Needs root (tar -x of device nodes, mount).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("/var/tmp/lcow-bench")
DEFAULT_LCOW = REPO / ".venv" / "bin" / "lcow"
ALL_TOOLS = ("cp", "lcow", "before", "peer", "mke2fs", "kernel")
LABELS = {
    "cp": "`cp` of the tar (floor)",
    "lcow": "lcow tar2ext4 `-vhd`",
    "before": "lcow tar2ext4 `-vhd`, before",
    "peer": "hcsshim tar2ext4 `-vhd` (Go)",
    "mke2fs": "`tar -x` + `mke2fs -d`",
    "kernel": "kernel: mkfs + loop mount + `tar -x` + umount",
}
STEP_NAMES = {
    "mke2fs": ["`tar -x` unpack", "`mke2fs -d` of the tree"],
    "kernel": ["mkfs.ext4", "mount -o loop", "`tar -x` into the mount", "umount"],
}
# Steps of multi-step tools shown as rows of their own in the table.
STEP_ROWS = {"mke2fs": (0, 1)}
SET_NAMES = {"d1": "D1 debian", "d2": "D2 pysite", "d3": "D3 big", "d4": "D4 4x pysite"}
BLOCK = 4096
MKE2FS_OPTS = ["-b", "4096", "-I", "256", "-O", "^has_journal,^resize_inode"]
TAR_X = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-x"]
LINEARITY_LIMIT = 4.4


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measuring


class ToolError(Exception):
    pass


@dataclass
class Step:
    seconds: float
    rss_kib: int
    user_s: float = 0.0
    sys_s: float = 0.0


@dataclass
class Sample:
    seconds: float | None = None
    rss_kib: int = 0
    user_s: float = 0.0
    sys_s: float = 0.0
    out_bytes: int | None = None
    error: str | None = None
    steps: list[float] = field(default_factory=list)


GNU_TIME = "/usr/bin/time"
RSS_METHOD = (
    "GNU time %M (ru_maxrss from its wait4 of the command)"
    if os.access(GNU_TIME, os.X_OK)
    else "os.wait4 ru_maxrss of the child (includes the harness's RSS at spawn)"
)


def timed(cmd: list[str], workdir: Path, timeout: float) -> Step:
    """Run cmd, return wall seconds and its peak RSS; raise ToolError on failure.

    Wall time comes from our own os.wait4 of the child. The child's ru_maxrss from that
    wait4 would be inflated: Linux keeps the high-water RSS of the mm a process had before
    exec, and a child spawned by this Python process starts out sharing this process's
    memory. So, when GNU time is installed, the command runs under it (a ~2 MiB process
    that forks and execs it) and its %M, the ru_maxrss of its own wait4, is used.
    """
    err_path = workdir / ".stderr"
    rss_path = workdir / ".maxrss"
    full = cmd
    if RSS_METHOD.startswith("GNU"):
        full = [GNU_TIME, "-q", "-f", "%M", "-o", str(rss_path), *cmd]
    with open(err_path, "w+b") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read()[-2000:].decode(errors="replace").strip()
    if killed.is_set():
        raise ToolError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}")
    if proc.returncode != 0:
        raise ToolError(f"exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    rss = ru.ru_maxrss
    if full is not cmd:
        try:
            rss = int(rss_path.read_text().split()[-1])
        except (OSError, ValueError, IndexError) as e:
            raise ToolError(f"cannot read GNU time's RSS for {' '.join(cmd)}: {e}") from e
    return Step(seconds, rss, ru.ru_utime, ru.ru_stime)


def sync() -> None:
    subprocess.run(["sync"], check=True)


def mountpoints_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mnt = line.split()[1].encode().decode("unicode_escape")
            if mnt.startswith(prefix) or mnt == prefix.rstrip("/"):
                found.append(mnt)
    return found


def unmount_and_detach(mnt: Path, img: Path) -> None:
    """Best effort: leave no mount under mnt and no loop device on img."""
    for m in reversed(mountpoints_under(mnt)):
        if subprocess.run(["umount", m], check=False, stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", m], check=False, stderr=subprocess.DEVNULL)
    if img.exists():
        p = subprocess.run(
            ["losetup", "-j", str(img)], check=False, stdout=subprocess.PIPE, text=True
        )
        for line in p.stdout.splitlines():
            dev = line.split(":", 1)[0].strip()
            if dev:
                subprocess.run(["losetup", "-d", dev], check=False, stderr=subprocess.DEVNULL)


# --------------------------------------------------------------------------- sizing


@dataclass
class TarStats:
    entries: int
    size: int
    data_blocks: int  # 4 KiB blocks for file data, directories and slow symlinks

    def image_bytes(self) -> int:
        return image_size(self.data_blocks, self.entries)


def image_size(data_blocks: int, entries: int) -> int:
    """A generous ext4 size for mke2fs/mkfs (default inode ratio 16 KiB per inode)."""
    by_data = int(data_blocks * BLOCK * 1.10) + (64 << 20)
    by_inodes = int((entries + 1024) * 1.25) * 16384
    size = max(by_data, by_inodes)
    return (size + (1 << 20) - 1) // (1 << 20) << 20


def tar_stats(tar: Path, cache_dir: Path) -> TarStats:
    st = tar.stat()
    cache = cache_dir / f".{tar.name}.stats.json"
    key = {"size": st.st_size, "mtime": st.st_mtime}
    if cache.exists():
        d = json.loads(cache.read_text())
        if d.get("key") == key:
            return TarStats(**d["stats"])
    entries = blocks = 0
    with tarfile.open(tar, "r:") as tf:
        for m in tf:
            entries += 1
            if m.isreg():
                blocks += (m.size + BLOCK - 1) // BLOCK
            elif m.isdir() or (m.issym() and len(m.linkname.encode()) >= 60):
                blocks += 1
    stats = TarStats(entries, st.st_size, blocks)
    cache.write_text(json.dumps({"key": key, "stats": asdict(stats)}))
    return stats


def tree_image_bytes(root: Path) -> int:
    seen: set[tuple[int, int]] = set()
    entries = blocks = 0
    for dirpath, dirnames, filenames in os.walk(root):
        entries += 1
        blocks += max(1, (os.lstat(dirpath).st_size + BLOCK - 1) // BLOCK)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            entries += 1
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            if st.st_nlink > 1:
                seen.add((st.st_dev, st.st_ino))
            blocks += (st.st_size + BLOCK - 1) // BLOCK
    return image_size(blocks, entries)


# --------------------------------------------------------------------------- tools


@dataclass
class Ctx:
    tar: Path
    stats: TarStats
    work: Path  # empty per-run directory
    timeout: float
    lcow: Path
    peer: str | None
    before: Path | None = None  # the "before" lcow executable
    extract_dir: Path | None = None  # where the mke2fs row unpacks; default: inside work


def run_cp(c: Ctx) -> tuple[list[Step], Path]:
    out = c.work / "copy.tar"
    return [timed(["cp", str(c.tar), str(out)], c.work, c.timeout)], out


def run_lcow(c: Ctx) -> tuple[list[Step], Path]:
    out = c.work / "layer.vhd"
    cmd = [str(c.lcow), "tar2ext4", "-vhd", "-i", str(c.tar), "-o", str(out)]
    return [timed(cmd, c.work, c.timeout)], out


def run_before(c: Ctx) -> tuple[list[Step], Path]:
    assert c.before
    out = c.work / "layer.vhd"
    cmd = [str(c.before), "tar2ext4", "-vhd", "-i", str(c.tar), "-o", str(out)]
    return [timed(cmd, c.work, c.timeout)], out


def run_peer(c: Ctx) -> tuple[list[Step], Path]:
    assert c.peer
    out = c.work / "layer.vhd"
    cmd = [c.peer, "-vhd", "-i", str(c.tar), "-o", str(out)]
    return [timed(cmd, c.work, c.timeout)], out


def run_mke2fs(c: Ctx) -> tuple[list[Step], Path]:
    tree = Path(tempfile.mkdtemp(prefix="tree-", dir=c.extract_dir or c.work))
    img = c.work / "mke2fs.img"
    s1 = timed([*TAR_X, "-f", str(c.tar), "-C", str(tree)], c.work, c.timeout)
    size = tree_image_bytes(tree)  # untimed
    cmd = ["mke2fs", "-q", "-t", "ext4", "-d", str(tree), *MKE2FS_OPTS, str(img), f"{size >> 10}k"]
    try:
        s2 = timed(cmd, c.work, c.timeout)
    finally:
        if c.extract_dir:
            shutil.rmtree(tree, ignore_errors=True)
    return [s1, s2], img


def run_kernel(c: Ctx) -> tuple[list[Step], Path]:
    img = c.work / "kernel.img"
    mnt = c.work / "mnt"
    mnt.mkdir()
    size = c.stats.image_bytes()
    steps: list[Step] = []
    try:
        steps.append(
            timed(
                [
                    "mkfs.ext4",
                    "-q",
                    "-F",
                    *MKE2FS_OPTS,
                    "-E",
                    "lazy_itable_init=0,nodiscard",
                    str(img),
                    f"{size >> 10}k",
                ],
                c.work,
                c.timeout,
            )
        )
        steps.append(timed(["mount", "-o", "loop", str(img), str(mnt)], c.work, c.timeout))
        steps.append(timed([*TAR_X, "-f", str(c.tar), "-C", str(mnt)], c.work, c.timeout))
        steps.append(timed(["umount", str(mnt)], c.work, c.timeout))
    finally:
        unmount_and_detach(mnt, img)
    return steps, img


TOOLS: dict[str, Callable[[Ctx], tuple[list[Step], Path]]] = {
    "cp": run_cp,
    "lcow": run_lcow,
    "before": run_before,
    "peer": run_peer,
    "mke2fs": run_mke2fs,
    "kernel": run_kernel,
}


def measure(tool: str, c: Ctx) -> Sample:
    sync()
    try:
        steps, out = TOOLS[tool](c)
    except ToolError as e:
        return Sample(error=str(e))
    except OSError as e:
        return Sample(error=f"{type(e).__name__}: {e}")
    return Sample(
        seconds=sum(s.seconds for s in steps),
        rss_kib=max(s.rss_kib for s in steps),
        user_s=sum(s.user_s for s in steps),
        sys_s=sum(s.sys_s for s in steps),
        out_bytes=out.stat().st_size if out.exists() else None,
        steps=[round(s.seconds, 4) for s in steps],
    )


@contextlib.contextmanager
def run_dir(base: Path) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    try:
        yield d
    finally:
        unmount_and_detach(d, d / "kernel.img")
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- machine info


def _cmd_out(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        p = subprocess.run(
            cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
    except OSError as e:
        return f"unavailable: {e}"
    return p.stdout.strip()


_ACCELERATORS = (
    "from lcow._util import native; "
    "print(' '.join(f'{m}={native.load(m) is not None}' for m in ('_tarscan', '_ext4pack')))"
)


def compile_lcow(lcow: Path) -> None:
    """Byte-compile the lcow package as an installed wheel is, so that every timed run starts
    from cached bytecode even where PYTHONDONTWRITEBYTECODE is set or the checkout is fresh."""
    python = str(lcow.parent / "python")
    where = _cmd_out([python, "-c", "import lcow, os; print(os.path.dirname(lcow.__file__))"])
    subprocess.run([python, "-m", "compileall", "-q", where], check=True, stdout=subprocess.DEVNULL)


def machine_info(data: Path, lcow: Path, peer: str | None) -> dict[str, object]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    info: dict[str, object] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nproc": os.cpu_count(),
        "nproc_affinity": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "os": _cmd_out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python_harness": sys.version.split()[0],
        "python_lcow": _cmd_out(
            [str(lcow.parent / "python"), "-c", "import sys; print(sys.version.split()[0])"]
        ),
        "lcow_accelerators": _cmd_out([str(lcow.parent / "python"), "-c", _ACCELERATORS]),
        "e2fsprogs": _cmd_out(["mke2fs", "-V"]).splitlines()[0],
        "tar": _cmd_out(["tar", "--version"]).splitlines()[0],
        "coreutils": _cmd_out(["cp", "--version"]).splitlines()[0],
        "data_fs": _cmd_out(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", str(data)]),
        "rss_method": RSS_METHOD,
        "loadavg_start": os.getloadavg(),
    }
    if peer:
        pinfo: dict[str, object] = {"path": peer}
        with contextlib.suppress(OSError):
            pinfo["sha256"] = hashlib.sha256(Path(peer).read_bytes()).hexdigest()
        if shutil.which("go"):
            pinfo["go_version_m"] = _cmd_out(["go", "version", "-m", peer]).splitlines()[:3]
        info["peer"] = pinfo
    return info


# --------------------------------------------------------------------------- reporting


def summarize(samples: list[Sample], cp_median: float | None) -> dict[str, object]:
    ok = [s.seconds for s in samples if s.seconds is not None]
    errors = [s.error for s in samples if s.error]
    med = statistics.median(ok) if ok else None
    good = [s for s in samples if s.seconds is not None]
    return {
        "user_s": statistics.median(s.user_s for s in good) if good else None,
        "sys_s": statistics.median(s.sys_s for s in good) if good else None,
        "median_s": med,
        "min_s": min(ok) if ok else None,
        "max_s": max(ok) if ok else None,
        "ratio_cp": (med / cp_median) if (med is not None and cp_median) else None,
        "peak_rss_mib": max(s.rss_kib for s in samples) / 1024 if ok else None,
        "out_bytes": next((s.out_bytes for s in samples if s.out_bytes), None),
        "step_median_s": [
            statistics.median(x) for x in zip(*(s.steps for s in samples if s.steps), strict=True)
        ]
        if ok
        else [],
        "ok_runs": len(ok),
        "errors": errors,
        "samples": [asdict(s) for s in samples],
    }


def markdown(result: dict[str, object]) -> str:
    sets: list[str] = result["sets"]  # type: ignore[assignment]
    tools: list[str] = result["tools"]  # type: ignore[assignment]
    res: dict[str, dict[str, dict[str, object]]] = result["results"]  # type: ignore[assignment]
    ds: dict[str, dict[str, object]] = result["datasets"]  # type: ignore[assignment]
    head = (
        "| tool | "
        + " | ".join(f"{SET_NAMES.get(s, s)} s | xcp | user s | sys s | RSS MiB" for s in sets)
        + " |"
    )
    sep = "|---|" + "---:|---:|---:|---:|---:|" * len(sets)
    rows = [head, sep]
    for tool in tools:
        cells = []
        for s in sets:
            r = res.get(s, {}).get(tool)
            if not r or r["median_s"] is None:
                cells += ["error" if r and r["errors"] else "-", "-", "-", "-", "-"]
                continue
            cells += [
                f"{r['median_s']:.2f}",
                f"{r['ratio_cp']:.2f}" if r["ratio_cp"] is not None else "-",
                f"{r['user_s']:.2f}",
                f"{r['sys_s']:.2f}",
                f"{r['peak_rss_mib']:.0f}",
            ]
        rows.append(f"| {LABELS.get(tool, tool)} | " + " | ".join(cells) + " |")
        for i in STEP_ROWS.get(tool, ()):
            cells = []
            for s in sets:
                r = res.get(s, {}).get(tool)
                steps: list[float] = r["step_median_s"] if r else []  # type: ignore[assignment]
                cp = res.get(s, {}).get("cp")
                cp_med: float | None = cp["median_s"] if cp else None  # type: ignore[assignment]
                if len(steps) <= i:
                    cells += ["-", "-", "-", "-", "-"]
                    continue
                ratio = f"{steps[i] / cp_med:.2f}" if cp_med else "-"
                cells += [f"{steps[i]:.2f}", ratio, "", "", ""]
            rows.append(f"| ... step: {STEP_NAMES[tool][i]} | " + " | ".join(cells) + " |")
    m: dict[str, object] = result["machine"]  # type: ignore[assignment]
    notes = [
        "",
        f"Median of {result['runs']} runs, wall clock; xcp = ratio to the `cp` median; user s, "
        "sys s = medians of the command's CPU seconds (children included); RSS = peak "
        "ru_maxrss of the child (largest step for multi-step rows; kernel memory not counted). "
        "Step rows: median of that step alone. "
        f"The mke2fs row unpacks into {result.get('extract_dir', 'the output directory')}.",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, kernel {m['kernel']}, "
        f"{m['os']}, Python {m['python_lcow']}, {m['e2fsprogs']}, {m['tar']}; "
        f"data on {m['data_fs']}. Date {m['date']}.",
        "Data sets: "
        + "; ".join(
            f"{SET_NAMES.get(s, s)} {ds[s]['size'] / 1e6:,.1f} MB, {ds[s]['entries']:,} entries"
            for s in sets
            if s in ds
        )
        + ".",
    ]
    return "\n".join(rows + notes)


def linearity_report(result: dict[str, object]) -> str:
    res: dict[str, dict[str, dict[str, object]]] = result["results"]  # type: ignore[assignment]
    lines = ["| tool | D2 s | D4 s | D4/D2 | limit |", "|---|---:|---:|---:|---|"]
    for tool in result["tools"]:  # type: ignore[attr-defined]
        a, b = res["d2"].get(tool), res["d4"].get(tool)
        if not a or not b or a["median_s"] is None or b["median_s"] is None:
            lines.append(f"| {LABELS.get(tool, tool)} | error | error | - | <= {LINEARITY_LIMIT} |")
            continue
        ratio = b["median_s"] / a["median_s"]  # type: ignore[operator]
        if tool == "cp":
            verdict = "(reference)"
        else:
            verdict = f"<= {LINEARITY_LIMIT} " + ("ok" if ratio <= LINEARITY_LIMIT else "FAIL")
        lines.append(
            f"| {LABELS.get(tool, tool)} | {a['median_s']:.2f} | {b['median_s']:.2f} | "
            f"{ratio:.2f} | {verdict} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912, PLR0915 - the command line: checks the inputs, then times each data set and tool in turn and reports, one step after another
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where dN.tar live")
    ap.add_argument("--sets", default=None, help="comma list, default d1,d2,d3")
    ap.add_argument(
        "--tools",
        default=None,
        help=f"comma list of {','.join(ALL_TOOLS)}; default all (peer only if TAR2EXT4 is set)",
    )
    ap.add_argument("--lcow", type=Path, default=DEFAULT_LCOW, help="lcow executable")
    ap.add_argument(
        "--before",
        type=Path,
        default=None,
        help="lcow executable of the 'before' build (tool 'before'), e.g. another checkout's",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result file (default benchmarks/out/tar2ext4-<time>.json)",
    )
    ap.add_argument(
        "--extract-dir",
        type=Path,
        default=None,
        help="unpack the mke2fs row's tree here (e.g. /dev/shm) instead of next to the output",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per step")
    ap.add_argument(
        "--linearity",
        action="store_true",
        help="time lcow (and the peer, if TAR2EXT4 is set) on d2 and d4; print D4/D2 ratios",
    )
    ap.add_argument(
        "--keep-going",
        action="store_true",
        help="retry a tool on later runs of a data set after it failed",
    )
    args = ap.parse_args(argv)

    peer = os.environ.get("TAR2EXT4") or None
    if args.linearity:
        sets = (args.sets or "d2,d4").split(",")
        tools = (args.tools or ("lcow,peer" if peer else "lcow")).split(",")
    else:
        sets = (args.sets or "d1,d2,d3").split(",")
        tools = (
            args.tools.split(",")
            if args.tools
            else [
                t
                for t in ALL_TOOLS
                if (t != "peer" or peer) and (t != "before" or args.before is not None)
            ]
        )
    for t in tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}")
    if "peer" in tools and not peer:
        ap.error("tool 'peer' needs TAR2EXT4=/path/to/tar2ext4 in the environment")
    if "before" in tools and args.before is None:
        ap.error("tool 'before' needs --before /path/to/lcow")
    if args.linearity and set(sets) != {"d2", "d4"}:
        ap.error("--linearity compares d2 and d4")
    if os.geteuid() != 0 and {"mke2fs", "kernel"} & set(tools):
        ap.error("the mke2fs and kernel rows need root (device nodes, mount)")
    data: Path = args.data
    tars = {s: data / f"{s}.tar" for s in sets}
    for s, p in tars.items():
        if not p.is_file():
            ap.error(f"{p} missing: build it with python benchmarks/datasets.py {s}")
    out_base = data / "out"
    out_base.mkdir(parents=True, exist_ok=True)
    out_json: Path = args.out or (
        REPO / "benchmarks" / "out" / f"tar2ext4-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out_json.parent.mkdir(parents=True, exist_ok=True)

    if "lcow" in tools:
        compile_lcow(args.lcow)
    if "before" in tools:
        compile_lcow(args.before)
    stats = {}
    for s in sets:
        log(f"scanning {tars[s]} (untimed)")
        stats[s] = tar_stats(tars[s], data)
    machine = machine_info(data, args.lcow, peer)
    samples: dict[str, dict[str, list[Sample]]] = {s: {t: [] for t in tools} for s in sets}
    failed: set[tuple[str, str]] = set()

    def one(s: str, rep: int) -> None:
        order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
        for t in order:
            if (s, t) in failed and not args.keep_going:
                continue
            with run_dir(out_base) as work:
                c = Ctx(
                    tars[s],
                    stats[s],
                    work,
                    args.timeout,
                    args.lcow,
                    peer,
                    before=args.before,
                    extract_dir=args.extract_dir,
                )
                smp = measure(t, c)
            samples[s][t].append(smp)
            if smp.error:
                failed.add((s, t))
                log(f"{s} run {rep + 1} {t}: ERROR {smp.error.splitlines()[0]}")
            else:
                log(
                    f"{s} run {rep + 1} {t}: {smp.seconds:.3f} s (user {smp.user_s:.2f}, "
                    f"sys {smp.sys_s:.2f}), {smp.rss_kib / 1024:.0f} MiB"
                )

    def warm(s: str) -> None:
        log(f"warming the page cache with {tars[s]}")
        with open(tars[s], "rb") as f:
            while f.read(1 << 24):
                pass

    if args.linearity:  # interleave the data sets too, so noise hits both alike
        for s in sets:
            warm(s)
        for rep in range(args.runs):
            for s in sets:
                one(s, rep)
    else:
        for s in sets:
            warm(s)
            for rep in range(args.runs):
                one(s, rep)
    machine["loadavg_end"] = os.getloadavg()

    results: dict[str, dict[str, object]] = {}
    for s in sets:
        cp = samples[s].get("cp", [])
        cp_ok = [x.seconds for x in cp if x.seconds is not None]
        cp_med = statistics.median(cp_ok) if cp_ok else None
        results[s] = {t: summarize(samples[s][t], cp_med) for t in tools}
    result: dict[str, object] = {
        "kind": "tar2ext4-linearity" if args.linearity else "tar2ext4",
        "runs": args.runs,
        "sets": sets,
        "tools": tools,
        "extract_dir": str(args.extract_dir) if args.extract_dir else "the output directory",
        "machine": machine,
        "datasets": {s: {"path": str(tars[s]), **asdict(stats[s])} for s in sets},
        "results": results,
    }
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out_json}")
    print(markdown(result))
    if args.linearity:
        print()
        print(linearity_report(result))
    for s in sets:
        for t in tools:
            for e in results[s][t]["errors"]:  # type: ignore[attr-defined]
                print(f"\n{s} {t} error: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
