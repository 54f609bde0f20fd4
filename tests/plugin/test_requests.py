"""Request decoding (lcow.plugin.requests): what dockerd sends, and everything it must refuse."""

from __future__ import annotations

import pytest

from lcow.plugin.requests import (
    METHODS,
    ActivateRequest,
    ApplyDiffRequest,
    BadRequest,
    CapabilitiesRequest,
    ChangesRequest,
    CleanupRequest,
    CreateReadWriteRequest,
    CreateRequest,
    DiffRequest,
    DiffSizeRequest,
    ExistsRequest,
    GetMetadataRequest,
    GetRequest,
    IdMap,
    InitRequest,
    PutRequest,
    RemoveRequest,
    StatusRequest,
    UnknownMethod,
    decode_request,
)


def test_every_method_of_the_protocol_is_decoded() -> None:
    assert set(METHODS) == {
        "Plugin.Activate",
        *(
            f"GraphDriver.{m}"
            for m in [
                *("Init", "Capabilities", "Create", "CreateReadWrite", "Remove", "Get", "Put"),
                *("Exists", "Status", "GetMetadata", "Cleanup", "Diff", "Changes", "ApplyDiff"),
                "DiffSize",
            ]
        ),
    }


@pytest.mark.parametrize(
    ("method", "body", "expected"),
    [
        ("/Plugin.Activate", b"", ActivateRequest()),
        ("Plugin.Activate", b"garbage", ActivateRequest()),
        (
            "/GraphDriver.Init",
            b'{"Home":"/var/lib/docker/lcow","Opts":null,"UIDMaps":null,"GIDMaps":null}\n',
            InitRequest("/var/lib/docker/lcow", (), None, None),
        ),
        (
            "/GraphDriver.Init",
            b'{"Home":"/h","Opts":["lcow.globalmode=true","size=1G"],'
            b'"UIDMaps":[{"container_id":0,"host_id":100000,"size":65536}],"GIDMaps":[]}',
            InitRequest("/h", ("lcow.globalmode=true", "size=1G"), (IdMap(0, 100000, 65536),), ()),
        ),
        ("/GraphDriver.Capabilities", b"{}\n", CapabilitiesRequest()),
        ("/GraphDriver.Status", b"", StatusRequest()),
        ("/GraphDriver.Cleanup", b"null", CleanupRequest()),
        ("/GraphDriver.Create", b'{"ID":"a"}', CreateRequest("a")),
        ("/GraphDriver.Create", b'{"ID":"a","Parent":""}', CreateRequest("a", None)),
        (
            "/GraphDriver.CreateReadWrite",
            b'{"ID":"c","Parent":"c-init","StorageOpt":{"size":"512M"}}',
            CreateReadWriteRequest("c", "c-init", "", {"size": "512M"}),
        ),
        ("/GraphDriver.Remove", b'{"ID":"a"}', RemoveRequest("a")),
        ("/GraphDriver.Get", b'{"ID":"a","MountLabel":"l"}', GetRequest("a", "l")),
        ("/GraphDriver.Put", b'{"ID":"a"}', PutRequest("a")),
        ("/GraphDriver.Exists", b'{"ID":"a"}', ExistsRequest("a")),
        ("/GraphDriver.GetMetadata", b'{"ID":"a"}', GetMetadataRequest("a")),
        ("/GraphDriver.Diff", b'{"ID":"a","Parent":"b"}', DiffRequest("a", "b")),
        ("/GraphDriver.Changes", b'{"ID":"a","Parent":"b"}', ChangesRequest("a", "b")),
        ("/GraphDriver.DiffSize", b'{"ID":"a"}', DiffSizeRequest("a", None)),
        ("/GraphDriver.ApplyDiff?id=a&parent=", b"tar", ApplyDiffRequest("a", None)),
        ("/GraphDriver.ApplyDiff?id=a&parent=b", b"", ApplyDiffRequest("a", "b")),
        ("/GraphDriver.ApplyDiff?parent=b&id=a&id=z", b"", ApplyDiffRequest("a", "b")),
        # Go's encoding/json: case-insensitive names, unknown fields ignored, null = zero value
        ("/GraphDriver.Get", b'{"id":"a","mountlabel":null,"Extra":[1]}', GetRequest("a", "")),
        ("/GraphDriver.Create", b'{"ID":"a","StorageOpt":null}', CreateRequest("a")),
    ],
)
def test_decodes(method: str, body: bytes, expected: object) -> None:
    decoded = decode_request(method, body)
    assert decoded == expected
    assert type(decoded) is type(expected)


