#!/usr/bin/env bash
# Quick boot of vpipe.ko in a plain QEMU guest (TCG, no Xen, -smp 1): Debian's guest kernel
# booted directly with a busybox initramfs and an ext4 partition on a virtio disk.
#
# Checks: the module loads, /dev/vpipe appears, VPIPE_IOC_STATS works, every operation fails
# with the exact errno without an engine (EHOSTDOWN: libvpipe falls back visibly), handles and
# counters behave, the module's extent mapping (test build: VPIPE_IOC_DBG_MAP) equals what
# debugfs reads from the same image on the host after the guest unmounted it, destination
# preparation leaves written blocks and the old bytes intact, the module unloads and reloads
# cleanly, and the kernel log shows no warning. Then, with the test build's stand-in engine
# (test_engine_disk=/dev/vda: the module executes its own requests on the raw disk, as dom0
# would on the image), file -> file runs byte-exact: new file, short count past EOF, unaligned
# overwrite, holes/unwritten sources, one file, the cache rule, chunking, counters; and the
# socket orchestration: freeze with the queues, a hand-over the engine refuses, every socket
# restored as a new descriptor (dup3 as libvpipe does) and still carrying data both ways with
# its queued bytes (carried and restored), a source whose peer closed drained locally then EOF; requests answered
# asynchronously through the slot table (5 in flight together) and a process SIGKILLed while
# its request is with the engine (it exits only after the answer; its holds are released).
# Last, an engine that stops answering (test_engine_withhold, request_timeout_ms=1000): a caller
# gets ECANCELED within the bound, a SIGKILLed caller exits within it, a socket whose state is
# unknown comes back reset (ECONNABORTED), holds are released, the module reconnects and the
# next copy is byte-exact; a slow engine that answers the watchdog's NOPs is not cut short.
#
# Exit: 0 pass, 1 fail, 77 skipped (no qemu, kernel, headers or tools).
# Environment: KVER (default: scripts/guest-kver.sh), TIMEOUT (s, default 300), KEEP=1 keeps the work dir.
set -euo pipefail
# --conformance: boot only for the conformance corpus (tests/conformance/corpus.h) against the
# module and its stand-in engine (ctest kmod_conformance_qemu)
MODE=all
[ "${1:-}" = --conformance ] && MODE=conformance
KVER=$("$(dirname "$0")/../../scripts/guest-kver.sh") || KVER=none
TIMEOUT=${TIMEOUT:-300}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KDIR=/lib/modules/$KVER/build
MODDIR=/lib/modules/$KVER/kernel
VMLINUZ=/boot/vmlinuz-$KVER

skip() { echo "SKIP: $*"; exit 77; }
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 missing"
[ -e "$KDIR/Makefile" ] || skip "kernel headers missing ($KDIR)"
[ -r "$VMLINUZ" ] || skip "guest kernel missing ($VMLINUZ)"
[ -d "$MODDIR" ] || skip "guest kernel modules missing ($MODDIR)"
for t in mke2fs debugfs cpio gzip gcc python3 modprobe; do
    command -v $t >/dev/null || [ -x /usr/sbin/$t ] || [ -x /sbin/$t ] || skip "$t missing"
done
export PATH=$PATH:/usr/sbin:/sbin
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] && file -L "$BUSYBOX" 2>/dev/null | grep -q "statically linked" ||
    skip "a static busybox is needed (busybox-static)"

W=$(mktemp -d /tmp/vpipe-kmod.XXXXXX)
cleanup() { [ "${KEEP:-0}" = 1 ] && echo "work dir: $W" || rm -rf "$W"; }
trap cleanup EXIT
t0=$(date +%s)

