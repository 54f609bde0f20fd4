"""moby's graphtest cases (SPEC §10.2) on the vm backend, in global mode.

Layers are written through each layer's own Get view (graphtest's way, :class:`ViewBuilder`),
so every write operation runs in the guest. Counts are smaller than on the other backends to
keep CI under budget under TCG: the deep read uses 16 layers (host backend: 128) — a Get of
layer *k* hot-adds *k* disks, so the chain costs O(n²) hot-adds; DiffApply 10 files and
Changes 20 files are the same as elsewhere.
"""

from __future__ import annotations

from lcow.testing import graphtest
from lcow.testing.graphtest import TarBuilder, ViewBuilder
from tests.helpers import requires
from tests.vm.conftest import VmDriverFactory

pytestmark = requires("vm")

DEEP_LAYERS = 16
GLOBAL = "lcow.globalmode=true"


def test_create_empty(vm_driver: VmDriverFactory) -> None:
    graphtest.test_create_empty(vm_driver(GLOBAL))


def test_create_base(vm_driver: VmDriverFactory) -> None:
    graphtest.test_create_base(vm_driver(GLOBAL), ViewBuilder)


def test_create_snap(vm_driver: VmDriverFactory) -> None:
    graphtest.test_create_snap(vm_driver(GLOBAL), ViewBuilder)


def test_deep_layer_read(vm_driver: VmDriverFactory) -> None:
    graphtest.test_deep_layer_read(vm_driver(GLOBAL), ViewBuilder, DEEP_LAYERS)


def test_deep_layer_read_images(vm_driver: VmDriverFactory) -> None:
    """The same chain of read-only layer.vhd images (ApplyDiff), read through one view."""
    graphtest.test_deep_layer_read(vm_driver(GLOBAL), TarBuilder, DEEP_LAYERS)


def test_diff_apply_10_files(vm_driver: VmDriverFactory) -> None:
    graphtest.test_diff_apply(vm_driver(GLOBAL), ViewBuilder, 10)


def test_changes(vm_driver: VmDriverFactory) -> None:
    graphtest.test_changes(vm_driver(GLOBAL), ViewBuilder, 20)


def test_set_quota(vm_driver: VmDriverFactory) -> None:
    graphtest.test_set_quota(vm_driver(GLOBAL), ViewBuilder)
