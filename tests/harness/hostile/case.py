"""One hostile case (:class:`HostileCase`), the builders of its tar, and :func:`registry`,
which the case modules use to list their cases in order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from tests.harness.hostile.expect import Expect
from tests.harness.hostile.tarbuild import END

__all__ = ["Builder", "HostileCase", "Register", "lazy", "registry", "tar_of"]


Builder = Callable[[BinaryIO], object]


@dataclass(frozen=True)
class HostileCase:
    """One hostile input.

    Attributes:
        name: short id (file name of the corpus entry).
        description: what the input is and why it is hostile.
        build: writes the uncompressed tar stream.
        expect: the outcome every sink must give.
        gzip: store the input gzip-compressed (huge but repetitive streams).
        slow: too heavy for the quick test run (``pytest -m "not slow"`` skips it).
        rss_mib: peak RSS a sink may reach on it, MiB (the process baseline included).
        cut: bytes cut from the end of the stored input (a compressed stream cut short).
        extract: what ``extract_archive`` must do instead of :attr:`expect`, where Docker's
            ``Untar`` legitimately differs from ApplyDiff (``None``: the same).
        extract_why: why it differs (shown in the corpus table of RELIABILITY.md).
    """

    name: str
    description: str
    build: Builder
    expect: Expect
    gzip: bool = False
    slow: bool = False
    rss_mib: int = 200
    cut: int = 0
    extract: Expect | None = None
    extract_why: str = ""

    @property
    def extract_expect(self) -> Expect:
        """What ``extract_archive`` of a view must do with this case."""
        return self.expect if self.extract is None else self.extract


def tar_of(*parts: bytes, end: bool = True) -> Builder:
    """A builder writing ``parts`` (and :data:`END` unless ``end=False``)."""
    data = b"".join(parts) + (END if end else b"")
    return lambda out: out.write(data)


def lazy(make: Callable[[], bytes]) -> Builder:
    """A builder writing what ``make`` returns, made only when the case is written."""
    return lambda out: out.write(make())


class Register(Protocol):
    """Adds one case to a list (see :func:`registry`)."""

    def __call__(
        self, name: str, description: str, build: Builder, expect: Expect, **kw: object
    ) -> None:
        """Append ``HostileCase(name, description, build, expect, **kw)``."""


def registry(cases: list[HostileCase]) -> Register:
    """A ``case(...)`` function appending to ``cases`` (names are unique within it)."""

    def case(name: str, description: str, build: Builder, expect: Expect, **kw: object) -> None:
        assert all(c.name != name for c in cases), name
        cases.append(HostileCase(name, description, build, expect, **kw))  # type: ignore[arg-type]

    return case
