#!/bin/sh
# The domU's half of the Xen suite. Runs as $ROLE (from domU-init.sh):
#   plain     no vPipe: the disk and the network plumbing (busybox httpd serves the client)
#   full      vpipe.ko connects; cp-vpipe; vpipe-httpd --mode vpipe (GET x2, PUT); vpipe-proxy relay;
#             Debian's lighttpd under libvpipe-preload.so (GET, range GET; its counters -> dom0)
#   victim    vpipe.ko connects; vpipe-httpd + a cp-vpipe loop keep the engine busy until dom0
#             destroys this domain
#   survivor  vpipe.ko connects; cp-vpipe byte-exact (after the victim's destruction), then again
#             after dom0 restarted vpiped under the Connected frontend
#   stress    no vPipe, no disk, no network: once dom0 says go, short-lived processes for a
#             while, each checked (tlscheck, sha256sum, busybox applets); dom0 pins 2-3 of these
#             to one physical CPU (the register state must survive Xen's context switches)
#   bench     vpipe.ko connects; vpipe-httpd in vPipe (:8080), sendfile (:8082) and rw (:8083) mode
#             serve xvda for bench/xen.sh (GET, PUT with --fsync), vpipe-proxy relays to the
#             client's server in vPipe (:9003) and splice (:9004) mode; drops its page cache
#             whenever dom0 asks (data/cmd/drop)
#   burn      no vPipe, no disk, no network: a busy loop until dom0 destroys it (a CPU-bound
#             neighbour for bench/xen.sh), or with vpipe_load=duty:PCT:PERIOD_MS a lookbusy-like
#             load that sleeps the rest of each period (dutyloop)
#   shell     vpipe.ko connects, xvda mounted, then a shell on the console (developers)
# Results go to xenstore (dom0 reads and prints them): data/check/<name> = "OK (...)"|"FAIL (...)",
# data/ready = 1 when servers listen, data/end = "<n> checks, <m> failed" at the end. dom0 -> domU: data/cmd/<name>.
# Everything is also printed on the console (dom0 copies it to the serial log as [domU:<name>]).
SELF=$(xenstore-read domid)
XS=/local/domain/$SELF/data
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "VPIPE-XEN-DOMU[$ROLE]: $* (uptime $(up)s)"; }
NCHECK=0; NFAIL=0
ck() {  # ck NAME OK|FAIL DETAIL
  NCHECK=$((NCHECK + 1)); [ "$2" = OK ] || NFAIL=$((NFAIL + 1))
  echo "VPIPE-XEN CHECK domU/$1: $2 ($3)"
  xenstore-write "$XS/check/$1" "$2 ($3)"
}
wait_cmd() {  # wait_cmd NAME SECONDS -> prints the value
  local i=0 v
  while [ $i -lt $(($2 * 5)) ]; do
    v=$(xenstore-read "$XS/cmd/$1" 2>/dev/null) && { echo "$v"; return 0; }
    sleep 0.2; i=$((i + 1))
  done
  return 1
}
want() { grep "  $1\$" /mnt/MANIFEST | cut -d' ' -f1; }
dropcaches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# verify NAME FILE MANIFEST-ENTRY: SHA-256 of FILE, read from the disk (caches dropped)
verify() {
  local got exp
  dropcaches
  got=$(sha256sum "$2" 2>&1 | cut -d' ' -f1); exp=$3
  if [ -n "$exp" ] && [ "$got" = "$exp" ]; then ck "$1" OK "sha256 $(echo "$got" | cut -c1-12)... $(stat -c %s "$2") bytes"
  else ck "$1" FAIL "sha256 of $2 is '$got', want '$exp'"; fi
}
listening() { cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -qi " [0-9A-F]*:$(printf '%04X' "$1") [0-9A-F]*:0000 0A "; }
wait_listen() {
  local i=0
  while ! listening "$1"; do sleep 0.2; i=$((i + 1)); [ $i -gt 150 ] && return 1; done
  return 0
}

