"""Fixtures of the containerd tests: a registry, an image pushed to it, containerd daemons.

* ``registry`` (session): a started :class:`~tests.containerd.daemons.Registry`, Debian's
  ``docker-registry`` on ``registry.address`` (``127.0.0.1:PORT``, plain HTTP).
* ``pushed_image`` (session): a :class:`~tests.containerd.images.PushedImage`: the four-layer
  gzip image of :mod:`tests.containerd.images` (whiteouts, opaque directories) pushed there with
  skopeo; ``.reference`` to pull, ``.listing`` (what ``sh -c LIST_SCRIPT`` must print in a
  container) and ``.expected`` (the same union as path → :class:`Node`).
* ``containerd`` (per test): a factory ``containerd(proxy=None) -> Containerd`` starting a
  containerd with its own root, state and socket in a short temporary directory, CRI disabled,
  and with ``proxy`` a ``[proxy_plugins.lcow]`` snapshotter on that socket. ``.ctr(*args)``
  runs Debian's ``ctr --address SOCK -n NAMESPACE ARGS`` and raises
  :class:`~tests.containerd.daemons.CtrError` (stdout, stderr, containerd's log) on failure;
  ``.stop()``/``.start()`` restart it. Every daemon the factory started is closed when the test
  ends: tasks and containers deleted, containerd stopped by pid, mounts below its directory
  undone; anything left fails the test.
* ``containerd_with_proxy`` (per test): ``containerd_with_proxy(socket) -> Containerd``, the
  same factory with the ``lcow`` proxy snapshotter on ``socket``.

A test of the lcow snapshotter starts the snapshotter first, so that it is stopped last
(containerd's teardown still removes the containers' snapshots through it)::

    @pytest.fixture
    def lcow_snapshotter(tmp_path: Path) -> Iterator[Path]:
        sock_dir = short_dir("lcows-")
        socket = sock_dir / "lcow.sock"
        proc = subprocess.Popen([sys.executable, "-m", "lcow", "--root", str(tmp_path / "root"),
                                 "--backend", "host", "snapshotter", "serve",
                                 "--address", str(socket)], start_new_session=True)
        ...  # wait for the socket; at teardown SIGTERM proc by its pid, remove sock_dir
        yield socket

    def test_pull(lcow_snapshotter, containerd_with_proxy, pushed_image):
        daemon = containerd_with_proxy(lcow_snapshotter)
        daemon.ctr("images", "pull", "--plain-http", "--snapshotter", "lcow",
                   pushed_image.reference)
        out = daemon.ctr("run", "--rm", "--snapshotter", "lcow", pushed_image.reference,
                         "c1", "sh", "-c", LIST_SCRIPT)
        assert sorted(out.stdout.splitlines()) == pushed_image.listing

``test_containerd_baseline.py`` runs the same steps on containerd's own overlayfs snapshotter:
the baseline the lcow snapshotter is compared with, and the proof that the fixtures and the
image are right.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containerd.daemons import (
    Containerd,
    ContainerdFactory,
    ProxyContainerdFactory,
    Registry,
    short_dir,
)
from tests.containerd.images import (
    EXPECTED,
    PushedImage,
    build_image,
    expected_listing,
    push_image,
)
from tests.helpers import ensure

NEEDS = ("root", "containerd", "registry", "busybox")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    ensure(*NEEDS)
    running = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def pushed_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    work = tmp_path_factory.mktemp("image")
    image = build_image(work / "build")
    reference = push_image(image, registry.address, "lcowtest/union", work)
    return PushedImage(reference, image, EXPECTED, expected_listing(EXPECTED))


@pytest.fixture
def containerd() -> Iterator[ContainerdFactory]:
    ensure(*NEEDS)
    started: list[Containerd] = []

    def start(proxy: Path | None = None) -> Containerd:
        daemon = Containerd(short_dir("cd-"), proxy=proxy)
        started.append(daemon)
        return daemon.start()

    yield start
    problems = []
    for daemon in reversed(started):
        try:
            daemon.close()
        except AssertionError as exc:
            problems.append(f"{daemon.dir}: {exc}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def containerd_with_proxy(containerd: ContainerdFactory) -> ProxyContainerdFactory:
    def start(socket: Path) -> Containerd:
        return containerd(proxy=socket)

    return start
