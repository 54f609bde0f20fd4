"""HostFS: the 20 remotefs operations over a plain directory, confined like a chroot (SPEC §4.8).

Every test works on ``tmp_path/root``; ``tmp_path/outside`` holds a sentinel that hostile paths
aim at and must never reach.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from lcow.backends.base import ContainerFS, FileInfo
from lcow.backends.host.hostfs import HostFS
from lcow.backends.scoped import probe_openat2, split
from lcow.backends.taroptions import TarOptions
from lcow.errors import AlreadyExists, InvalidArgument, NotFound
from tests.helpers import TarEntry, requires, write_tar

ODD = "sp ace\nnew\tline-\udcff.txt"  # space, newline, tab and the invalid UTF-8 byte 0xff
ODD_BYTES = b"sp ace\nnew\tline-\xff.txt"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_bytes(b"host secret")
    return path


@pytest.fixture
def fs(root: Path) -> HostFS:
    return HostFS(str(root), layer_id="layer1")


def _snapshot(path: Path) -> dict[str, tuple[int, bytes | None]]:
    found: dict[str, tuple[int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            data = Path(full).read_bytes() if stat.S_ISREG(st.st_mode) else None
            found[os.path.relpath(full, path)] = (st.st_mode, data)
    return found


# -- the object ------------------------------------------------------------------------------


def test_is_a_container_fs(fs: HostFS, root: Path) -> None:
    view: ContainerFS = fs
    assert view.path == str(root)
    fs.close()
    fs.close()  # idempotent; nothing was held
    assert fs.readdir("/") == []


def test_holds_no_descriptor_between_calls(fs: HostFS, root: Path) -> None:
    (root / "f").write_bytes(b"x")
    before = set(os.listdir("/proc/self/fd"))
    fs.stat("/f")
    fs.readdir("/")
    fs.write_file("/g", b"y")
    fs.archive_path("/", lambda _: None)
    assert set(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(
    ("path", "parent", "name"),
    [
        ("/", b"/", b"."),
        ("", b"/", b"."),
        ("//a//b/", b"/a", b"b"),
        ("a/./b/../c", b"/a", b"c"),
        ("../../x", b"/", b"x"),
        (b"/\xff/\n", b"/\xff", b"\n"),
        ("/\udcff", b"/", b"\xff"),
    ],
)
def test_view_paths_split_lexically(path: str | bytes, parent: bytes, name: bytes) -> None:
    assert split(path) == (parent, name)


def test_openat2_is_available() -> None:
    probe_openat2()  # this kernel confines lookups; older ones get NotSupported


# -- reading ---------------------------------------------------------------------------------


def test_stat_and_lstat_report_everything(fs: HostFS, root: Path) -> None:
    (root / "file").write_bytes(b"12345")
    os.symlink("file", root / "link")
    st = os.lstat(root / "file")
    info = fs.lstat("/file")
    assert info == FileInfo(
        name="file",
        size=5,
        mode=st.st_mode,
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        nlink=1,
        rdev=0,
        ino=st.st_ino,
    )
    assert stat.S_ISLNK(fs.lstat("/link").mode) and fs.lstat("/link").name == "link"
    followed = fs.stat("/link")
    assert followed.ino == st.st_ino and followed.name == "link" and followed.size == 5
    assert fs.stat("/").is_dir and fs.lstat("/").name == "/"


def test_missing_paths_raise_with_the_view_path(fs: HostFS) -> None:
    with pytest.raises(NotFound) as info:  # lcow's category, still a FileNotFoundError
        fs.lstat("/no/such/file")
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == "/no/such/file"
    assert str(info.value) == "/no/such/file: No such file or directory"
    for call in (fs.stat, fs.readlink, fs.readdir, fs.open, fs.readfile):
        with pytest.raises(FileNotFoundError) as missing:
            call("/nothing")
        assert missing.value.filename == "/nothing"


def test_readlink_is_verbatim(fs: HostFS, root: Path) -> None:
    os.symlink("../../some/where\n", root / "l")
    assert fs.readlink("/l") == "../../some/where\n"
    (root / "f").touch()
    with pytest.raises(OSError) as info:
        fs.readlink("/f")
    assert info.value.errno == errno.EINVAL


def test_readdir_sorted_by_bytes_with_lstat_info(fs: HostFS, root: Path) -> None:
    for name in (b"b", b"a", b"\xff", b"\xc3\xa9", b"Z"):
        (root / os.fsdecode(name)).write_bytes(name)
    os.symlink("a", root / "sym")
    entries = fs.readdir("/")
    assert [os.fsencode(e.name) for e in entries] == sorted(
        [b"Z", b"a", b"b", b"sym", b"\xc3\xa9", b"\xff"]
    )
    sym = next(e for e in entries if e.name == "sym")
    assert stat.S_ISLNK(sym.mode)
    (root / "d").mkdir()
    (root / "d" / "x").touch()
    os.symlink("/d", root / "dl")
    assert [e.name for e in fs.readdir("/dl")] == ["x"]  # a symlinked directory is followed
    with pytest.raises(NotADirectoryError):
        fs.readdir("/a")


def test_open_and_readfile(fs: HostFS, root: Path) -> None:
    (root / "f").write_bytes(b"content")
    with fs.open("/f") as fh:
        assert fh.read(3) == b"con"
        fh.seek(0)
        assert fh.read() == b"content"
    assert fs.readfile("/f") == b"content"
    (root / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        fs.open("/d")


def test_open_refuses_fifos_without_blocking(fs: HostFS, root: Path) -> None:
    os.mkfifo(root / "pipe")
    with pytest.raises(InvalidArgument):
        fs.readfile("/pipe")  # would block forever if opened for reading
    with pytest.raises(InvalidArgument):
        fs.open_file("/pipe", os.O_WRONLY)


def test_resolve_path(fs: HostFS, root: Path) -> None:
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    os.symlink("/lib", root / "abs")
    os.symlink("../../../../../../abs", root / "usr" / "climb")
    os.symlink("c2", root / "c1")
    os.symlink("c3", root / "c2")
    os.symlink("/usr/../lib/x", root / "c3")
    assert fs.resolve_path("/lib/file") == "/usr/lib/file"
    assert fs.resolve_path("/abs") == "/usr/lib"
    assert fs.resolve_path("/usr/climb/y") == "/usr/lib/y"
    assert fs.resolve_path("/c1") == "/usr/lib/x"
    assert fs.resolve_path("../../..") == "/"
    assert fs.resolve_path("/missing/../x") == "/x"
    assert fs.resolve_path("/lib/missing/more") == "/usr/lib/missing/more"


def test_symlink_loops_are_eloop(fs: HostFS, root: Path) -> None:
    os.symlink("b", root / "a")
    os.symlink("/a", root / "b")
    os.symlink("self", root / "self")
    for call in (fs.stat, fs.open, fs.resolve_path, fs.readdir):
        with pytest.raises(OSError) as info:
            call("/a")
        assert info.value.errno == errno.ELOOP
    with pytest.raises(OSError) as info:
        fs.write_file("/self", b"x")
    assert info.value.errno == errno.ELOOP
    with pytest.raises(OSError) as info:
        fs.lstat("/a/child")
    assert info.value.errno == errno.ELOOP
    assert stat.S_ISLNK(fs.lstat("/a").mode)  # the loop itself can still be inspected


# -- writing ---------------------------------------------------------------------------------


def test_mkdir(fs: HostFS, root: Path) -> None:
    fs.mkdir("/d", 0o750)
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o750 & ~_umask()
    with pytest.raises(AlreadyExists) as info:
        fs.mkdir("/d")
    assert (info.value.errno, info.value.filename) == (errno.EEXIST, "/d")
    with pytest.raises(FileNotFoundError) as missing:
        fs.mkdir("/x/y")
    assert missing.value.filename == "/x/y"


def test_mkdir_all(fs: HostFS, root: Path) -> None:
    fs.mkdir_all("/a/b/c")
    fs.mkdir_all("/a/b/c")
    fs.mkdir_all("/")
    assert (root / "a" / "b" / "c").is_dir()
    os.symlink("/a/b", root / "ab")
    fs.mkdir_all("/ab/d/e")  # through a symlink to a directory inside the view
    assert (root / "a" / "b" / "d" / "e").is_dir()
    (root / "file").touch()
    with pytest.raises(NotADirectoryError):
        fs.mkdir_all("/file/sub")
    os.symlink("/nowhere", root / "dangling")
    with pytest.raises(FileExistsError):
        fs.mkdir_all("/dangling/sub")
    assert not (root / "nowhere").exists()


def test_remove(fs: HostFS, root: Path) -> None:
    (root / "f").touch()
    (root / "d").mkdir()
    (root / "full").mkdir()
    (root / "full" / "x").touch()
    os.symlink("d", root / "l")
    fs.remove("/f")
    fs.remove("/l")
    assert (root / "d").is_dir()  # the symlink went, not its target
    fs.remove("/d")
    assert os.listdir(root) == ["full"]
    with pytest.raises(OSError) as info:
        fs.remove("/full")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileNotFoundError):
        fs.remove("/f")
    with pytest.raises(OSError) as info:
        fs.remove("/")
    assert info.value.errno == errno.EBUSY


def test_remove_all(fs: HostFS, root: Path, outside: Path) -> None:
    (root / "t" / "a" / "b").mkdir(parents=True)
    (root / "t" / "a" / "b" / "f").touch()
    os.symlink(outside, root / "t" / "abs-out")
    os.symlink("../../outside", root / "t" / "rel-out")
    os.symlink(outside, root / "top-out")
    before = _snapshot(outside)
    fs.remove_all("/t")
    fs.remove_all("/top-out")
    fs.remove_all("/t")  # missing: fine
    fs.remove_all("/no/such/parent")
    assert os.listdir(root) == []
    assert _snapshot(outside) == before
    with pytest.raises(OSError) as info:
        fs.remove_all("/")
    assert info.value.errno == errno.EBUSY


def test_link(fs: HostFS, root: Path) -> None:
    (root / "f").write_bytes(b"x")
    os.symlink("f", root / "s")
    fs.link("/f", "/g")
    assert os.lstat(root / "g").st_ino == os.lstat(root / "f").st_ino
    assert fs.lstat("/f").nlink == 2
    fs.link("/s", "/s2")  # links the symlink itself
    assert os.lstat(root / "s2").st_ino == os.lstat(root / "s").st_ino
    with pytest.raises(FileExistsError) as info:
        fs.link("/f", "/g")
    assert (info.value.filename, info.value.filename2) == ("/f", "/g")


def test_symlink(fs: HostFS, root: Path) -> None:
    fs.symlink("/etc/passwd", "/p")
    fs.symlink(ODD, "/odd")
    assert os.readlink(root / "p") == "/etc/passwd"
    assert os.readlink(os.fsencode(root / "odd")) == ODD_BYTES
    with pytest.raises(FileExistsError):
        fs.symlink("x", "/p")


def test_lchmod(fs: HostFS, root: Path, outside: Path) -> None:
    (root / "f").touch()
    (root / "d").mkdir()
    fs.lchmod("/f", 0o4755)
    fs.lchmod("/d", 0o1777)
    assert stat.S_IMODE(os.lstat(root / "f").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(root / "d").st_mode) == 0o1777
    os.symlink(outside / "secret", root / "s")
    mode = os.stat(outside / "secret").st_mode
    fs.lchmod("/s", 0o777)  # a symlink: nothing to change, and never its target
    assert os.stat(outside / "secret").st_mode == mode


def test_lchown_to_own_ids(fs: HostFS, root: Path) -> None:
    (root / "f").touch()
    fs.lchown("/f", os.getuid(), os.getgid())
    fs.lchown("/f", -1, -1)
    assert os.lstat(root / "f").st_uid == os.getuid()


@requires("root")
def test_lchown_does_not_follow(fs: HostFS, root: Path, outside: Path) -> None:
    (root / "f").touch()
    os.symlink(outside / "secret", root / "s")
    fs.lchown("/f", 1234, 5678)
    fs.lchown("/s", 4321, 8765)
    assert (os.lstat(root / "f").st_uid, os.lstat(root / "f").st_gid) == (1234, 5678)
    assert (os.lstat(root / "s").st_uid, os.lstat(root / "s").st_gid) == (4321, 8765)
    assert os.stat(outside / "secret").st_uid == 0


@requires("root")
def test_mknod_devices(fs: HostFS, root: Path) -> None:
    fs.mknod("/null", stat.S_IFCHR | 0o666, 1, 3)
    fs.mknod("/blk", stat.S_IFBLK | 0o600, 7, 200)
    st = os.lstat(root / "null")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    info = fs.lstat("/blk")
    assert stat.S_ISBLK(info.mode) and info.rdev == os.makedev(7, 200)


def test_mknod_and_mkfifo_without_devices(fs: HostFS, root: Path) -> None:
    fs.mknod("/fifo", stat.S_IFIFO | 0o600, 0, 0)
    fs.mknod("/plain", stat.S_IFREG | 0o600, 0, 0)
    fs.mkfifo("/pipe", 0o640)
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    assert stat.S_ISREG(os.lstat(root / "plain").st_mode)
    assert stat.S_ISFIFO(fs.lstat("/pipe").mode)
    with pytest.raises(FileExistsError):
        fs.mkfifo("/pipe", 0o640)


def test_open_file(fs: HostFS, root: Path) -> None:
    with fs.open_file("/f", os.O_RDWR | os.O_CREAT, 0o600) as fh:
        fh.write(b"hello world")
        fh.seek(6)
        assert fh.read() == b"world"
        fh.seek(0, io.SEEK_SET)
        fh.write(b"J")
    assert (root / "f").read_bytes() == b"Jello world"
    assert stat.S_IMODE(os.stat(root / "f").st_mode) == 0o600 & ~_umask()
    with fs.open_file("/f", os.O_WRONLY | os.O_APPEND) as fh:
        fh.write(b"!")
    with fs.open_file("/f", os.O_RDONLY) as fh:
        assert fh.read() == b"Jello world!"
    with fs.open_file("/f", os.O_WRONLY | os.O_TRUNC) as fh:
        fh.write(b"new")
    assert (root / "f").read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        fs.open_file("/f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with pytest.raises(FileNotFoundError):
        fs.open_file("/g", os.O_RDWR)


def test_write_file(fs: HostFS, root: Path) -> None:
    fs.write_file("/f", b"one", 0o640)
    fs.write_file("/f", b"2")
    assert (root / "f").read_bytes() == b"2"
    assert stat.S_IMODE(os.stat(root / "f").st_mode) == 0o640 & ~_umask()
    with pytest.raises(FileNotFoundError):
        fs.write_file("/no/dir/f", b"")


def test_extract_and_archive_round_trip(fs: HostFS, root: Path, tmp_path: Path) -> None:
    tar = write_tar(
        tmp_path / "in.tar",
        [
            TarEntry("d", kind="dir", mode=0o750, uid=os.getuid(), gid=os.getgid()),
            TarEntry("d/f", data=b"abc", uid=os.getuid(), gid=os.getgid()),
        ],
    )
    with tar.open("rb") as stream:
        fs.extract_archive("/new/dest", stream, TarOptions())
    assert (root / "new" / "dest" / "d" / "f").read_bytes() == b"abc"
    out = io.BytesIO()
    fs.archive_path("/new/dest", out.write)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        assert tf.getnames() == ["d", "d/f"]


# -- names are data --------------------------------------------------------------------------


def test_odd_names_everywhere(fs: HostFS, root: Path) -> None:
    fs.mkdir_all(f"/{ODD}/{ODD}")
    fs.write_file(f"/{ODD}/{ODD}/{ODD}", b"odd")
    assert (root / os.fsdecode(ODD_BYTES) / ODD / ODD).read_bytes() == b"odd"
    assert os.listdir(os.fsencode(root)) == [ODD_BYTES]
    assert [e.name for e in fs.readdir(f"/{ODD}")] == [ODD]
    assert fs.readfile(f"/{ODD}/{ODD}/{ODD}") == b"odd"
    fs.symlink(f"{ODD}/{ODD}", "/$(rm -rf ~); `x`")
    assert fs.resolve_path("/$(rm -rf ~); `x`") == f"/{ODD}/{ODD}"
    fs.remove_all(f"/{ODD}")
    assert os.listdir(root) == ["$(rm -rf ~); `x`"]


def test_nul_bytes_are_refused(fs: HostFS) -> None:
    with pytest.raises(ValueError):
        fs.write_file("/a\x00b", b"")
    with pytest.raises(ValueError):
        fs.lstat("/a\x00b")


# -- hostile paths ---------------------------------------------------------------------------


def test_dotdot_stays_inside(fs: HostFS, root: Path, tmp_path: Path) -> None:
    fs.write_file("/../../../escaped", b"x")
    fs.mkdir_all("../../up")
    assert (root / "escaped").read_bytes() == b"x"
    assert (root / "up").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["root"]
    assert fs.readdir("/../..") == fs.readdir("/")


def test_absolute_symlink_to_etc_stays_inside(fs: HostFS, root: Path) -> None:
    os.symlink("/etc", root / "etc-link")
    os.symlink("/etc/passwd", root / "passwd-link")
    with pytest.raises(FileNotFoundError):
        fs.readfile("/passwd-link")  # not the host's /etc/passwd
    with pytest.raises(FileNotFoundError):
        fs.readdir("/etc-link")
    with pytest.raises(FileNotFoundError):
        fs.write_file("/etc-link/hostname", b"pwned")
    (root / "etc").mkdir()
    fs.write_file("/passwd-link", b"view passwd")
    fs.write_file("/etc-link/hostname", b"view")
    assert (root / "etc" / "passwd").read_bytes() == b"view passwd"
    assert fs.readfile("/etc-link/hostname") == b"view"
    assert fs.stat("/etc-link").ino == os.stat(root / "etc").st_ino


def test_relative_symlinks_cannot_climb_out(fs: HostFS, root: Path, outside: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    os.symlink("../../../outside", root / "a" / "b" / "out")
    os.symlink("../../..", root / "a" / "b" / "top")
    os.symlink(str(outside), root / "hostpath")  # the real host path of outside
    before = _snapshot(outside)
    with pytest.raises(FileNotFoundError):
        fs.readfile("/a/b/out/secret")
    with pytest.raises(FileNotFoundError):
        fs.readfile("/a/b/top/outside/secret")
    with pytest.raises(FileNotFoundError):
        fs.readfile("/hostpath/secret")
    for hostile in ("/a/b/out/x", "/a/b/top/outside/x", "/hostpath/x"):
        with pytest.raises(FileNotFoundError):
            fs.write_file(hostile, b"pwned")
        with pytest.raises(FileNotFoundError):
            fs.mkdir(hostile)
        with pytest.raises(FileNotFoundError):
            fs.symlink("x", hostile)
        with pytest.raises(FileNotFoundError):
            fs.link("/a", hostile)
    assert fs.resolve_path("/a/b/out/secret") == "/outside/secret"
    with pytest.raises(FileExistsError):
        fs.mkdir_all("/a/b/out/made")  # a dangling symlink is in the way (Go's MkdirAll)
    (root / "outside").mkdir()
    fs.mkdir_all("/a/b/out/made")  # now the view's own /outside
    assert (root / "outside" / "made").is_dir()
    assert _snapshot(outside) == before


def test_symlink_chain_ends_inside(fs: HostFS, root: Path) -> None:
    (root / "real").mkdir()
    os.symlink("/l2/../../l3", root / "l1")  # .. applies to l2's target, as in the kernel
    os.symlink("/real/sub", root / "l2")
    os.symlink("../../../../real", root / "l3")
    (root / "real" / "sub").mkdir()
    fs.write_file("/l1/f", b"chain")
    assert (root / "real" / "f").read_bytes() == b"chain"
    assert fs.resolve_path("/l1/f") == "/real/f"


def test_metadata_ops_do_not_follow_to_the_outside(fs: HostFS, root: Path, outside: Path) -> None:
    os.symlink(str(outside / "secret"), root / "s")
    os.symlink(str(outside), root / "d")
    before = _snapshot(outside)
    fs.lchmod("/s", 0o777)
    fs.lchown("/s", os.getuid(), os.getgid())
    fs.remove("/s")
    fs.remove_all("/d")
    assert _snapshot(outside) == before
    assert os.listdir(root) == []


def test_symlink_planted_at_a_parent_during_resolution(
    fs: HostFS, root: Path, outside: Path
) -> None:
    """A racing thread keeps swapping ``/d`` between a directory and a symlink whose target
    escapes on the host (``../outside``) — every write must land inside the view."""
    before = _snapshot(outside)
    (root / "d").mkdir()
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            tmp = root / "d.tmp"
            with_link = root / "d.lnk"
            try:
                os.symlink("../outside", with_link)
                os.rename(root / "d", tmp)
                os.rename(with_link, root / "d")
                os.rename(root / "d", with_link)
                os.rename(tmp, root / "d")
                os.unlink(with_link)
            except OSError:
                pass

    racer = threading.Thread(target=swap)
    racer.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for call in (
                lambda: fs.write_file("/d/planted", b"x"),
                lambda: fs.mkdir_all("/d/sub"),
                lambda: fs.symlink("t", "/d/sym"),
                lambda: fs.remove_all("/d/sub"),
                lambda: fs.readfile("/d/secret"),
            ):
                with contextlib.suppress(OSError):
                    call()
    finally:
        stop.set()
        racer.join()
    assert _snapshot(outside) == before


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
