"""What a command that converts nothing does not import: the converter and the layer reader
load where they are used (start-up time of every lcow process), and ``lcow``'s public
converter names still resolve on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lcow

_HEAVY = ("lcow.convert.tar2ext4", "lcow.convert.export", "lcow.formats.ext4.reader")


def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return set(proc.stdout.split())


def test_the_driver_and_a_converted_pull_do_not_import_the_converter(tmp_path: Path) -> None:
    """Not at import, and not when the driver is made over a data root (its backend too)."""
    loaded = _imported_after(
        "import lcow.cli.main, lcow.images.converted\n"
        "from lcow.graphdriver.driver import Driver\n"
        f"Driver({str(tmp_path / 'root')!r})"
    )
    assert {"lcow.graphdriver.driver", "lcow.backends.userspace"} <= loaded
    assert not loaded & set(_HEAVY), sorted(loaded & set(_HEAVY))


def test_public_converter_names_resolve_lazily() -> None:
    from lcow import ConvertOptions, ConvertResult, tar2ext4
    from lcow.convert.options import ConvertOptions as Options
    from lcow.convert.tar2ext4 import tar2ext4 as convert

    assert (tar2ext4, ConvertOptions) == (convert, Options)
    assert ConvertResult.__name__ == "ConvertResult"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        lcow.nothing_here  # noqa: B018 - the attribute access is the test
