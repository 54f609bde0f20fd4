"""Fixtures of the plugin protocol tests.

Short socket directories, logging turned back on, and a running plugin (userspace or host
backend) that must stop cleanly.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ensure, host_leftovers
from tests.plugin.harness import Plugin


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="lcowp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def logging_on() -> Iterator[None]:
    """Log records reach handlers whatever another test of the session did to logging."""
    previous = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    yield
    logging.disable(previous)


@pytest.fixture
def plugin(tmp_path: Path, sock_dir: Path) -> Iterator[Plugin]:
    running = Plugin(tmp_path, sock_dir).start()
    yield running
    running.stop()
    assert not running.socket.exists()


@pytest.fixture
def host_plugin(tmp_path: Path, sock_dir: Path) -> Iterator[Plugin]:
    """A plugin on the host backend: Get answers mounted host directories. Stopped as dockerd
    and the plugin stop: dockerd's Cleanup, then SIGTERM."""
    ensure("host")
    running = Plugin(tmp_path, sock_dir).start(host=True)
    running.init()
    yield running
    running.client.ok("GraphDriver.Cleanup")
    running.stop()
    assert host_leftovers(tmp_path) == []
