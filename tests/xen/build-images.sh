#!/usr/bin/env bash
# tests/xen/build-images.sh -- everything the Xen suite boots, built from Debian packages and the
# project's own build:
#   kernel/   xen (ELF for QEMU's multiboot loader), vmlinux (dom0, uncompressed), vmlinux.gz (domU)
#   kmod/     a copy of guest-module/kmod built against the guest kernel's headers -> vpipe.ko
#   disks/    xvda.img (the domU's ext4 disk: test files + MANIFEST of SHA-256s) and data.img (the
#             client's files in dom0); pristine copies, run.sh works on copies of xvda.img
#   domU.cpio, dom0.cpio.gz   the two initramfs (dom0's holds the domU kernel + initramfs)
#
# usage: build-images.sh --build-dir DIR [--work DIR] [--quick]
#   --build-dir  CMake build dir holding bin/{vpiped,vpipectl,cp-vpipe,vpipe-httpd,vpipe-proxy},
#                lib/libvpipe.so, lib/libvpipe-preload.so and kmod/vpipe.ko (default: <repo>/build)
#   --work       output directory (default: BUILD_DIR/xen)
#   --quick      re-pack the initramfs only: no apt check, kernel and disk
#                images reused as they are
# env: KVER (guest kernel release; default: what linux-image-amd64 depends on)
#      VPIPED_ARGS (how dom0 starts the engine; default "--xen -c /etc/vpipe/vpiped.toml")
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BUILD=$REPO/build
W=
QUICK=0
while (($#)); do
  case $1 in
    --build-dir) BUILD=$(realpath "$2"); shift 2 ;;
    --work) W=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
W=${W:-$BUILD/xen}
mkdir -p "$W"
W=$(realpath "$W")
VPIPED_ARGS=${VPIPED_ARGS:---xen -c /etc/vpipe/vpiped.toml}

[ "$QUICK" = 1 ] || ensure_packages
KV=$(guest_kver) || die "no guest kernel: install linux-image-amd64"
log "guest kernel $KV, work dir $W"
t_start=$SECONDS

# ---------------------------------------------------------------- kernels
build_kernels() {
  local k=$W/kernel stamp="$KV $(stat -c %Y /boot/vmlinuz-"$KV" /boot/xen-$XENV-amd64.gz | tr '\n' ' ')"
  if [ -f "$k/stamp" ] && [ "$(cat "$k/stamp")" = "$stamp" ]; then return; fi
  [ "$QUICK" = 1 ] && [ -f "$k/vmlinux" ] && return
  log "extracting kernels"
  rm -rf "$k"; mkdir -p "$k"
  # QEMU's multiboot loader wants Xen's uncompressed ELF
  zcat /boot/xen-$XENV-amd64.gz > "$k/xen"
  # the bzImage payload is xz: decompressing it under emulation costs ~10 s per boot, so dom0
  # boots the ELF and the domU a gzip of it (xl gunzips faster than it un-xzs)
  local off
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "/boot/vmlinuz-$KV" | sed -n 1p | cut -d: -f1)
  [ -n "$off" ] || die "no xz payload in /boot/vmlinuz-$KV"
  tail -c +$((off + 1)) "/boot/vmlinuz-$KV" | xz -dc > "$k/vmlinux" 2>/dev/null || true
  [ "$(head -c 4 "$k/vmlinux" | tail -c 3)" = ELF ] || die "vmlinux extraction failed"
  gzip -1 -c "$k/vmlinux" > "$k/vmlinux.gz"
  echo "$stamp" > "$k/stamp"
}

