#!/usr/bin/env bash
# Installs the Debian 12 packages vPipe builds and tests with (see README "Dependencies").
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config git
  libgtest-dev libgmock-dev libbenchmark-dev         # tests, micro benchmarks
  clang libclang-rt-dev                              # libFuzzer + ASan/UBSan runtimes (tests/fuzz)
  qemu-utils                                         # qemu-img: a real qcow2 image the engine must refuse
  libxen-dev                                         # xen/io/ring.h, libxengnttab/evtchn/store
  libaio-dev                                         # O_DIRECT block I/O on disk images
  libnftables-dev nftables                           # flow steering in dom0
  libnftnl-dev libmnl-dev libnetfilter-queue-dev     # per-flow nft changes over netlink; holding segments
  libcli11-dev libspdlog-dev libfmt-dev              # CLI parsing, logging
  libtomlplusplus-dev nlohmann-json3-dev             # config files, --json output
  iproute2 e2fsprogs util-linux kmod procps psmisc   # the lab: netns, veth, loop, mkfs
  iputils-ping                                       # lab connectivity checks
  curl socat iperf3 gnuplot-nox wrk httperf          # lab clients, benchmarks, plots
  lighttpd nginx                                     # stock servers under libvpipe-preload.so (tests/lab/preload)
  dpkg-dev libpcre2-dev                              # patches/lighttpd/build.sh: apt-get source + the patched lighttpd's build
  libssl-dev libadns1-dev                            # patches/pound/build.sh: the patched Pound's build (with libpcre2-dev)
  autoconf automake libtool                          # patches/pound/build.sh --git: bootstrap upstream's tree
  libio-fdpass-perl libjson-perl libio-socket-ssl-perl  # patches/pound/check.sh: Pound's own test harness
  default-jdk-headless junit5                        # java/: vpipe.jar + libvpipejni.so (CMake FindJava/FindJNI), JUnit 5 tests
  # xen suite (tests/xen): Xen + Debian's kernel under QEMU, initramfs built from packages
  qemu-system-x86 xen-hypervisor-4.17-amd64 xen-utils-4.17 xenstore-utils
  linux-image-amd64 linux-headers-amd64 busybox-static bridge-utils
  cpio gzip xz-utils jq make gcc
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # lighttpd and nginx are only run by the tests, on ports of their own: their packages would
  # start both as services on port 80, where the second cannot start (and its postinst may fail).
  # Keep services from starting while they are installed (policy-rc.d, only if there is none).
  policy=""
  if [[ " ${missing[*]} " =~ \ (lighttpd|nginx)\  ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
