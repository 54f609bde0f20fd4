"""Changes and DiffSize edge cases over small layer images (SPEC §5.5-§5.8; issue 3).

Each layer is a tar written with Python's tarfile and converted by lcow's writer (AUFS whiteouts
converted, as ApplyDiff does), so no privileges are needed. The cases pin the rules one by one:
the same-second time rule, the parent Modify, opaque directories, whiteouts, hard links counted
once, the writer's lost+found, sandbox-style content under ``/upper``, and the tree comparison's
type changes, undescended deletes and ``security.capability``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lcow import ConvertOptions, tar2ext4
from lcow.formats.ext4.reader import Ext4Reader
from lcow.layerdiff.changes import (
    Change,
    ChangeKind,
    LayerContent,
    MergedView,
    change_size,
    overlay_changes,
    own_diff_size,
    tree_changes,
)
from tests.helpers import TarEntry, write_tar

M, A, D = ChangeKind.MODIFY, ChangeKind.ADD, ChangeKind.DELETE
NS = 1_000_000_000
T = 1_600_000_000 * NS
CAP = bytes.fromhex("0100000200040000000000000000000000000000")
CAP2 = bytes.fromhex("0100000201000000000000000000000000000000")


class Layers:
    """Builds layer images in a temporary directory; readers are closed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.readers: list[Ext4Reader] = []

    def __call__(self, *entries: TarEntry, top: bytes = b"/") -> LayerContent:
        n = len(self.readers)
        tar = write_tar(self.tmp / f"layer{n}.tar", entries)
        image = self.tmp / f"layer{n}.vhd"
        tar2ext4(tar, image, ConvertOptions(convert_whiteouts=True, vhd_footer=True))
        reader = Ext4Reader.open(image)
        self.readers.append(reader)
        return LayerContent(reader, top)


@pytest.fixture
def layer(tmp_path: Path) -> Iterator[Layers]:
    layers = Layers(tmp_path)
    yield layers
    for reader in layers.readers:
        reader.close()


def d(name: str, mtime: int = T, mode: int = 0o755, **kw: object) -> TarEntry:
    return TarEntry(name, kind="dir", mode=mode, mtime_ns=mtime, **kw)  # type: ignore[arg-type]


def f(name: str, data: bytes = b"x", mtime: int = T, **kw: object) -> TarEntry:
    return TarEntry(name, data=data, mtime_ns=mtime, **kw)  # type: ignore[arg-type]


def changes(*pairs: tuple[str, ChangeKind]) -> list[Change]:
    return [Change(p, k) for p, k in pairs]


def overlay(upper: LayerContent, *lower: LayerContent) -> list[Change]:
    return overlay_changes(upper, MergedView.build(lower))


def tree(new: Sequence[LayerContent], old: Sequence[LayerContent]) -> list[Change]:
    return tree_changes(MergedView.build(new), MergedView.build(old))


# -- §5.6: overlay derivation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lower_ns", "upper_ns", "skipped"),
    [
        (123, 123, True),  # identical
        (123, 0, True),  # same second, upper without nanoseconds
        (0, 456, True),  # same second, lower without nanoseconds
        (123, 456, False),  # same second, both with different nanoseconds
        (0, NS, False),  # another second
    ],
)
def test_directory_time_rule(layer: Layers, lower_ns: int, upper_ns: int, skipped: bool) -> None:
    lower = layer(d("dir", T + lower_ns), f("dir/old"))
    upper = layer(d("dir", T + upper_ns), f("dir/old", b"changed", T + 5))
    got = overlay(upper, lower)
    expected = [("/dir/old", M)] if skipped else [("/dir", M), ("/dir/old", M)]
    assert got == changes(*expected)


def test_directory_mode_or_size_difference_is_a_modify(layer: Layers) -> None:
    lower = layer(d("a"), f("a/x"), d("b"), *(f(f"b/{i:03d}" + "n" * 200) for i in range(40)))
    upper = layer(d("a", mode=0o700), d("b"), f("b/000" + "n" * 200, b"new", T + 1))
    # /a: other mode; /b: one block against the lower's two (40 names of 203 bytes)
    assert overlay(upper, lower) == changes(("/a", M), ("/b", M), ("/b/000" + "n" * 200, M))


def test_parent_modify_comes_once_before_the_first_add_or_delete(layer: Layers) -> None:
    lower = layer(d("p"), f("p/keep"), f("p/gone"), d("p/q"), f("p/q/z"))
    upper = layer(
        d("p"),
        f("p/.wh.gone"),
        f("p/new1"),
        f("p/new2"),
        d("p/q"),
        f("p/q/added"),
    )
    assert overlay(upper, lower) == changes(
        ("/p", M),
        ("/p/gone", D),
        ("/p/new1", A),
        ("/p/new2", A),
        ("/p/q", M),
        ("/p/q/added", A),
    )


