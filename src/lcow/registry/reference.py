"""Image references as ``docker`` writes them, normalised as ``docker pull`` does.

``busybox`` is ``docker.io/library/busybox:latest``; ``me/app:1`` is ``docker.io/me/app:1``;
the first component is a registry host only when it has a ``.`` or a ``:`` (a port) or is
``localhost`` (``127.0.0.1:5000/app``, ``ghcr.io/o/app@sha256:…``). A reference may carry a
tag, a digest or both (``name:tag@sha256:…``; the digest is what is fetched). Repository
components are lower case ``[a-z0-9]`` separated by ``.``, ``_``, ``__`` or dashes; tags are
``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; the whole name is at most 255 characters (the grammar of
the distribution project's reference package, written here from its documented rules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lcow._util.escape import quoted
from lcow.errors import InvalidArgument

__all__ = ["DOCKER_HUB", "Reference", "parse_reference"]

#: The registry of references without a host.
DOCKER_HUB = "docker.io"
#: Where Docker Hub's API is served (``docker.io`` is only its name).
_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_MAX_NAME = 255
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference.

    Attributes:
        registry: the registry's name (``docker.io``, ``127.0.0.1:5000``).
        repository: the repository path (``library/busybox``).
        tag: the tag (``latest`` when neither a tag nor a digest was given), or ``None``.
        digest: the manifest digest given in the reference, or ``None``.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host (and port) the API is served from (Docker Hub's differs from its name)."""
        return _HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def lookup(self) -> str:
        """What to ask ``/v2/<repository>/manifests/`` for: the digest, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _bad(text: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{quoted(text)}: invalid image reference: {why}", subject=text)


def _split_host(text: str, name: str) -> tuple[str, str]:
    """``(registry, repository)`` of a name without tag or digest, Docker Hub's normalised."""
    first, _, path = name.partition("/")
    if path and (("." in first or ":" in first) or first == "localhost"):
        registry = first
        if not _HOST.fullmatch(registry):
            raise _bad(text, f"invalid registry host {quoted(registry)}")
    else:
        registry, path = DOCKER_HUB, name
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    return registry, path


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference.

    Args:
        text: the reference as a user writes it (``busybox``, ``host:5000/a/b:tag@sha256:…``).

    Returns:
        The normalised reference.

    Raises:
        InvalidArgument: not a reference (an upper-case repository, a bad tag or digest, too long).
    """
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise _bad(text, f"digest {quoted(digest)} is not sha256:<64 lower-case hex>")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:  # a ':' after the last '/' starts the tag (else it is a host's port)
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _bad(text, f"invalid tag {quoted(tag)}")
    registry, path = _split_host(text, rest)
    if not path:
        raise _bad(text, "no repository name")
    if path != path.lower():
        raise _bad(text, "repository name must be lowercase")
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise _bad(text, f"invalid repository component {quoted(component)}")
    if len(f"{registry}/{path}") > _MAX_NAME:
        raise _bad(text, f"name longer than {_MAX_NAME} characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)
