"""``lcow uvm build``: the utility VM's kernel and initramfs (issue: VM assets).

The kernel is Debian's cloud kernel, taken from its package without installing it on the host
(``apt-get download`` + ``dpkg-deb -x`` into a temporary directory). The initramfs is ours:

* ``/init`` — the guest agent (the C files of :file:`agent/`, ``init.c`` its ``main``),
  compiled together ``gcc -static`` here;
* ``/bin/busybox`` — busybox-static, a shell for debugging the guest by hand;
* ``/sbin/mke2fs`` — the host's e2fsprogs ``mke2fs`` with the shared libraries ``ldd`` lists
  and the dynamic loader, at the paths ``ldd`` names (its ``PT_INTERP`` and the loader's
  default search path then find them), and ``/etc/mke2fs.conf`` — the sandbox module's
  private profile — so the guest formats sandboxes of other sizes exactly as the host formats
  templates (SPEC §4.5). Debian ships no static mke2fs, and busybox's cannot make ext4's
  features (extents, flex_bg, sparse_super2); this adds about 3 MB, mostly libc;
* ``/lib/modules/*.ko`` and ``/lib/modules/load`` — the modules the guest needs (virtio-mmio,
  virtio-scsi, sd_mod, virtio_console, overlay, dm-verity) with their dependencies, in load
  order. The package ships no ``modules.dep`` (depmod runs at install), so dependencies are
  read from each module's ``.modinfo`` section.

The archive is uncompressed: under TCG unpacking is cheaper than decompressing. A stamp file
(``lcow-uvm.json``) records what went in (the guest files by content hash, so an e2fsprogs or
libc upgrade rebuilds); a build whose inputs match it does nothing.
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
from lcow.sandboxes import MKE2FS_CONF

__all__ = [
    "DEFAULT_KIRDPATH",
    "GUEST_MKE2FS",
    "GUEST_MODULES",
    "Assets",
    "agent_sources",
    "build_assets",
    "find_assets",
    "guest_tools",
]

log = logging.getLogger(__name__)

#: Where ``lcow uvm build`` puts the assets unless told otherwise, and where the vm backend
#: looks when ``lcow.kirdpath`` is not given (``$LCOW_KIRDPATH`` overrides both).
DEFAULT_KIRDPATH = "/var/lib/lcow/uvm"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
GUEST_MODULES = ("virtio_mmio", "virtio_scsi", "sd_mod", "virtio_console", "overlay", "dm_verity")
STAMP = "lcow-uvm.json"
#: The guest's mke2fs (the agent's ``mkfs`` runs it) and where its profile goes.
GUEST_MKE2FS = "/sbin/mke2fs"
GUEST_MKE2FS_CONF = "/etc/mke2fs.conf"
_HOST_SBIN = "/usr/sbin:/sbin:/usr/local/sbin"


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


def agent_sources() -> dict[str, bytes]:
    """The guest agent's C sources and headers shipped with the package, by file name."""
    folder = resources.files("lcow.backends.vm") / "agent"
    return {
        item.name: item.read_bytes()
        for item in sorted(folder.iterdir(), key=lambda item: item.name)
        if item.name.endswith((".c", ".h"))
    }


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
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
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


# -- guest tools -------------------------------------------------------------------------------


def _host_mke2fs() -> Path:
    found = shutil.which("mke2fs", path=_HOST_SBIN) or shutil.which("mke2fs")
    if found is None:
        raise NotSupported("uvm build: mke2fs not found (Debian: e2fsprogs)", subject="mke2fs")
    return Path(found)


def shared_libraries(binary: Path) -> list[Path]:
    """What ``ldd`` says ``binary`` loads: its libraries and the dynamic loader, as the paths
    the loader will look for (not resolved: ``/lib/…`` stays ``/lib/…`` on a merged-usr host).

    Raises:
        FailedPrecondition: a library is missing or ``ldd`` cannot tell (a static binary).
    """
    found: list[Path] = []
    for line in _run(["ldd", str(binary)]).splitlines():
        text = line.strip()
        name, arrow, rest = text.partition("=>")
        where = (rest if arrow else name).strip().split(" (", 1)[0].strip()
        if arrow and where in ("", "not found"):
            raise FailedPrecondition(
                f"uvm build: {binary} needs {name.strip()}, which is not installed",
                subject=str(binary),
            )
        if where.startswith("/"):  # (linux-vdso has no file)
            found.append(Path(where))
    if not found:
        raise FailedPrecondition(f"uvm build: ldd lists nothing for {binary}", subject=str(binary))
    return found


