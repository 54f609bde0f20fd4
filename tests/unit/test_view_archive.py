"""archive_path and extract_archive checked against GNU tar, an oracle we did not write (§4.8).

* archive_path: our tar, extracted by ``tar -x``, must rebuild the source tree (types, modes,
  owners, ns mtimes, contents, link targets, hard links, devices, xattrs); option handling
  (includes, excludes, rebasing, source dir, chown, overlay whiteouts) is read back by name.
* extract_archive: a tar GNU tar made, extracted by us and by GNU tar, must give equal trees.
* hostile tars never write outside the destination: an error, or the entry confined to it.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from lcow.backends.host.hostfs import HostFS
from lcow.backends.patterns import PatternMatcher
from lcow.backends.taroptions import OVERLAY_WHITEOUTS, TarOptions
from lcow.backends.userspace import UserspaceBackend
from lcow.errors import AlreadyExists, InvalidArgument
from lcow.graphdriver.driver import Driver
from tests.helpers import TarEntry, requires, run, write_tar

pytestmark = requires("tar")

ODD = "sp ace\nline-\udcff"
GNU_FLAGS = ["--xattrs", "--xattrs-include=*", "--numeric-owner"]
T0 = 1_600_000_000_123_456_789
_KEPT_XATTRS = (b"user.", b"trusted.", b"security.capability")


# -- helpers ---------------------------------------------------------------------------------


def tree(path: Path) -> tuple[dict[bytes, dict[str, Any]], list[list[bytes]]]:
    """Everything tar should carry, per relative name, plus the hard-link groups."""
    top = os.fsencode(path)
    found: dict[bytes, dict[str, Any]] = {}
    inodes: dict[int, list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, top)
            info: dict[str, Any] = {
                "mode": st.st_mode,
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime": st.st_mtime_ns,
                "xattrs": {
                    os.fsencode(k): os.getxattr(full, k, follow_symlinks=False)
                    for k in os.listxattr(full, follow_symlinks=False)
                    if os.fsencode(k).startswith(_KEPT_XATTRS)
                },
            }
            if stat.S_ISREG(st.st_mode):
                info["data"] = Path(os.fsdecode(full)).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info["rdev"] = st.st_rdev
            if not stat.S_ISDIR(st.st_mode):
                inodes.setdefault(st.st_ino, []).append(rel)
            found[rel] = info
    links = sorted(sorted(names) for names in inodes.values() if len(names) > 1)
    return found, links


def assert_same_tree(got: Path, want: Path) -> None:
    got_entries, got_links = tree(got)
    want_entries, want_links = tree(want)
    assert sorted(got_entries) == sorted(want_entries)
    for name, info in want_entries.items():
        assert got_entries[name] == info, name
    assert got_links == want_links


def gnu_extract(tar: Path, dest: Path, *extra: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    proc = run(["tar", *GNU_FLAGS, *extra, "-xpf", tar, "-C", dest])
    assert proc.returncode == 0, proc.stderr


def gnu_create(src: Path, tar: Path, *extra: str) -> Path:
    proc = run(["tar", "--format=pax", *GNU_FLAGS, *extra, "-cf", tar, "-C", src, "."])
    assert proc.returncode == 0, proc.stderr
    return tar


def archive(view: Any, path: str, options: TarOptions | None = None) -> bytes:
    out = io.BytesIO()
    view.archive_path(path, out.write, options)
    return out.getvalue()


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        return [m.name + ("/" if m.isdir() else "") for m in tf.getmembers()]


def touch_all(root: Path) -> None:
    """Give every entry a distinct nanosecond mtime (directories last, deepest first)."""
    top = os.fsencode(root)
    for n, (dirpath, dirnames, filenames) in enumerate(os.walk(top, topdown=False)):
        for k, name in enumerate(filenames + dirnames):
            t = T0 + n * 1000 + k * 7
            os.utime(os.path.join(dirpath, name), ns=(t, t), follow_symlinks=False)


def build_tree(root: Path) -> None:
    """Ordinary content any user can create."""
    (root / "d" / "sub").mkdir(parents=True)
    os.chmod(root / "d", 0o750)
    (root / "d" / "f").write_bytes(b"hello\n")
    (root / "d" / "exec").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "d" / "exec", 0o4755)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "setgid").mkdir()
    os.chmod(root / "setgid", 0o2755)
    (root / "empty").touch()
    (root / "big").write_bytes(os.urandom(300_000))
    deep = root / ("long-" * 25) / ("deeper-" * 20)
    deep.mkdir(parents=True)
    (deep / ("file-" * 30)).write_bytes(b"long name")
    (root / ODD).write_bytes(b"odd")
    os.symlink("d/f", root / "rel")
    os.symlink("/etc/passwd", root / "abs")
    os.symlink("nowhere/" + "x" * 150, root / "dangling-long")
    os.link(root / "d" / "f", root / "hard1")
    os.link(root / "d" / "f", root / "d" / "sub" / "hard2")
    os.mkfifo(root / "fifo", 0o640)
    os.setxattr(root / "d" / "f", "user.comment", b"\x00binary\xff")
    os.setxattr(root / "d", "user.dir", b"on a dir")


def build_root_tree(root: Path) -> None:
    """Content only root can create: devices, other owners, trusted xattrs."""
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 300))
    (root / "owned").write_bytes(b"x")
    os.chown(root / "owned", 1234, 5678)
    os.symlink("owned", root / "owned-link")
    os.chown(root / "owned-link", 4321, 8765, follow_symlinks=False)
    os.setxattr(root / "owned", "trusted.lcow", b"t")
    os.setxattr(root / "owned-link", "trusted.onlink", b"s", follow_symlinks=False)


def tar_bytes(tmp_path: Path, entries: list[TarEntry]) -> io.BytesIO:
    work = tmp_path / "tars"
    work.mkdir(exist_ok=True)
    return io.BytesIO(write_tar(work / "t.tar", entries).read_bytes())


def outside_state(tmp_path: Path) -> dict[bytes, Any]:
    """Everything under tmp_path except the destination view and the test's tars."""
    entries, _ = tree(tmp_path)
    return {k: v for k, v in entries.items() if not k.startswith((b"root", b"tars"))}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def fs(root: Path) -> HostFS:
    return HostFS(str(root))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_bytes(b"host secret")
    return path


