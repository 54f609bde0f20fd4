"""References, ``WWW-Authenticate`` challenges and Docker config credentials, without a registry.

Credential helpers are real processes: a fake ``docker-credential-<name>`` shell script (named as
the fake it is) on ``PATH`` that answers like docker's helpers do, and records what it was asked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lcow.errors import InvalidArgument
from lcow.registry.challenge import Challenge, parse_challenges
from lcow.registry.credentials import find_credentials
from lcow.registry.reference import parse_reference
from lcow.registry.resolve import Platform, parse_platform
from tests.registry.conftest import basic_auth

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "normalised", "host", "lookup"),
    [
        ("busybox", "docker.io/library/busybox:latest", "registry-1.docker.io", "latest"),
        ("me/app:1.0", "docker.io/me/app:1.0", "registry-1.docker.io", "1.0"),
        ("index.docker.io/busybox", "docker.io/library/busybox:latest", "registry-1.docker.io",
         "latest"),
        ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000/a/b:v1", "127.0.0.1:5000", "v1"),
        ("localhost/app", "localhost/app:latest", "localhost", "latest"),
        ("ghcr.io/o/a__b-c.d@sha256:" + HEX, "ghcr.io/o/a__b-c.d@sha256:" + HEX, "ghcr.io",
         "sha256:" + HEX),
        ("x:tag@sha256:" + HEX, "docker.io/library/x:tag@sha256:" + HEX, "registry-1.docker.io",
         "sha256:" + HEX),
    ],
)  # fmt: skip
def test_references_normalise_as_docker_does(
    text: str, normalised: str, host: str, lookup: str
) -> None:
    ref = parse_reference(text)
    assert (str(ref), ref.api_host, ref.lookup) == (normalised, host, lookup)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Busybox", "must be lowercase"),
        ("a:b:c", "invalid repository component"),
        ("x@sha256:12", "is not sha256:<64 lower-case hex>"),
        ("x@md5:" + HEX, "is not sha256"),
        ("x:-bad", "invalid tag"),
        ("", "invalid repository component"),
        ("a" * 256, "longer than 255"),
    ],
)
def test_bad_references_are_refused(text: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid image reference") as caught:
        parse_reference(text)
    assert why in str(caught.value)


def test_platforms() -> None:
    assert parse_platform("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert Platform("linux", "arm64", "v8").matches({"os": "linux", "architecture": "arm64"})
    assert not Platform("linux", "arm", "v7").matches(
        {"os": "linux", "architecture": "arm", "variant": "v6"}
    )
    with pytest.raises(InvalidArgument):
        parse_platform("linux")


def test_challenges() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull", Basic realm="x \\"quoted\\""'
    )
    assert parse_challenges(header) == [
        Challenge("bearer", {"realm": "https://auth.example/token",
                             "service": "registry.example", "scope": "repository:a/b:pull"}),
        Challenge("basic", {"realm": 'x "quoted"'}),
    ]  # fmt: skip
    assert parse_challenges("") == []
    assert parse_challenges("Basic") == [Challenge("basic", {})]


def _config(tmp_path: Path, value: dict[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(value))
    return path


def test_auths_entries(tmp_path: Path) -> None:
    config = _config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": basic_auth("hub", "p:w")},
        "https://h.example:5000/v2/": {"username": "u", "password": "pw"},
        "bad.example": {"auth": "not base64!"},
    }})  # fmt: skip
    hub = find_credentials("docker.io", config)
    assert hub is not None and (hub.username, hub.password) == ("hub", "p:w")
    other = find_credentials("h.example:5000", config)
    assert other is not None and (other.username, other.password) == ("u", "pw")
    assert "pw" not in repr(other)
    assert find_credentials("nothing.example", config) is None
    assert find_credentials("x.example", tmp_path / "missing.json") is None
    with pytest.raises(InvalidArgument, match="not base64"):
        find_credentials("bad.example", config)


def _fake_helper(folder: Path, name: str, answer: dict[str, str] | None) -> Path:
    """A fake ``docker-credential-<name>``: records its argument and stdin, prints ``answer``
    (or fails like a helper without the credentials)."""
    folder.mkdir(exist_ok=True)
    log = folder / f"{name}.log"
    body = f'echo "$1 $(cat)" >> {log}\n' + (
        f"echo '{json.dumps(answer)}'\n" if answer else "echo 'credentials not found'; exit 1\n"
    )
    script = folder / f"docker-credential-{name}"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return log


def test_credential_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    per_host = _fake_helper(bin_dir, "perhost", {"Username": "h", "Secret": "s1"})
    store = _fake_helper(bin_dir, "store", {"Username": "st", "Secret": "s2"})
    _fake_helper(bin_dir, "empty", None)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = _config(tmp_path, {
        "credHelpers": {"h.example": "perhost"},
        "credsStore": "store",
        "auths": {"h.example": {"auth": basic_auth("ignored", "x")}},
    })  # fmt: skip
    found = find_credentials("h.example", config)
    assert found is not None and (found.username, found.password) == ("h", "s1")
    assert per_host.read_text() == "get h.example\n"
    hub = find_credentials("docker.io", config)
    assert hub is not None and (hub.username, hub.password) == ("st", "s2")
    assert store.read_text() == "get https://index.docker.io/v1/\n"
    # a store without the entry falls through to auths
    auths = {"a.example": {"auth": basic_auth("a", "b")}}
    fallback = _config(tmp_path, {"credsStore": "empty", "auths": auths})
    found = find_credentials("a.example", fallback)
    assert found is not None and found.username == "a"


def test_identity_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``identitytoken`` wins over a password beside it (docker's ``auth`` is then ``user:``);
    a helper's ``<token>`` user makes its secret the identity token; neither is in repr."""
    bin_dir = tmp_path / "bin"
    _fake_helper(bin_dir, "tok", {"Username": "<token>", "Secret": "refresh-from-helper"})
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = _config(tmp_path, {
        "credHelpers": {"helper.example": "tok"},
        "auths": {
            "https://t.example/v2/": {"auth": basic_auth("me", ""), "identitytoken": "refresh-1"},
            "only.example": {"identitytoken": "refresh-2"},
        },
    })  # fmt: skip
    beside = find_credentials("t.example", config)
    assert beside is not None
    assert (beside.username, beside.password, beside.identity_token) == ("me", "", "refresh-1")
    assert "refresh-1" not in repr(beside) and "identity token" in beside.describe()
    only = find_credentials("only.example", config)
    assert only is not None and (only.username, only.identity_token) == ("", "refresh-2")
    helped = find_credentials("helper.example", config)
    assert helped is not None and helped.identity_token == "refresh-from-helper"
    assert helped.password == "" and "refresh-from-helper" not in repr(helped)
