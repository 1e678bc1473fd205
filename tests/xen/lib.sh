# tests/xen/lib.sh -- shared by build-images.sh and run.sh (sourced, not executed).
# Paths, the guest kernel version, and small helpers to assemble initramfs trees.

XEN_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$XEN_DIR/../.." && pwd)
XENV=4.17
XLIB=/usr/lib/xen-$XENV/bin

# Debian packages the suite needs on the host (also listed in scripts/install-deps.sh).
XEN_SUITE_PKGS=(qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static
  xen-hypervisor-$XENV-amd64 xen-utils-$XENV xenstore-utils libxen-dev
  bridge-utils iproute2 util-linux coreutils kmod cpio gzip xz-utils e2fsprogs
  nftables curl jq make gcc lighttpd)

log() { printf '[xen-suite] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Installs what is missing (serialised with the other helpers/CI jobs through /tmp/apt.lock).
ensure_packages() {
  local missing=() p
  for p in "${XEN_SUITE_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # lighttpd is only run inside the domU: its package would start it as a service on the host's
  # port 80 (scripts/install-deps.sh does the same)
  local policy=""
  if [[ " ${missing[*]} " =~ \ lighttpd\  ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
  fi
  local rc=0
  flock /tmp/apt.lock apt-get update -qq &&
    flock /tmp/apt.lock apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
  [ -z "$policy" ] || rm -f "$policy"
  return $rc
}

# The kernel release linux-image-amd64 depends on (e.g. 6.1.0-56-amd64). Override with KVER=.
guest_kver() {
  "$(dirname "${BASH_SOURCE[0]}")/../../scripts/guest-kver.sh"
}

# ---------------------------------------------------------------- initramfs assembly
# copy_libs ROOT FILE: the shared libraries FILE needs (ldd), at their own paths under ROOT
copy_libs() {
  local l
  ldd "$2" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' | sort -u | while read -r l; do
    [ -e "$l" ] || continue
    mkdir -p "$1$(dirname "$l")"
    [ -e "$1$l" ] || cp -L "$l" "$1$l"
  done
}
# copy_bin ROOT SRC [DST]: a binary and its libraries
copy_bin() {
  local dst=${3:-$2}
  [ -e "$2" ] || die "missing $2"
  mkdir -p "$1$(dirname "$dst")"
  cp -L "$2" "$1$dst"
  copy_libs "$1" "$2"
}
# strip_project ROOT BUILD FILE...: the project's binaries are RelWithDebInfo; their debug info
# (and that of libvpipe.so, found through RUNPATH under ROOT/BUILD) would triple the initramfs
strip_project() {
  local r=$1 b=$2 f; shift 2
  for f in "$@"; do strip --strip-debug "$r$f"; done
  [ -d "$r$b" ] && find "$r$b" -type f -name '*.so*' -exec strip --strip-debug {} +
  return 0
}
# copy_mods ROOT KVER MODULE...: modules with their dependencies (modprobe --show-depends)
copy_mods() {
  local r=$1 k=$2 m f; shift 2
  for m in "$@"; do
    for f in $(modprobe -S "$k" --show-depends "$m" | awk '$1=="insmod"{print $2}'); do
      mkdir -p "$r$(dirname "$f")"
      cp "$f" "$r$f"
    done
  done
}
# mkroot ROOT KVER: an empty tree with busybox (applets as symlinks) and a few directories
mkroot() {
  local r=$1 a
  rm -rf "$r"
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,root,mnt,var/lib,var/log,lib/modules/$2}
  cp /bin/busybox "$r/bin/busybox"
  # applet links (they point at busybox's host path, /usr/bin/busybox on merged-/usr Debian)
  /bin/busybox --install -s "$r/bin"
  [ -e "$r/usr/bin/busybox" ] || ln -s ../../bin/busybox "$r/usr/bin/busybox"
  ln -sf ../bin/busybox "$r/sbin/modprobe"   # the kernel's module autoloader calls /sbin/modprobe
  ln -s ../run "$r/var/run"
  ln -s ../run/lock "$r/var/lock"
}
# finish_mods ROOT KVER: modules.dep for busybox modprobe (fresh files: ROOT may share inodes
# with a cached base tree)
finish_mods() {
  rm -f "$1/lib/modules/$2"/modules.*
  cp /lib/modules/"$2"/modules.{builtin,builtin.modinfo,order} "$1/lib/modules/$2/"
  depmod -b "$1" "$2"
}
# tree_stamp NAME: a text that changes when the inputs of a cached tree change
tree_stamp() {
  echo "$KV $*"
  dpkg-query -W -f '${Package}=${Version} ' xen-utils-$XENV busybox-static iproute2 curl nftables jq \
    coreutils bash util-linux bridge-utils xenstore-utils lighttpd libc6 "linux-image-$KV" 2>/dev/null
  cat "$XEN_DIR/lib.sh" "$XEN_DIR/build-images.sh" | md5sum
}
# mkcpio ROOT OUT [gz]
mkcpio() {
  if [ "${3:-}" = gz ]; then
    (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -1 > "$2.tmp"
  else
    (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$2.tmp"
  fi
  mv "$2.tmp" "$2"
}
