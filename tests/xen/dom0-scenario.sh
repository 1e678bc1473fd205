#!/bin/sh
# The dom0 half of the Xen suite (called by dom0-init.sh once Xen services, xenbr0 and the client
# namespace are up). Prints `VPIPE-XEN CHECK <name>: OK|FAIL (...)` per check, `VPIPE-XEN PHASE`
# lines with dom0's uptime, and `VPIPE-XEN RESULT: PASS|FAIL`; exits 0 on PASS.
#
# usage: scenario.sh full|plain|stress the suite (plain: Xen plumbing only, no vPipe; stress: the
#                                      stress check alone)
#        scenario.sh bench             bench/xen.sh's GETs under contention (see below)
#        scenario.sh mkcfg NAME ROLE   print an xl config for a domU of that role (shell mode)
#
# stress (first step of full): dom0 pinned to physical CPU 0, 2-3 domUs (role stress) pinned
#        together to the last one, each starting short-lived processes that check their TLS, FS
#        base and vector registers; any crash or mismatch fails. Proves that a domU's processes
#        survive being descheduled (issue 14: under TCG with -cpu max they did not).
#        dom0 command line: vpipe_stress_domus=N (default 3), vpipe_stress_secs=S (default 40).
# full:  vpiped (Xen backend) starts; domU "d1" (role full) runs cp-vpipe, vpipe-httpd and
#        vpipe-proxy in vPipe mode, and Debian's lighttpd under libvpipe-preload.so, while the
#        client in netns "client" GETs/PUTs; dom0 checks the engine's counters, that nothing
#        stays steered, and the bytes on /dev/vda.
#        Then "d2" (role victim) is destroyed mid-operation; vpiped must release it and
#        serve "d3" (role survivor), which reconnects after vpiped restarts under it.
MODE=${1:-full}
XLIB=/usr/lib/xen-4.17/bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$XLIB
ip=/usr/bin/ip
CTL=/run/vpipe/vpiped.ctl
DOMU_IP=10.0.0.2
CLIENT_IP=10.0.0.3
DOMU_MEM=${DOMU_MEM:-256}
up() { cut -d' ' -f1 /proc/uptime; }
phase() { echo "VPIPE-XEN PHASE $1 at dom0 uptime $(up)s"; }
since() { echo "$(up) $1" | awk '{printf "%.1f", $1-$2}'; }

# the last physical CPU: where stress domUs (and the bench's neighbours) share one CPU, away from dom0
shared_pcpu() { echo $(( $(xl info | sed -n 's/^nr_cpus *: //p') - 1 )); }
mkcfg() {  # mkcfg NAME ROLE
  cat <<EOF
name = "$1"
type = "pv"
kernel = "/guests/vmlinuz"
ramdisk = "/guests/domU.cpio"
extra = "console=hvc0 loglevel=4 vpipe_role=$2 vpipe_ip=$DOMU_IP vpipe_client=$CLIENT_IP${BENCH_LOAD:+ vpipe_load=$BENCH_LOAD}"
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
EOF
  case $2 in
    stress|burn)  # no disk, no network; pinned to the shared physical CPU
      echo "memory = 128"
      echo "cpus = \"$(shared_pcpu)\"" ;;
    bench)  # the VM under test, on the shared physical CPU with its neighbours
      echo "memory = $DOMU_MEM"
      echo "cpus = \"$(shared_pcpu)\""
      echo "disk = [ 'phy:/dev/vda,xvda,w' ]"
      echo "vif = [ 'bridge=xenbr0,mac=00:16:3e:00:00:02,ip=$DOMU_IP' ]" ;;
    *)
      echo "memory = $DOMU_MEM"
      echo "disk = [ 'phy:/dev/vda,xvda,w' ]"
      echo "vif = [ 'bridge=xenbr0,mac=00:16:3e:00:00:02,ip=$DOMU_IP' ]" ;;
  esac
}
if [ "$MODE" = mkcfg ]; then mkcfg "$2" "$3"; exit 0; fi

PASS=1
ck() {  # ck NAME OK|FAIL DETAIL
  echo "VPIPE-XEN CHECK $1: $2 ($3)"
  [ "$2" = OK ] || PASS=0
}
result() {
  if [ $PASS = 1 ]; then echo "VPIPE-XEN RESULT: PASS"; exit 0; fi
  echo "VPIPE-XEN RESULT: FAIL"; exit 1
}
want() { grep "  $2\$" "$1" | cut -d' ' -f1; }
short() { echo "$1" | cut -c1-12; }

