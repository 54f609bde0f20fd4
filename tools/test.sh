#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine and run the whole test suite.
#
# As root (or with sudo) installs the system tools the tests use as oracles, creates .venv with
# the package and its test dependencies, then runs ruff, mypy and pytest. Extra arguments go to
# pytest (e.g. `bash tools/test.sh -m "not slow"`). Exits non-zero if any step failed; pytest's
# own exit status wins when pytest failed.
#
# Without arguments (the whole run, as CI does) the tests that drive the converter and the readers
# run a second time with LCOW_NATIVE=0, so the pure-Python twins of the C accelerators
# (lcow._tarscan, lcow._ext4pack) pass the same tests. Tests of the backends' mounts, the agent
# and the daemons do not run twice: they reach the accelerators only through conversions those
# tests already cover, and a second pass of them cost CI minutes without covering more code.
#
# Tests that need root, loop devices or a tool skip with a reason; with CI=true they fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    e2fsprogs      # e2fsck -fn, the filesystem oracle; mke2fs, debugfs
    qemu-utils     # qemu-img info -f vpc: the VHD footer oracle
    cryptsetup-bin # veritysetup verify: the dm-verity oracle
    tar gzip zstd  # GNU tar archives and compares (tar -df); compressed inputs
    attr           # getfattr/setfattr for poking at xattrs by hand
    util-linux     # losetup, mount, umount
    qemu-system-common fuse3 # qemu-storage-daemon: FUSE export of sandbox.vhdx (host backend)
    docker.io      # dockerd 20.10 for the graph-driver plugin's end-to-end tests
    busybox-static # a rootfs for images the plugin tests build; the vm backend's guest shell
    qemu-system-x86 # the vm backend's utility VMs (microvm, TCG or KVM)
    gcc libc6-dev  # lcow uvm build compiles the guest agent (gcc -static); the C accelerators
    clang libclang-rt-dev # libFuzzer for the guest agent's frame parser (fuzz/agent)
    python3-venv python3-dev # python3-dev: Python.h for lcow._tarscan and lcow._ext4pack
    containerd     # containerd 1.6 and ctr: the snapshotter's end-to-end tests (tests/containerd)
    runc           # the OCI runtime containerd's shim runs those tests' containers with
    docker-registry # a registry on loopback the containerd and registry tests pull from
    apache2-utils  # htpasswd: the registry tests' registry requires a login (bcrypt htpasswd)
    openssl        # the registry tests make a CA and a server certificate for TLS
    skopeo         # pushes the OCI image layout the containerd tests build to that registry
    golang-go golang-github-containerd-containerd-dev # Go 1.19 and containerd 1.6's sources,
                   # built in GOPATH mode: containerd's snapshotter suite (tests/containerd/gosuite)
                   # and a Pull as CRI does it (tests/containerd/gopull, the fast path)
)

# What the LCOW_NATIVE=0 pass reruns: every test that converts tars, packs ext4 or reads layers
# back (new tests of those belong here too).
PURE_PYTHON_TESTS=(
    tests/unit
    tests/integration/test_tar2ext4_badinput.py
    tests/integration/test_tar2ext4_kernel.py
    tests/integration/test_tar2ext4_dissect.py
    tests/integration/test_import.py
    tests/integration/test_deterministic_layers.py
    tests/integration/test_reader_oracles.py
    tests/integration/test_export_roundtrip_model.py
    tests/integration/test_export_roundtrip_oracles.py
    tests/integration/test_export_roundtrip_cli.py
    tests/integration/test_export_roundtrip_exact.py
    tests/integration/test_vhd_verity_tools.py
    tests/integration/test_file_slice.py
    tests/integration/test_apply_diff_staging.py
)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else return 1
    fi
}

if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    if ! { as_root apt-get update -q && as_root apt-get install -y -q "${APT_PACKAGES[@]}"; }; then
        echo "test.sh: could not install system packages (need root); continuing" >&2
    fi
else
    echo "test.sh: no apt-get; install ${APT_PACKAGES[*]} by hand" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test,fuzz]'

# The vm backend's kernel and initramfs (Debian's cloud kernel, extracted, not installed; our
# agent and initramfs). Idempotent: up-to-date assets are kept (about a second).
echo "== lcow uvm build"
.venv/bin/lcow uvm build || echo "test.sh: could not build the VM assets; vm tests will say why" >&2

status=0
echo "== ruff check"
.venv/bin/ruff check . || status=1
echo "== mypy (strict, files from pyproject.toml)"
.venv/bin/mypy || status=1
echo "== lint-imports (the layer contracts in pyproject.toml)"
.venv/bin/lint-imports --no-cache || status=1
echo "== pytest"
pytest_status=0
# The slowest tests are listed at the end: CI should stay under 30 minutes.
.venv/bin/pytest --durations=30 "$@" || pytest_status=$?
if [ "$#" -eq 0 ]; then
    echo "== pytest, pure Python (LCOW_NATIVE=0): the converter's and readers' tests"
    LCOW_NATIVE=0 .venv/bin/pytest -q "${PURE_PYTHON_TESTS[@]}" || pytest_status=$?
fi
if [ "$pytest_status" -ne 0 ]; then
    exit "$pytest_status"
fi
exit "$status"
