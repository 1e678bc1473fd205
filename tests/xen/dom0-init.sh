#!/bin/sh
# /init of the Xen suite's dom0 (busybox, running from its initramfs): Xen services, the bridge,
# the client's network namespace, the disks; then /scenario.sh (or a shell), and QEMU's exit
# through isa-debug-exit: 1 = PASS, 3 = FAIL (run.sh turns that into its own exit code).
#
# Network (all on bridge xenbr0, 10.0.0.0/24):
#   dom0 10.0.0.1 on xenbr0 | domU 10.0.0.2 (vif, ip= in its config) | client 10.0.0.3 in netns
#   "client" (veth vclient <-> eth0)
# Disks (QEMU virtio): /dev/vda = the domU's xvda (phy:), /dev/vdb = client data (ro, /data)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /run
# devtmpfs lacks udev's links; the block hotplug script's locking needs /dev/stdin
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mkdir -p /run/lock /run/xen /run/xenstored /run/xen-hotplug /run/vpipe /run/netns \
         /var/log/xen/console /var/lib/xen /var/lib/xenstored /data
up() { cut -d' ' -f1 /proc/uptime; }
echo "VPIPE-XEN PHASE dom0-init at dom0 uptime $(up)s"
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
MODE=$(arg vpipe_xen)

quit() {  # quit 0|1: isa-debug-exit at 0xf4, QEMU exits with (v << 1) | 1
  sync
  if [ "$1" = 0 ]; then printf '\000'; else printf '\001'; fi | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
  sleep 2; echo "VPIPE-XEN: isa-debug-exit did not stop QEMU"; reboot -f
}

for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-blkback xen-netback loop bridge veth \
         virtio_pci virtio_blk crc32c_generic crc32c-intel ext4 nfnetlink nf_tables nft_meta_bridge sch_netem; do
  modprobe $m 2>/dev/null || echo "VPIPE-XEN: modprobe $m FAILED"
done
mount -t xenfs xenfs /proc/xen
xenstored --pid-file /run/xenstored.pid
xen-init-dom0 >/dev/null
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console

# NB: Debian's busybox sh prefers its own applets over $PATH: real tools by full path
ip=/usr/bin/ip
/usr/sbin/brctl addbr xenbr0; /usr/sbin/brctl stp xenbr0 off; /usr/sbin/brctl setfd xenbr0 0
$ip addr add 10.0.0.1/24 dev xenbr0; $ip link set xenbr0 up; $ip link set lo up
$ip netns add client
$ip link add vclient type veth peer name eth0 netns client
$ip link set vclient master xenbr0; $ip link set vclient up
$ip -n client link set lo up; $ip -n client addr add 10.0.0.3/24 dev eth0; $ip -n client link set eth0 up

i=0; while { [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; } && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 -o ro /dev/vdb /data || echo "VPIPE-XEN: cannot mount the client data disk /dev/vdb"
echo "VPIPE-XEN PHASE dom0-ready at dom0 uptime $(up)s ($(xl info | sed -n 's/^xen_version *: //p'), $(free -m | awk '/Mem:/{print $2}') MiB)"

if [ "$MODE" = shell ]; then
  cat <<'EOF'
VPIPE-XEN: shell mode. dom0 is set up (xenstored, xenconsoled, xenbr0 10.0.0.1, netns client 10.0.0.3,
  /dev/vda = the domU disk, /data = client files). Try:
    /scenario.sh full          # the whole suite (or: plain)
    vpiped $(cat /etc/vpipe/vpiped.args) &       # the engine alone
    /scenario.sh mkcfg d1 full > /etc/xen/d1.cfg; xl create -c /etc/xen/d1.cfg   (Ctrl-] detaches)
    ip netns exec client curl -o /dev/null http://10.0.0.2:8080/big.bin
  Ctrl-a x quits QEMU.
EOF
  exec setsid cttyhack sh
fi
/scenario.sh "${MODE:-full}"
rc=$?
echo "VPIPE-XEN PHASE end at dom0 uptime $(up)s"
quit $rc
