#!/bin/bash
# Provides the pinned Kubernetes binaries in the user's cache dir and prints that dir.
#   image-build/scripts/kubernetes.sh            -> prints e.g. ~/.cache/cairn/kubernetes/1.20.2
# Pins live in image-build/kubernetes.lock. Built once per machine from Debian's
# source package (downloads verified by sha256), then reused.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
lock="$here/../kubernetes.lock"
val() { sed -n "s/^$1=//p" "$lock"; }
version="$(val version)"
debver="$(val debian_version)"
binaries="$(val binaries)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cairn/kubernetes/$version"
out="$cache/bin"

if [ -f "$cache/SHA256SUMS" ] && (cd "$out" && sha256sum --quiet -c "$cache/SHA256SUMS") 2>/dev/null; then
  echo "$out"; exit 0
fi

log() { echo "kubernetes.sh: $*" >&2; }
work="$cache/build"
rm -rf "$work"; mkdir -p "$work" "$out"
cd "$work"
log "downloading source package $(val debian_source) $debver"
apt-get source --download-only -q "$(val debian_source)=$debver" >&2
grep '^sha256 ' "$lock" | awk '{print $3"  "$2}' > SHA256SUMS.src
sha256sum --quiet -c SHA256SUMS.src >&2 || { log "source checksum mismatch against $lock: refusing to build"; exit 1; }
dpkg-source -x --skip-debianization ./*.dsc src >&2 2>/dev/null || dpkg-source -x ./*.dsc src >&2
log "replacing vendored reflect2 with $(val reflect2_package) sources"
refl=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$refl" ] || { log "missing $refl: install $(val reflect2_package)"; exit 1; }
rm -rf src/vendor/github.com/modern-go/reflect2
mkdir -p src/vendor/github.com/modern-go/reflect2
cp -r "$refl"/. src/vendor/github.com/modern-go/reflect2/
rm -f src/vendor/github.com/modern-go/reflect2/*_test.go
rm -rf src/vendor/github.com/modern-go/reflect2/test*
mkdir -p gopath/src/k8s.io
ln -s "$work/src" gopath/src/k8s.io/kubernetes
cd gopath/src/k8s.io/kubernetes
whats=""
for b in $binaries; do whats="$whats cmd/$b"; done
log "building$whats (several minutes)"
export GOPATH="$work/gopath" GOCACHE="$work/gocache" GOFLAGS=-mod=vendor CGO_ENABLED=0 GO111MODULE=off
export KUBE_GIT_VERSION="v$version" KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR="$(echo "$version" | cut -d. -f2)"
export SOURCE_DATE_EPOCH=1610000000
make WHAT="${whats# }" >&2
for b in $binaries; do install -m 0755 "_output/bin/$b" "$out/$b"; done
cd "$out" && sha256sum $binaries > "$cache/SHA256SUMS"
rm -rf "$work"
log "done: $out"
echo "$out"