@pytest.mark.parametrize(
    ("method", "body", "message"),
    [
        ("/GraphDriver.Get", b"{", "malformed JSON"),
        ("/GraphDriver.Get", b"\xff\xfe", "malformed JSON"),
        ("/GraphDriver.Get", b"[]", "expected a JSON object, got an array"),
        ("/GraphDriver.Get", b'"x"', "expected a JSON object, got a string"),
        ("/GraphDriver.Get", b"{}", "invalid layer id"),
        ("/GraphDriver.Get", b'{"ID":""}', "invalid layer id"),
        ("/GraphDriver.Get", b'{"ID":7}', "field ID: expected a string, got a number"),
        ("/GraphDriver.Get", b'{"ID":"../x"}', "invalid layer id"),
        ("/GraphDriver.Get", b'{"ID":"a/b"}', "invalid layer id"),
        ("/GraphDriver.Get", b'{"ID":".."}', "invalid layer id"),
        ("/GraphDriver.Get", b'{"ID":"a\\u0000"}', "invalid layer id"),
        ("/GraphDriver.Get", b'{"ID":"\\ud800"}', "lone surrogate"),
        ("/GraphDriver.Get", b'{"ID":"a","x":NaN}', "malformed JSON"),
        ("/GraphDriver.Create", b'{"ID":"a","Parent":"b\\\\c"}', "invalid layer id"),
        ("/GraphDriver.Create", b'{"ID":"a","StorageOpt":{"size":1}}', "an object of strings"),
        ("/GraphDriver.Create", b'{"ID":"a","StorageOpt":[]}', "an object of strings"),
        ("/GraphDriver.Init", b'{"Home":"/h","Opts":"x"}', "an array of strings"),
        ("/GraphDriver.Init", b'{"Home":"/h","UIDMaps":{}}', "an array of ID maps"),
        (
            "/GraphDriver.Init",
            b'{"Home":"/h","UIDMaps":[{"container_id":true}]}',
            "expected an integer",
        ),
        ("/GraphDriver.Init", b'{"Home":"/h","GIDMaps":[{"size":1.5}]}', "expected an integer"),
        ("/GraphDriver.Init", b'{"Home":"/h","GIDMaps":[{"size":1e30}]}', "expected an integer"),
        ("/GraphDriver.Init", b'{"Home":"/h","GIDMaps":[{"size":' + b"9" * 30 + b"}]}", "64-bit"),
        ("/GraphDriver.Init", b"[" * 100000 + b"]" * 100000, "malformed JSON"),
        ("/GraphDriver.ApplyDiff", b"", "invalid layer id"),
        ("/GraphDriver.ApplyDiff?id=&parent=", b"", "invalid layer id"),
        ("/GraphDriver.ApplyDiff?id=a&parent=..", b"", "invalid layer id"),
        ("/GraphDriver.ApplyDiff?id=%ff", b"", "malformed query"),
        ("/GraphDriver.Get", b" " * (1 << 20) + b"{}", "larger than"),
    ],
)
def test_refuses(method: str, body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_request(method, body)
    assert message in str(caught.value)
    assert not isinstance(caught.value, UnknownMethod)


@pytest.mark.parametrize("method", ["/GraphDriver.Foo", "/", "", "/Plugin.Deactivate", "/x?y"])
def test_unknown_methods(method: str) -> None:
    with pytest.raises(UnknownMethod):
        decode_request(method, b"{}")
