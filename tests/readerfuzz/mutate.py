"""Mutants of a seed image: a byte patch and an optional truncation, drawn at random.

Operators, as :func:`mutate` draws them: bit flips and byte sets (mostly inside metadata),
targeted field values (a field of :func:`~tests.readerfuzz.seeds.structure_map` set to a value
chosen for its role: 0, 1, the maximum, off by one, another inode — often a directory, to make
loops — or another block), block swaps and copies, truncation, and stacks of two or three of
these. A :class:`Mutant` is plain data (JSON-able), so a finding is kept as the seed's name and a
patch, and can be minimised and replayed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.readerfuzz.seeds import FOOTER, Field

__all__ = ["Mutant", "apply", "minimise", "mutate"]

BLOCK = 4096


@dataclass
class Mutant:
    """A seed with some bytes replaced and perhaps cut short.

    Attributes:
        seed: the seed's name.
        patches: ``(offset, bytes as hex)`` written over the seed, in order.
        truncate: the length to cut the file to, or ``None``.
        ops: what the operators did, for the record.
    """

    seed: str
    patches: list[tuple[int, str]] = field(default_factory=list)
    truncate: int | None = None
    ops: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """The mutant as a JSON object."""
        return {
            "seed": self.seed,
            "patches": [[o, h] for o, h in self.patches],
            "truncate": self.truncate,
            "ops": self.ops,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Mutant:
        """The mutant of :meth:`to_json`."""
        patches = [(int(o), str(h)) for o, h in data["patches"]]  # type: ignore[attr-defined]
        truncate = data.get("truncate")
        ops = [str(op) for op in data.get("ops", [])]  # type: ignore[attr-defined]
        return cls(str(data["seed"]), patches, None if truncate is None else int(truncate), ops)  # type: ignore[call-overload]


def apply(seed: bytes, mutant: Mutant) -> bytes:
    """The mutant's bytes."""
    data = bytearray(seed)
    for offset, hexed in mutant.patches:
        raw = bytes.fromhex(hexed)
        data[offset : offset + len(raw)] = raw
    if mutant.truncate is not None:
        del data[mutant.truncate :]
    return bytes(data)


# -- operators ---------------------------------------------------------------------------------


def _metadata_offset(rng: random.Random, fields: list[Field], size: int) -> int:
    """A byte offset: inside a mapped structure most of the time, anywhere otherwise."""
    if fields and rng.random() < 0.8:
        f = rng.choice(fields)
        span = BLOCK if f.kind in ("dirent", "extent", "xattr") and rng.random() < 0.3 else f.size
        return min(size - 1, f.offset + rng.randrange(span))
    return rng.randrange(size)


def _bit_flips(rng: random.Random, data: bytes, fields: list[Field], m: Mutant) -> None:
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        at = _metadata_offset(rng, fields, len(data))
        value = data[at] ^ (1 << rng.randrange(8))
        m.patches.append((at, bytes([value]).hex()))
        m.ops.append(f"flip@{at}")


_INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF, 0x0A, 0x2F, 0x2E)


def _byte_sets(rng: random.Random, data: bytes, fields: list[Field], m: Mutant) -> None:
    for _ in range(rng.choice((1, 2, 4))):
        at = _metadata_offset(rng, fields, len(data))
        value = rng.choice(_INTERESTING_BYTES) if rng.random() < 0.7 else rng.randrange(256)
        m.patches.append((at, bytes([value]).hex()))
        m.ops.append(f"set@{at}={value:#x}")


def _field_value(rng: random.Random, f: Field, old: int, dirs: list[int], inodes: int) -> int:
    top = (1 << (8 * f.size)) - 1
    choices = [0, 1, 2, top, top >> 1, (top >> 1) + 1, old + 1, old - 1, old * 2, old ^ top]
    choices.append(rng.randrange(top + 1))
    if f.role == "ino":
        choices += [2, 11, inodes, inodes + 1, *rng.sample(dirs, min(3, len(dirs)))]
        if rng.random() < 0.5 and dirs:
            return rng.choice([*dirs, 2])  # a loop or a second name, most of the time
    elif f.role == "mode":  # another file type, same permissions; or no type at all
        kind = rng.choice((0o040000, 0o100000, 0o120000, 0o020000, 0o060000, 0o010000, 0))
        return (old & 0o7777) | kind
    elif f.role == "flags":  # toggle inline data, extents, htree index, EA inode, huge file
        return old ^ rng.choice((0x10000000, 0x80000, 0x1000, 0x200000, 0x40000))
    elif f.role == "name":  # a name that is ".", "/", NUL or not UTF-8
        return rng.choice((0x2E, 0x2F, 0x00, 0xFF, 0x0A))
    elif f.role == "block":
        choices += [old + 1, old + 2, 0, 1, rng.randrange(1, 64)]
    elif f.role == "len":
        choices += [old + 4, old - 4, old + 12, 4096, 65535, 1 << 16, 1 << 31]
    return rng.choice(choices) & top


