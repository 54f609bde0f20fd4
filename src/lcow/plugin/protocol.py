"""What the plugin answers: content types, response bodies and error statuses (SPEC §9.2, §9.3).

Responses mirror moby's ``graphDriverResponse``: exact field names, nested ``Capabilities``,
Go's ``omitempty`` for the optional ones, a JSON document followed by a newline as Go's encoder
writes it. Errors (SPEC §9.3): a driver failure in a JSON endpoint is HTTP 200 with
``{"Err": message}`` (the daemon reports ``message`` as is); a request that cannot be decoded is
400, an unknown method 404 (the daemon reads 404 as "not implemented"), a failure of Diff or a
bug 500 — Diff must never answer 200 with an error, since any 200 body is read as the tar.

dockerd prints ``Err`` on its users' terminals, and the message names what the request or a
layer's tar brought (ids, entry names, paths): so it is made :func:`printable` here, where the
answer is built, and only here — a control character becomes a backslash escape, the JSON stays
the exact JSON of that text. Other fields (Changes' paths, Status) are data and go out as they
are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from lcow._util.escape import printable
from lcow.errors import LcowError
from lcow.layerdiff.changes import Change

__all__ = [
    "CONTENT_TYPE",
    "IMPLEMENTS",
    "TAR_CONTENT_TYPE",
    "capabilities_body",
    "changes_body",
    "encode",
    "error_body",
    "error_message",
    "status_body",
]

#: Docker plugin responses (dockerd parses any content type as JSON; this is the customary one).
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
TAR_CONTENT_TYPE = "application/x-tar"
IMPLEMENTS = {"Implements": ["GraphDriver"]}


def encode(value: Mapping[str, object]) -> bytes:
    """A response body: compact JSON and a newline, like Go's ``json.Encoder``."""
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def error_message(exc: BaseException) -> str:
    """The text sent as ``Err``: lcow errors as they read, OS errors without Python's
    ``[Errno n]`` noise, anything else named by its type (a bug)."""
    if isinstance(exc, LcowError):
        return str(exc)
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        name = exc.filename
        return f"{name}: {text}" if name is not None else text
    return f"internal error: {type(exc).__name__}: {exc}"


def error_body(message: str) -> bytes:
    """``{"Err": message}`` with ``message`` made printable (see the module's docstring)."""
    return encode({"Err": printable(message)})


def capabilities_body(reproduces_exact_diffs: bool = False) -> bytes:
    """``{"Capabilities": {"ReproducesExactDiffs": false}}`` — nested, as dockerd reads it."""
    return encode({"Capabilities": {"ReproducesExactDiffs": reproduces_exact_diffs}})


def status_body(pairs: Iterable[Sequence[str]]) -> bytes:
    """``{"Status": [["k", "v"], ...]}``."""
    return encode({"Status": [[str(k), str(v)] for k, v in pairs]})


def changes_body(changes: Iterable[Change]) -> bytes:
    """``{"Changes": [{"Path", "Kind"}, ...]}``, Kind 0 Modify, 1 Add, 2 Delete."""
    return encode({"Changes": [{"Path": c.path, "Kind": int(c.kind)} for c in changes]})
