#!/bin/bash
# tests/kmod/tcp/run.sh -- proves guest-module/kmod/vpipe_tcp.c in a plain QEMU guest (no Xen).
#
# Builds the test-only module vpipe_ktcp_test (ktcp_test.c + copies of vpipe_tcp.[ch] and
# vpipe_block.[ch], the guest core's headers beside them) against the guest kernel's headers
# (W=1, any warning fails) and the static userspace driver ktcp_test, packs them with busybox
# into an initramfs, boots the guest kernel under QEMU (TCG, -smp 1) and runs the
# tests twice: on the guest's own stack (10.77.0.1 <-> 10.77.0.2 on lo), then with the peer
# in its own netns behind a veth pair (iproute2's ip and its libraries are copied in), which
# is how a client behind the VM's vif looks. Everything lives in a scratch directory that is
# removed on exit.
#
# Exit: 0 pass, 1 fail, 77 skipped (no qemu / kernel / headers / busybox / compiler).
# Env: KVER (default: scripts/guest-kver.sh), KTCP_TIMEOUT (seconds, default 240), KTCP_KEEP=1 keeps
# the scratch directory, KTCP_LOG=path copies the guest's console log there.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
KVER=$("$(dirname "$0")/../../../scripts/guest-kver.sh") || KVER=none
kdir=/lib/modules/$KVER/build
kernel=/boot/vmlinuz-$KVER
timeout_s=${KTCP_TIMEOUT:-240}

skip() { echo "ktcp: SKIP: $*"; exit 77; }
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 missing"
[ -r "$kernel" ] || skip "$kernel missing"
[ -d "$kdir" ] || skip "kernel headers $kdir missing"
busybox=$(command -v busybox) || skip "busybox missing"
file -L "$busybox" 2>/dev/null | grep -q "statically linked" || ldd "$busybox" 2>&1 | grep -q "not a dynamic" || skip "busybox is not static (busybox-static)"
command -v cpio >/dev/null || skip "cpio missing"
command -v gcc >/dev/null || skip "gcc missing"
command -v make >/dev/null || skip "make missing"
ipbin=$(command -v ip) || skip "iproute2 (ip) missing"
ip -V 2>&1 | grep -q iproute2 || skip "ip is not iproute2"

