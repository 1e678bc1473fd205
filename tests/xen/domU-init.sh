#!/bin/sh
# /init of the Xen suite's PV domU (busybox): mounts, drivers, network, then /scenario.sh with
# the role dom0 gave on the kernel command line (vpipe_role=plain|full|victim|survivor).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run/lock /mnt; mount -t devpts devpts /dev/pts
ln -s /proc/self/fd /dev/fd 2>/dev/null
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
ROLE=$(arg vpipe_role); IP=$(arg vpipe_ip); PEER=$(arg vpipe_client)
echo "VPIPE-XEN-DOMU: init, role ${ROLE:-?}, uptime $(cut -d' ' -f1 /proc/uptime)s"
for m in xen-blkfront xen-netfront crc32c_generic crc32c-intel ext4; do
  modprobe $m 2>/dev/null || echo "VPIPE-XEN-DOMU: modprobe $m failed"
done
ip link set lo up
if [ "$ROLE" != stress ] && [ "$ROLE" != burn ]; then  # these have no disk and no vif
  ip link set eth0 up && ip addr add "${IP:-10.0.0.2}/24" dev eth0
  # blkfront probes asynchronously
  i=0; while [ ! -b /dev/xvda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fi
export ROLE IP PEER
/scenario.sh
echo "VPIPE-XEN-DOMU: scenario ended (rc=$?), powering off"
sync
poweroff -f
