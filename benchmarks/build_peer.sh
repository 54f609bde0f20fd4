#!/usr/bin/env bash
# Build Microsoft's Go tar2ext4 (github.com/microsoft/hcsshim, cmd/tar2ext4) as a benchmark peer,
# outside the repo, with Debian's Go 1.19 and Debian-packaged Go libraries only (no module proxy).
#
#   benchmarks/build_peer.sh GIT_DIR [COMMIT] [PREFIX]
#
# GIT_DIR  a clone (bare or not) of microsoft/hcsshim
# COMMIT   default: HEAD of GIT_DIR (tested: 7c9ff7f481383ff47524bade75d1b25d631b49ce)
# PREFIX   default: /opt/lcow-peers  -> binary PREFIX/tar2ext4, sources PREFIX/src/hcsshim
#
# Only cmd/tar2ext4 and what it imports are taken: ext4/..., internal/memory, internal/log.
# internal/log is the one package trimmed: tar2ext4 uses only its `log.L` (context.go, which
# needs logrus); its other files (format.go, hook.go, scrub.go) pull in protobuf, OpenTelemetry
# and the HCS schema and are moved aside. No converter code is changed. Built in GOPATH mode.
set -euo pipefail

git_dir=${1:?usage: build_peer.sh GIT_DIR [COMMIT] [PREFIX]}
[[ -d $git_dir/.git ]] && git_dir=$git_dir/.git
commit=$(git --git-dir="$git_dir" rev-parse "${2:-HEAD}^{commit}")
prefix=${3:-/opt/lcow-peers}

if ! command -v go >/dev/null || [[ ! -d /usr/share/gocode/src/github.com/sirupsen/logrus ]]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y golang-go golang-github-sirupsen-logrus-dev \
        golang-github-pkg-errors-dev golang-golang-x-sys-dev
fi

src=$prefix/src/hcsshim
rm -rf "$src" "$prefix/gopath"
mkdir -p "$src" "$prefix/gopath/src/github.com/Microsoft"
git --git-dir="$git_dir" archive "$commit" cmd/tar2ext4 ext4 internal/memory internal/log LICENSE |
    tar -x -C "$src"
echo "$commit" >"$src/COMMIT"
mkdir -p "$src/_unused_log"
for f in format.go hook.go scrub.go; do
    if [[ -e $src/internal/log/$f ]]; then mv "$src/internal/log/$f" "$src/_unused_log/"; fi
done
ln -s "$src" "$prefix/gopath/src/github.com/Microsoft/hcsshim"

cd "$prefix/gopath/src/github.com/Microsoft/hcsshim"
GO111MODULE=off GOPATH="$prefix/gopath:/usr/share/gocode" GOFLAGS= CGO_ENABLED=0 \
    go build -trimpath -o "$prefix/tar2ext4" ./cmd/tar2ext4
echo "built $prefix/tar2ext4 from hcsshim $commit with $(go version)"