mount_disk() {
  if mount -t ext4 /dev/xvda /mnt 2>/tmp/mount.err; then ck mount-xvda OK "$(df -m /mnt | tail -1 | awk '{print $2}') MiB ext4"
  else ck mount-xvda FAIL "$(cat /tmp/mount.err)"; return 1; fi
}
umount_disk() {
  sync
  if umount /mnt 2>/tmp/umount.err; then ck umount-xvda OK "clean"; else ck umount-xvda FAIL "$(cat /tmp/umount.err)"; fi
}
# loads vpipe.ko and waits until the frontend is Connected (xenbus state 4) and /dev/vpipe exists
vpipe_up() {
  local t0 i st
  t0=$(up)
  if ! modinfo vpipe >/dev/null 2>&1; then ck kmod-load FAIL "no vpipe.ko in the domU image"; return 1; fi
  if ! modprobe vpipe 2>/tmp/modprobe.err; then ck kmod-load FAIL "$(cat /tmp/modprobe.err)"; dmesg | tail -20; return 1; fi
  ck kmod-load OK "$(grep -m1 '^vpipe ' /proc/modules | cut -d' ' -f1-2)"
  i=0
  while [ $i -lt 300 ]; do
    st=$(xenstore-read "device/vpipe/0/state" 2>/dev/null)
    [ "$st" = 4 ] && [ -c /dev/vpipe ] && break
    sleep 0.1; i=$((i + 1))
  done
  if [ "$st" = 4 ] && [ -c /dev/vpipe ]; then
    ck kmod-connected OK "device/vpipe/0 Connected after $(echo "$(up) $t0" | awk '{printf "%.1f", $1-$2}')s"
  else
    ck kmod-connected FAIL "frontend state '${st:-none}', backend state '$(xenstore-read "$(xenstore-read device/vpipe/0/backend 2>/dev/null)/state" 2>/dev/null)', /dev/vpipe $([ -c /dev/vpipe ] && echo present || echo absent)"
    dmesg | grep -i vpipe | tail -20
    return 1
  fi
}
# cp-vpipe FILE -> DEST without fallback, then byte-exact from the disk
cp_check() {  # cp_check NAME SRC DEST
  local t0 t1 out rc
  t0=$(up)
  out=$(VPIPE_NO_FALLBACK=1 cp-vpipe --no-fallback --stats "/mnt/$2" "/mnt/$3" 2>&1)
  rc=$?
  if [ $rc = 0 ]; then
    t1=$(up)
    echo "$out"
    verify "$1" "/mnt/$3" "$(want "$2")"
    say "cp-vpipe $2 took $(echo "$t1 $t0" | awk '{printf "%.2f", $1-$2}')s"
  else
    echo "$out"
    ck "$1" FAIL "cp-vpipe exit $rc: $(echo "$out" | tail -2 | tr '\n' ' ')"
  fi
}
finish() {
  xenstore-write "$XS/end" "$NCHECK checks, $NFAIL failed"
  say "done: $NCHECK checks, $NFAIL failed"
}

say "scenario starts (domid $SELF, ip $IP)"
case $ROLE in
plain)
  mount_disk || { finish; exit 1; }
  verify disk-read /mnt/big.bin "$(want big.bin)"
  httpd -p 8080 -h /mnt
  if wait_listen 8080; then xenstore-write "$XS/ready" 1; else xenstore-write "$XS/ready" fail; fi
  if ping -c 2 -W 2 "$PEER" >/dev/null 2>&1; then ck ping-client OK "$PEER"; else ck ping-client FAIL "$PEER unreachable"; fi
  wait_cmd finish 300 >/dev/null
  killall httpd 2>/dev/null
  umount_disk
  finish ;;
full)
  vpipe_up && mount_disk || { xenstore-write "$XS/ready" fail; finish; exit 1; }
  cp_check cp-vpipe-small small.txt copy-small.txt
  cp_check cp-vpipe-odd odd.bin copy-odd.bin
  cp_check cp-vpipe-big big.bin copy-big.bin
  VPIPE_NO_FALLBACK=1 vpipe-httpd --mode vpipe --no-fallback --port 8080 --root /mnt --bind "$IP" \
      > /tmp/httpd.log 2>&1 &
  HTTPD=$!
  VPIPE_NO_FALLBACK=1 vpipe-proxy --mode vpipe --no-fallback --listen 9003 --bind "$IP" --to "$PEER:8081" \
      > /tmp/proxy.log 2>&1 &
  PROXY=$!
  # an unmodified program: Debian's lighttpd, its sendfile() calls made vPipe operations by the
  # preload; every call handed over (threshold 0) and none may fall back to a guest copy
  cat > /tmp/lighttpd.conf <<EOF