# ---------------------------------------------------------------- kernel module
# vpipe.ko is the build tree's own (CMake target `kmod`: Kbuild on a copy in BUILD/kmod, W=1,
# warnings fail); it only has to be built for the kernel the domUs boot.
build_kmod() {
  rm -f "$W/vpipe.ko"
  local ko=$BUILD/kmod/vpipe.ko vm
  [ -f "$ko" ] || die "$ko missing: cmake --build $BUILD --target kmod (needs linux-headers for $KV)"
  vm=$(modinfo -F vermagic "$ko" | cut -d' ' -f1)
  [ "$vm" = "$KV" ] ||
    die "$ko is built for $vm but the domUs boot $KV: configure $BUILD with -DVPIPE_KDIR=/lib/modules/$KV/build"
  cp "$ko" "$W/vpipe.ko"
}

# ---------------------------------------------------------------- disk images
# xvda.img: ext4 the domU mounts. data.img: ext4 dom0 mounts read-only for the client's files.
XVDA_MB=448
DATA_MB=96
build_disks() {
  local d=$W/disks stamp="v3 $XVDA_MB $DATA_MB"
  if [ -f "$d/stamp" ] && [ "$(cat "$d/stamp")" = "$stamp" ]; then return; fi
  [ "$QUICK" = 1 ] && [ -f "$d/xvda.img" ] && return
  log "making disk images"
  rm -rf "$d"; mkdir -p "$d/xvda" "$d/data"
  head -c 64M /dev/urandom > "$d/xvda/big.bin"          # GET (twice), cp-vpipe, victim load
  head -c $((1024 * 1024 + 4097)) /dev/urandom > "$d/xvda/odd.bin"   # not block-aligned
  printf 'vPipe on Xen: a small file\n' > "$d/xvda/small.txt"
  # stock lighttpd under libvpipe-preload.so serves it (GET, and the range in its MANIFEST name);
  # lighttpd sends 256 KiB per sendfile, each one a hand-over (~0.15 s under TCG): 8 MiB + 4097
  head -c $((8 * 1024 * 1024 + 4097)) /dev/urandom > "$d/xvda/preload.bin"
  head -c 32M /dev/urandom > "$d/data/put.bin"          # client PUTs it to the domU
  head -c 48M /dev/urandom > "$d/data/relay.bin"        # client GETs it through vpipe-proxy
  (cd "$d/xvda" && sha256sum big.bin odd.bin small.txt preload.bin > MANIFEST &&
   printf '%s  big.bin+big.bin\n' "$(cat big.bin big.bin | sha256sum | cut -d' ' -f1)" >> MANIFEST &&
   printf '%s  preload.bin:12345-4206648\n' "$(tail -c +12346 preload.bin | head -c 4194304 | sha256sum | cut -d' ' -f1)" >> MANIFEST)
  (cd "$d/data" && sha256sum put.bin relay.bin > MANIFEST)
  rm -f "$d/xvda.img" "$d/data.img"
  mkfs.ext4 -q -F -L vpipe-xvda -d "$d/xvda" "$d/xvda.img" ${XVDA_MB}M
  mkfs.ext4 -q -F -L vpipe-data -d "$d/data" "$d/data.img" ${DATA_MB}M
  cp "$d/xvda/MANIFEST" "$d/xvda.MANIFEST"; cp "$d/data/MANIFEST" "$d/data.MANIFEST"
  rm -rf "$d/xvda" "$d/data"
  echo "$stamp" > "$d/stamp"
}

# ---------------------------------------------------------------- initramfs
# Each initramfs = a cached base tree (busybox, modules, Debian binaries; rebuilt when a package,
# the kernel or these scripts change) hard-linked into roots/, plus the project's files on top.
# Only new paths are added on top (copy_libs never overwrites), so the base is never modified.
base_tree() {  # base_tree NAME FUNCTION: $W/base/NAME up to date
  local b=$W/base/$1 st
  st=$(tree_stamp "$1")
  if [ -f "$b.stamp" ] && [ "$(cat "$b.stamp")" = "$st" ] && [ -d "$b" ]; then return; fi
  log "assembling the $1 base tree"
  rm -f "$b.stamp"
  mkroot "$b" "$KV"
  "$2" "$b"
  finish_mods "$b" "$KV"
  echo "$st" > "$b.stamp"
}
overlay_root() {  # overlay_root NAME -> prints the root: a hard-linked copy of the base
  local r=$W/roots/$1
  rm -rf "$r"; mkdir -p "$W/roots"
  cp -al "$W/base/$1" "$r"
  echo "$r"
}