# 1. the module, test build, in a copy of the sources (the tree's own objects stay as they are)
mkdir -p "$W/kmod/include/vpipe/abi" "$W/kmod/core" "$W/kmod/protocol"
cp "$ROOT"/guest-module/kmod/{Kbuild,Makefile} "$ROOT"/guest-module/kmod/*.[ch] "$W/kmod/"
cp "$ROOT"/guest-module/core/*.[ch] "$W/kmod/core/"
cp "$ROOT"/common/protocol/*.[ch] "$W/kmod/protocol/"
cp "$ROOT"/libvpipe/include/vpipe/abi/{ring,ioctl}.h "$W/kmod/include/vpipe/abi/"
if ! nice make -s -C "$KDIR" M="$W/kmod" VPIPE_TEST=1 W=1 modules >"$W/kbuild.log" 2>&1; then
    cat "$W/kbuild.log"; echo "FAIL: module build"; exit 1
fi
if grep -E "warning:|error:" "$W/kbuild.log"; then echo "FAIL: module build warnings"; exit 1; fi

# 2. the probe, static
gcc -static -O2 -Wall -Wextra -Werror -I"$ROOT/libvpipe/include" -I"$ROOT/guest-module/kmod" \
    -I"$ROOT/tests/conformance" -o "$W/kmod_probe" "$HERE/kmod_probe.c" "$ROOT/tests/conformance/corpus.c"
# libvpipe's non-blocking API over the module: a static build of libvpipe's own sources (toml++
# header-only: Debian ships it as a shared library only)
if [ "$MODE" = all ]; then
    nice g++ -static -std=c++20 -O1 -Wall -Wextra -Werror -DTOML_HEADER_ONLY=1 -DVPIPE_BUILDING -fvisibility=hidden \
        -I"$ROOT/libvpipe/include" -I"$ROOT/common" -I"$ROOT/guest-module/kmod" -o "$W/kmod_lib_probe" \
        "$HERE/kmod_lib_probe.cpp" "$ROOT"/libvpipe/src/*.cpp "$ROOT/common/util/unix_socket.cpp" 2>"$W/libprobe.log" ||
        { cat "$W/libprobe.log"; echo "FAIL: kmod_lib_probe build"; exit 1; }
fi

# 3. the initramfs: busybox, the modules for virtio-blk and ext4, vpipe.ko, the probe
R=$W/root
mkdir -p "$R"/{bin,dev,proc,sys,mnt,tmp,lib/modules}
cp "$BUSYBOX" "$R/bin/busybox"
: >"$R/modules.order"
for m in virtio_pci virtio_blk ext4; do
    for f in $(modprobe -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'); do
        b=$(basename "$f")
        if [ ! -e "$R/lib/modules/$b" ]; then
            cp "$f" "$R/lib/modules/$b"
            echo "$b" >>"$R/modules.order"
        fi
    done
done
cp "$W/kmod/vpipe.ko" "$W/kmod_probe" "$R/"
[ -e "$W/kmod_lib_probe" ] && cp "$W/kmod_lib_probe" "$R/"
cat >"$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "insmod $m FAILED"; done
ip link set lo up; ip addr add 10.9.9.1/32 dev lo; ip addr add 10.9.9.2/32 dev lo
for i in $(seq 50); do [ -b /dev/vda1 ] && break; sleep 0.1; done
mount -t ext4 /dev/vda1 /mnt || echo "MOUNT FAILED"
dmesg -c >/dev/null
insmod /vpipe.ko vdev_map=vda=51712 && echo "INSMOD ok"
[ -c /dev/vpipe ] && echo "DEVNODE ok: $(cat /sys/class/misc/vpipe/dev)"
/kmod_probe all
umount /mnt && echo "UMOUNT ok"
rmmod vpipe && echo "RMMOD ok"
[ ! -e /dev/vpipe ] && echo "DEVNODE gone"
insmod /vpipe.ko && /kmod_probe stats && rmmod vpipe && echo "RELOAD ok"
mount -t ext4 /dev/vda1 /mnt || echo "MOUNT FAILED"
insmod /vpipe.ko vdev_map=vda=51712 test_engine_disk=/dev/vda test_engine_ip=10.9.9.1 && /kmod_probe engine
/kmod_lib_probe
umount /mnt && rmmod vpipe && echo "ENGINE UNLOAD ok"
echo "---- dmesg"
dmesg
echo "---- end"
echo "KMOD DONE"
poweroff -f
EOF
if [ "$MODE" = conformance ]; then
    cat >"$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "insmod $m FAILED"; done
ip link set lo up; ip addr add 10.9.9.1/32 dev lo; ip addr add 10.9.9.2/32 dev lo
for i in $(seq 50); do [ -b /dev/vda1 ] && break; sleep 0.1; done
mount -t ext4 /dev/vda1 /mnt || echo "MOUNT FAILED"
dmesg -c >/dev/null
insmod /vpipe.ko vdev_map=vda=51712 test_engine_disk=/dev/vda test_engine_ip=10.9.9.1 && echo "INSMOD ok"
/kmod_probe conformance
umount /mnt && rmmod vpipe && echo "ENGINE UNLOAD ok"
echo "---- dmesg"
dmesg
echo "---- end"
echo "KMOD DONE"
poweroff -f
EOF
fi
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet) | gzip -1 >"$W/initrd.gz"

# 4. the disk: an MBR with one partition at 1 MiB, ext4 made from files on the host
mkdir -p "$W/files"
head -c 5000000 /dev/urandom >"$W/files/big.bin"
truncate -s 4M "$W/files/sparse.bin"
dd if=/dev/urandom of="$W/files/sparse.bin" bs=4096 seek=100 count=20 conv=notrunc status=none
dd if=/dev/urandom of="$W/files/sparse.bin" bs=4096 seek=700 count=3 conv=notrunc status=none
PART_MB=96
mke2fs -q -F -t ext4 -b 4096 -d "$W/files" "$W/part.img" ${PART_MB}M
python3 - "$W/disk.img" "$PART_MB" <<'EOF'
import struct, sys
path, mb = sys.argv[1], int(sys.argv[2])
start, count = 2048, mb * 2048
mbr = bytearray(512)
mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start, count)
mbr[510:512] = b"\x55\xaa"
with open(path, "wb") as f:
    f.write(mbr)
    f.truncate(start * 512)
EOF
cat "$W/part.img" >>"$W/disk.img"

# 5. boot
echo "booting $VMLINUZ under QEMU (TCG, -smp 1, timeout ${TIMEOUT}s)"
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nodefaults -display none \
    -no-reboot -kernel "$VMLINUZ" -initrd "$W/initrd.gz" \
    -append "console=ttyS0 panic=-1 loglevel=4" \
    -drive if=none,id=d0,file="$W/disk.img",format=raw -device virtio-blk-pci,drive=d0 \
    -serial file:"$W/console.log" -monitor none
qrc=$?
set -e
t1=$(date +%s)
tr -d '\r' <"$W/console.log" >"$W/console.txt"
sed -n '/INSMOD ok/,/KMOD DONE/p' "$W/console.txt"
echo "QEMU exit $qrc after $((t1 - t0)) s"

fail=0
need() { grep -q "$1" "$W/console.txt" || { echo "FAIL: no '$1' in the console"; fail=1; }; }
if [ "$MODE" = conformance ]; then
    grep "^CONFORMANCE" "$W/console.txt" || true
    need "INSMOD ok"
    need "ENGINE UNLOAD ok"
    need "KMOD DONE"
    [ "$(grep -c 'PROBE RESULT: PASS' "$W/console.txt")" = 1 ] || { echo "FAIL: probe"; fail=1; }
    [ "$(grep -c '^CONFORMANCE .*: ok' "$W/console.txt")" -ge 60 ] || { echo "FAIL: fewer than 60 cases ran"; fail=1; }
    if sed -n '/---- dmesg/,/---- end/p' "$W/console.txt" |
            grep -E "WARNING|BUG|Oops|Call Trace|still active|refcount"; then
        echo "FAIL: kernel log"; fail=1
    fi
    if [ $fail = 0 ]; then echo "KMOD CONFORMANCE: PASS ($((t1 - t0)) s)"; exit 0; fi
    echo "KMOD CONFORMANCE: FAIL"; exit 1
fi
need "INSMOD ok"
need "DEVNODE ok"
need "UMOUNT ok"
need "RMMOD ok"
need "DEVNODE gone"
need "RELOAD ok"
need "KMOD DONE"
need "ENGINE UNLOAD ok"
need "vpipe: the engine is unresponsive"
[ "$(grep 'PROBE RESULT: PASS' "$W/console.txt" | grep -vc 'LIB PROBE')" = 3 ] || { echo "FAIL: probe"; fail=1; }
need "LIB PROBE RESULT: PASS"
if sed -n '/---- dmesg/,/---- end/p' "$W/console.txt" |
        grep -E "WARNING|BUG|Oops|Call Trace|still active|refcount"; then
    echo "FAIL: kernel log"; fail=1
fi

# 6. the module's mapping against the image as debugfs reads it
dd if="$W/disk.img" of="$W/part-after.img" bs=1M skip=1 status=none
python3 "$HERE/check_maps.py" "$W/console.txt" "$W/part-after.img" $((2048 * 512)) || fail=1

if [ $fail = 0 ]; then echo "KMOD QEMU: PASS ($((t1 - t0)) s)"; exit 0; fi
echo "KMOD QEMU: FAIL"; exit 1