server.document-root = "/mnt"
server.bind = "$IP"
server.port = 8088
server.errorlog = "/tmp/lighttpd.err"
mimetype.assign = ("" => "application/octet-stream")
EOF
  LD_PRELOAD=/usr/lib/vpipe/libvpipe-preload.so VPIPE_NO_FALLBACK=1 VPIPE_MIN_OFFLOAD=0 \
    VPIPE_PRELOAD_STATS=/tmp/lighttpd-preload.json lighttpd -D -f /tmp/lighttpd.conf > /tmp/lighttpd.log 2>&1 &
  LIGHTTPD=$!
  t0=$(up)
  if wait_listen 8080 && wait_listen 9003 && wait_listen 8088; then xenstore-write "$XS/ready" 1
  else
    ck servers FAIL "vpipe-httpd/vpipe-proxy/lighttpd not listening after $(echo "$(up) $t0" | awk '{printf "%.1f", $1-$2}')s: $(tail -3 /tmp/httpd.log /tmp/proxy.log /tmp/lighttpd.log /tmp/lighttpd.err | tr '\n' ' ')"
    cat /proc/net/tcp; ps
    xenstore-write "$XS/ready" fail
  fi
  if sha=$(wait_cmd put-done 600) && [ "$sha" != skip ]; then verify put-on-disk /mnt/put.bin "$sha"; fi
  wait_cmd finish 600 >/dev/null || say "no finish command from dom0"
  kill $HTTPD $PROXY $LIGHTTPD 2>/dev/null; wait $HTTPD $PROXY $LIGHTTPD 2>/dev/null
  echo "---- vpipe-httpd log"; cat /tmp/httpd.log; echo "---- vpipe-proxy log"; cat /tmp/proxy.log
  echo "---- lighttpd log"; cat /tmp/lighttpd.log /tmp/lighttpd.err
  # the preload's counters (written at lighttpd's exit) for dom0 to check against the engine's
  xenstore-write "$XS/lighttpd-preload" "$(cat /tmp/lighttpd-preload.json 2>/dev/null || echo none)"
  umount_disk
  finish ;;
victim)
  vpipe_up && mount_disk || { xenstore-write "$XS/ready" fail; finish; exit 1; }
  VPIPE_NO_FALLBACK=1 vpipe-httpd --mode vpipe --no-fallback --port 8080 --root /mnt --bind "$IP" \
      > /tmp/httpd.log 2>&1 &
  ( n=0; while :; do
      VPIPE_NO_FALLBACK=1 cp-vpipe --no-fallback /mnt/big.bin /mnt/victim.bin || say "cp-vpipe loop: exit $?"
      n=$((n + 1)); xenstore-write "$XS/copies" $n
    done ) &
  if wait_listen 8080; then xenstore-write "$XS/ready" 1; else xenstore-write "$XS/ready" fail; fi
  finish
  say "waiting to be destroyed"
  sleep 3600 ;;
survivor)
  vpipe_up && mount_disk || { xenstore-write "$XS/ready" fail; finish; exit 1; }
  cp_check cp-vpipe-after-destroy big.bin copy-survivor.bin
  # dom0 restarts vpiped now; the module must reconnect by itself
  xenstore-write "$XS/ready" 1
  if r=$(wait_cmd engine-restarted 180) && [ "$r" != skip ]; then
    i=0; while [ "$(xenstore-read device/vpipe/0/state 2>/dev/null)" != 4 ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
    cp_check cp-vpipe-after-restart odd.bin copy-restart.bin
  fi
  umount_disk
  finish ;;
stress)
  # Each iteration execs 4 programs and checks each one's exit status and output: tlscheck
  # (static; FS base, TLS, %xmm15/%ymm15 across a spin), busybox seq piped into sha256sum
  # (glibc, dynamic), busybox tr. Full paths: busybox sh would otherwise run applets in-process.
  # Counts: data/stress = "<starts> <failures> <kernel-reported faults>".
  SEQ_SHA=2e57c67a8bbe706a08d6638ec67da02b67b3743ae7d35948cbcf8d1f45cae0a5
  info=$(/usr/bin/tlscheck --info 2>&1)
  xenstore-write "$XS/ready" 1
  if ! secs=$(wait_cmd go 600); then ck stress-go FAIL "no go from dom0"; finish; exit 1; fi
  say "stress for ${secs}s ($info)"
  starts=0; fails=0; : > /tmp/stress.err
  read -r u _ < /proc/uptime; end=$((${u%.*} + secs))
  while read -r u _ < /proc/uptime && [ "${u%.*}" -lt "$end" ]; do
    /usr/bin/tlscheck 8 2>>/tmp/stress.err || { rc=$?; fails=$((fails + 1)); echo "tlscheck: exit $rc" >> /tmp/stress.err; }
    out=$(/bin/busybox seq 1 3000 | /usr/bin/sha256sum 2>>/tmp/stress.err)
    [ "$out" = "$SEQ_SHA  -" ] || { fails=$((fails + 1)); echo "seq | sha256sum: '$out'" >> /tmp/stress.err; }
    out=$(echo vpipe | /bin/busybox tr a-z A-Z 2>>/tmp/stress.err)
    [ "$out" = VPIPE ] || { fails=$((fails + 1)); echo "busybox tr: '$out'" >> /tmp/stress.err; }
    starts=$((starts + 4))
  done
  # what the guest kernel saw (unhandled signals are logged as "segfault at", "traps:", ...)
  kf=$(dmesg | grep -cE 'segfault at|general protection|traps:|invalid opcode|Oops')
  dmesg | grep -E 'segfault at|general protection|traps:|invalid opcode|Oops' | head -5
  head -5 /tmp/stress.err
  xenstore-write "$XS/stress" "$starts $fails $kf"
  if [ "$fails" = 0 ] && [ "$kf" = 0 ] && [ "$starts" -gt 0 ]; then
    ck stress-processes OK "$starts process starts in ${secs}s, none failed ($info)"
  else
    ck stress-processes FAIL "$fails of $starts process starts failed, $kf faults in dmesg: $(head -2 /tmp/stress.err | tr '\n' ' ')"
  fi
  finish
  wait_cmd finish 120 >/dev/null ;;
