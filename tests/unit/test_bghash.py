"""lcow._util.bghash.BackgroundHash: the SHA-256 of every piece given, in order, whatever their
sizes (batches cross piece boundaries), computed on a thread that ends with it."""

from __future__ import annotations

import hashlib
import random
import threading

from lcow._util.bghash import BackgroundHash


def _sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def test_digest_of_pieces_of_every_size() -> None:
    rng = random.Random(11)
    pieces = [rng.randbytes(rng.choice([0, 1, 100, 65536, 300_000, 1 << 20])) for _ in range(40)]
    hashed = BackgroundHash()
    for piece in pieces:
        hashed.update(piece)
    assert hashed.digest() == _sha(b"".join(pieces))


def test_digest_of_nothing() -> None:
    assert BackgroundHash().digest() == _sha(b"")


def test_close_ends_the_thread_and_digest_after_it_still_answers() -> None:
    before = threading.active_count()
    hashed = BackgroundHash()
    hashed.update(b"abc")
    hashed.close()
    hashed.close()  # idempotent
    assert threading.active_count() == before
    assert hashed.digest() == _sha(b"abc")
