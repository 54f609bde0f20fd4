"""Extended attributes through the guest agent in a real utility VM.

The agent read and wrote xattrs through ``/proc/self/fd/N`` with the ``l*`` calls, which act on
that magic link itself: listings carried none and ``setxattr`` failed with EPERM, which was
ignored (the host-side tests in ``tests/integration/agent`` found it). Here the guest kernel
judges: xattrs extracted into a writable view read back, and ``archive_path`` exports them.
"""

from __future__ import annotations

import io
import tarfile

from lcow.backends.taroptions import TarOptions
from lcow.backends.vm.vmfs import VmFS
from tests.helpers import requires
from tests.vm.conftest import VmDriverFactory

pytestmark = requires("vm")


def _tar() -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo("dir")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        folder.pax_headers = {"SCHILY.xattr.user.kind": "folder"}
        tar.addfile(folder)
        data = b"with xattrs\n"
        info = tarfile.TarInfo("dir/file")
        info.size = len(data)
        info.pax_headers = {"SCHILY.xattr.user.note": "v1", "SCHILY.xattr.user.other": "v2"}
        tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def test_xattrs_round_trip_in_the_guest(vm_driver: VmDriverFactory) -> None:
    drv = vm_driver("lcow.globalmode=true")
    drv.create_read_write("rw", None)
    fs = drv.get("rw")
    try:
        assert isinstance(fs, VmFS)  # the vm backend's view: xattrs come from the guest
        fs.extract_archive("/", _tar(), TarOptions())
        assert fs.xattrs("/dir/file") == {b"user.note": b"v1", b"user.other": b"v2"}
        assert fs.xattrs("/dir") == {b"user.kind": b"folder"}
        out = io.BytesIO()
        fs.archive_path("/dir", out.write)
        out.seek(0)
        with tarfile.open(fileobj=out) as tar:
            headers = {m.name: m.pax_headers for m in tar.getmembers()}
        assert headers["file"]["SCHILY.xattr.user.note"] == "v1", headers
        assert headers["file"]["SCHILY.xattr.user.other"] == "v2", headers
    finally:
        drv.put("rw")