bench)
  vpipe_up && mount_disk || { xenstore-write "$XS/ready" fail; finish; exit 1; }
  # file -> socket (GET) and socket -> file (PUT, --fsync: each path's upload is durable when
  # answered) per data path; socket -> socket through vpipe-proxy to the client's server
  VPIPE_NO_FALLBACK=1 vpipe-httpd --mode vpipe --no-fallback --fsync --port 8080 --root /mnt --bind "$IP" \
      > /tmp/httpd.log 2>&1 &
  HTTPD=$!
  vpipe-httpd --mode sendfile --fsync --port 8082 --root /mnt --bind "$IP" > /tmp/httpd-sendfile.log 2>&1 &
  SF=$!
  vpipe-httpd --mode rw --fsync --port 8083 --root /mnt --bind "$IP" > /tmp/httpd-rw.log 2>&1 &
  RW=$!
  VPIPE_NO_FALLBACK=1 vpipe-proxy --mode vpipe --no-fallback --listen 9003 --bind "$IP" --to "$PEER:8085" \
      > /tmp/proxy.log 2>&1 &
  PX=$!
  vpipe-proxy --mode splice --listen 9004 --bind "$IP" --to "$PEER:8085" > /tmp/proxy-splice.log 2>&1 &
  PS=$!
  if wait_listen 8080 && wait_listen 8082 && wait_listen 8083 && wait_listen 9003 && wait_listen 9004; then
    xenstore-write "$XS/ready" 1
  else xenstore-write "$XS/ready" fail; fi
  # every GET starts from an empty page cache (dom0 writes data/cmd/drop = n, waits for dropped = n)
  # (a watch: an idle guest must cost nothing, or its CPU figures measure the loop)
  # (not `xenstore-watch | while`: the shell would wait for the watch, which never ends, after
  # the loop's break)
  n=0
  mkfifo /tmp/cmd.watch
  xenstore-watch "$XS/cmd" > /tmp/cmd.watch &
  WATCH=$!
  while read -r _; do
    xenstore-exists "$XS/cmd/finish" && break
    v=$(xenstore-read "$XS/cmd/drop" 2>/dev/null)
    if [ -n "$v" ] && [ "$v" != "$n" ]; then dropcaches; n=$v; xenstore-write "$XS/dropped" "$n"; fi
  done < /tmp/cmd.watch
  kill $WATCH 2>/dev/null
  kill $HTTPD $SF $RW $PX $PS 2>/dev/null; wait $HTTPD $SF $RW $PX $PS 2>/dev/null
  grep -c 'vpipe=offloaded' /tmp/httpd.log | sed 's/^/VPIPE-XEN-DOMU[bench]: vpipe-httpd offloaded requests: /'
  grep -v 'vpipe=offloaded' /tmp/httpd.log /tmp/proxy.log | tail -5
  umount_disk
  finish ;;
burn)
  # vpipe_load=duty:PCT:PERIOD_MS: lookbusy-like, computing PCT % of every period and asleep the
  # rest (tests/xen/dutyloop.c); otherwise (burn) a loop that never sleeps
  load=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^vpipe_load=//p' | tail -1)
  xenstore-write "$XS/ready" 1
  case $load in
    duty:*:*) p=${load#duty:}; say "neighbour load: dutyloop ${p%%:*}% of ${p#*:} ms"; exec dutyloop "${p%%:*}" "${p#*:}" ;;
  esac
  while :; do :; done ;;
shell)
  # for developers (xl create -c): the module loaded and connected, xvda on /mnt, then a shell
  vpipe_up; mount_disk
  echo "VPIPE-XEN-DOMU: shell (exit powers the domU off)"
  setsid cttyhack sh ;;
*)
  say "unknown role '$ROLE'"; finish ;;
esac
