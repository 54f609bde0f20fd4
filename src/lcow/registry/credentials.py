"""Registry credentials as ``docker login`` stores them.

The Docker client's configuration is ``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``. For a registry host it gives, in docker's order:

1. ``credHelpers[host]``: run ``docker-credential-<helper> get`` with the server URL on stdin;
2. ``credsStore``: the same with the default helper (nothing found falls through);
3. ``auths[host]``: ``auth`` (base64 of ``user:password``) or ``username`` and ``password``.

Docker Hub's entries are keyed ``https://index.docker.io/v1/``; ``auths`` keys may carry a
scheme or a path (``https://host:5000/v2/``), which are ignored when matching. An identity token
(``auths[host].identitytoken``, or a helper answering the user ``<token>``: its secret is the
token) is an OAuth2 refresh token, exchanged at the token realm for an access token
(:mod:`lcow.registry.client`); it has no password to send as Basic auth.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lcow.errors import InvalidArgument
from lcow.registry.reference import DOCKER_HUB

__all__ = ["Credentials", "config_path", "find_credentials"]

log = logging.getLogger(__name__)

_HUB_KEY = "https://index.docker.io/v1/"
_HELPER_TIMEOUT = 60.0
_MAX_CONFIG = 4 << 20


@dataclass(frozen=True)
class Credentials:
    """A user name and password, or an identity token, for one registry.

    Attributes:
        username: the user (empty for an identity token without one).
        password: the secret (never printed; empty with an identity token).
        source: where they came from, for messages (``config.json auths``, a helper's name).
        identity_token: an OAuth2 refresh token (never printed), or ``None``.
    """

    username: str
    password: str
    source: str
    identity_token: str | None = None

    def __repr__(self) -> str:
        token = ", identity_token=<redacted>" if self.identity_token else ""
        return f"Credentials(username={self.username!r}, source={self.source!r}{token})"

    def describe(self) -> str:
        """Who is authenticating, for messages: ``as 'user'`` or ``with an identity token``."""
        who = "with an identity token" if self.identity_token else f"as {self.username!r}"
        return f"{who} (credentials from {self.source})"


def config_path() -> Path:
    """The Docker client's ``config.json``: in ``$DOCKER_CONFIG``, else ``~/.docker``."""
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def _server_url(registry: str) -> str:
    return _HUB_KEY if registry == DOCKER_HUB else registry


def _host_of(key: str) -> str:
    """An ``auths`` key as a host: ``https://h:5000/v2/`` → ``h:5000``; Hub's keys → docker.io."""
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in {"index.docker.io", "registry-1.docker.io"} else host


def _read_config(path: Path) -> Mapping[str, Any]:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_CONFIG + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("%s: cannot read the Docker config: %s", path, exc.strerror)
        return {}
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(
            f"{path}: not a JSON Docker config: {exc}", subject=str(path)
        ) from exc
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{path}: the Docker config is not a JSON object", subject=str(path))
    return value


def _user_and_password(entry: Mapping[str, Any], where: str) -> tuple[str, str]:
    """An ``auths`` entry's ``auth`` (base64 of ``user:password``), else its ``username`` and
    ``password``; ``("", "")`` when it has neither."""
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"{where}: 'auth' is not base64 of user:password",
                                  subject=where) from exc  # fmt: skip
        if not sep:
            raise InvalidArgument(f"{where}: 'auth' has no ':' between user and password",
                                  subject=where)  # fmt: skip
        return user, secret
    name, password = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(password, str):
        return name, password
    return "", ""


def _from_auths(auths: Any, registry: str, path: Path) -> Credentials | None:
    if not isinstance(auths, Mapping):
        return None
    for key, entry in auths.items():
        if not isinstance(key, str) or _host_of(key) != registry or not isinstance(entry, Mapping):
            continue
        where = f"{path}: auths[{key}]"
        user, secret = _user_and_password(entry, where)
        token = entry.get("identitytoken")
        if isinstance(token, str) and token:  # docker uses it instead of any password beside it
            return Credentials(user, "", f"{path} auths", token)
        if user or secret:
            return Credentials(user, secret, f"{path} auths")
    return None


def _ask_helper(program: str, registry: str) -> Any:
    """``<program> get`` with the server URL on stdin: its parsed answer, or ``None``."""
    try:
        proc = subprocess.run(
            [program, "get"], input=_server_url(registry).encode(), capture_output=True,
            timeout=_HELPER_TIMEOUT, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        log.warning("%s: credential helper not found on PATH; trying the config's auths", program)
        return None
    except subprocess.TimeoutExpired:
        log.warning("%s: no answer within %.0f s; trying the config's auths", program,
                    _HELPER_TIMEOUT)  # fmt: skip
        return None
    if proc.returncode != 0:  # "credentials not found in native keychain" and the like
        log.info("%s get %s: %s", program, registry, proc.stdout.decode(errors="replace").strip())
        return None
    try:
        return json.loads(proc.stdout)
    except ValueError:
        log.warning("%s: its answer is not JSON; ignored", program)
        return None


def _from_helper(helper: str, registry: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    answer = _ask_helper(program, registry)
    user = answer.get("Username") if isinstance(answer, Mapping) else None
    secret = answer.get("Secret") if isinstance(answer, Mapping) else None
    if not isinstance(user, str) or not isinstance(secret, str) or not user:
        return None
    if user == "<token>":  # docker's marker: the secret is an identity token
        return Credentials("", "", program, secret) if secret else None
    return Credentials(user, secret, program)


def find_credentials(registry: str, path: Path | None = None) -> Credentials | None:
    """The credentials the Docker config gives for ``registry``, if any.

    Args:
        registry: the registry's name as in :class:`~lcow.registry.reference.Reference`.
        path: the config file (default: :func:`config_path`).

    Returns:
        The credentials, or ``None`` (pull anonymously).

    Raises:
        InvalidArgument: the config file is not JSON, or an ``auth`` entry is malformed.
    """
    path = path or config_path()
    config = _read_config(path)
    helpers = config.get("credHelpers")
    helper = helpers.get(registry) if isinstance(helpers, Mapping) else None
    if isinstance(helper, str) and helper:
        return _from_helper(helper, registry)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        found = _from_helper(store, registry)
        if found is not None:
            return found
    return _from_auths(config.get("auths"), registry, path)
