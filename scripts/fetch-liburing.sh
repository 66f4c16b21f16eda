#!/usr/bin/env bash
# Fetch a newer liburing than Debian 12's 2.3 (the one Debian's next release ships) into a
# private directory, so the liburing-ffi.so binding path of fastpath/uring/liburing.py is
# exercised on this host as well as the shim path. Nothing is installed system-wide: the
# packages are unpacked under DEST/root, and the shim is rebuilt against their headers
# (which need that release's kernel UAPI headers, also unpacked there).
#
#   scripts/fetch-liburing.sh DEST [SUITE]     (SUITE defaults to trixie)
#
# Package file names and SHA-256 sums come from the suite's Packages index, so the script
# follows the archive's current versions. DEST/VERSION is written last; when it exists the
# script does nothing.
set -euo pipefail
dest=${1:?usage: fetch-liburing.sh DEST [SUITE]}
suite=${2:-trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
die() { printf 'fetch-liburing: error: %s\n' "$*" >&2; exit 1; }

[ -f "$dest/VERSION" ] && exit 0
for tool in curl xz dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

index() {  # index ARCH -> the suite's Packages file for that architecture, decompressed
  curl -fsS --retry 3 -o "$tmp/Packages-$1.xz" "$mirror/dists/$suite/main/binary-$1/Packages.xz" \
    || die "cannot download the $suite Packages index for $1 from $mirror"
  xz -dc "$tmp/Packages-$1.xz" > "$tmp/Packages-$1"
}
fetch() {  # fetch PACKAGE ARCH -> unpacked under $tmp/root, prints the version
  local fields version file sum
  fields=$(awk -v pkg="$1" '
    $0 == "Package: " pkg { p = 1; next }
    /^Package: / { p = 0 }
    p && /^Version: / { v = $2 } p && /^Filename: / { f = $2 } p && /^SHA256: / { s = $2 }
    END { if (f != "") print v, f, s }' "$tmp/Packages-$2")
  [ -n "$fields" ] || die "$1 is not in the $suite index ($2)"
  read -r version file sum <<< "$fields"
  curl -fsS --retry 3 -o "$tmp/pkg.deb" "$mirror/$file" || die "cannot download $mirror/$file"
  echo "$sum  $tmp/pkg.deb" | sha256sum -c --quiet - >/dev/null || die "$file: SHA-256 mismatch"
  dpkg-deb -x "$tmp/pkg.deb" "$tmp/root"
  echo "$version"
}

index amd64
index all
version=$(fetch liburing2 amd64)
fetch liburing-dev amd64 >/dev/null
fetch linux-libc-dev all >/dev/null
mkdir -p "$dest"
rm -rf "$dest/root"
mv "$tmp/root" "$dest/root"
echo "${version%%-*}" > "$dest/VERSION"
