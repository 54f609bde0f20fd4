"""A ``./`` entry in a tar extracted into a vm-backend view, judged by the guest kernel.

Docker's ``Untar`` gives the destination the root entry's owners, mode and times, and so does
the host backend; the vm backend merged into the destination but left its metadata (the
agent's host-side differential test, ``tests/integration/agent/test_fileops.py``, found it).
"""

from __future__ import annotations

import io
import tarfile

from lcow.backends.taroptions import TarOptions
from tests.helpers import requires
from tests.vm.conftest import VmDriverFactory

pytestmark = requires("vm")

_MTIME = 1_234_567_890


def _tar() -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = tarfile.TarInfo("./")
        root.type, root.mode, root.uid, root.gid, root.mtime = (
            tarfile.DIRTYPE,
            0o777,
            12345,
            54321,
            _MTIME,
        )
        tar.addfile(root)
        tar.addfile(tarfile.TarInfo("dest-file"), io.BytesIO(b""))
    out.seek(0)
    return out


def test_root_entry_metadata_applies_to_the_destination(vm_driver: VmDriverFactory) -> None:
    drv = vm_driver("lcow.globalmode=true")
    drv.create_read_write("rw", None)
    fs = drv.get("rw")
    try:
        fs.mkdir("/dest", 0o700)
        fs.extract_archive("/dest", _tar(), TarOptions())
        info = fs.lstat("/dest")
        assert info.is_dir
        assert info.mode & 0o7777 == 0o777, oct(info.mode)
        assert (info.uid, info.gid) == (12345, 54321)
        assert info.mtime_ns == _MTIME * 1_000_000_000
        assert [entry.name for entry in fs.readdir("/dest")] == ["dest-file"]
    finally:
        drv.put("rw")