DOMU_MODS=(xen-blkfront xen-netfront crc32c_generic crc32c-intel ext4)
base_domU() {
  copy_mods "$1" "$KV" "${DOMU_MODS[@]}"
  local b
  # Debian's stock lighttpd (run under libvpipe-preload.so); with a minimal configuration it
  # loads no mod_*.so (its static file modules are built in)
  for b in /usr/sbin/lighttpd /usr/bin/sha256sum /usr/bin/xenstore-read /usr/bin/xenstore-write /usr/bin/xenstore-exists \
           /usr/bin/xenstore-ls /usr/bin/xenstore-list /usr/bin/xenstore-rm; do
    copy_bin "$1" "$b"
  done
}
build_domU() {
  local U b
  base_tree domU base_domU
  U=$(overlay_root domU)
  if [ -f "$W/vpipe.ko" ]; then
    mkdir -p "$U/lib/modules/$KV/extra"
    cp "$W/vpipe.ko" "$U/lib/modules/$KV/extra/"
    local dep
    for dep in $(modinfo -F depends "$W/vpipe.ko" | tr ',' ' '); do copy_mods "$U" "$KV" "$dep"; done
    finish_mods "$U" "$KV"
  fi
  for b in cp-vpipe vpipe-httpd vpipe-proxy; do copy_bin "$U" "$BUILD/bin/$b" "/usr/bin/$b"; done
  # the bench role waits on a watch, not a polling loop (each poll forks: CPU the guest's
  # figures would count); here, not in the cached base, so that older bases get it too
  copy_bin "$U" /usr/bin/xenstore-watch
  # the preload (its libvpipe.so comes along at its build path, where its RUNPATH finds it)
  copy_bin "$U" "$BUILD/lib/libvpipe-preload.so" /usr/lib/vpipe/libvpipe-preload.so
  # the stress role's probe (static: every start sets its TLS up itself)
  gcc -O2 -static -Wall -Werror -o "$U/usr/bin/tlscheck" "$XEN_DIR/tlscheck.c" || die "tlscheck.c does not build"
  # the bench's lookbusy-like neighbour (role burn with vpipe_load=duty:PCT:PERIOD_MS)
  gcc -O2 -static -Wall -Werror -o "$U/usr/bin/dutyloop" "$XEN_DIR/dutyloop.c" || die "dutyloop.c does not build"
  strip_project "$U" "$BUILD" /usr/bin/cp-vpipe /usr/bin/vpipe-httpd /usr/bin/vpipe-proxy /usr/lib/vpipe/libvpipe-preload.so
  cp "$XEN_DIR/domU-init.sh" "$U/init"
  cp "$XEN_DIR/domU-scenario.sh" "$U/scenario.sh"
  chmod +x "$U/init" "$U/scenario.sh"
  mkcpio "$U" "$W/domU.cpio"
}

DOM0_MODS=(xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-blkback xen-netback
           loop bridge veth virtio_pci virtio_blk crc32c_generic crc32c-intel ext4
           nfnetlink nf_tables nft_meta_bridge sch_netem)
