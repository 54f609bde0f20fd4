"""Decoding of graph-driver plugin requests: bytes in, a typed request out (SPEC §9.2).

Pure functions with no I/O, so the server, the tests and a fuzzing harness share one decoder:
:func:`decode_request` takes the method (the URL path, ``/GraphDriver.Create``, and for ApplyDiff
its query) and the body, and returns one of the request classes below or raises
:class:`BadRequest`. Decoding follows Go's ``encoding/json`` as dockerd's peer would: an empty
or ``null`` body is an empty request, unknown fields are ignored, field names match exactly or
else case-insensitively, ``null`` leaves a field at its zero value, and a wrong type is an
error. Unlike Go, layer ids are checked here (one path component, SPEC §3), so every handler
receives usable ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeAlias
from urllib.parse import parse_qsl

from lcow.errors import InvalidArgument
from lcow.storage.dataroot import validate_id

__all__ = [
    "METHODS",
    "ActivateRequest",
    "ApplyDiffRequest",
    "BadRequest",
    "CapabilitiesRequest",
    "ChangesRequest",
    "CleanupRequest",
    "CreateReadWriteRequest",
    "CreateRequest",
    "DiffRequest",
    "DiffSizeRequest",
    "ExistsRequest",
    "GetMetadataRequest",
    "GetRequest",
    "IdMap",
    "InitRequest",
    "PutRequest",
    "RemoveRequest",
    "Request",
    "StatusRequest",
    "UnknownMethod",
    "decode_request",
    "split_method",
]

MAX_JSON_BODY = 1 << 20  # requests other than ApplyDiff are small JSON documents
_MAX_INT64 = (1 << 63) - 1


class BadRequest(InvalidArgument):
    """The request cannot be decoded (bad JSON, wrong field type, invalid id)."""


class UnknownMethod(BadRequest):
    """The method is not part of the protocol (answered with 404: not implemented)."""


@dataclass(frozen=True)
class IdMap:
    """One user-namespace ID mapping (``idtools.IDMap``: lowercase JSON keys)."""

    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class ActivateRequest:
    """``/Plugin.Activate``: the handshake; the body is ignored."""

    method: ClassVar[str] = "Plugin.Activate"


@dataclass(frozen=True)
class InitRequest:
    """``GraphDriver.Init``: the data root (``<data-root>/<name>``) and ``--storage-opt`` values."""

    method: ClassVar[str] = "GraphDriver.Init"
    home: str
    opts: tuple[str, ...] = ()
    uid_maps: tuple[IdMap, ...] | None = None
    gid_maps: tuple[IdMap, ...] | None = None


@dataclass(frozen=True)
class CapabilitiesRequest:
    """``GraphDriver.Capabilities``."""

    method: ClassVar[str] = "GraphDriver.Capabilities"


@dataclass(frozen=True)
class StatusRequest:
    """``GraphDriver.Status``."""

    method: ClassVar[str] = "GraphDriver.Status"


@dataclass(frozen=True)
class CleanupRequest:
    """``GraphDriver.Cleanup``."""

    method: ClassVar[str] = "GraphDriver.Cleanup"


@dataclass(frozen=True)
class CreateRequest:
    """``GraphDriver.Create``; ``parent`` ``None`` for a base layer (the wire's ``""``)."""

    method: ClassVar[str] = "GraphDriver.Create"
    id: str
    parent: str | None = None
    mount_label: str = ""
    storage_opt: Mapping[str, str] | None = None


@dataclass(frozen=True)
class CreateReadWriteRequest(CreateRequest):
    """``GraphDriver.CreateReadWrite``: as Create, plus an empty writable disk."""

    method: ClassVar[str] = "GraphDriver.CreateReadWrite"


@dataclass(frozen=True)
class RemoveRequest:
    """``GraphDriver.Remove``."""

    method: ClassVar[str] = "GraphDriver.Remove"
    id: str


@dataclass(frozen=True)
class GetRequest:
    """``GraphDriver.Get``."""

    method: ClassVar[str] = "GraphDriver.Get"
    id: str
    mount_label: str = ""


@dataclass(frozen=True)
class PutRequest:
    """``GraphDriver.Put``."""

    method: ClassVar[str] = "GraphDriver.Put"
    id: str


@dataclass(frozen=True)
class ExistsRequest:
    """``GraphDriver.Exists``."""

    method: ClassVar[str] = "GraphDriver.Exists"
    id: str


@dataclass(frozen=True)
class GetMetadataRequest:
    """``GraphDriver.GetMetadata``."""

    method: ClassVar[str] = "GraphDriver.GetMetadata"
    id: str


@dataclass(frozen=True)
class DiffRequest:
    """``GraphDriver.Diff``: the answer is a raw tar body."""

    method: ClassVar[str] = "GraphDriver.Diff"
    id: str
    parent: str | None = None


@dataclass(frozen=True)
class ChangesRequest(DiffRequest):
    """``GraphDriver.Changes``."""

    method: ClassVar[str] = "GraphDriver.Changes"


@dataclass(frozen=True)
class DiffSizeRequest(DiffRequest):
    """``GraphDriver.DiffSize``."""

    method: ClassVar[str] = "GraphDriver.DiffSize"


@dataclass(frozen=True)
class ApplyDiffRequest:
    """``GraphDriver.ApplyDiff?id=<id>&parent=<p>``: the tar is the body, streamed separately."""

    method: ClassVar[str] = "GraphDriver.ApplyDiff"
    id: str
    parent: str | None = None


Request: TypeAlias = (
    ActivateRequest
    | InitRequest
    | CapabilitiesRequest
    | StatusRequest
    | CleanupRequest
    | CreateRequest
    | RemoveRequest
    | GetRequest
    | PutRequest
    | ExistsRequest
    | GetMetadataRequest
    | DiffRequest
    | ApplyDiffRequest
)

# -- JSON helpers ----------------------------------------------------------------------------


class _Fields:
    """A decoded JSON object, looked up the way Go's ``encoding/json`` matches struct fields."""

    def __init__(self, method: str, obj: Mapping[str, object]) -> None:
        self._method = method
        self._obj = obj
        self._folded: dict[str, str] = {}
        for key in obj:
            self._folded.setdefault(key.casefold(), key)

    def raw(self, name: str) -> object:
        if name in self._obj:
            return self._obj[name]
        key = self._folded.get(name.casefold())
        return None if key is None else self._obj[key]

    def error(self, name: str, wanted: str, value: object) -> BadRequest:
        return BadRequest(
            f"{self._method}: field {name}: expected {wanted}, got {_json_type(value)}",
            subject=name,
        )

    def string(self, name: str) -> str:
        value = self.raw(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(name, "a string", value)
        _check_text(self._method, name, value)
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "an array of strings", value)
        for item in value:
            _check_text(self._method, name, item)
        return tuple(value)

    def string_map(self, name: str) -> dict[str, str] | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.error(name, "an object of strings", value)
        for key, item in value.items():
            _check_text(self._method, name, key)
            _check_text(self._method, name, item)
        return dict(value)

    def id_maps(self, name: str) -> tuple[IdMap, ...] | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.error(name, "an array of ID maps", value)
        maps = []
        for item in value:
            if item is None:
                maps.append(IdMap(0, 0, 0))  # Go: null element = zero struct
                continue
            if not isinstance(item, dict):
                raise self.error(name, "an array of ID maps", item)
            entry = _Fields(self._method, item)
            numbers = [entry.integer(f"{name}[].{key}", key) for key in _ID_MAP_KEYS]
            maps.append(IdMap(*numbers))
        return tuple(maps)

    def integer(self, label: str, name: str) -> int:
        value = self.raw(name)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(label, "an integer", value)
        if not -_MAX_INT64 - 1 <= value <= _MAX_INT64:
            raise self.error(label, "a 64-bit integer", value)
        return value


_ID_MAP_KEYS = ("container_id", "host_id", "size")


def _check_text(method: str, name: str, value: str) -> None:
    """Reject lone UTF-16 surrogates (``"\\ud800"``): they cannot become file names."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            f"{method}: field {name}: invalid Unicode (a lone surrogate)", subject=name
        ) from None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _load_object(method: str, body: bytes) -> _Fields:
    """The body as a JSON object (empty and ``null`` bodies are the empty object)."""
    if len(body) > MAX_JSON_BODY:
        raise BadRequest(f"{method}: request body larger than {MAX_JSON_BODY} bytes")
    if not body.strip():
        return _Fields(method, {})
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, NaN, deep nesting
        raise BadRequest(f"{method}: malformed JSON body: {exc}") from None
    if value is None:
        return _Fields(method, {})
    if not isinstance(value, dict):
        raise BadRequest(f"{method}: expected a JSON object, got {_json_type(value)}")
    return _Fields(method, value)


def _layer_id(method: str, value: str, field: str) -> str:
    _check_text(method, field, value)
    try:
        return validate_id(value)
    except InvalidArgument as exc:
        raise BadRequest(f"{method}: {field}: {exc}", subject=value) from None


def _parent(method: str, value: str) -> str | None:
    return None if value == "" else _layer_id(method, value, "Parent")


# -- decoding --------------------------------------------------------------------------------


def split_method(path: str) -> tuple[str, str]:
    """``/GraphDriver.ApplyDiff?id=a&parent=`` → ``("GraphDriver.ApplyDiff", "id=a&parent=")``."""
    name, _, query = path.partition("?")
    return name.lstrip("/"), query


def _decode_apply_diff(method: str, query: str) -> ApplyDiffRequest:
    """ApplyDiff's arguments travel in the query (dockerd does not escape them)."""
    values: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict", max_num_fields=64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{method}: malformed query: {exc}") from None
    for key, value in pairs:
        values.setdefault(key, value)  # Go's Query().Get: the first value
    layer_id = _layer_id(method, values.get("id", ""), "id")
    return ApplyDiffRequest(layer_id, _parent(method, values.get("parent", "")))