def _targeted(
    rng: random.Random, data: bytes, fields: list[Field], m: Mutant, dirs: list[int]
) -> None:
    inodes = int.from_bytes(data[1024:1028], "little")
    for _ in range(rng.choice((1, 1, 2))):
        f = rng.choice(fields)
        old = int.from_bytes(data[f.offset : f.offset + f.size], "little")
        value = _field_value(rng, f, old, dirs, inodes)
        m.patches.append((f.offset, value.to_bytes(f.size, "little").hex()))
        m.ops.append(f"{f.kind}.{f.name}@{f.offset}={value:#x}")


def _block_swap(rng: random.Random, data: bytes, fields: list[Field], m: Mutant) -> None:
    blocks = (len(data) - FOOTER) // BLOCK
    if blocks < 2:
        return
    hot = sorted({f.offset // BLOCK for f in fields if f.offset // BLOCK < blocks})

    def pick() -> int:
        return rng.choice(hot) if hot and rng.random() < 0.7 else rng.randrange(blocks)

    a, b = pick(), pick()
    block_a = data[a * BLOCK : (a + 1) * BLOCK]
    block_b = data[b * BLOCK : (b + 1) * BLOCK]
    if rng.random() < 0.5:
        m.patches += [(a * BLOCK, block_b.hex()), (b * BLOCK, block_a.hex())]
        m.ops.append(f"swap-blocks {a} {b}")
    else:
        m.patches.append((b * BLOCK, block_a.hex()))
        m.ops.append(f"copy-block {a} over {b}")


def _truncate(rng: random.Random, data: bytes, fields: list[Field], m: Mutant) -> None:
    size = len(data)
    cut = rng.choice(
        (
            rng.randrange(size),
            rng.randrange(size // BLOCK + 1) * BLOCK,
            size - FOOTER,
            size - rng.randrange(1, FOOTER),
            rng.randrange(2048),
        )
    )
    m.truncate = cut if m.truncate is None else min(cut, m.truncate)
    m.ops.append(f"truncate {cut}")


_SIMPLE = (_bit_flips, _byte_sets, _block_swap)


def mutate(
    rng: random.Random, seed_name: str, data: bytes, fields: list[Field], dirs: list[int]
) -> Mutant:
    """Draw one mutant of ``data`` (seed ``seed_name``).

    Args:
        rng: the campaign's random source.
        seed_name: recorded in the mutant.
        data: the seed's bytes.
        fields: its structure map.
        dirs: its directory inode numbers (for loops).
    """
    m = Mutant(seed_name)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        roll = rng.random()
        if roll < 0.45:
            _targeted(rng, data, fields, m, dirs)
        elif roll < 0.93:
            rng.choice(_SIMPLE)(rng, data, fields, m)
        else:
            _truncate(rng, data, fields, m)
    return m


# -- minimisation ------------------------------------------------------------------------------


def _byte_patches(seed: bytes, mutant: Mutant) -> list[tuple[int, int]]:
    """The mutant's changes as single bytes that differ from the seed."""
    data = apply(seed, Mutant(mutant.seed, mutant.patches))
    return [(i, data[i]) for i in range(len(seed)) if data[i] != seed[i]]


def minimise(
    seed: bytes, mutant: Mutant, still_fails: Callable[[Mutant], bool], *, budget: int = 200
) -> Mutant:
    """A smaller mutant that still fails: truncation dropped if it can be, then changed bytes
    removed by halves, quarters ... and one at a time (``ddmin``), at most ``budget`` trials.

    Args:
        seed: the seed's bytes.
        mutant: the failing mutant.
        still_fails: whether a candidate still shows the failure.
        budget: most trials.
    """
    trials = 0

    def fails(candidate: Mutant) -> bool:
        nonlocal trials
        trials += 1
        return still_fails(candidate)

    def build(kept: list[tuple[int, int]], cut: int | None) -> Mutant:
        patches = [(o, bytes([v]).hex()) for o, v in kept]
        return Mutant(mutant.seed, patches, cut, [*mutant.ops, "minimised"])

    truncate = mutant.truncate
    changes = _byte_patches(seed, mutant)
    if truncate is not None:
        changes = [c for c in changes if c[0] < truncate]
        if fails(build(changes, None)):
            truncate = None
    chunk = max(1, len(changes) // 2)
    while changes and trials < budget:
        i = 0
        removed = False
        while i < len(changes) and trials < budget:
            candidate = changes[:i] + changes[i + chunk :]
            if fails(build(candidate, truncate)):
                changes, removed = candidate, True
            else:
                i += chunk
        if not removed:
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
    return build(changes, truncate)
