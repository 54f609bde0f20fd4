#!/usr/bin/env python3
"""Build the tar2ext4 benchmark data sets (uncompressed tars), cached.

    python benchmarks/datasets.py [--out DIR] [d1 d2 d3 d4]

D1  Debian bookworm minbase rootfs (debootstrap), ~211 MB, ~6.8k entries
D2  site-packages of a fresh venv with numpy pandas scipy matplotlib sympy botocore
    django ansible, ~1.06 GB, ~70k entries
D3  three 500 MiB reproducible pseudo-random files
D4  D2 four times in one tar, renamed into a1/ a2/ a3/ a4/ (linearity check)

Every tar is written as ``NAME.tar.part`` and renamed when complete, so an existing
``NAME.tar`` is always whole and is reused (delete it to rebuild). Needs root (debootstrap,
device nodes), GNU tar, debootstrap and network access to the Debian mirror configured in
/etc/apt and to PyPI. Summary of each set is kept in ``DIR/datasets.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_OUT = Path("/var/tmp/lcow-bench")
SUITE = "bookworm"
D2_PACKAGES = [
    "numpy",
    "pandas",
    "scipy",
    "matplotlib",
    "sympy",
    "botocore",
    "django",
    "ansible",
]
# Versions D2 was first built with (pip freeze); used as pip constraints so later builds match.
D2_CONSTRAINTS = Path(__file__).resolve().parent / "d2-constraints.txt"
D3_FILES = 3
D3_FILE_SIZE = 500 * 1024 * 1024
D3_SEED = 20240611
D4_COPIES = 4
# A fixed mtime for generated content (D3) so the tar is byte-for-byte reproducible.
FIXED_MTIME = 1_700_000_000

TAR_FLAGS = ["--numeric-owner", "--xattrs", "--format=pax"]


def log(msg: str) -> None:
    print(f"[datasets {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: object) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- mirror


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, ""
            continue
        if raw[0] in " \t" and key:
            cur[key] += " " + raw.strip()
            continue
        if ":" in raw:
            key, _, val = raw.partition(":")
            key = key.strip().lower()
            cur[key] = val.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def apt_sources() -> list[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of every enabled deb source in /etc/apt."""
    out: list[tuple[str, list[str], list[str]]] = []
    files: list[Path] = []
    main = Path("/etc/apt/sources.list")
    if main.is_file():
        files.append(main)
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for st in _deb822_stanzas(text):
                if st.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in st.get("types", "").split():
                    continue
                for uri in st.get("uris", "").split():
                    out.append(
                        (uri, st.get("suites", "").split(), st.get("components", "").split())
                    )
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
                if m:
                    out.append((m.group(1), [m.group(2)], m.group(3).split()))
    return out


def debian_mirror(suite: str = SUITE) -> str:
    """The mirror URI that apt on this machine uses for ``suite`` main."""
    for uri, suites, comps in apt_sources():
        if suite in suites and "main" in comps:
            return uri
    raise SystemExit(
        f"no enabled apt source for '{suite} main' in /etc/apt/sources.list(.d); "
        "cannot pick a mirror for debootstrap"
    )


# --------------------------------------------------------------------------- helpers


def tar_dir(src: Path, dest: Path) -> None:
    part = dest.with_name(dest.name + ".part")
    run(["tar", *TAR_FLAGS, "-C", str(src), "-cf", str(part), "."])
    part.rename(dest)


def tar_entries(path: Path) -> int:
    p = subprocess.run(
        ["tar", "-tf", str(path)], check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    return p.stdout.count(b"\n")


def assert_nothing_mounted_under(path: Path) -> None:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mounts") as f:
        for line in f:
            mnt = line.split()[1].encode().decode("unicode_escape")
            if mnt.startswith(prefix):
                run(["umount", "-l", mnt])


def rmtree(path: Path) -> None:
    if path.exists():
        assert_nothing_mounted_under(path)
        shutil.rmtree(path)


# --------------------------------------------------------------------------- builders


def build_d1(out: Path) -> dict[str, object]:
    dest = out / "d1.tar"
    if dest.exists():
        return {}
    mirror = debian_mirror()
    root = out / "d1.rootfs"
    rmtree(root)
    try:
        run(["debootstrap", "--variant=minbase", SUITE, str(root), mirror])
        assert_nothing_mounted_under(root)
        tar_dir(root, dest)
    finally:
        rmtree(root)
    return {"mirror": mirror, "suite": SUITE, "variant": "minbase"}


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"no site-packages in {venv}")
    return found[0]


def ensure_d2_venv(out: Path) -> Path:
    venv = out / "d2.venv"
    done = venv / ".complete"
    if not done.exists():
        rmtree(venv)
        run([sys.executable, "-m", "venv", str(venv)])
        pip = str(venv / "bin" / "pip")
        base = [pip, "install", "--disable-pip-version-check", "-q"]
        pinned = False
        if D2_CONSTRAINTS.exists():
            try:
                run([*base, "-c", str(D2_CONSTRAINTS), *D2_PACKAGES])
                pinned = True
            except subprocess.CalledProcessError:
                log(f"pinned install from {D2_CONSTRAINTS.name} failed: installing the latest")
        if not pinned:
            run([*base, *D2_PACKAGES])
        freeze = subprocess.run(
            [pip, "freeze", "--all"], check=True, stdout=subprocess.PIPE, text=True
        ).stdout
        (venv / "freeze.txt").write_text(freeze)
        done.touch()
    return venv