def decode_request(method: str, body: bytes) -> Request:
    """Decode one plugin call.

    Args:
        method: the request path, with or without its leading ``/``; for ApplyDiff including
            the query (``GraphDriver.ApplyDiff?id=<id>&parent=<p>``).
        body: the request body (ignored for Plugin.Activate and ApplyDiff, whose body is the
            tar).

    Returns:
        The typed request.

    Raises:
        UnknownMethod: not a method of the protocol.
        BadRequest: a malformed body or query, a field of the wrong type, an invalid layer id.
    """
    name, query = split_method(method)
    if name == ActivateRequest.method:
        return ActivateRequest()
    if name == ApplyDiffRequest.method:
        return _decode_apply_diff(name, query)
    decoder = _DECODERS.get(name)
    if decoder is None:
        raise UnknownMethod(f"unknown method '{name}'", subject=name)
    return decoder(name, _load_object(name, body))


def _id(name: str, f: _Fields) -> str:
    return _layer_id(name, f.string("ID"), "ID")


def _id_parent(name: str, f: _Fields) -> tuple[str, str | None]:
    return _id(name, f), _parent(name, f.string("Parent"))


_DECODERS: dict[str, Callable[[str, _Fields], Request]] = {
    InitRequest.method: lambda n, f: InitRequest(
        f.string("Home"), f.strings("Opts"), f.id_maps("UIDMaps"), f.id_maps("GIDMaps")
    ),
    CapabilitiesRequest.method: lambda n, f: CapabilitiesRequest(),
    StatusRequest.method: lambda n, f: StatusRequest(),
    CleanupRequest.method: lambda n, f: CleanupRequest(),
    CreateRequest.method: lambda n, f: CreateRequest(
        *_id_parent(n, f), f.string("MountLabel"), f.string_map("StorageOpt")
    ),
    CreateReadWriteRequest.method: lambda n, f: CreateReadWriteRequest(
        *_id_parent(n, f), f.string("MountLabel"), f.string_map("StorageOpt")
    ),
    RemoveRequest.method: lambda n, f: RemoveRequest(_id(n, f)),
    GetRequest.method: lambda n, f: GetRequest(_id(n, f), f.string("MountLabel")),
    PutRequest.method: lambda n, f: PutRequest(_id(n, f)),
    ExistsRequest.method: lambda n, f: ExistsRequest(_id(n, f)),
    GetMetadataRequest.method: lambda n, f: GetMetadataRequest(_id(n, f)),
    DiffRequest.method: lambda n, f: DiffRequest(*_id_parent(n, f)),
    ChangesRequest.method: lambda n, f: ChangesRequest(*_id_parent(n, f)),
    DiffSizeRequest.method: lambda n, f: DiffSizeRequest(*_id_parent(n, f)),
}

#: Every method the server answers, in the order of SPEC §9.2.
METHODS: tuple[str, ...] = (ActivateRequest.method, *_DECODERS, ApplyDiffRequest.method)