# ---------------------------------------------------------------- domains
D=
# create NAME ROLE: xl create, and the domU console copied to the serial log as [NAME] lines
create() {
  local t0 rc
  t0=$(up)
  mkcfg "$1" "$2" > "/etc/xen/$1.cfg"
  if xl create "/etc/xen/$1.cfg" > "/tmp/xl-$1.log" 2>&1; then
    D=$(xl domid "$1")
    ck "$1-create" OK "domid $D, xl create took $(since "$t0")s"
  else
    rc=$?
    cat "/tmp/xl-$1.log"
    for f in /var/log/xen/*.log; do echo "---- $f"; tail -n 40 "$f"; done
    ck "$1-create" FAIL "xl create exit $rc"
    return 1
  fi
  ( tail -n +1 -F "/var/log/xen/console/guest-$1.log" 2>/dev/null | while IFS= read -r l; do echo "[$1] $l"; done ) &
  eval "TAIL_$1=$!"
}
xsd() { xenstore-read "/local/domain/$D/data/$1" 2>/dev/null; }
wait_xsd() {  # wait_xsd KEY SECONDS: 0 when KEY exists (and, for "ready", is 1)
  local i=0
  while [ $i -lt $(($2 * 5)) ]; do
    if xenstore-exists "/local/domain/$D/data/$1" 2>/dev/null; then
      [ "$1" != ready ] || [ "$(xsd ready)" = 1 ]
      return
    fi
    xl domid "$NAME" >/dev/null 2>&1 || return 1  # domain gone
    sleep 0.2; i=$((i + 1))
  done
  return 1
}
cmd() { xenstore-write "/local/domain/$D/data/cmd/$1" "${2:-1}"; }
# the domU's own checks, from xenstore (while the domain exists)
collect() {  # collect NAME
  local k v
  for k in $(xenstore-list "/local/domain/$D/data/check" 2>/dev/null); do
    v=$(xsd "check/$k")
    echo "VPIPE-XEN CHECK $1/$k: $v"
    case $v in OK*) ;; *) PASS=0 ;; esac
  done
  v=$(xsd end)
  if [ -n "$v" ]; then echo "VPIPE-XEN: $1 finished its scenario: $v"
  else ck "$1-finished" FAIL "the domU did not report the end of its scenario"; fi
}
wait_gone() {  # wait_gone NAME SECONDS
  local i=0
  while xl domid "$1" >/dev/null 2>&1; do
    sleep 0.2; i=$((i + 1)); [ $i -lt $(($2 * 5)) ] || return 1
  done
  return 0
}
stop_tail() { eval "kill \$TAIL_$1" 2>/dev/null; }

# ---------------------------------------------------------------- client (netns "client")
client() { $ip netns exec client "$@"; }
# client-side server for the relay: classic vpipe-httpd in the client namespace
start_client_server() {
  client vpipe-httpd --mode rw --port 8081 --root /data --bind $CLIENT_IP > /tmp/client-httpd.log 2>&1 &
  CLIENT_HTTPD=$!
}

# The three socket operations byte-exact with netem on the client's link, both ways: delay,
# jitter, 1 % loss, 10 % reordering (the lab's host kernel has no sch_netem; this dom0 has).
# 8 MiB each (TCG is slow and the link lossy). f2s: a range of the file the earlier PUT wrote;
# s2s: a range of relay.bin through vpipe-proxy; s2f: a PUT of a new file, checked on the disk
# by dom0 after the domU is gone (dom0-disk-put-netem.bin).
TC=/usr/sbin/tc
NETEM="delay 2ms 1ms loss 1% reorder 10% 50%"
netem_phase() {
  local t0 out w
  if ! { client $TC qdisc add dev eth0 root netem $NETEM && $TC qdisc add dev vclient root netem $NETEM; } 2>/tmp/tc.err; then
    ck netem-on FAIL "tc qdisc add ... netem: $(cat /tmp/tc.err)"; return
  fi
  ck netem-on OK "client link both ways: $NETEM"
  local b0 b1 op d
  b0=$(vmstat | jq -c .bytes)
  t0=$(up)
  out=$(client curl -sS -m 150 --connect-timeout 15 --fail -r 0-8388607 -o - http://$DOMU_IP:8080/put.bin 2>/tmp/curl-n1.err | sha256sum | cut -d' ' -f1)
  w=$(head -c 8388608 /data/put.bin | sha256sum | cut -d' ' -f1)
  if [ "$out" = "$w" ]; then ck netem-file-to-socket OK "8 MiB range GET byte-exact in $(since "$t0")s"
  else ck netem-file-to-socket FAIL "sha256 '$(short "$out")', want '$(short "$w")'; $(cat /tmp/curl-n1.err)"; fi
  t0=$(up)
  out=$(client curl -sS -m 150 --connect-timeout 15 --fail -r 0-8388607 -o - http://$DOMU_IP:9003/relay.bin 2>/tmp/curl-n2.err | sha256sum | cut -d' ' -f1)
  w=$(head -c 8388608 /data/relay.bin | sha256sum | cut -d' ' -f1)
  if [ "$out" = "$w" ]; then ck netem-socket-to-socket OK "8 MiB range through vpipe-proxy byte-exact in $(since "$t0")s"
  else ck netem-socket-to-socket FAIL "sha256 '$(short "$out")', want '$(short "$w")'; $(cat /tmp/curl-n2.err)"; fi
  tail -c 8388608 /data/relay.bin > /tmp/put-netem.bin
  [ "$(stat -c %s /tmp/put-netem.bin)" = 8388608 ] || ck netem-put-source FAIL "/tmp/put-netem.bin is $(stat -c %s /tmp/put-netem.bin) bytes"
  t0=$(up)
  out=$(client curl -sS -m 150 --connect-timeout 15 -T /tmp/put-netem.bin -o /dev/null -w '%{http_code}' http://$DOMU_IP:8080/put-netem.bin 2>&1)
  case $out in 201|204) ck netem-socket-to-file OK "8 MiB PUT: HTTP $out in $(since "$t0")s (content checked on the disk below)" ;;
               *) ck netem-socket-to-file FAIL "HTTP '$out'" ;; esac
  client $TC qdisc del dev eth0 root; $TC qdisc del dev vclient root
  # dom0 moved them (not the guest): the engine's byte counters grew by the transfers (a
  # relay's few KiB that were already in the guest's queue are delivered by the guest)
  b1=$(vmstat | jq -c .bytes)
  for op in file_to_socket socket_to_file socket_to_socket; do
    d=$(( $(echo "$b1" | jq ".$op // 0") - $(echo "$b0" | jq ".$op // 0") ))
    if [ "$d" -le 8388608 ] && [ "$d" -ge $((8388608 - 262144)) ]; then ck "netem-engine-$op" OK "$d bytes by dom0"
    else ck "netem-engine-$op" FAIL "the engine's $op bytes grew by $d, not ~8388608"; fi
  done
  phase d1-netem-done
}

# An unmodified program: Debian's lighttpd in d1 (port 8088) under libvpipe-preload.so, every
# sendfile() handed over and no fallback (VPIPE_MIN_OFFLOAD=0, VPIPE_NO_FALLBACK=1). One GET of
# preload.bin and one range GET (the range is in its MANIFEST name), byte-exact; the engine's
# file -> socket bytes for d1 must grow by exactly the bodies: dom0 sent them, not the guest.
# The preload's own counters come after d1 stops lighttpd (lighttpd_counters_check).
LT_BYTES=; LT_OPS=
lighttpd_phase() {
  local t0 out w e0 d got entry r rlen full part code
  e0=$(vmstat | jq -c '[.bytes.file_to_socket // 0, .ops.file_to_socket // 0]'); e0=${e0:-[0,0]}
  t0=$(up)
  out=$(client curl -sS -m 150 --connect-timeout 15 --fail -o - -w '%{stderr}%{http_code} %{size_download}\n' \
        http://$DOMU_IP:8088/preload.bin 2>/tmp/curl-l1.err | sha256sum | cut -d' ' -f1)
  w=$(want /etc/vpipe/xvda.MANIFEST preload.bin)
  set -- $(tail -1 /tmp/curl-l1.err); code=$1 full=${2:-0}
  if [ -n "$w" ] && [ "$out" = "$w" ] && [ "$code" = 200 ]; then
    ck lighttpd-preload-get OK "$full bytes byte-exact in $(since "$t0")s"
  else ck lighttpd-preload-get FAIL "HTTP '$code', sha256 '$(short "$out")', want '$(short "$w")'; $(tr '\n' ' ' < /tmp/curl-l1.err)"; full=0; fi
  entry=$(grep '  preload.bin:' /etc/vpipe/xvda.MANIFEST)
  r=${entry##*:}; w=${entry%% *}; [ -n "$entry" ] || r=0-0
  rlen=$(( ${r#*-} - ${r%-*} + 1 ))
  t0=$(up)
  out=$(client curl -sS -m 150 --connect-timeout 15 --fail -r "$r" -o - -w '%{stderr}%{http_code} %{size_download}\n' \
        http://$DOMU_IP:8088/preload.bin 2>/tmp/curl-l2.err | sha256sum | cut -d' ' -f1)
  set -- $(tail -1 /tmp/curl-l2.err); code=$1 part=${2:-0}
  if [ -n "$entry" ] && [ "$out" = "$w" ] && [ "$code" = 206 ] && [ "$part" = "$rlen" ]; then
    ck lighttpd-preload-range OK "bytes $r: $part bytes byte-exact in $(since "$t0")s"
  else ck lighttpd-preload-range FAIL "range '$r': HTTP '$code', $part bytes, sha256 '$(short "$out")', want '$(short "$w")'; $(tr '\n' ' ' < /tmp/curl-l2.err)"; part=0; fi
  # the engine counts an operation before it answers the guest: the client can have the last
  # bytes a moment earlier (deadline by the clock)
  t0=$(up)
  while :; do
    d=$(vmstat | jq -r --argjson e0 "$e0" '"\((.bytes.file_to_socket // 0) - $e0[0]) \((.ops.file_to_socket // 0) - $e0[1])"')
    set -- $d; got=${1:-0} LT_OPS=${2:-0}
    [ "$got" -ge $((full + part)) ] && break
    [ "$(echo "$(up) $t0" | awk '{print ($1 - $2 > 10)}')" = 1 ] && break
    sleep 0.2
  done
  LT_BYTES=$got
  if [ "$full" -gt 0 ] && [ "$part" -gt 0 ] && [ "$got" = $((full + part)) ]; then
    ck lighttpd-engine-file_to_socket OK "+$got bytes (= the two bodies) in $LT_OPS operations by dom0"
  else ck lighttpd-engine-file_to_socket FAIL "the engine's file_to_socket bytes grew by $got in $LT_OPS operations, the bodies were $full + $part bytes"; fi
  phase d1-lighttpd-done
}
# the preload's counters, written by lighttpd at its exit (d1 stops it at "finish"): every
# sendfile() handed over, all offloaded, nothing by the guest, and what dom0 moved = the engine's
lighttpd_counters_check() {
  local pj bad
  pj=$(xsd lighttpd-preload)
  echo "VPIPE-XEN: lighttpd's preload counters: $pj"
  [ -n "$LT_BYTES" ] || return 0   # the downloads did not run
  case $(echo "$pj" | jq -r '.sendfile.calls' 2>/dev/null) in
    ''|null|*[!0-9]*) ck lighttpd-preload-counters FAIL "no counters from lighttpd's preload: '$pj'"; return ;;
  esac
  bad=$(echo "$pj" | jq -r --argjson b "$LT_BYTES" --argjson o "$LT_OPS" '.sendfile as $s |
      [ (if $s.calls > 0 then empty else "no sendfile calls" end),
        (if $s.handed == $s.calls then empty else "\($s.calls - $s.handed) calls passed to libc \($s.passed)" end),
        (if $s.offloaded == $s.handed then empty else "\($s.handed - $s.offloaded) of \($s.handed) handed calls not offloaded" end),
        (if $s.lib_fallback == 0 and $s.lib_failed == 0 then empty else "fallback \($s.lib_fallback), failed \($s.lib_failed): \(.libvpipe_reasons)" end),
        (if $s.bytes_guest == 0 then empty else "\($s.bytes_guest) bytes moved by the guest" end),
        (if $s.bytes_dom0 == $b then empty else "the preload says dom0 moved \($s.bytes_dom0), the engine \($b)" end),
        (if $s.offloaded == $o then empty else "\($s.offloaded) calls offloaded, \($o) engine operations" end),
        (if .epoll_lost == 0 then empty else "\(.epoll_lost) epoll registrations lost" end)
      ] | join("; ")' 2>&1)
  if [ -z "$bad" ]; then
    ck lighttpd-preload-counters OK "$(echo "$pj" | jq -r '.sendfile | "\(.calls) sendfile calls, all handed over and offloaded, \(.bytes_dom0) bytes by dom0, 0 by the guest"'), epoll re-registrations $(echo "$pj" | jq .epoll_rearmed)"
  else ck lighttpd-preload-counters FAIL "${bad:-no counters}"; fi
}

# ---------------------------------------------------------------- engine
stats() { vpipectl --control $CTL stats --json 2>/dev/null; }
vmstat() { stats | jq -c ".vms[] | select(.id == $D)" 2>/dev/null; }
# (a failing nft prints "nft-error", never 0: an unreadable ruleset is not an empty one)
flow_elements() {
  local rs
  rs=$(nft list ruleset 2>&1) || { echo "nft-error: $rs" | head -c 200; return 0; }
  echo "$rs" | grep -c 'elements = ' || true
}
# waits until the engine has no shadow socket and no steered flow, and nft has no element left
QUIET_AFTER=
wait_quiet() {  # wait_quiet SECONDS (deadline by the clock: each probe costs ~0.3 s under TCG)
  local t0 s
  t0=$(up)
  while :; do
    s=$(stats | jq -r '"\(.shadow_sockets) \(.steered_flows)"' 2>/dev/null)
    if [ "$s" = "0 0" ] && [ "$(flow_elements)" = 0 ]; then QUIET_AFTER=$(since "$t0"); return 0; fi
    [ "$(echo "$(up) $t0 $1" | awk '{print ($1 - $2 > $3)}')" = 1 ] && return 1
    sleep 0.2
  done
}
quiet_check() {  # quiet_check NAME SECONDS
  if wait_quiet "${2:-15}"; then ck "$1" OK "no shadow socket, no steered flow, no nft element (after ${QUIET_AFTER}s)"
  else
    ck "$1" FAIL "after ${2:-15}s: engine $(stats | jq -c '{shadow_sockets, steered_flows}' 2>/dev/null); nft elements: $(flow_elements)"
    nft list ruleset
  fi
}
VPIPED=
NSTART=0
start_vpiped() {  # start_vpiped [CHECK-NAME]
  local t0 i args log
  t0=$(up)
  args=$(cat /etc/vpipe/vpiped.args)
  NSTART=$((NSTART + 1))
  log=/var/log/vpiped.$NSTART.log
  # shellcheck disable=SC2086
  vpiped $args > $log 2>&1 &
  VPIPED=$!
  ( tail -n +1 -F $log 2>/dev/null | while IFS= read -r l; do echo "[vpiped] $l"; done ) &
  TAIL_VPIPED=$!
  i=0
  while ! vpipectl --control $CTL ping >/dev/null 2>&1; do
    sleep 0.2; i=$((i + 1))
    if ! kill -0 $VPIPED 2>/dev/null || [ $i -gt 300 ]; then
      ck "${1:-vpiped-start}" FAIL "vpiped $args: $(tail -3 $log | tr '\n' ' ')"
      return 1
    fi
  done
  ck "${1:-vpiped-start}" OK "vpiped $args, ready after $(since "$t0")s"
}
stop_vpiped() {  # stop_vpiped CHECK-NAME: SIGTERM, exit 0 within 10 s
  local i=0 rc
  kill -TERM $VPIPED
  while kill -0 $VPIPED 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
  if kill -0 $VPIPED 2>/dev/null; then
    ck "$1" FAIL "still running 10 s after SIGTERM"; kill -KILL $VPIPED; wait $VPIPED
  else
    wait $VPIPED; rc=$?
    if [ $rc = 0 ]; then ck "$1" OK "exit 0 on SIGTERM"; else ck "$1" FAIL "exit $rc on SIGTERM"; fi
  fi
  sleep 1; kill $TAIL_VPIPED 2>/dev/null
}
# fe_state DOMID: the frontend's xenbus state; be_state DOMID: the backend's
fe_state() { xenstore-read "/local/domain/$1/device/vpipe/0/state" 2>/dev/null; }
be_state() { xenstore-read "/local/domain/0/backend/vpipe/$1/0/state" 2>/dev/null; }
vpiped_alive() { kill -0 "$VPIPED" 2>/dev/null && vpipectl --control $CTL ping >/dev/null 2>&1; }
backend_gone_check() {  # backend_gone_check NAME DOMID
  local i=0
  while xenstore-exists "/local/domain/0/backend/vpipe/$2" 2>/dev/null; do
    sleep 0.2; i=$((i + 1))
    [ $i -lt 50 ] || { ck "$1-backend-removed" FAIL "backend/vpipe/$2 still there: $(xenstore-ls /local/domain/0/backend/vpipe/$2 | tr '\n' ' ')"; return; }
  done
  ck "$1-backend-removed" OK "backend/vpipe/$2 removed"
}

# ================================================================ plain: Xen plumbing only
if [ "$MODE" = plain ]; then
  phase plain-start
  NAME=p1
  create p1 plain || result
  if wait_xsd ready 180; then
    phase p1-ready
    out=$(client curl -sS -m 150 --connect-timeout 15 -o - http://$DOMU_IP:8080/big.bin | sha256sum | cut -d' ' -f1)
    w=$(want /etc/vpipe/xvda.MANIFEST big.bin)
    if [ "$out" = "$w" ]; then ck client-get-plain OK "64 MiB, sha256 $(short "$out")"
    else ck client-get-plain FAIL "sha256 '$out', want '$w'"; fi
    phase p1-get-done
    cmd finish
  else
    ck p1-ready FAIL "the domU did not get ready"
  fi
  wait_xsd end 120
  collect p1
  wait_gone p1 60 || { ck p1-poweroff FAIL "still running"; xl destroy p1; }
  stop_tail p1
  phase plain-end
  result
fi

# ================================================================ stress
karg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
# stress_phase N SECS: N domUs pinned to one physical CPU (dom0 on another) start short-lived
# processes for SECS seconds once all are up; every start must exit 0 with its expected output
# and no domU kernel may log a user fault. Prints a VPIPE-XEN STRESS line for the record.
stress_phase() {
  local n=$1 secs=$2 pcpu i ids="" d v st=0 fl=0 kf=0 ok=1 tgo
  pcpu=$(shared_pcpu)
  [ "$pcpu" -gt 0 ] && xl vcpu-pin Domain-0 0 0
  phase stress-start
  for i in $(seq 1 "$n"); do
    NAME=s$i
    create "s$i" stress || { ok=0; break; }
    if wait_xsd ready 180; then ids="$ids $i:$D"
    else ck "s$i-ready" FAIL "the stress domU did not come up"; ok=0; fi
  done
  xl vcpu-list
  for d in $ids; do xenstore-write "/local/domain/${d#*:}/data/cmd/go" "$secs"; done
  phase stress-go
  tgo=$(up)
  for d in $ids; do
    NAME=s${d%%:*}; D=${d#*:}
    # by the clock from "go" (a probe costs ~1 s of dom0 under TCG; a crashed shell never reports)
    while ! xenstore-exists "/local/domain/$D/data/stress" 2>/dev/null && xl domid "$NAME" >/dev/null 2>&1 &&
          [ "$(echo "$(up) $tgo $secs" | awk '{print ($1 - $2 < $3 + 90)}')" = 1 ]; do sleep 1; done
    if xenstore-exists "/local/domain/$D/data/stress" 2>/dev/null; then
      v=$(xsd stress)
      set -- $v
      st=$((st + ${1:-0})); fl=$((fl + ${2:-0})); kf=$((kf + ${3:-0}))
    else
      ck "$NAME-survived" FAIL "domain $D gone, or silent $((secs + 90))s after go (its shell crashed?)"; ok=0
    fi
    wait_xsd end 10
    collect "$NAME"
    cmd finish   # it powers off only now: its xenstore data is gone with it
  done
  for d in $ids; do
    NAME=s${d%%:*}
    wait_gone "$NAME" 30 || { ck "$NAME-poweroff" FAIL "still running"; xl destroy "$NAME"; }
    stop_tail "$NAME"
  done
  [ "$pcpu" -gt 0 ] && xl vcpu-pin Domain-0 0 all
  echo "VPIPE-XEN STRESS domus=$n secs=$secs pcpu=$pcpu starts=$st failures=$fl kernel_faults=$kf"
  if [ $ok = 1 ] && [ $fl = 0 ] && [ $kf = 0 ] && [ $st -gt 0 ]; then
    ck stress-shared-pcpu OK "$n domUs on physical CPU $pcpu, $st process starts in ${secs}s, none failed"
  else
    ck stress-shared-pcpu FAIL "$n domUs on physical CPU $pcpu: $fl of $st process starts failed, $kf user faults in the domUs' dmesg"
  fi
  phase stress-end
}
if [ "$MODE" = stress ]; then
  stress_phase "$(karg vpipe_stress_domus | grep . || echo 3)" "$(karg vpipe_stress_secs | grep . || echo 60)"
  result
fi

# ================================================================ bench (bench/xen.sh, not the suite)
# dom0 on physical CPU 0; d1 (role bench) on the last one, joined there by K busy neighbours
# (role burn) for each K of vpipe_bench_neighbours (colon-separated, default 0:2). Per K,
# vpipe_bench_reps rounds; a round runs each transfer once, the order reversed every other round:
#   f2s  GET big.bin (64 MiB) from vpipe-httpd in the domU: vpipe (:8080), sendfile (:8082), rw (:8083)
#   s2f  PUT of /data/put.bin (32 MiB) to the same servers, each with --fsync (durable when answered):
#        vpipe (socket -> file offloaded), sendfile (splice socket -> pipe -> file), rw (recv + pwrite)
#   s2s  GET relay.bin (48 MiB) from the client's server (sendfile, :8085) through vpipe-proxy in
#        the domU: vpipe (:9003) and splice (:9004)
#   native  the control: dom0 itself serves relay.bin (48 MiB) from its own virtio disk with
#        sendfile to the same client: disk -> TCP natively in dom0, no domU involved. Under the
#        neighbours it shows how much of a slowdown is the machine's (dom0's emulated CPU losing
#        host time to the busy one), not the guest's.
# Every transfer starts from empty page caches (the domU's, via data/cmd/drop, and dom0's). The
# client (curl in netns "client") runs in dom0, i.e. not on the contended CPU. One line each (CPU
# seconds from xl vcpu-list: the VM under test, and dom0 = engine + client + netback; ttfb: curl's
# time to the first response byte):
#   VPIPE-XEN BENCH sched=S neighbours=K op=f2s|s2f|s2s|native|idle mode=M rep=R secs=T ttfb=F bytes=B guest_cpu_s=G dom0_cpu_s=D ok=1|0
# plus, per K, one "idle" line: the domU's CPU over 10 s of nothing (the emulated guest's
# background cost, to set against the transfers' CPU figures).
vcpu_time() { xl vcpu-list "$1" 2>/dev/null | awk 'NR > 1 { t += $6 } END { printf "%.1f", t }'; }
BN=0
bench_line() {  # bench_line OP MODE K REP SECS TTFB BYTES G0 G1 D0 D1 OK
  echo "VPIPE-XEN BENCH sched=$SCHED load=$LOAD neighbours=$3 op=$1 mode=$2 rep=$4 secs=$5 ttfb=$6 bytes=$7" \
       "guest_cpu_s=$(echo "$9 $8" | awk '{printf "%.1f", $1-$2}') dom0_cpu_s=$(echo "${11} ${10}" | awk '{printf "%.1f", $1-$2}') ok=${12}"
}
bench_xfer() {  # bench_xfer OP MODE K REP
  local i g0 d0 g1 d1 out code secs ttfb bytes ok url want port args
  BN=$((BN + 1)); cmd drop $BN
  sync; echo 3 > /proc/sys/vm/drop_caches
  i=0; while [ "$(xsd dropped)" != $BN ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
  case $2 in vpipe) port=8080 ;; sendfile) port=8082 ;; rw) port=8083 ;; esac
  args=""
  case $1 in
    f2s) url=http://$DOMU_IP:$port/big.bin; want="200 67108864" ;;
    s2f) url=http://$DOMU_IP:$port/up-$2.bin; args="-T /data/put.bin"; want="20[14] 33554432" ;;
    s2s) [ "$2" = vpipe ] && port=9003 || port=9004
         url=http://$DOMU_IP:$port/relay.bin; want="200 50331648" ;;
    native) url=http://10.0.0.1:8090/relay.bin; want="200 50331648" ;;
  esac
  g0=$(vcpu_time d1); d0=$(vcpu_time Domain-0)
  # shellcheck disable=SC2086
  out=$(client curl -sS -m 900 --connect-timeout 15 -o /dev/null $args \
        -w '%{http_code} %{time_total} %{time_starttransfer} %{size_download} %{size_upload}' "$url" 2>/tmp/bench.err)
  g1=$(vcpu_time d1); d1=$(vcpu_time Domain-0)
  set -- "$1" "$2" "$3" "$4" $out
  code=$5 secs=$6 ttfb=$7
  bytes=$8; [ "$1" = s2f ] && bytes=$9
  ok=0; echo "$code $bytes" | grep -qE "^$want\$" && ok=1
  [ $ok = 1 ] || PASS=0
  bench_line "$1" "$2" "$3" "$4" "$secs" "$ttfb" "$bytes" "$g0" "$g1" "$d0" "$d1" $ok
  [ $ok = 1 ] || { echo "got '$code $bytes', want '$want'"; cat /tmp/bench.err; }
}
BENCH_SET="f2s:vpipe f2s:sendfile f2s:rw s2f:vpipe s2f:sendfile s2f:rw s2s:vpipe s2s:splice native:sendfile"
if [ "$MODE" = bench ]; then
  SCHED=$(xl info | sed -n 's/^xen_scheduler *: //p')
  KS=$(karg vpipe_bench_neighbours | grep . || echo 0:2)
  # the neighbours' load (burn: never sleeps; duty:PCT:PERIOD_MS: lookbusy-like), passed to
  # their kernels by mkcfg
  LOAD=$(karg vpipe_bench_load | grep . || echo burn)
  case $LOAD in burn|duty:[0-9]*:[0-9]*) ;; *) ck bench-load FAIL "vpipe_bench_load=$LOAD: burn or duty:PCT:PERIOD_MS"; result ;; esac
  [ "$LOAD" = burn ] || BENCH_LOAD=$LOAD
  REPS=$(karg vpipe_bench_reps | grep . || echo 3)
  PCPU=$(shared_pcpu)
  xl vcpu-pin Domain-0 0 0
  phase bench-start
  start_vpiped || result
  # the backend of the s2s relay: sendfile, so that the client side (on dom0's CPU with the
  # engine) costs as little as it can for both relays
  client vpipe-httpd --mode sendfile --port 8085 --root /data --bind $CLIENT_IP > /tmp/client-httpd.log 2>&1 &
  CLIENT_HTTPD=$!
  vpipe-httpd --mode sendfile --port 8090 --root /data --bind 10.0.0.1 > /tmp/native-httpd.log 2>&1 &
  NATIVE=$!
  NAME=d1
  create d1 bench || result
  wait_xsd ready 300 || { ck d1-ready FAIL "the bench domU did not come up"; result; }
  have=0
  for k in $(echo "$KS" | tr ':' ' '); do
    while [ $have -lt "$k" ]; do
      have=$((have + 1)); NAME=n$have
      create "n$have" burn || result
      wait_xsd ready 180 || ck "n$have-ready" FAIL "neighbour did not come up"
    done
    NAME=d1; D=$(xl domid d1)
    xl vcpu-list
    phase "bench-neighbours-$k"
    g0=$(vcpu_time d1); d0=$(vcpu_time Domain-0); sleep 10
    bench_line idle - "$k" 0 10 0 0 "$g0" "$(vcpu_time d1)" "$d0" "$(vcpu_time Domain-0)" 1
    r=1
    while [ $r -le "$REPS" ]; do
      set=$BENCH_SET
      if [ $((r % 2)) = 0 ]; then set=""; for x in $BENCH_SET; do set="$x $set"; done; fi
      for x in $set; do bench_xfer "${x%%:*}" "${x#*:}" "$k" $r; done
      r=$((r + 1))
    done
  done
  i=1; while [ $i -le $have ]; do xl destroy "n$i"; stop_tail "n$i"; i=$((i + 1)); done
  NAME=d1; D=$(xl domid d1)
  # which read path the engine took (disks[].bytes_spliced: file -> socket spliced from O_DIRECT)
  echo "VPIPE-XEN: engine stats of d1: $(vmstat)"
  cmd finish
  wait_xsd end 120
  collect d1
  wait_gone d1 60 || xl destroy d1
  stop_tail d1
  stop_vpiped vpiped-stop
  kill $CLIENT_HTTPD $NATIVE 2>/dev/null
  phase bench-end
  result
fi

# ================================================================ full
phase suite-start
# first: a domU's processes must survive sharing a physical CPU, or no number below means much
stress_phase "$(karg vpipe_stress_domus | grep . || echo 3)" "$(karg vpipe_stress_secs | grep . || echo 40)"
if [ ! -f /etc/vpipe/have-kmod ]; then ck kmod-built FAIL "no vpipe.ko in the domU image"; fi
start_client_server
start_vpiped || result
phase vpiped-ready

# ---------------------------------------------------------------- lifecycle 1: d1
NAME=d1
create d1 full || result
D1=$D
if wait_xsd ready 300; then
  phase d1-servers-ready
  # GET of 64 MiB twice on one connection (curl reuses it for the second URL)
  t0=$(up)
  out=$(client curl -sS -m 150 --connect-timeout 15 --fail -o - -w '%{stderr}GET %{http_code} connects=%{num_connects} bytes=%{size_download} first-byte=%{time_starttransfer}s total=%{time_total}s\n' \
        http://$DOMU_IP:8080/big.bin http://$DOMU_IP:8080/big.bin 2>/tmp/curl-get.err | sha256sum | cut -d' ' -f1)
  cat /tmp/curl-get.err
  w=$(want /etc/vpipe/xvda.MANIFEST big.bin+big.bin)
  if [ "$out" = "$w" ] && [ "$(grep -c '^GET 200 ' /tmp/curl-get.err)" = 2 ]; then
    ck get-64MiB-x2 OK "2 x 64 MiB byte-exact in $(since "$t0")s"
  else ck get-64MiB-x2 FAIL "sha256 '$(short "$out")', want '$(short "$w")'; $(tr '\n' ' ' < /tmp/curl-get.err)"; fi
  if [ "$(sed -n 2p /tmp/curl-get.err | grep -o 'connects=[0-9]*')" = connects=0 ]; then
    ck get-keepalive OK "second GET on the same connection"
  else ck get-keepalive FAIL "second GET opened a new connection: $(tr '\n' ' ' < /tmp/curl-get.err)"; fi
  phase d1-get-done
  # PUT of 32 MiB: the domU checks the file on its disk
  t0=$(up)
  code=$(client curl -sS -m 150 --connect-timeout 15 -T /data/put.bin -o /dev/null -w '%{http_code}' http://$DOMU_IP:8080/put.bin 2>&1)
  echo "VPIPE-XEN: PUT: $(stats | jq -c ".vms[] | select(.id == $D) | {ops, bytes}" 2>/dev/null)"
  case $code in 201|204) ck put-32MiB OK "HTTP $code in $(since "$t0")s" ;;
                 *) ck put-32MiB FAIL "HTTP '$code'" ;; esac
  cmd put-done "$(want /data/MANIFEST put.bin)"
  phase d1-put-done
  # relay: client -> vpipe-proxy (domU, socket->socket) -> vpipe-httpd (client netns)
  t0=$(up)
  out=$(client curl -sS -m 150 --connect-timeout 15 --fail -o - -w '%{stderr}GET %{http_code} bytes=%{size_download} first-byte=%{time_starttransfer}s total=%{time_total}s\n' \
        http://$DOMU_IP:9003/relay.bin 2>/tmp/curl-relay.err | sha256sum | cut -d' ' -f1)
  cat /tmp/curl-relay.err
  w=$(want /data/MANIFEST relay.bin)
  if [ "$out" = "$w" ]; then ck relay-48MiB OK "through vpipe-proxy byte-exact in $(since "$t0")s"
  else ck relay-48MiB FAIL "sha256 '$(short "$out")', want '$(short "$w")'; $(cat /tmp/curl-relay.err)"; fi
  phase d1-relay-done
  lighttpd_phase
  netem_phase
else
  ck d1-ready FAIL "the domU's servers did not come up"
  cmd put-done skip
fi
# the engine did the work, and nothing stays steered
sleep 1
vs=$(vmstat)
echo "VPIPE-XEN: engine stats of d1: $vs"
if [ -n "$vs" ]; then
  rd=$(echo "$vs" | jq '[.disks[].bytes_read] | add // 0')
  if [ "${rd:-0}" -gt 0 ]; then ck engine-read-image OK "$rd bytes read from $(echo "$vs" | jq -r '[.disks[].image] | join(",")')"
  else ck engine-read-image FAIL "no bytes read from the image: $vs"; fi
  for op in file_to_file file_to_socket socket_to_file socket_to_socket; do
    n=$(echo "$vs" | jq ".ops.$op // 0")
    if [ "${n:-0}" -gt 0 ]; then ck "engine-op-$op" OK "$n ops, $(echo "$vs" | jq ".bytes.$op") bytes"
    else ck "engine-op-$op" FAIL "the engine did no $op for d1"; fi
  done
else
  ck engine-knows-d1 FAIL "vpipectl stats has no VM with id $D: $(stats | jq -c '[.vms[] | {name, id}]' 2>/dev/null)"
fi
quiet_check d1-nothing-steered
cmd finish
wait_xsd end 120
lighttpd_counters_check
collect d1
wait_gone d1 60 || { ck d1-poweroff FAIL "still running 60 s after its scenario"; xl destroy d1; }
stop_tail d1
backend_gone_check d1 "$D1"
phase d1-gone
# what the engine wrote, seen from dom0 on the disk itself
if mount -t ext4 -o ro /dev/vda /mnt 2>/tmp/mnt.err; then
  for f in copy-big.bin:big.bin put.bin:put.bin put-netem.bin:put-netem.bin; do
    file=${f%%:*}; ref=${f#*:}
    case $ref in
      put.bin) w=$(want /data/MANIFEST put.bin) ;;
      put-netem.bin) w=$(sha256sum /tmp/put-netem.bin 2>/dev/null | cut -d' ' -f1)
                     [ "$(stat -c %s "/mnt/$file" 2>/dev/null)" = 8388608 ] || w="8388608 bytes" ;;
      *) w=$(want /etc/vpipe/xvda.MANIFEST "$ref") ;;
    esac
    got=$(sha256sum "/mnt/$file" 2>/dev/null | cut -d' ' -f1)
    if [ ! -f "/mnt/$file" ]; then ck "dom0-disk-$file" FAIL "no $file on /dev/vda"
    elif [ "$got" = "$w" ]; then ck "dom0-disk-$file" OK "byte-exact on /dev/vda"
    else ck "dom0-disk-$file" FAIL "sha256 '$(short "$got")', want '$(short "$w")'"; fi
  done
  umount /mnt
else
  ck dom0-mount-vda FAIL "$(cat /tmp/mnt.err)"
fi
phase d1-disk-checked

# ---------------------------------------------------------------- lifecycle 2: d2 destroyed mid-operation
NAME=d2
create d2 victim || result
D2=$D
if wait_xsd ready 300; then
  phase d2-servers-ready
  # a slow reader (512 KiB/s: the 64 MiB body would take 2 minutes) keeps the offloaded GET busy in
  # dom0 until well after the destroy, so only the engine itself can release the connection.
  # ($ip execs curl: $! is curl's pid)
  $ip netns exec client curl -sS -m 300 --connect-timeout 15 --limit-rate 512K -o /dev/null \
      http://$DOMU_IP:8080/big.bin 2>/tmp/curl-victim.err &
  CURL=$!
  i=0; mid=""
  while [ $i -lt 150 ]; do   # 30 s: the GET is offloaded and a copy is in flight
    vs=$(vmstat)
    s=$(echo "$vs" | jq -r '"\(.shadow_sockets // 0) \(.active // 0)"' 2>/dev/null)
    [ "${s%% *}" -ge 1 ] 2>/dev/null && [ "${s#* }" -ge 1 ] 2>/dev/null && { mid=$s; break; }
    sleep 0.2; i=$((i + 1))
  done
  if [ -n "$mid" ]; then ck d2-mid-operation OK "shadow sockets ${mid%% *}, active requests ${mid#* }, copies done $(xsd copies)"
  else ck d2-mid-operation FAIL "no offloaded operation seen in 30 s: $vs"; fi
  collect d2
else
  ck d2-ready FAIL "the victim's servers did not come up"
fi
phase d2-destroy
xl destroy d2
t0=$(up)
if wait_gone d2 30; then ck d2-destroyed OK "domain gone after $(since "$t0")s (no grant mapping kept it)"
else ck d2-destroyed FAIL "domain $D2 still listed 30 s after xl destroy: $(xl list | tr '\n' ' ')"; fi
stop_tail d2
if vpiped_alive; then ck vpiped-survives-destroy OK "pid $VPIPED answers"
else ck vpiped-survives-destroy FAIL "vpiped died or does not answer: $(tail -5 /var/log/vpiped.$NSTART.log | tr '\n' ' ')"; fi
backend_gone_check d2 "$D2"
quiet_check d2-released 20
kill $CURL 2>/dev/null
n=$(stats | jq "[.vms[] | select(.id == $D2)] | length" 2>/dev/null)
if [ "$n" = 0 ]; then ck d2-vm-released OK "the engine no longer lists domain $D2"
else ck d2-vm-released FAIL "the engine still lists domain $D2: $(stats | jq -c ".vms[] | select(.id == $D2)")"; fi
phase d2-released

# ---------------------------------------------------------------- lifecycle 3: d3 served afterwards
# d3 copies once, then vpiped restarts under its Connected frontend (protocol section 5d: the
# module sees the backend leave, frees its ring, reconnects to the new engine) and d3 copies again.
NAME=d3
create d3 survivor || result
D3=$D
if wait_xsd ready 300; then
  phase d3-first-copy-done
  stop_vpiped vpiped-restart-stop
  t0=$(up); left=""
  while [ "$(echo "$(up) $t0" | awk '{print ($1 - $2 < 20)}')" = 1 ]; do
    st=$(fe_state "$D"); [ "$st" != 4 ] && { left=$st; break; }
    sleep 0.2
  done
  if [ -n "$left" ]; then ck d3-frontend-left OK "frontend state $left after the engine stopped ($(since "$t0")s)"
  else ck d3-frontend-left FAIL "frontend still Connected 20 s after vpiped exited"; fi
  phase vpiped-restart
  start_vpiped vpiped-restart || result
  t0=$(up); ok=""
  while [ "$(echo "$(up) $t0" | awk '{print ($1 - $2 < 30)}')" = 1 ]; do
    [ "$(fe_state "$D")" = 4 ] && [ "$(be_state "$D")" = 4 ] && { ok=1; break; }
    sleep 0.2
  done
  if [ -n "$ok" ]; then ck d3-reconnected OK "frontend and backend Connected $(since "$t0")s after the new engine was ready"
  else ck d3-reconnected FAIL "after 30 s: frontend state '$(fe_state "$D")', backend state '$(be_state "$D")'"; fi
  cmd engine-restarted
else
  ck d3-ready FAIL "d3 did not finish its first copy"
  cmd engine-restarted skip
fi
wait_xsd end 300 || ck d3-finished FAIL "no result from d3"
vs=$(vmstat)
rd=$(echo "$vs" | jq '[.disks[].bytes_read] | add // 0' 2>/dev/null)
if [ "${rd:-0}" -gt 0 ]; then ck d3-engine-read-image OK "$rd bytes since the restart"; else ck d3-engine-read-image FAIL "$vs"; fi
collect d3
wait_gone d3 60 || { ck d3-poweroff FAIL "still running"; xl destroy d3; }
stop_tail d3
backend_gone_check d3 "$D3"
quiet_check end-nothing-steered
phase d3-gone

# ---------------------------------------------------------------- engine stops cleanly
stop_vpiped vpiped-stop
if ! TABLES=$(nft list tables 2>&1); then ck nft-clean FAIL "nft failed: $TABLES"
elif [ -n "$TABLES" ]; then ck nft-clean FAIL "$(echo "$TABLES" | tr '\n' ' ')"
else ck nft-clean OK "no nft table left"; fi
kill $CLIENT_HTTPD 2>/dev/null
phase suite-end
result
