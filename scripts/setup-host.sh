#!/usr/bin/env bash
# Idempotent host set-up for fastpath on Debian 12 (run as root).
# Installs the Debian packages every data plane needs, links kernel headers for bcc,
# mounts bpffs and hugetlbfs, reserves hugepages, and builds the project virtualenv.
# A second run with nothing to do finishes in seconds and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
changed=0
say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (bpf, netns and hugepages need it); try: sudo make test"

# 1. Debian packages. linux-source-6.12: the benchmarks build the kernel's own XDP programs
#    (SYN proxy, IPIP tunnel sample) from it as peers, with bpftool and libbpf.
packages=(
  bpfcc-tools python3-bpfcc libbpfcc libbpfcc-dev clang llvm libelf-dev
  linux-headers-amd64 liburing-dev liburing2
  dpdk dpdk-dev libdpdk-dev meson ninja-build pkg-config
  iproute2 iputils-ping nftables iptables ethtool netsniff-ng hping3 iperf3 tcpdump
  haproxy python3-venv python3-pip gcc make bird2
  linux-source-6.12 bpftool libbpf-dev
  systemd   # systemd-analyze: the agent's unit file is checked with `systemd-analyze verify`
  systemd-container   # systemd-nspawn: the agent's unit is run by systemd in a container (tests)
  qemu-system-x86
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  changed=1
fi

# BIRD 2 is the balancers' BGP speaker, started by `fastpath lb health` in the balancer's
# namespace; the package's own service would run a stray speaker in the host's namespace.
if [ -d /run/systemd/system ] && systemctl is-enabled --quiet bird.service 2>/dev/null; then
  systemctl disable --now bird.service >/dev/null 2>&1
  say "disabled bird.service: fastpath runs BIRD per balancer (fastpath lb health)"
  changed=1
fi

# 2. Kernel headers for bcc. The running kernel may be a custom build with no headers
#    package; the distribution's headers are a working stand-in for bcc's compiles.
kmod="/lib/modules/$(uname -r)"
if [ ! -e "$kmod/build" ] || [ ! -e "$kmod/source" ]; then
  dist=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dist" ] || die "no kernel headers under /usr/src; install linux-headers-amd64"
  common=${dist%-amd64}-common
  [ -d "$common" ] || die "$common missing; reinstall linux-headers-amd64"
  mkdir -p "$kmod"
  [ -e "$kmod/build" ] || ln -sfn "$dist" "$kmod/build"
  [ -e "$kmod/source" ] || ln -sfn "$common" "$kmod/source"
  say "kernel $(uname -r) has no headers package: linked $(basename "$dist") as $kmod/build (distribution stand-in)"
  changed=1
fi

# 3. bpffs and hugetlbfs.
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
  say "mounted bpffs at /sys/fs/bpf"
  changed=1
fi
if ! grep -q ' hugetlbfs ' /proc/mounts; then
  mkdir -p /dev/hugepages
  mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
  say "mounted hugetlbfs at /dev/hugepages"
  changed=1
fi

# 4. 2 MiB hugepages for DPDK (only ever raised, never lowered: others may use them).
want_pages=${FASTPATH_HUGEPAGES:-256}
hp=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
if [ -w "$hp" ] && [ "$(cat "$hp")" -lt "$want_pages" ]; then
  echo "$want_pages" > "$hp"
  got=$(cat "$hp")
  say "reserved 2 MiB hugepages: now $got (wanted $want_pages)"
  changed=1
fi

# 5. The project virtualenv. bcc's Python module exists only as a Debian package, so the
#    venv is built from the system Python and sees its site-packages.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
  say "created .venv from /usr/bin/python3 (--system-site-packages)"
  changed=1
fi
stamp=.venv/.fastpath-installed
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  say "installing fastpath (editable) with test and bench extras into .venv"
  if ! .venv/bin/pip install -q --disable-pip-version-check -e ".[test,bench]" >.venv/pip.log 2>&1; then
    tail -n 20 .venv/pip.log >&2
    die "pip install failed (full log: .venv/pip.log)"
  fi
  echo "$digest" > "$stamp"
  changed=1
fi

# 6. Native binaries (built by their own Makefiles, installed onto the venv PATH).
for dir in uring; do
  if [ -f "$dir/Makefile" ]; then
    if ! make -q -C "$dir" install PREFIX="$root/.venv" >/dev/null 2>&1; then
      make -s -C "$dir" install PREFIX="$root/.venv"
      say "built and installed $dir binaries into .venv/bin"
      changed=1
    fi
  fi
done

# 7. A newer liburing (Debian's next release) unpacked beside the system one, with the shim
#    built against it: the tests run the bindings through its liburing-ffi.so as well.
next="$root/.venv/lib/fastpath/liburing-next"
if [ ! -f "$next/VERSION" ]; then
  scripts/fetch-liburing.sh "$next"
  say "unpacked liburing $(cat "$next/VERSION") (liburing-ffi) under $next for the binding tests"
  changed=1
fi
if [ ! -f "$next/libfastpath_uring_ffi.so" ] ||
   [ -n "$(find uring/ffi_shim.c uring/echo_core.c uring/echo_core.h -newer "$next/libfastpath_uring_ffi.so")" ]; then
  make -s -C uring compat-shim LIBURING_ROOT="$next/root" OUT="$next/libfastpath_uring_ffi.so"
  say "built the liburing shim against liburing $(cat "$next/VERSION")"
  changed=1
fi

if [ "$changed" -eq 0 ]; then
  say "host already set up, nothing to do"
else
  say "done"
fi