# -- archive_path ----------------------------------------------------------------------------


def test_archive_rebuilds_the_tree_with_gnu_tar(fs: HostFS, root: Path, tmp_path: Path) -> None:
    build_tree(root)
    touch_all(root)
    tar = tmp_path / "ours.tar"
    tar.write_bytes(archive(fs, "/"))
    listing = run(["tar", "-tvf", tar])
    assert listing.returncode == 0, listing.stderr
    assert "link to d/f" in listing.stdout or "link to hard1" in listing.stdout
    gnu_extract(tar, tmp_path / "x")
    assert_same_tree(tmp_path / "x", root)


@requires("root")
def test_archive_devices_owners_trusted_xattrs(fs: HostFS, root: Path, tmp_path: Path) -> None:
    build_tree(root)
    build_root_tree(root)
    touch_all(root)
    tar = tmp_path / "ours.tar"
    tar.write_bytes(archive(fs, "/"))
    gnu_extract(tar, tmp_path / "x")
    assert_same_tree(tmp_path / "x", root)


def test_archive_of_a_subdirectory_and_of_a_file(fs: HostFS, root: Path) -> None:
    build_tree(root)
    assert names(archive(fs, "/d")) == ["exec", "f", "sub/", "sub/hard2"]
    assert names(archive(fs, "/d/f")) == ["f"]
    assert names(archive(fs, "/rel")) == ["rel"]  # a symlink source is archived itself
    with pytest.raises(FileNotFoundError):
        archive(fs, "/missing")


