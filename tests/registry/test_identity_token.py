"""Identity tokens (OAuth2 refresh tokens) against docker-registry 2.8 and the test token server.

The token server (:mod:`tests.registry.tokenserver`) serves the distribution spec's OAuth2
``POST`` beside its ``GET`` and records every form it is sent; the credential helper is a fake
``docker-credential-<name>`` shell script (named as the fake it is) on ``PATH``. lcow runs in a
fresh process with ``-vv`` so that its debug log is in the stderr searched for the token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lcow.images.chainid import chain_ids, layer_id
from tests.helpers import requires
from tests.registry.conftest import IDENTITY_TOKEN, DockerConfig, TokenRegistry
from tests.registry.test_pull import check_layers, diff_ids, lcow

pytestmark = [requires("registry", "openssl", "e2fsck", "loop"), pytest.mark.slow]

SERVICE = "lcow-test-registry"


def _expected_form(token: str, scope: str) -> dict[str, str]:
    """The distribution spec's refresh-token grant, as lcow sends it."""
    return {
        "grant_type": "refresh_token",
        "refresh_token": token,
        "service": SERVICE,
        "scope": scope,
        "client_id": "lcow",
    }


def _pull_succeeds(token_registry: TokenRegistry, config: Path, tmp_path: Path,
                   env: dict[str, str] | None = None) -> None:  # fmt: skip
    """Pull the bearer image with ``config``: one OAuth2 POST with the identity token and the
    pull scope, no GET; the layers land intact; the token is in no output."""
    asked, posted = len(token_registry.tokens.asked), len(token_registry.tokens.posted)
    root = tmp_path / "root"
    proc = lcow(root, "-vv", "pull", "--plain-http", token_registry.reference, config=config,
                env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [layer_id(c) for c in chain_ids(diff_ids(token_registry.tars))]
    check_layers(root, token_registry.tars, tmp_path / "mnt")
    assert token_registry.tokens.posted[posted:] == [
        _expected_form(IDENTITY_TOKEN, "repository:lcowtest/bearer:pull")
    ]
    assert token_registry.tokens.asked[asked:] == []
    assert IDENTITY_TOKEN not in proc.stderr + proc.stdout


def test_pull_with_an_identity_token_in_auths(
    token_registry: TokenRegistry, docker_config: DockerConfig, tmp_path: Path
) -> None:
    registry = token_registry.registry.address
    config = docker_config({"auths": {registry: {"identitytoken": IDENTITY_TOKEN}}})
    _pull_succeeds(token_registry, config, tmp_path)


def test_pull_with_an_identity_token_from_a_credential_helper(
    token_registry: TokenRegistry, docker_config: DockerConfig, tmp_path: Path
) -> None:
    """A helper answering the user ``<token>``: its secret is an identity token."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-faketoken"
    answer = json.dumps({"Username": "<token>", "Secret": IDENTITY_TOKEN})
    helper.write_text(f"#!/bin/sh\ncat >/dev/null\necho '{answer}'\n")
    helper.chmod(0o755)
    registry = token_registry.registry.address
    config = docker_config({"credHelpers": {registry: "faketoken"}})
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    _pull_succeeds(token_registry, config, tmp_path, env)


def test_wrong_identity_token_is_refused(
    token_registry: TokenRegistry, docker_config: DockerConfig, tmp_path: Path
) -> None:
    registry = token_registry.registry.address
    wrong = "lcow-test-wrong-refresh-51d0"
    config = docker_config({"auths": {registry: {"identitytoken": wrong}}})
    root = tmp_path / "root"
    proc = lcow(root, "-vv", "pull", "--plain-http", token_registry.reference, config=config)
    assert proc.returncode == 1, proc.stderr
    assert (
        f"lcow: {registry}/lcowtest/bearer: manifest v1: access denied (HTTP 401) with an "
        "identity token (credentials from"
    ) in proc.stderr
    assert wrong not in proc.stderr + proc.stdout
    assert token_registry.tokens.posted[-1]["refresh_token"] == wrong
    assert not root.exists()


def test_token_server_without_oauth_is_a_clear_error(
    token_registry: TokenRegistry, docker_config: DockerConfig, tmp_path: Path
) -> None:
    """A realm answering 404 to the POST: docker would GET with Basic auth, which an identity
    token cannot do (it has no password)."""
    registry = token_registry.registry.address
    config = docker_config({"auths": {registry: {"identitytoken": IDENTITY_TOKEN}}})
    root = tmp_path / "root"
    token_registry.tokens.oauth = False
    try:
        proc = lcow(root, "-vv", "pull", "--plain-http", token_registry.reference, config=config)
    finally:
        token_registry.tokens.oauth = True
    assert proc.returncode == 1, proc.stderr
    assert f"lcow: {registry}: token from {token_registry.tokens.realm}: the realm has no " in (
        proc.stderr
    )
    assert "cannot be sent as Basic auth" in proc.stderr
    assert IDENTITY_TOKEN not in proc.stderr + proc.stdout
    assert not root.exists()


def test_identity_token_post_is_not_redirected(
    token_registry: TokenRegistry, docker_config: DockerConfig, tmp_path: Path
) -> None:
    """A 307 would re-send the form, refresh token included, wherever it points: refused."""
    registry = token_registry.registry.address
    config = docker_config({"auths": {registry: {"identitytoken": IDENTITY_TOKEN}}})
    root = tmp_path / "root"
    posted = len(token_registry.tokens.posted)
    token_registry.tokens.redirect = f"{token_registry.tokens.realm}?redirected=1"
    try:
        proc = lcow(root, "-vv", "pull", "--plain-http", token_registry.reference, config=config)
    finally:
        token_registry.tokens.redirect = None
    assert proc.returncode == 3, proc.stderr  # a protocol error, like too many redirects
    assert "HTTP 307 redirect of the identity-token POST (not followed" in proc.stderr
    assert len(token_registry.tokens.posted) == posted + 1  # the redirect was not followed
    assert IDENTITY_TOKEN not in proc.stderr + proc.stdout
    assert not root.exists()