def test_no_parent_modify_for_a_modified_child_or_the_root(layer: Layers) -> None:
    lower = layer(d("p"), f("p/file"), f("top"))
    upper = layer(d("p"), f("p/file", b"changed", T + 1), f("top", b"changed", T + 1), f("new"))
    assert overlay(upper, lower) == changes(("/new", A), ("/p/file", M), ("/top", M))


def test_a_recorded_directory_is_remembered(layer: Layers) -> None:
    lower = layer(d("p", T), f("p/a"))
    upper = layer(d("p", T + NS), f("p/b"))  # /p modified on its own: no second record
    assert overlay(upper, lower) == changes(("/p", M), ("/p/b", A))


def test_new_directory_tree_is_all_adds(layer: Layers) -> None:
    lower = layer(f("other"))
    upper = layer(d("n"), d("n/m"), f("n/m/x"), TarEntry("n/s", kind="symlink", target="m"))
    assert overlay(upper, lower) == changes(("/n", A), ("/n/m", A), ("/n/m/x", A), ("/n/s", A))


def test_opaque_directory_is_a_delete_and_its_content_follows(layer: Layers) -> None:
    lower = layer(d("o"), f("o/old"), f("o/kept-name"), d("o/sub"), f("o/sub/deep"))
    upper = layer(d("o"), f("o/.wh..wh..opq"), f("o/kept-name", b"again"), f("o/fresh"))
    assert overlay(upper, lower) == changes(
        ("/o", D),
        ("/o/fresh", A),
        ("/o/kept-name", M),  # the path exists below (merged view), so Modify
    )


def test_whiteout_of_a_path_below_and_nested_whiteouts(layer: Layers) -> None:
    lower = layer(d("a"), d("a/b"), f("a/b/c"), f("x"))
    upper = layer(f(".wh.x"), d("a"), d("a/b"), f("a/b/.wh.c"))
    assert overlay(upper, lower) == changes(("/a/b", M), ("/a/b/c", D), ("/x", D))


def test_existence_is_judged_on_the_merged_view(layer: Layers) -> None:
    base = layer(d("a"), f("a/f"))
    middle = layer(f(".wh.a"))  # /a deleted in the middle layer
    upper = layer(d("a"), f("a/f"))
    # Nearest first: the middle layer hides the base's /a, so /a and /a/f are added again.
    assert overlay(upper, middle, base) == changes(("/a", A), ("/a/f", A))


def test_path_under_a_lower_non_directory_does_not_exist_below(layer: Layers) -> None:
    lower = layer(TarEntry("l", kind="symlink", target="/"), f("file"))
    upper = layer(d("file"), f("file/inside"))
    assert overlay(upper, lower) == changes(("/file", M), ("/file/inside", A))


def test_writer_lost_found_is_not_content(layer: Layers) -> None:
    lower = layer(f("a"))
    upper = layer(f("b"))
    assert overlay(upper, lower) == changes(("/b", A))
    assert tree([upper, lower], [lower]) == changes(("/b", A))
    assert own_diff_size(upper) == 1


def test_lost_found_with_content_is_content(layer: Layers) -> None:
    upper = layer(d("lost+found", mode=0o700), f("lost+found/kept"))
    assert overlay(upper) == changes(("/lost+found", A), ("/lost+found/kept", A))


def test_sandbox_content_under_upper(layer: Layers) -> None:
    lower = layer(d("etc"), f("etc/conf", b"old"))
    sandbox = layer(
        d("upper"),
        d("upper/etc"),
        f("upper/etc/conf", b"new!", T + 1),
        d("upper/lost+found"),  # not hidden below /upper: only the root's is the writer's
        d("work"),
        f("work/junk"),
        top=b"/upper",
    )
    assert overlay(sandbox, lower) == changes(("/etc/conf", M), ("/lost+found", A))
    assert own_diff_size(sandbox) == 4


def test_empty_content(layer: Layers) -> None:
    lower = layer(f("a"))
    assert overlay(LayerContent(None), lower) == []
    assert own_diff_size(LayerContent(None)) == 0
    assert tree([LayerContent(None), lower], [lower]) == []
    assert tree([lower], [LayerContent(None)]) == changes(("/a", A))


# -- sizes -----------------------------------------------------------------------------------