work=$(mktemp -d /tmp/ktcp-test.XXXXXX)
qpid=
cleanup() {
	[ -n "$qpid" ] && kill "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null
	[ "${KTCP_KEEP:-0}" = 1 ] && { echo "ktcp: kept $work"; return; }
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# --- build ---------------------------------------------------------------------------------
mkdir -p "$work/mod/core" "$work/root"
cp "$here/ktcp_test.c" "$here/ktcp_test_ioctl.h" "$here/Kbuild" \
	"$repo/guest-module/kmod/vpipe_tcp.c" "$repo/guest-module/kmod/vpipe_tcp.h" \
	"$repo/guest-module/kmod/vpipe_block.c" "$repo/guest-module/kmod/vpipe_block.h" "$work/mod/"
# vpipe_tcp.h includes the guest core's vpipe_core.h (struct vpipe_restore): its headers only
cp "$repo"/guest-module/core/*.h "$work/mod/core/"
if ! nice make -s -C "$kdir" M="$work/mod" VPIPE_INC="$repo/libvpipe/include" W=1 modules \
	>"$work/build.log" 2>&1; then
	cat "$work/build.log"
	echo "ktcp: FAIL: module build"
	exit 1
fi
if grep -iE "warning|error" "$work/build.log"; then
	echo "ktcp: FAIL: warnings in the module build"
	exit 1
fi
if ! nice gcc -O2 -Wall -Wextra -Werror -static -I"$here" -I"$repo/libvpipe/include" \
	-o "$work/root/ktcp_test" "$here/ktcp_test_user.c" 2>"$work/gcc.log"; then
	cat "$work/gcc.log"
	echo "ktcp: FAIL: test program build"
	exit 1
fi

# --- initramfs -----------------------------------------------------------------------------
r=$work/root
mkdir -p "$r/bin" "$r/proc" "$r/sys" "$r/dev" "$r/tmp"
cp "$busybox" "$r/bin/busybox"
for a in sh mount ip insmod rmmod poweroff sleep cat echo dmesg; do ln -s busybox "$r/bin/$a"; done
cp "$work/mod/vpipe_ktcp_test.ko" "$r/"
# iproute2 for the veth/netns topology, with its shared libraries
mkdir -p "$r/sbin" "$r/run/netns"
cp "$ipbin" "$r/sbin/ip2"
for lib in $(ldd "$ipbin" | grep -o '/[^ ]*'); do
	mkdir -p "$r$(dirname "$lib")"
	cp -L "$lib" "$r$lib"
done
cp "/lib/modules/$KVER/kernel/drivers/net/veth.ko" "$r/" || skip "veth.ko missing"
# the test module links nf_conntrack (the firewalled-guest scenario); vpipe_tcp.c itself
# does not depend on it
mdir=/lib/modules/$KVER/kernel
for m in crypto/crc32c_generic lib/libcrc32c net/ipv4/netfilter/nf_defrag_ipv4 net/ipv6/netfilter/nf_defrag_ipv6 \
	net/netfilter/nf_conntrack; do
	cp "$mdir/$m.ko" "$r/" 2>/dev/null || skip "$mdir/$m.ko missing"
done
cat >"$r/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
ip addr add 10.77.0.1/32 dev lo
ip addr add 10.77.0.2/32 dev lo
for m in crc32c_generic libcrc32c nf_defrag_ipv4 nf_defrag_ipv6 nf_conntrack; do insmod /$m.ko; done
insmod /veth.ko
if insmod /vpipe_ktcp_test.ko; then
	/ktcp_test
	echo "KTCP EXIT $?"
	/sbin/ip2 netns add peer &&
	/sbin/ip2 link add vg type veth peer name vp &&
	/sbin/ip2 link set vp netns peer &&
	/sbin/ip2 addr add 10.78.0.2/24 dev vg &&
	/sbin/ip2 link set vg up &&
	/sbin/ip2 -n peer addr add 10.78.0.1/24 dev vp &&
	/sbin/ip2 -n peer link set vp up &&
	/sbin/ip2 -n peer link set lo up &&
	/ktcp_test veth
	echo "KTCP VETH EXIT $?"
	/sbin/ip2 netns del peer
	rmmod vpipe_ktcp_test && echo "KTCP RMMOD OK"
else
	echo "KTCP RESULT: FAIL (insmod)"
fi
dmesg | grep -iE "warn|bug|oops|vpipe|ktcp" | grep -v "module verification failed\|taints kernel" | sed 's/^/dmesg: /'
poweroff -f
INIT
chmod +x "$r/init"
(cd "$r" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/initrd.gz")

# --- boot ------------------------------------------------------------------------------------
log=$work/console.log
t0=$(date +%s)
timeout "$timeout_s" qemu-system-x86_64 -accel tcg -smp 1 -m 512 -nodefaults -no-reboot \
	-display none -serial file:"$log" -kernel "$kernel" -initrd "$work/initrd.gz" \
	-append "console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init" &
qpid=$!
wait "$qpid"
qrc=$?
qpid=
t1=$(date +%s)
[ -n "${KTCP_LOG:-}" ] && cp "$log" "$KTCP_LOG"
grep -E "^(ok |FAIL|note|timing|topology|make_pair|netns|KTCP|dmesg:)" "$log" | tr -d '\r'
echo "ktcp: guest ran $((t1 - t0)) s (qemu exit $qrc)"
if [ "$qrc" = 124 ]; then
	tail -n 30 "$log"
	echo "ktcp: FAIL: guest timed out after ${timeout_s}s"
	exit 1
fi
if grep -q "KTCP RESULT: PASS" "$log" && grep -q "KTCP RESULT veth: PASS" "$log" &&
	grep -q "KTCP RMMOD OK" "$log" &&
	! grep -qE "dmesg: .*(BUG|WARNING|Oops|general protection)" "$log"; then
	echo "ktcp: PASS"
	exit 0
fi
grep -vE "^(ok |FAIL|note|timing|topology|make_pair|netns|KTCP|dmesg:)" "$log" | tail -n 15 | tr -d '\r'
echo "ktcp: FAIL"
exit 1