def guest_tools() -> dict[str, bytes]:
    """Guest path → content of the files in-guest formatting needs: mke2fs, the libraries and
    loader ``ldd`` names (at the same paths), and the sandbox profile as ``mke2fs.conf``."""
    mke2fs = _host_mke2fs()
    files = {GUEST_MKE2FS: mke2fs.read_bytes()}
    for lib in shared_libraries(mke2fs):
        files[str(lib)] = lib.read_bytes()  # through symlinks: the soname gets the library
    files[GUEST_MKE2FS_CONF] = MKE2FS_CONF.encode()
    return files


# -- build -------------------------------------------------------------------------------------


def compile_agent(sources: dict[str, bytes], out: Path) -> None:
    """``gcc -static`` the agent: every ``.c`` of ``sources`` (name → content) into ``out``."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise NotSupported("uvm build: gcc not found (Debian: gcc, libc6-dev)", subject="gcc")
    folder = out.parent / f"{out.name}-src"
    folder.mkdir()
    for name, data in sources.items():
        (folder / name).write_bytes(data)
    units = [str(folder / name) for name in sorted(sources) if name.endswith(".c")]
    _run([gcc, "-static", "-O2", "-Wall", "-Wno-format-truncation", "-o", str(out), *units])


def write_initramfs(
    path: Path,
    agent: Path,
    busybox: Path | None,
    modules: list[Path],
    extra: dict[str, bytes] | None = None,
) -> None:
    """The initramfs: /init (the agent), busybox, modules and their load order, and ``extra``
    files (guest path → content, executable; parent folders made as needed)."""
    with atomic_output(path) as fd, open(fd, "wb", closefd=False) as out:
        cpio = CpioWriter(out)
        folders = ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"]
        for name in extra or {}:
            parts = name.strip("/").split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folder = "/".join(parts[:depth])
                if folder not in folders:
                    folders.append(folder)
        for folder in folders:
            cpio.directory(folder)
        cpio.char_device("dev/console", 5, 1)
        cpio.file("init", agent.read_bytes(), 0o755)
        if busybox is not None:
            cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
            cpio.symlink("bin/sh", "busybox")
        for module in modules:
            cpio.file(f"lib/modules/{module.name}", module.read_bytes())
        cpio.file("lib/modules/load", "".join(f"{m.name}\n" for m in modules).encode())
        for name, data in (extra or {}).items():
            cpio.file(name.strip("/"), data, 0o644 if name.startswith("/etc/") else 0o755)
        cpio.close()


def build_assets(  # noqa: PLR0913 - the inputs of `lcow uvm build` (kirdpath, kernel, initrd, --deb, --force) and a progress sink
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
    sources = agent_sources()
    busybox = Path("/bin/busybox")
    deb_path = Path(deb) if deb is not None else fetch_kernel_deb(cache)
    tools = guest_tools()
    stamp = {
        "kernel_deb": deb_path.name,
        "agent_sha256": {k: hashlib.sha256(v).hexdigest() for k, v in sources.items()},
        "modules": list(GUEST_MODULES),
        "busybox": busybox.stat().st_size if busybox.exists() else 0,
        "guest_files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(tools.items())},
        "kernel": kernel_name,
        "initrd": initrd_name,
        "format": 3,
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
        compile_agent(sources, work / "agent")
        progress(f"guest files: {', '.join(sorted(tools))}")
        write_initramfs(
            work / "initrd", work / "agent", busybox if busybox.exists() else None, modules, tools
        )
        shutil.copyfile(vmlinuz[0], work / "kernel")
        os.replace(work / "kernel", assets.kernel)
        os.replace(work / "initrd", assets.initrd)
    with atomic_output(stamp_path) as fd:
        os.write(fd, json.dumps(stamp, indent=1).encode())
    progress(f"built {assets.kernel} ({vmlinuz[0].name}) and {assets.initrd}")
    return assets
