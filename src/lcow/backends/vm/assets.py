"""``lcow uvm build``: the utility VM's kernel and initramfs (issue: VM assets).

The kernel is Debian's cloud kernel, taken from its package without installing it on the host
(``apt-get download`` + ``dpkg-deb -x`` into a temporary directory). The initramfs is ours:

* ``/init`` — the guest agent (:file:`agent/agent.c`), compiled ``gcc -static`` here;
* ``/bin/busybox`` — busybox-static, a shell for debugging the guest by hand;
* ``/lib/modules/*.ko`` and ``/lib/modules/load`` — the modules the guest needs (virtio-mmio,
  virtio-scsi, sd_mod, virtio_console, overlay, dm-verity) with their dependencies, in load
  order. The package ships no ``modules.dep`` (depmod runs at install), so dependencies are
  read from each module's ``.modinfo`` section.

The archive is uncompressed: under TCG unpacking is cheaper than decompressing. A stamp file
(``lcow-uvm.json``) records what went in; a build whose inputs match it does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lcow._util.atomic import atomic_output
from lcow.backends.vm.cpio import CpioWriter
from lcow.errors import FailedPrecondition, NotSupported

__all__ = [
    "AGENT_SOURCE",
    "DEFAULT_KIRDPATH",
    "GUEST_MODULES",
    "Assets",
    "build_assets",
    "find_assets",
]

log = logging.getLogger(__name__)

#: Where ``lcow uvm build`` puts the assets unless told otherwise, and where the vm backend
#: looks when ``lcow.kirdpath`` is not given (``$LCOW_KIRDPATH`` overrides both).
DEFAULT_KIRDPATH = "/var/lib/lcow/uvm"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
GUEST_MODULES = ("virtio_mmio", "virtio_scsi", "sd_mod", "virtio_console", "overlay", "dm_verity")
STAMP = "lcow-uvm.json"
AGENT_SOURCE = "agent.c"


@dataclass(frozen=True)
class Assets:
    """A kernel and initramfs pair ready to boot."""

    kernel: Path
    initrd: Path


def default_kirdpath() -> str:
    """``$LCOW_KIRDPATH`` or :data:`DEFAULT_KIRDPATH`."""
    return os.environ.get("LCOW_KIRDPATH") or DEFAULT_KIRDPATH


def find_assets(kirdpath: str, kernel: str, initrd: str, *, explicit: bool) -> Assets:
    """The assets to boot: in ``kirdpath`` when it was given (``explicit``), else there if
    present, else in the default folder.

    Raises:
        NotSupported: no kernel/initrd (``driver not supported``, naming ``lcow uvm build``).
    """
    candidates = [Path(kirdpath)] if explicit else [Path(kirdpath), Path(default_kirdpath())]
    for folder in candidates:
        found = Assets(folder / kernel, folder / initrd)
        if found.kernel.is_file() and found.initrd.is_file():
            return found
    where = " or ".join(str(c) for c in candidates)
    raise NotSupported(
        f"driver not supported: the vm backend needs a kernel '{kernel}' and initrd '{initrd}' "
        f"in {where} (run 'lcow uvm build')",
        subject="vm",
    )


def agent_source() -> bytes:
    """The guest agent's C source shipped with the package."""
    return (resources.files("lcow.backends.vm") / "agent" / AGENT_SOURCE).read_bytes()


# -- kernel package ----------------------------------------------------------------------------


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise NotSupported(f"uvm build: {argv[0]} not found", subject=argv[0]) from exc
    if done.returncode != 0:
        raise FailedPrecondition(
            f"uvm build: {' '.join(argv)} failed: {done.stderr.strip()[-2000:]}", subject=argv[0]
        )
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package the cloud meta-package depends on."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Depends" and value.strip().startswith("linux-image-"):
            return value.strip()
    raise FailedPrecondition(
        f"uvm build: {KERNEL_META_PACKAGE} names no kernel package", subject=KERNEL_META_PACKAGE
    )


