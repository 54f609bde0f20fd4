#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine and run lcow's main job on its embedded data set:
# write the three sample layer tars and convert each into ./demo-out/<n>/layer.vhd as
# `lcow tar2ext4 -overlay -vhd` would, printing a summary table. Extra arguments go to
# `lcow demo` (e.g. --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else return 1
    fi
}

if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # gcc and python3-dev build lcow's optional C accelerators (without them lcow is slower).
    if ! { as_root apt-get update -q &&
        as_root apt-get install -y -q python3-venv python3-dev gcc libc6-dev; }; then
        echo "demo.sh: could not install python3-venv, python3-dev, gcc (need root); continuing" >&2
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e .
exec .venv/bin/lcow demo "$@"
