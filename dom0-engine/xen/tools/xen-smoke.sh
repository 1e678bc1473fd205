#!/usr/bin/env bash
# dom0-engine/xen/tools/xen-smoke.sh -- vpiped's Xen backend on real Xen (under QEMU TCG), without
# the kernel module: the suite's images (tests/xen/build-images.sh) with two changes, then
# tests/xen/run.sh boots them:
#   domU  runs vpipe-xen-testfront (a userspace frontend: gntalloc + evtchn + xenstore) instead of
#         the suite's scenario: handshake, NOP round trips, an ungranted descriptor page
#         (-EINVAL), a file->file copy on a scratch disk, a disk it does not have (-EPERM), a
#         req_prod overflow (backend drops the ring, InitWait), reconnect, Closed
#   dom0  runs this file's scenario: vpiped --xen, the domU with a second (scratch) disk on a loop
#         device, checks the copy on the scratch image and the engine's counters, destroys the
#         domU (backend directory removed, VM gone), then a second domU connects, and SIGTERM.
# usage: xen-smoke.sh --build-dir DIR [--work DIR] [--no-images]     exit: 0 PASS, 1 FAIL, 77 skip
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
BUILD=$REPO/build
W=
IMAGES=1
while (($#)); do
  case $1 in
    --build-dir) BUILD=$(realpath "$2"); shift 2 ;;
    --work) W=$2; shift 2 ;;
    --no-images) IMAGES=0; shift ;;
    *) echo "usage: $0 --build-dir DIR [--work DIR] [--no-images]" >&2; exit 2 ;;
  esac
done
W=${W:-$BUILD/xen-smoke}
. "$REPO/tests/xen/lib.sh"
[ -x "$BUILD/bin/vpipe-xen-testfront" ] || die "$BUILD/bin/vpipe-xen-testfront missing (cmake --build $BUILD --target vpipe-xen-testfront)"
if [ "$IMAGES" = 1 ]; then
  "$REPO/tests/xen/build-images.sh" --build-dir "$BUILD" --work "$W"
fi
W=$(realpath "$W")
KV=$(guest_kver)
U=$W/roots/domU
D=$W/roots/dom0
[ -d "$U" ] && [ -d "$D" ] || die "no image roots in $W/roots: run without --no-images"

# roots/ may be hard-linked copies of cached base trees (build-images.sh): replace files, never
# write through them
rm -f "$U/scenario.sh" "$D/scenario.sh" "$U/usr/bin/vpipe-xen-testfront" "$D/usr/bin/vpiped" \
  "$D/usr/bin/vpipectl" "$D/guests/domU.cpio"
# ---- domU: the test frontend and the modules it needs
cp "$BUILD/bin/vpipe-xen-testfront" "$U/usr/bin/"
for m in xen-gntalloc xen-evtchn; do
  modinfo -k "$KV" -n "$m" >/dev/null 2>&1 && [ -e "$U$(modinfo -k "$KV" -n "$m")" ] || copy_mods "$U" "$KV" "$m"
done
finish_mods "$U" "$KV"
cat > "$U/scenario.sh" <<'EOF'
#!/bin/sh
modprobe xen-gntalloc; modprobe xen-evtchn
echo "VPIPE-XEN-DOMU: testfront start (uptime $(cut -d' ' -f1 /proc/uptime)s)"
vpipe-xen-testfront --nops 500 --copy 51728:0:4194304:1048576 --timeout 60
echo "VPIPE-XEN-DOMU: testfront exit $?"
EOF
chmod +x "$U/scenario.sh"
mkcpio "$U" "$W/domU.cpio"

# ---- dom0: this build's engine (also with --no-images) and the smoke scenario
for b in vpiped vpipectl; do copy_bin "$D" "$BUILD/bin/$b" "/usr/bin/$b"; done
strip_project "$D" "$BUILD" /usr/bin/vpiped /usr/bin/vpipectl
cp "$W/domU.cpio" "$D/guests/domU.cpio"
cat > "$D/scenario.sh" <<'EOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
CTL=/run/vpipe/vpiped.ctl
PASS=1
ck() { echo "VPIPE-XEN CHECK $1: $2 ($3)"; [ "$2" = OK ] || PASS=0; }
up() { cut -d' ' -f1 /proc/uptime; }
stats() { vpipectl --control $CTL stats --json; }
mkcfg() {  # NAME
  cat <<CFG
name = "$1"
type = "pv"
kernel = "/guests/vmlinuz"
ramdisk = "/guests/domU.cpio"
extra = "console=hvc0 loglevel=4 vpipe_role=testfront vpipe_ip=10.0.0.2"
memory = 192
vcpus = 1
disk = [ 'phy:/dev/vda,xvda,w', 'phy:$LOOP,xvdb,w' ]
vif = [ 'bridge=xenbr0,mac=00:16:3e:00:00:02,ip=10.0.0.2' ]
on_poweroff = "destroy"
on_crash = "destroy"
CFG
}
run_domU() {  # NAME: create, follow its console until the testfront is done
  mkcfg "$1" > /etc/xen/$1.cfg
  t0=$(up)
  xl create /etc/xen/$1.cfg > /tmp/xl-$1.log 2>&1 || { cat /tmp/xl-$1.log; ck "$1-create" FAIL "xl create"; return 1; }
  DOMID=$(xl domid "$1")
  ck "$1-create" OK "domid $DOMID"
  i=0
  while ! grep -q "testfront exit" /var/log/xen/console/guest-$1.log 2>/dev/null; do
    sleep 0.5; i=$((i + 1))
    [ $i -lt 360 ] || { ck "$1-testfront" FAIL "no end after 180 s"; break; }
  done
  sed "s/^/[$1] /" /var/log/xen/console/guest-$1.log | grep -v '^\[.*\] *$' | tail -n 40
  grep "^TESTFRONT" /var/log/xen/console/guest-$1.log | sed 's/\r//' | while read -r _ name res rest; do
    case $name in done:) ;; *) echo "VPIPE-XEN CHECK $1/$name: $res $rest";; esac
  done
  if grep -q "testfront exit 0" /var/log/xen/console/guest-$1.log; then
    ck "$1-testfront" OK "all frontend checks passed in $(echo "$(up) $t0" | awk '{printf "%.1f", $1-$2}') s"
  else
    ck "$1-testfront" FAIL "$(grep -c 'TESTFRONT .* FAIL' /var/log/xen/console/guest-$1.log) failed"
  fi
}