def fetch_kernel_deb(cache: Path) -> Path:
    """The kernel .deb, downloaded once into ``cache``."""
    package = kernel_package()
    for deb in sorted(cache.glob(f"{package}_*.deb")):
        return deb
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".download-"))
    try:
        os.chmod(work, 0o755)  # apt's sandbox user writes here
        _run(["apt-get", "download", "-q", package], cwd=work)
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            raise FailedPrecondition(f"uvm build: apt-get gave no {package} .deb", subject=package)
        target = cache / debs[0].name
        os.replace(debs[0], target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- modules -----------------------------------------------------------------------------------


def modinfo(path: Path) -> dict[str, str]:
    """The ``.modinfo`` section of a kernel module (ELF64 little-endian), as key → value."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise FailedPrecondition(f"{path}: not an ELF64 module", subject=str(path))
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + index * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    info: dict[str, str] = {}
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", str_off + name)
        if data[str_off + name : end] == b".modinfo":
            for item in data[offset : offset + size].split(b"\0"):
                key, eq, value = item.partition(b"=")
                if eq and key.decode() not in info:
                    info[key.decode()] = value.decode()
    return info


def module_order(tree: Path, wanted: tuple[str, ...]) -> list[Path]:
    """``wanted`` modules and their dependencies below ``tree``, dependencies first."""
    by_name = {p.name.removesuffix(".ko").replace("-", "_"): p for p in tree.rglob("*.ko")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        path = by_name.get(key)
        if path is None:
            return  # built into the kernel
        for dep in filter(None, modinfo(path).get("depends", "").split(",")):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name.replace("-", "_") not in by_name:
            raise FailedPrecondition(f"uvm build: kernel module {name} not found", subject=name)
        visit(name)
    return order


# -- build -------------------------------------------------------------------------------------


def compile_agent(source: bytes, out: Path) -> None:
    """``gcc -static`` the agent."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise NotSupported("uvm build: gcc not found (Debian: gcc, libc6-dev)", subject="gcc")
    src = out.with_suffix(".c")
    src.write_bytes(source)
    _run([gcc, "-static", "-O2", "-Wall", "-Wno-format-truncation", "-o", str(out), str(src)])


def write_initramfs(path: Path, agent: Path, busybox: Path | None, modules: list[Path]) -> None:
    """The initramfs: /init (the agent), busybox, modules and their load order."""
    with atomic_output(path) as fd, open(fd, "wb", closefd=False) as out:
        cpio = CpioWriter(out)
        for folder in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
            cpio.directory(folder)
        cpio.char_device("dev/console", 5, 1)
        cpio.file("init", agent.read_bytes(), 0o755)
        if busybox is not None:
            cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
            cpio.symlink("bin/sh", "busybox")
        for module in modules:
            cpio.file(f"lib/modules/{module.name}", module.read_bytes())
        cpio.file("lib/modules/load", "".join(f"{m.name}\n" for m in modules).encode())
        cpio.close()


def build_assets(
    out_dir: str | os.PathLike[str],
    kernel_name: str = "bootx64.efi",
    initrd_name: str = "initrd.img",
    *,
    deb: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: Callable[[str], None] = log.info,
) -> Assets:
    """Build (or find up to date) the kernel and initramfs in ``out_dir``.

    Args:
        out_dir: the kirdpath.
        kernel_name / initrd_name: file names (``lcow.kernel`` / ``lcow.initrd``).
        deb: a kernel package file to use instead of downloading one.
        force: rebuild even when the stamp matches.
        progress: receives one line per step.

    Raises:
        NotSupported: a tool is missing (gcc, apt-get, dpkg-deb).
        FailedPrecondition: a step failed.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / ".cache"
    source = agent_source()
    busybox = Path("/bin/busybox")
    deb_path = Path(deb) if deb is not None else fetch_kernel_deb(cache)
    stamp = {
        "kernel_deb": deb_path.name,
        "agent_sha256": hashlib.sha256(source).hexdigest(),
        "modules": list(GUEST_MODULES),
        "busybox": busybox.stat().st_size if busybox.exists() else 0,
        "kernel": kernel_name,
        "initrd": initrd_name,
        "format": 1,
    }
    assets = Assets(folder / kernel_name, folder / initrd_name)
    stamp_path = folder / STAMP
    if not force and assets.kernel.is_file() and assets.initrd.is_file():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                progress(f"up to date: {assets.kernel}, {assets.initrd}")
                return assets
        except (OSError, ValueError):
            pass
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        work = Path(tmp)
        progress(f"extracting {deb_path.name}")
        _run(["dpkg-deb", "-x", str(deb_path), str(work / "pkg")])
        vmlinuz = sorted((work / "pkg" / "boot").glob("vmlinuz-*"))
        trees = sorted((work / "pkg" / "lib" / "modules").glob("*"))
        if not vmlinuz or not trees:
            raise FailedPrecondition(f"{deb_path}: no kernel or modules inside", subject="uvm")
        modules = module_order(trees[0], GUEST_MODULES)
        progress(f"modules: {', '.join(m.name for m in modules)}")
        progress("compiling the guest agent (gcc -static)")
        compile_agent(source, work / "agent")
        write_initramfs(
            work / "initrd", work / "agent", busybox if busybox.exists() else None, modules
        )
        shutil.copyfile(vmlinuz[0], work / "kernel")
        os.replace(work / "kernel", assets.kernel)
        os.replace(work / "initrd", assets.initrd)
    with atomic_output(stamp_path) as fd:
        os.write(fd, json.dumps(stamp, indent=1).encode())
    progress(f"built {assets.kernel} ({vmlinuz[0].name}) and {assets.initrd}")
    return assets