def test_archive_options(fs: HostFS, root: Path) -> None:
    build_tree(root)
    (root / "logs").mkdir()
    for name in ("a.log", "keep.log", "b.txt"):
        (root / "logs" / name).touch()
    (root / "logs" / "cache").mkdir()
    (root / "logs" / "cache" / "c").touch()

    def pack(**kw: Any) -> list[str]:
        return names(archive(fs, "/", TarOptions(**kw)))

    assert pack(include_files=("d/sub", "empty", "missing")) == ["d/sub/", "d/sub/hard2", "empty"]
    assert pack(include_files=("logs",), exclude_patterns=("logs/*.log", "!logs/keep.log")) == [
        "logs/",
        "logs/b.txt",
        "logs/cache/",
        "logs/cache/c",
        "logs/keep.log",
    ]
    assert pack(include_files=("logs",), exclude_patterns=("**/cache", "*/b.*")) == [
        "logs/",
        "logs/a.log",
        "logs/keep.log",
    ]
    # an explicit include wins over an exclude that matches it exactly
    assert pack(include_files=("empty",), exclude_patterns=("empty",)) == ["empty"]
    assert pack(include_files=("d/sub",), rebase_names={"d/sub": "new"}) == ["new/", "new/hard2"]
    with_source = pack(include_files=(), include_source_dir=True)
    assert with_source[0] == "./" and "./d/f" in with_source
    rebased = pack(include_source_dir=True, rebase_names={".": "top"})
    assert rebased[0] == "top/" and "top/d/f" in rebased
    with pytest.raises(InvalidArgument):
        pack(exclude_patterns=("[",))


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["*.go"], "a.go", True),
        (["*.go"], "d/a.go", False),
        (["**/*.go"], "d/e/a.go", True),
        (["**/*.go"], "a.go", True),
        (["d"], "d/x/y", True),  # a pattern naming a parent directory covers its contents
        (["d/*"], "d/x", True),
        (["d/*"], "dx", False),
        (["a?c"], "abc", True),
        (["a?c"], "a/c", False),
        (["[a-c].txt"], "b.txt", True),
        (["[a-c].txt"], "d.txt", False),
        (["[^a].txt"], "b.txt", True),
        (["[^a].txt"], "a.txt", False),
        (["\\*"], "*", True),
        (["\\*"], "x", False),
        (["*", "!keep"], "keep", False),
        (["*", "!keep"], "other", True),
        (["./d/../e/"], "e", True),
        ([" spaced "], "spaced", True),
        (["a.(b)+"], "a.(b)+", True),
        (["a.(b)+"], "ax(b)+", False),
    ],
)
def test_exclude_patterns_follow_docker(patterns: list[str], path: str, excluded: bool) -> None:
    assert PatternMatcher(patterns).matches(path) is excluded