def test_own_diff_size_counts_hard_links_once_and_no_directories(layer: Layers) -> None:
    upper = layer(
        d("d"),
        f("d/one", b"12345"),
        TarEntry("d/two", kind="hardlink", target="d/one"),
        TarEntry("three", kind="hardlink", target="d/one"),
        TarEntry("sym", kind="symlink", target="abcdef"),  # symlinks count their target length
        f(".wh.gone"),  # a whiteout device: 0 bytes
        TarEntry("fifo", kind="fifo"),
    )
    assert own_diff_size(upper) == 5 + 6


def test_change_size_counts_hard_links_once(layer: Layers) -> None:
    lower = layer(f("old", b"abc"))
    upper = layer(
        f("old", b"abcdefgh", T + 1),
        f("new", b"1234567890"),
        TarEntry("new-link", kind="hardlink", target="new"),
        d("dir"),
    )
    view = MergedView.build([upper, lower])
    got = tree_changes(view, MergedView.build([lower]))
    assert got == changes(("/dir", A), ("/new", A), ("/new-link", A), ("/old", M))
    assert change_size(view, got) == 8 + 10


def test_change_size_skips_deletes_and_directories(layer: Layers) -> None:
    lower = layer(d("x"), f("x/a", b"aaaa"), f("y", b"yy"))
    upper = layer(f(".wh.x"), f("y", b"yyyyyy", T + 1))
    view = MergedView.build([upper, lower])
    got = tree_changes(view, MergedView.build([lower]))
    assert got == changes(("/x", D), ("/y", M))
    assert change_size(view, got) == 6


# -- §5.7: tree comparison -----------------------------------------------------------------------


def test_tree_delete_is_not_descended_and_parents_get_a_modify(layer: Layers) -> None:
    lower = layer(d("a"), d("a/b"), d("a/b/c"), f("a/b/c/f"), f("a/keep"))
    upper = layer(d("a"), d("a/b"), f("a/b/.wh.c"))
    assert tree([upper, lower], [lower]) == changes(("/a", M), ("/a/b", M), ("/a/b/c", D))


def test_tree_type_change(layer: Layers) -> None:
    lower = layer(d("t"), f("t/inner"), f("u"))
    upper = layer(f("t"), d("u"), f("u/inside"))
    assert tree([upper, lower], [lower]) == changes(
        ("/t", M), ("/t/inner", D), ("/u", M), ("/u/inside", A)
    )


def test_tree_ignores_directory_times_but_not_file_times(layer: Layers) -> None:
    lower = layer(d("d", T), f("d/f", b"same", T), f("g", b"same", T))
    upper = layer(d("d", T + 7 * NS), f("g", b"same", T + 1))
    assert tree([upper, lower], [lower]) == changes(("/g", M))


@pytest.mark.parametrize(
    ("old_cap", "new_cap"), [(None, CAP), (CAP, None), (CAP, CAP2)], ids=["add", "drop", "change"]
)
def test_tree_capability_difference(
    layer: Layers, old_cap: bytes | None, new_cap: bytes | None
) -> None:
    def entry(cap: bytes | None) -> TarEntry:
        xattrs = {"security.capability": cap} if cap is not None else {}
        return f("bin", b"elf", T, mode=0o755, xattrs=xattrs)

    lower = layer(entry(old_cap))
    upper = layer(entry(new_cap))
    assert tree([upper, lower], [lower]) == changes(("/bin", M))


def test_tree_owner_mode_and_device_differences(layer: Layers) -> None:
    lower = layer(
        f("owner", uid=1), f("mode", mode=0o600), TarEntry("dev", kind="chr", major=1, minor=3)
    )
    upper = layer(
        f("owner", uid=2), f("mode", mode=0o644), TarEntry("dev", kind="chr", major=1, minor=5)
    )
    assert tree([upper, lower], [lower]) == changes(("/dev", M), ("/mode", M), ("/owner", M))


def test_tree_against_no_parent_is_everything(layer: Layers) -> None:
    base = layer(d("a"), f("a/b"), f("c"))
    assert tree([base], []) == changes(("/a", A), ("/a/b", A), ("/c", A))
    assert tree([], [base]) == changes(("/a", D), ("/c", D))


def test_tree_identical_views_have_no_changes(layer: Layers) -> None:
    base = layer(d("a"), f("a/b"), f("c"))
    same = layer(d("a"), f("a/b"))  # copied-up parent and file with identical metadata
    assert tree([same, base], [base]) == []
    assert overlay(same, base) == changes(("/a/b", M))  # overlay reports what the layer holds


def test_change_records_format() -> None:
    assert str(Change("/a b", ChangeKind.ADD)) == "A /a b"
    assert [k.letter for k in ChangeKind] == ["C", "A", "D"]
    assert Change("/x", ChangeKind.DELETE) == ("/x", 2)