base_dom0() {
  local D=$1 b
  copy_mods "$D" "$KV" "${DOM0_MODS[@]}"
  # Xen toolstack (real binaries, not the /usr/sbin wrappers) and xenstore clients
  for b in xl xenstored xenconsoled xen-init-dom0 xenconsole libxl-save-helper; do
    copy_bin "$D" "$XLIB/$b"
  done
  for b in /usr/bin/xenstore /usr/bin/xenstore-{read,write,exists,ls,list,rm,chmod,watch}; do
    copy_bin "$D" "$b"
  done
  # the bash hotplug scripts and the real tools they call (busybox's lack options or flock)
  for b in /bin/bash /usr/bin/flock /usr/bin/stat /usr/sbin/losetup /usr/sbin/brctl /usr/sbin/bridge \
           /usr/bin/readlink /usr/bin/ip; do
    copy_bin "$D" "$b"
  done
  # xl needs libgcc_s for pthread_cancel (dlopen'ed: ldd does not list it)
  cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$D/lib/x86_64-linux-gnu/"
  mkdir -p "$D/etc/xen"
  cp -a /etc/xen/scripts /etc/xen/xl.conf "$D/etc/xen/"
  # checks and the client: nft (ruleset check), curl, sha256sum, jq (stats --json)
  for b in /usr/sbin/nft /usr/sbin/tc /usr/bin/curl /usr/bin/sha256sum /usr/bin/jq /usr/bin/timeout; do
    copy_bin "$D" "$b"
  done
}
build_dom0() {
  local D b
  base_tree dom0 base_dom0
  D=$(overlay_root dom0)
  mkdir -p "$D/guests" "$D/etc/vpipe"
  # vPipe in dom0: the engine, its control tool, and vpipe-httpd as the client side's server
  for b in vpiped vpipectl vpipe-httpd; do copy_bin "$D" "$BUILD/bin/$b" "/usr/bin/$b"; done
  strip_project "$D" "$BUILD" /usr/bin/vpiped /usr/bin/vpipectl /usr/bin/vpipe-httpd
  cat > "$D/etc/vpipe/vpiped.toml" <<'EOF'
# vpiped in the Xen suite's dom0: VMs, disks and addresses come from xenstore
[engine]
control_socket = "/run/vpipe/vpiped.ctl"
log_level = "info"
pool_pages = 4096
metrics_listen = ""
socket_timeout_ms = 30000
EOF
  if [ -f "$XEN_DIR/vpiped-xen.toml" ]; then cat "$XEN_DIR/vpiped-xen.toml" >> "$D/etc/vpipe/vpiped.toml"; fi
  printf '%s\n' "$VPIPED_ARGS" > "$D/etc/vpipe/vpiped.args"
  cp "$W/kernel/vmlinux.gz" "$D/guests/vmlinuz"
  cp "$W/domU.cpio" "$D/guests/domU.cpio"
  cp "$W/disks/xvda.MANIFEST" "$D/etc/vpipe/xvda.MANIFEST"
  cp "$XEN_DIR/dom0-init.sh" "$D/init"
  cp "$XEN_DIR/dom0-scenario.sh" "$D/scenario.sh"
  chmod +x "$D/init" "$D/scenario.sh"
  [ -f "$W/vpipe.ko" ] && touch "$D/etc/vpipe/have-kmod"
  mkcpio "$D" "$W/dom0.cpio.gz" gz
}

for b in bin/vpiped bin/vpipectl bin/cp-vpipe bin/vpipe-httpd bin/vpipe-proxy lib/libvpipe-preload.so; do
  [ -x "$BUILD/$b" ] || die "$BUILD/$b missing: build the project first (cmake --build $BUILD)"
done
step() { local t=$EPOCHREALTIME; "$@"; log "$1: $(echo "$EPOCHREALTIME $t" | awk '{printf "%.1f", $1-$2}') s"; }
step build_kernels
step build_kmod
step build_disks
step build_domU
step build_dom0
log "images ready in $((SECONDS - t_start)) s: $(du -h "$W/dom0.cpio.gz" | cut -f1) dom0.cpio.gz," \
    "$(du -h "$W/domU.cpio" | cut -f1) domU.cpio, vpipe.ko: $([ -f "$W/vpipe.ko" ] && echo yes || echo no)"