def build_d2(out: Path) -> dict[str, object]:
    dest = out / "d2.tar"
    venv = ensure_d2_venv(out) if not dest.exists() else out / "d2.venv"
    if not dest.exists():
        tar_dir(_site_packages(venv), dest)
    info: dict[str, object] = {"packages": D2_PACKAGES}
    freeze = venv / "freeze.txt"
    if freeze.exists():
        info["versions"] = freeze.read_text().split()
    return info


def build_d3(out: Path) -> dict[str, object]:
    dest = out / "d3.tar"
    info: dict[str, object] = {"files": D3_FILES, "file_size": D3_FILE_SIZE, "seed": D3_SEED}
    if dest.exists():
        return info
    src = out / "d3.src"
    rmtree(src)
    src.mkdir(parents=True)
    try:
        chunk = 16 << 20
        for i in range(D3_FILES):
            rng = random.Random(D3_SEED + i)  # random.randbytes is reproducible per seed
            p = src / f"random{i}.bin"
            log(f"writing {p} ({D3_FILE_SIZE} bytes)")
            with open(p, "wb") as f:
                left = D3_FILE_SIZE
                while left:
                    n = min(chunk, left)
                    f.write(rng.randbytes(n))
                    left -= n
            os.utime(p, (FIXED_MTIME, FIXED_MTIME))
        os.utime(src, (FIXED_MTIME, FIXED_MTIME))
        part = dest.with_name(dest.name + ".part")
        run(
            [
                "tar",
                *TAR_FLAGS,
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--mode=u=rw,go=r",
                "-C",
                str(src),
                "-cf",
                str(part),
                ".",
            ]
        )
        part.rename(dest)
    finally:
        rmtree(src)
    return info


def build_d4(out: Path) -> dict[str, object]:
    dest = out / "d4.tar"
    info: dict[str, object] = {"copies": D4_COPIES, "of": "d2", "prefixes": ["a1/", "a2/", "…"]}
    if dest.exists():
        return info
    build_d2(out)
    venv = out / "d2.venv"
    tmp_tree: Path | None = None
    if (venv / ".complete").exists():
        tree = _site_packages(venv)
    else:  # D2's tree is gone: unpack d2.tar (as root: owners, modes, xattrs kept)
        tmp_tree = out / "d4.src"
        rmtree(tmp_tree)
        tmp_tree.mkdir(parents=True)
        run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-C",
                str(tmp_tree),
                "-xf",
                str(out / "d2.tar"),
            ]
        )
        tree = tmp_tree
    part = dest.with_name(dest.name + ".part")
    try:
        part.unlink(missing_ok=True)
        for i in range(1, D4_COPIES + 1):
            # "./x" -> "aN/x" and "." -> "aN"; the S flag leaves symlink targets alone while
            # hard-link targets (which are archive member names) are renamed too.
            mode = "-cf" if i == 1 else "-rf"
            run(
                [
                    "tar",
                    *TAR_FLAGS,
                    f"--transform=s,^\\.$,a{i},S",
                    f"--transform=s,^\\./,a{i}/,S",
                    "-C",
                    str(tree),
                    mode,
                    str(part),
                    ".",
                ]
            )
        part.rename(dest)
    finally:
        part.unlink(missing_ok=True)
        if tmp_tree is not None:
            rmtree(tmp_tree)
    return info


BUILDERS: dict[str, Callable[[Path], dict[str, object]]] = {
    "d1": build_d1,
    "d2": build_d2,
    "d3": build_d3,
    "d4": build_d4,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    ap.add_argument("sets", nargs="*", metavar="SET", help="d1 d2 d3 d4 (default: all)")
    args = ap.parse_args(argv)
    sets = [s.lower() for s in args.sets] or list(BUILDERS)
    for s in sets:
        if s not in BUILDERS:
            ap.error(f"unknown data set {s!r}; choose from {', '.join(BUILDERS)}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "datasets.json"
    manifest: dict[str, dict[str, object]] = {}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())

    for name in sets:
        dest = out / f"{name}.tar"
        cached = dest.exists()
        t0 = time.monotonic()
        info = BUILDERS[name](out)
        st = dest.stat()
        old = manifest.get(name, {})
        if cached and old.get("size") == st.st_size and old.get("mtime") == st.st_mtime:
            entries = old["entries"]
        else:
            entries = tar_entries(dest)
        manifest[name] = {
            **old,
            **info,
            "path": str(dest),
            "size": st.st_size,
            "mtime": st.st_mtime,
            "entries": entries,
        }
        if not cached:
            manifest[name]["build_seconds"] = round(time.monotonic() - t0, 1)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(
            f"{name}: {dest}  {st.st_size / 1e6:,.1f} MB  {entries:,} entries"
            + ("  (cached)" if cached else ""),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