echo "VPIPE-XEN PHASE smoke-start at dom0 uptime $(up)s"
# scratch disk: 16 MiB, the first MiB random; the testfront copies it to 4 MiB
dd if=/dev/urandom of=/run/scratch.img bs=1M count=1 2>/dev/null
dd if=/dev/zero of=/run/scratch.img bs=1M seek=1 count=15 2>/dev/null
LOOP=$(/usr/sbin/losetup -f --show /run/scratch.img)   # busybox losetup lacks --show
vpiped --xen -c /etc/vpipe/vpiped.toml > /var/log/vpiped.log 2>&1 &
VPIPED=$!
( tail -n +1 -F /var/log/vpiped.log 2>/dev/null | sed 's/^/[vpiped] /' ) &
TAILP=$!
i=0; while ! vpipectl --control $CTL ping >/dev/null 2>&1; do sleep 0.2; i=$((i+1)); [ $i -lt 150 ] || break; done
vpipectl --control $CTL ping >/dev/null 2>&1 && ck vpiped-start OK "pid $VPIPED" || ck vpiped-start FAIL "$(tail -3 /var/log/vpiped.log)"

run_domU s1
S1=$DOMID
src=$(dd if=$LOOP bs=1M count=1 2>/dev/null | sha256sum | cut -c1-64)
dst=$(dd if=$LOOP bs=1M skip=4 count=1 2>/dev/null | sha256sum | cut -c1-64)
[ -n "$LOOP" ] && [ "$src" = "$dst" ] && ck dom0-copy-on-disk OK "1 MiB at 4 MiB of $LOOP = the first MiB (sha256 $(echo $src | cut -c1-12))" \
  || ck dom0-copy-on-disk FAIL "sha256 $dst, want $src"
vpipectl --control $CTL stats
S=$(stats)
echo "$S" | jq -c '.xen'
v=$(echo "$S" | jq "[.vms[] | select(.id == $S1)][0]")
[ "$(echo "$v" | jq -r .transport)" = xen ] && [ "$(echo "$v" | jq '.disks | length')" = 2 ] &&
  ck engine-vm-from-xenstore OK "$(echo "$v" | jq -c '{name, transport, disks: [.disks[] | {vdev, image, writable}]}')" ||
  ck engine-vm-from-xenstore FAIL "$(echo "$v" | jq -c .)"
c=$(echo "$S" | jq -c '.xen.counters')
[ "$(echo "$c" | jq .ring_errors)" = 1 ] && [ "$(echo "$c" | jq .connects)" = 2 ] &&
  ck engine-xen-counters OK "$c" || ck engine-xen-counters FAIL "$c"
[ "$(echo "$v" | jq .rejected)" -ge 2 ] && [ "$(echo "$v" | jq .bad_pages)" = 1 ] &&
  ck engine-rejections OK "$(echo "$v" | jq -c '{requests, rejected, bad_pages, ring_overflows}')" ||
  ck engine-rejections FAIL "$(echo "$v" | jq -c .)"

# destroy (the domU has powered off by itself or is about to): the backend must clean up
xl destroy s1 2>/dev/null
i=0; while xenstore-exists /local/domain/0/backend/vpipe/$S1 2>/dev/null; do sleep 0.2; i=$((i+1)); [ $i -lt 50 ] || break; done
xenstore-exists /local/domain/0/backend/vpipe/$S1 2>/dev/null && ck s1-backend-removed FAIL "$(xenstore-ls /local/domain/0/backend/vpipe/$S1 | tr '\n' ' ')" \
  || ck s1-backend-removed OK "backend/vpipe/$S1 gone"
n=$(stats | jq "[.vms[] | select(.id == $S1)] | length")
[ "$n" = 0 ] && ck s1-vm-removed OK "engine forgot domain $S1" || ck s1-vm-removed FAIL "still listed"

# a second domain, created while vpiped runs (@introduceDomain)
run_domU s2
xl destroy s2 2>/dev/null
sleep 1
kill -TERM $VPIPED; i=0
while kill -0 $VPIPED 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
if kill -0 $VPIPED 2>/dev/null; then ck vpiped-stop FAIL "still running"; kill -KILL $VPIPED
else wait $VPIPED; rc=$?; [ $rc = 0 ] && ck vpiped-stop OK "exit 0 on SIGTERM" || ck vpiped-stop FAIL "exit $rc"; fi
kill $TAILP 2>/dev/null
/usr/sbin/losetup -d $LOOP
echo "VPIPE-XEN PHASE smoke-end at dom0 uptime $(up)s"
if [ $PASS = 1 ]; then echo "VPIPE-XEN RESULT: PASS"; exit 0; fi
echo "VPIPE-XEN RESULT: FAIL"; exit 1
EOF
chmod +x "$D/scenario.sh"
mkcpio "$D" "$W/dom0.cpio.gz" gz
log "smoke images ready in $W; booting"
exec "$REPO/tests/xen/run.sh" --build-dir "$BUILD" --work "$W" --no-build --timeout "${TIMEOUT:-480}"