def test_archive_chown_and_hard_links(fs: HostFS, root: Path) -> None:
    build_tree(root)
    data = archive(fs, "/d", TarOptions(chown=(7, 8)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert {(m.uid, m.gid) for m in members.values()} == {(7, 8)}
    assert members["f"].isreg() and members["f"].size == 6
    assert members["sub/hard2"].islnk() and members["sub/hard2"].linkname == "f"
    assert (
        members["f"].pax_headers["SCHILY.xattr.user.comment"].encode("utf-8", "surrogateescape")
        == b"\x00binary\xff"
    )


def test_archive_skips_sockets(fs: HostFS, root: Path) -> None:
    import socket

    (root / "f").touch()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
        assert names(archive(fs, "/")) == ["f"]


@requires("root")
def test_archive_overlay_whiteouts(fs: HostFS, root: Path) -> None:
    (root / "opaque").mkdir()
    os.setxattr(root / "opaque", "trusted.overlay.opaque", b"y")
    os.mknod(root / "gone", stat.S_IFCHR, 0)
    data = archive(fs, "/", TarOptions(whiteout_format=OVERLAY_WHITEOUTS))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert sorted(members) == [".wh.gone", "opaque", "opaque/.wh..wh..opq"]
    assert members[".wh.gone"].isreg() and members[".wh.gone"].mode == 0o600
    assert not any(
        k.startswith("SCHILY.xattr.trusted.overlay") for k in members["opaque"].pax_headers
    )
    plain = names(archive(fs, "/"))  # AUFS format: written as they are
    assert plain == ["gone", "opaque/"]


# -- extract_archive -------------------------------------------------------------------------


def test_extract_matches_gnu_tar(fs: HostFS, root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    touch_all(src)
    tar = gnu_create(src, tmp_path / "gnu.tar")
    gnu_extract(tar, tmp_path / "gnu")
    with tar.open("rb") as stream:
        fs.extract_archive("/dest", stream)
    assert_same_tree(root / "dest", tmp_path / "gnu")
    assert_same_tree(root / "dest", src)


@requires("root")
def test_extract_devices_owners_xattrs_like_gnu_tar(fs: HostFS, root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    build_root_tree(src)
    touch_all(src)
    tar = gnu_create(src, tmp_path / "gnu.tar")
    gnu_extract(tar, tmp_path / "gnu")
    with tar.open("rb") as stream:
        fs.extract_archive("/", stream)
    assert_same_tree(root, tmp_path / "gnu")


def test_extract_streams_from_a_pipe_and_gzip(fs: HostFS, root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    touch_all(src)
    with subprocess.Popen(
        ["tar", "--format=pax", *GNU_FLAGS, "-cf", "-", "-C", src, "."], stdout=subprocess.PIPE
    ) as proc:
        assert isinstance(proc.stdout, io.BufferedReader)  # a buffered pipe: a BinaryIO
        fs.extract_archive("/piped", proc.stdout)
    assert proc.returncode == 0
    assert_same_tree(root / "piped", src)
    raw = gnu_create(src, tmp_path / "gnu.tar").read_bytes()
    fs.extract_archive("/gz", io.BytesIO(gzip.compress(raw)))
    assert_same_tree(root / "gz", src)


def test_extract_directory_times_survive_their_contents(
    fs: HostFS, root: Path, tmp_path: Path
) -> None:
    stream = tar_bytes(
        tmp_path,
        [
            TarEntry("d", kind="dir", mode=0o755, mtime_ns=T0),
            TarEntry("d/a", data=b"a", mtime_ns=T0 + 1),
            TarEntry("d/e", kind="dir", mtime_ns=T0 + 2),
            TarEntry("d/e/b", data=b"b", mtime_ns=T0 + 3),
        ],
    )
    fs.extract_archive("/", stream, TarOptions(no_lchown=True))
    assert os.stat(root / "d").st_mtime_ns == T0
    assert os.stat(root / "d" / "e").st_mtime_ns == T0 + 2
    assert os.stat(root / "d" / "e" / "b").st_mtime_ns == T0 + 3


def test_extract_replaces_and_merges(fs: HostFS, root: Path, tmp_path: Path) -> None:
    (root / "was-file").write_bytes(b"x")
    (root / "was-dir" / "deep").mkdir(parents=True)
    (root / "merge").mkdir()
    (root / "merge" / "kept").write_bytes(b"kept")
    entries = [
        TarEntry("was-file", kind="dir"),
        TarEntry("was-dir", data=b"now a file"),
        TarEntry("merge", kind="dir", mode=0o700),
        TarEntry("merge/new", data=b"new"),
    ]
    with pytest.raises(AlreadyExists) as info:
        fs.extract_archive(
            "/", tar_bytes(tmp_path, entries), TarOptions(no_overwrite_dir_non_dir=True)
        )
    assert "was-file" in str(info.value)
    fs.extract_archive("/", tar_bytes(tmp_path, entries), TarOptions(no_lchown=True))
    assert (root / "was-file").is_dir()
    assert (root / "was-dir").read_bytes() == b"now a file"
    assert (root / "merge" / "kept").read_bytes() == b"kept"
    assert stat.S_IMODE(os.stat(root / "merge").st_mode) == 0o700


@requires("root")
def test_extract_owner_options(fs: HostFS, root: Path, tmp_path: Path) -> None:
    entries = [
        TarEntry("f", uid=1234, gid=5678, mode=0o6755),
        TarEntry("s", kind="symlink", target="f", uid=9, gid=9),
    ]
    fs.extract_archive("/a", tar_bytes(tmp_path, entries))
    st = os.lstat(root / "a" / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o6755)
    assert os.lstat(root / "a" / "s").st_uid == 9
    fs.extract_archive("/b", tar_bytes(tmp_path, entries), TarOptions(chown=(1, 2)))
    assert (os.lstat(root / "b" / "f").st_uid, os.lstat(root / "b" / "f").st_gid) == (1, 2)
    fs.extract_archive("/c", tar_bytes(tmp_path, entries), TarOptions(no_lchown=True))
    assert os.lstat(root / "c" / "f").st_uid == 0


@requires("root")
def test_extract_overlay_whiteouts(fs: HostFS, root: Path, tmp_path: Path) -> None:
    entries = [
        TarEntry("d", kind="dir"),
        TarEntry("d/.wh..wh..opq"),
        TarEntry("d/.wh.gone", uid=3, gid=4),
        TarEntry(".wh.top"),
    ]
    fs.extract_archive(
        "/", tar_bytes(tmp_path, entries), TarOptions(whiteout_format=OVERLAY_WHITEOUTS)
    )
    assert os.getxattr(root / "d", "trusted.overlay.opaque") == b"y"
    st = os.lstat(root / "d" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and (st.st_uid, st.st_gid) == (3, 4)
    assert stat.S_ISCHR(os.lstat(root / "top").st_mode)
    assert sorted(os.listdir(root)) == ["d", "top"]
    fs.extract_archive("/aufs", tar_bytes(tmp_path, entries))  # default: written as they are
    assert sorted(os.listdir(root / "aufs")) == [".wh.top", "d"]


def test_extract_excludes_by_prefix(fs: HostFS, root: Path, tmp_path: Path) -> None:
    entries = [TarEntry("keep"), TarEntry("skip/a"), TarEntry("skipped-too")]
    fs.extract_archive(
        "/", tar_bytes(tmp_path, entries), TarOptions(exclude_patterns=("skip",), no_lchown=True)
    )
    assert os.listdir(root) == ["keep"]


def test_extract_empty_truncated_and_unknown(fs: HostFS, root: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="empty input, not a tar archive"):
        fs.extract_archive("/", io.BytesIO(b""))  # a cut at offset 0 is no archive either
    assert os.listdir(root) == []
    data = write_tar(tmp_path / "t.tar", [TarEntry("f", data=b"x" * 5000)]).read_bytes()
    with pytest.raises(InvalidArgument):
        fs.extract_archive("/", io.BytesIO(data[:2048]))
    two = write_tar(tmp_path / "two.tar", [TarEntry("a", data=b"a"), TarEntry("b", data=b"b")])
    raw = two.read_bytes()
    with tarfile.open(two) as tf:
        second = tf.getmembers()[1].offset  # where the second member's headers start
    corrupt = raw[:second] + raw[second : second + 148] + b"99999999" + raw[second + 156 :]
    with pytest.raises(InvalidArgument):  # a bad checksum is not an end of archive
        fs.extract_archive("/c", io.BytesIO(corrupt), TarOptions(no_lchown=True))
    with pytest.raises(InvalidArgument):  # half a header is not one either
        fs.extract_archive("/t", io.BytesIO(raw[: second + 100]), TarOptions(no_lchown=True))
    with pytest.raises(InvalidArgument, match=r"no end-of-archive marker .* \(after entry a\)"):
        fs.extract_archive("/e", io.BytesIO(raw[:second]), TarOptions(no_lchown=True))
    assert os.listdir(root / "e") == ["a"]  # what came before the cut, as Docker's Untar
    with pytest.raises(InvalidArgument) as info:
        fs.extract_archive("/", tar_bytes(tmp_path, [TarEntry("weird", kind="raw", type=b"Z")]))
    assert "weird" in str(info.value)


def test_extract_errors_name_the_entry(fs: HostFS, tmp_path: Path) -> None:
    entries = [TarEntry("a"), TarEntry("a/b")]
    with pytest.raises(InvalidArgument) as info:  # the input's fault: its category, as ApplyDiff
        fs.extract_archive("/", tar_bytes(tmp_path, entries), TarOptions(no_lchown=True))
    assert str(info.value) == "a/b: not a directory" and info.value.subject == "a/b"


# -- hostile archives ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/../../x", "../../../../tmp/x", ".."])
def test_dotdot_names_are_refused(
    fs: HostFS, root: Path, tmp_path: Path, outside: Path, name: str
) -> None:
    before = outside_state(tmp_path)
    with pytest.raises(InvalidArgument) as info:
        fs.extract_archive("/dest", tar_bytes(tmp_path, [TarEntry(name, data=b"pwned")]))
    assert "escapes" in str(info.value)
    assert outside_state(tmp_path) == before


def test_absolute_names_land_inside(fs: HostFS, root: Path, tmp_path: Path, outside: Path) -> None:
    before = outside_state(tmp_path)
    entries = [
        TarEntry(str(outside / "secret"), data=b"pwned"),
        TarEntry("/etc/x", data=b"y"),
        TarEntry("/../z", data=b"z"),
    ]
    fs.extract_archive("/dest", tar_bytes(tmp_path, entries), TarOptions(no_lchown=True))
    assert (root / "dest" / str(outside / "secret").lstrip("/")).read_bytes() == b"pwned"
    assert (root / "dest" / "etc" / "x").read_bytes() == b"y"
    assert (root / "dest" / "z").read_bytes() == b"z"
    assert outside_state(tmp_path) == before


def test_symlink_to_root_then_through_it(
    fs: HostFS, root: Path, tmp_path: Path, outside: Path
) -> None:
    before = outside_state(tmp_path)
    entries = [
        TarEntry("a", kind="symlink", target="/"),
        TarEntry("a/etc/x", data=b"confined"),
        TarEntry("up", kind="symlink", target="../../../../../.."),
        TarEntry("up/y", data=b"also confined"),
    ]
    fs.extract_archive("/dest", tar_bytes(tmp_path, entries), TarOptions(no_lchown=True))
    assert (root / "dest" / "etc" / "x").read_bytes() == b"confined"
    assert (root / "dest" / "y").read_bytes() == b"also confined"
    assert os.readlink(root / "dest" / "a") == "/"  # stored verbatim, as in a chroot
    assert outside_state(tmp_path) == before


def test_symlinks_to_the_host_outside_cannot_be_written_through(
    fs: HostFS, root: Path, tmp_path: Path, outside: Path
) -> None:
    before = outside_state(tmp_path)
    (root / "dest").mkdir()
    os.symlink("../../outside", root / "dest" / "pre-rel")  # escapes on the host only
    os.symlink(str(outside), root / "dest" / "pre-abs")
    for entries in (
        [TarEntry("pre-rel/x", data=b"pwned")],
        [TarEntry("pre-abs/x", data=b"pwned")],
        [TarEntry("evil", kind="symlink", target=str(outside)), TarEntry("evil/x", data=b"pwned")],
        [
            TarEntry("evil2", kind="symlink", target="../../outside"),
            TarEntry("evil2/secret", data=b"pwned"),
        ],
        [TarEntry("h", kind="hardlink", target="pre-abs/secret")],
        [TarEntry("h2", kind="hardlink", target=str(outside / "secret"))],
    ):
        with pytest.raises(FileNotFoundError):
            fs.extract_archive("/dest", tar_bytes(tmp_path, entries), TarOptions(no_lchown=True))
    # an existing symlink replaced by a directory entry is removed, not followed
    fs.extract_archive(
        "/dest", tar_bytes(tmp_path, [TarEntry("pre-abs", kind="dir")]), TarOptions(no_lchown=True)
    )
    assert (root / "dest" / "pre-abs").is_dir()
    assert outside_state(tmp_path) == before


@pytest.mark.parametrize("target", ["../../outside/secret", "../x", "a/../../../y"])
def test_hard_links_out_are_refused(
    fs: HostFS, root: Path, tmp_path: Path, outside: Path, target: str
) -> None:
    before = outside_state(tmp_path)
    with pytest.raises(InvalidArgument) as info:
        fs.extract_archive(
            "/dest", tar_bytes(tmp_path, [TarEntry("h", kind="hardlink", target=target)])
        )
    assert "escapes" in str(info.value)
    assert outside_state(tmp_path) == before
    assert os.stat(outside / "secret").st_nlink == 1


def test_hard_links_inside_work(fs: HostFS, root: Path, tmp_path: Path) -> None:
    entries = [
        TarEntry("f", data=b"x", mode=0o600),
        TarEntry("h", kind="hardlink", target="/f"),
        TarEntry("s", kind="symlink", target="f"),
        TarEntry("hs", kind="hardlink", target="s"),
    ]
    fs.extract_archive("/", tar_bytes(tmp_path, entries), TarOptions(no_lchown=True))
    assert os.lstat(root / "h").st_ino == os.lstat(root / "f").st_ino
    assert os.lstat(root / "hs").st_ino == os.lstat(root / "s").st_ino


# -- the userspace view shares the writer ----------------------------------------------------


def test_union_view_archive_matches_gnu_tar(tmp_path: Path) -> None:
    entries = [
        TarEntry("etc", kind="dir", mode=0o755, mtime_ns=T0),
        TarEntry("etc/hosts", data=b"127.0.0.1\n", mtime_ns=T0 + 1, uid=1, gid=2),
        TarEntry("etc/link", kind="symlink", target="hosts", mtime_ns=T0 + 2),
        TarEntry("etc/hard", kind="hardlink", target="etc/hosts", mtime_ns=T0 + 1, uid=1, gid=2),
        TarEntry("bin", kind="dir", mode=0o700, mtime_ns=T0 + 3),
        TarEntry("bin/suid", data=b"#!", mode=0o4755, mtime_ns=T0 + 4),
        TarEntry(b"bin/odd \xff name", data=b"odd", mtime_ns=T0 + 5),
    ]
    source = write_tar(tmp_path / "layer.tar", entries)
    driver = Driver(tmp_path / "data", backend=UserspaceBackend())
    driver.create("base")
    with source.open("rb") as stream:
        driver.apply_diff("base", None, stream)
    view = driver.get("base")
    try:
        tar = tmp_path / "union.tar"
        tar.write_bytes(archive(view, "/"))
        assert names(archive(view, "/etc/hosts")) == ["hosts"]
        assert names(archive(view, "/", TarOptions(include_files=("bin",)))) == [
            "bin/",
            "bin/odd \udcff name",
            "bin/suid",
        ]
    finally:
        driver.put("base")
    gnu_extract(tar, tmp_path / "ours")
    gnu_extract(source, tmp_path / "gnu")
    assert_same_tree(tmp_path / "ours", tmp_path / "gnu")
