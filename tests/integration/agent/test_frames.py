"""The guest agent's frame protocol, frame by frame over a socketpair (README "Agent protocol").

``kind | u32 BE length | payload``: commands are ``C`` frames of NUL-terminated arguments,
answered by exactly one ``R`` or ``X`` (``D``/``E`` frames before it for a stream). What the
host never sends (stray data, unknown kinds, empty commands) is skipped without a reply; a
frame the agent cannot read (cut short, longer than 16 MiB) ends the session as a vanished
host does. Every test also checks that the agent, built with AddressSanitizer and
UndefinedBehaviorSanitizer, reported nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct

import pytest

from tests.helpers import requires
from tests.integration.agent.conftest import HEAD, VIEW, RawAgent

pytestmark = requires("gcc")

MAX_FRAME = 16 * 1024 * 1024
CHUNK = 256 * 1024
#: Each command the host build serves, and how many arguments it needs after its name.
ARITY = {
    "hello": 0, "batch": 2, "stat": 2, "lstat": 2, "readlink": 2, "readdir": 3, "readdirx": 3,
    "xattrs": 2, "readfile": 2, "writefile": 3, "open": 4, "fread": 1, "fwrite": 0,
    "fseek": 2, "ftruncate": 1, "fclose": 0, "mkdir": 3, "mkdirall": 3, "mkdirm": 3,
    "remove": 2, "removeall": 2, "link": 3, "symlink": 3, "lchmod": 3, "lchown": 4,
    "mknod": 5, "mkfifo": 3, "setxattr": 4, "utimens": 4, "prep": 4,
}  # fmt: skip
#: The guest's own commands: not in a host build, so tests and the fuzzer cannot reach them.
GUEST_ONLY = ("mount", "umount", "overlay", "freeze", "thaw", "mkfs", "mkdirp", "rmdir", "sync")


def _failure(frame: tuple[bytes, bytes]) -> tuple[str, int, str]:
    kind, payload = frame
    assert kind == b"X", frame
    return chr(payload[0]), struct.unpack(">I", payload[1:5])[0], payload[5:].decode()


def _rest(agent: RawAgent) -> bytes:
    """What the agent still sends until it closes (a close with our bytes unread resets)."""
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := agent.sock.recv(1 << 16):
            got += chunk
    return got


def _ok(frame: tuple[bytes, bytes]) -> bytes:
    kind, payload = frame
    assert kind == b"R", frame
    return payload


def test_hello_echoes_the_nonce(raw_agent: RawAgent) -> None:
    assert _ok(raw_agent.call("hello", "n0nce")) == b"lcow-agent 1 n0nce"
    assert _ok(raw_agent.call("hello")) == b"lcow-agent 1"


def test_unknown_command(raw_agent: RawAgent) -> None:
    assert _failure(raw_agent.call("nosuch", "x")) == ("I", errno.EINVAL, "unknown command nosuch")
    assert _ok(raw_agent.call("hello", "after"))  # the session goes on


@pytest.mark.parametrize("name", GUEST_ONLY)
def test_guest_commands_are_not_in_the_host_build(raw_agent: RawAgent, name: str) -> None:
    got = _failure(raw_agent.call(name, "/", "/", "/", "/", "/"))
    assert got == ("I", errno.EINVAL, f"unknown command {name}")


@pytest.mark.parametrize("name", sorted(name for name, needed in ARITY.items() if needed))
def test_too_few_arguments(raw_agent: RawAgent, name: str) -> None:
    needed = ARITY[name]
    got = _failure(raw_agent.call(name, *[VIEW] * (needed - 1)))
    assert got == ("I", errno.EINVAL, f"{name}: expected {needed} arguments")
    assert _ok(raw_agent.call("hello", "x")) == b"lcow-agent 1 x"


def test_frames_without_a_command_get_no_reply(raw_agent: RawAgent) -> None:
    raw_agent.send(b"C")  # no arguments at all
    raw_agent.send(b"D", b"stray data of a dead session")
    raw_agent.send(b"E")
    raw_agent.send(b"R", b"a reply kind the host never sends")
    raw_agent.send(b"Z", b"\xff" * 100)
    raw_agent.send(b"\0")
    # the first reply is the hello's: nothing above was answered
    assert _ok(raw_agent.call("hello", "first")) == b"lcow-agent 1 first"


def test_arguments_without_a_final_nul(raw_agent: RawAgent) -> None:
    raw_agent.send(b"C", b"hello\0no-terminator")
    assert _ok(raw_agent.frame()) == b"lcow-agent 1 no-terminator"


def test_empty_and_binary_arguments(raw_agent: RawAgent) -> None:
    raw_agent.send(b"C", b"hello\0\0ignored")
    assert _ok(raw_agent.frame()) == b"lcow-agent 1 "
    raw_agent.send(b"C", b"hello\0\xff\xfe\x01\n")
    assert _ok(raw_agent.frame()) == b"lcow-agent 1 \xff\xfe\x01\n"


def test_more_arguments_than_the_agent_keeps(raw_agent: RawAgent) -> None:
    argv = ["hello", *(f"a{i}" for i in range(200))]
    assert _ok(raw_agent.call(*argv)) == b"lcow-agent 1 a0"


def test_largest_frame_is_read(raw_agent: RawAgent) -> None:
    raw_agent.send(b"D", b"\x5a" * MAX_FRAME)  # stray, but exactly at the limit: skipped
    assert _ok(raw_agent.call("hello", "big")) == b"lcow-agent 1 big"


@pytest.mark.parametrize("length", [MAX_FRAME + 1, 0x7FFFFFFF, 0xFFFFFFFF])
def test_oversized_length_ends_the_session(raw_agent: RawAgent, length: int) -> None:
    raw_agent.send_raw(HEAD.pack(b"C", length) + b"hello\0")
    assert raw_agent.close_and_wait() == 0
    raw_agent.process.assert_clean()


@pytest.mark.parametrize(
    "data",
    [b"C", b"C\0\0", b"C\0\0\0\x10", b"C\0\0\0\x10hello\0", HEAD.pack(b"D", 5) + b"abc"],
    ids=["kind-only", "half-length", "no-payload", "half-payload", "half-data"],
)
def test_truncated_frame_ends_the_session(raw_agent: RawAgent, data: bytes) -> None:
    raw_agent.send_raw(data)
    assert raw_agent.close_and_wait() == 0
    raw_agent.process.assert_clean()


def test_host_gone_mid_write(raw_agent: RawAgent) -> None:
    raw_agent.command("writefile", VIEW, "/cut", 0o644, "")
    raw_agent.send(b"D", b"first part")
    raw_agent.send_raw(HEAD.pack(b"D", 1000) + b"second")
    assert raw_agent.close_and_wait() == 0
    raw_agent.process.assert_clean()
    assert (raw_agent.views / "view" / "cut").read_bytes() == b"first part"


def test_readfile_streams_data_frames(raw_agent: RawAgent) -> None:
    data = os.urandom(CHUNK * 3 + 12345)
    (raw_agent.views / "view" / "big").write_bytes(data)
    raw_agent.command("readfile", VIEW, "/big")
    got = b""
    while True:
        kind, payload = raw_agent.frame()
        if kind != b"D":
            break
        assert 0 < len(payload) <= CHUNK
        got += payload
    assert kind == b"E" and payload == b""
    assert _ok(raw_agent.frame()) == b""
    assert got == data


def test_readfile_failure_is_the_only_reply(raw_agent: RawAgent) -> None:
    assert _failure(raw_agent.call("readfile", VIEW, "/missing")) == (
        "O", errno.ENOENT, "/missing: No such file or directory",
    )  # fmt: skip
    assert _ok(raw_agent.call("hello", "x"))


def test_writefile_then_unexpected_frames_fail_it(raw_agent: RawAgent) -> None:
    raw_agent.command("writefile", VIEW, "/w", 0o600, "")
    raw_agent.send(b"D", b"abc")
    raw_agent.send(b"C", b"hello\0inside a data stream\0")
    raw_agent.send(b"D", b"def")
    raw_agent.send(b"E")
    assert _failure(raw_agent.frame()) == ("I", errno.EPROTO, "/w: expected data")
    assert (raw_agent.views / "view" / "w").read_bytes() == b"abc"  # nothing after the failure


def test_batch_counts_operations(raw_agent: RawAgent) -> None:
    raw_agent.command("batch", VIEW, "/")
    raw_agent.command("mkdirm", "/d", 0o750)
    raw_agent.command("writefile", "/d/f", 0o640, "")
    raw_agent.send(b"D", b"content")
    raw_agent.send(b"E")
    raw_agent.command("lchmod", "/d/f", 0o604)
    raw_agent.send(b"E")
    assert _ok(raw_agent.frame()) == struct.pack(">I", 3)
    made = raw_agent.views / "view" / "d" / "f"
    assert made.read_bytes() == b"content"
    assert made.stat().st_mode & 0o7777 == 0o604


def test_batch_reports_the_first_failure_and_drains_data(raw_agent: RawAgent) -> None:
    raw_agent.command("batch", VIEW, "")
    raw_agent.command("mkdirm", "/ok", 0o755)
    raw_agent.command("mkdir", "/missing/x", 0o755)  # fails: index 1
    raw_agent.command("writefile", "/ok/f", 0o644, "")  # skipped, its data drained
    raw_agent.send(b"D", b"x" * 1000)
    raw_agent.send(b"E")
    raw_agent.command("mkdir", "/also-skipped", 0o755)
    raw_agent.send(b"E")
    cls, err, text = _failure(raw_agent.frame())
    assert (cls, err, text) == ("O", errno.ENOENT, "1:/missing/x: No such file or directory")
    assert sorted(os.listdir(raw_agent.views / "view")) == ["ok"]
    assert _ok(raw_agent.call("hello", "in step")) == b"lcow-agent 1 in step"


def test_batch_on_a_missing_destination(raw_agent: RawAgent) -> None:
    raw_agent.command("batch", VIEW, "/nowhere")
    raw_agent.command("writefile", "/f", 0o644, "")
    raw_agent.send(b"D", b"drained")
    raw_agent.send(b"E")
    raw_agent.send(b"E")
    assert _failure(raw_agent.frame())[:2] == ("O", errno.ENOENT)
    assert os.listdir(raw_agent.views / "view") == []


def test_view_roots_stay_below_the_views_folder(raw_agent: RawAgent) -> None:
    (raw_agent.views / "view" / "inside").write_text("in")
    for root in ("/../../view", "../view", "//view/."):
        assert _ok(raw_agent.call("readdir", root, "/", 0))[2:8] == b"inside"
    assert _failure(raw_agent.call("readdir", "/etc", "/", 0))[:2] == ("O", errno.ENOENT)


def test_batch_operation_with_too_few_arguments(raw_agent: RawAgent) -> None:
    """(fuzz finding: a batch's operations were not checked; setxattr read past its argv)"""
    raw_agent.command("batch", VIEW, "/")
    raw_agent.command("mkdirm", "/d", 0o755)
    raw_agent.command("setxattr", "/d", "user.x")  # no value
    raw_agent.command("mkdirm", "/skipped", 0o755)
    raw_agent.send(b"E")
    assert _failure(raw_agent.frame()) == ("I", errno.EINVAL, "1:setxattr: expected 3 arguments")
    assert os.listdir(raw_agent.views / "view") == ["d"]


@pytest.mark.parametrize("name", ["mkdir", "utimens", "lchown", "mknod", "prep", "link"])
def test_batch_short_operations_fail_cleanly(raw_agent: RawAgent, name: str) -> None:
    raw_agent.command("batch", VIEW, "/")
    raw_agent.command(name, "/x")
    raw_agent.send(b"E")
    cls, err, text = _failure(raw_agent.frame())
    assert (cls, err) == ("I", errno.EINVAL) and text.startswith(f"0:{name}: expected ")


def test_batch_short_writefile_drains_its_data(raw_agent: RawAgent) -> None:
    raw_agent.command("batch", VIEW, "/")
    raw_agent.command("writefile", "/f")  # no perm, no flags
    raw_agent.send(b"D", b"C\0\0\0\x06hello\0")  # data that looks like a frame
    raw_agent.send(b"E")
    raw_agent.send(b"E")
    assert _failure(raw_agent.frame()) == ("I", errno.EINVAL, "0:writefile: expected 2 arguments")
    assert _ok(raw_agent.call("hello", "in step")) == b"lcow-agent 1 in step"


def test_fwrite_without_a_file_to_a_host_gone(raw_agent: RawAgent) -> None:
    """(fuzz finding: the failure was sent after the host had gone, and reading went on)"""
    raw_agent.command("fwrite")
    raw_agent.send(b"D", b"abc")
    raw_agent.sock.shutdown(socket.SHUT_WR)
    assert _rest(raw_agent) == b""  # no reply at all
    assert raw_agent.process.wait() == 0


def test_unreadable_frame_inside_data_ends_the_session(raw_agent: RawAgent) -> None:
    """(fuzz finding: the frames after an oversized length were served as commands)"""
    raw_agent.command("writefile", VIEW, "/f", 0o644, "")
    raw_agent.send_raw(HEAD.pack(b"D", MAX_FRAME + 1))
    raw_agent.command("hello", "must not be answered")
    raw_agent.sock.shutdown(socket.SHUT_WR)
    assert _rest(raw_agent) == b""
    assert raw_agent.process.wait() == 0


def test_fread_at_end_of_file(raw_agent: RawAgent) -> None:
    """(fuzz finding: an empty reply did pointer arithmetic on NULL)"""
    (raw_agent.views / "view" / "f").write_bytes(b"ab")
    assert _ok(raw_agent.call("open", VIEW, "/f", os.O_RDONLY, 0)) == b""
    assert _ok(raw_agent.call("fread", 10)) == b"ab"
    assert _ok(raw_agent.call("fread", 10)) == b""
    assert _ok(raw_agent.call("fread", 0)) == b""
    assert _ok(raw_agent.call("fclose")) == b""
