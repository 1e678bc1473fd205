# The real applications (issue 13) of bench/run.sh (sourced; uses $B, $R, $QUICK, $TMPD and the
# helpers of run.sh / scenarios.sh / handover.sh). One lab: 2 VMs, no neighbours, unlimited link.
# Every point's two modes run back to back, repetitions interleaved; caches dropped before each.
#
#   apps.csv  experiment,mode,bytes,conns,rep,requests,seconds,rps,mib_s,p50_us,p99_us,errors,engine_bytes,bg_mib_s
#     web      wrk (2 threads, APPS_CONNS connections, APPS_SECONDS) GETs of one file from
#              lighttpd 1.4.69 in vm1: `stock` = Debian's /usr/sbin/lighttpd, `vpipe` = the
#              patched lighttpd with server.vpipe = "enable" (libvpipe's default threshold);
#              the paper's web-server experiment. mib_s: wrk's Transfer/sec.
#     latency  wrk --latency (1 thread, 4 connections, keep-alive) GETs of a 1 KiB file from the
#              same two servers, `idle` (bytes = 1024) or while 4 curl loops download a 256 MiB
#              file from that server all the time (`loaded`); bg_mib_s: what the 4 downloads got.
#     proxy    wrk GETs through Pound 4.16 in vm1 of a file that vpipe-httpd --mode sendfile
#              serves from vm2's disk: `stock` = the patched Pound without POUND_VPIPE (its own
#              relay, compiled as upstream's), `vpipe` = POUND_VPIPE=1.
#     upload   APPS_PUTS PUTs of 64 MiB (curl, one after the other, new connections) through the
#              same Pounds to vm2's vpipe-httpd; seconds for all, rps = PUTs/s.
#   engine_bytes: what the engine moved for vm1 during the point (file_to_socket for lighttpd,
#   socket_to_socket for Pound): the evidence of which path the bytes took.
#   APPS.md   the tables: medians and [min-max] over the repetitions, ratios vpipe/stock.

APPS_CSV=$R/apps.csv
APPS_SECONDS=${APPS_SECONDS:-5}
APPS_CONNS=${APPS_CONNS:-4}
APPS_PUTS=${APPS_PUTS:-5}
# a clone of github.com/graygnuorg/pound, used when Debian's pool has no pound 4.16-3 (build.sh's
# status 3), as scripts/test.sh does; default: the upstream mirror on this machine, if present
POUND_GIT=${POUND_GIT:-$(if [ -d /work/.mirror/graygnuorg+pound/repo ]; then echo /work/.mirror/graygnuorg+pound/repo; fi)}
VM2=10.199.0.12
CTL=/run/vpipe-lab/vpiped.ctl

apps_build() {  # the patched lighttpd and Pound (their scripts do nothing when up to date)
  VPIPE_BUILD_DIR=$PWD/$BUILD_DIR JOBS=2 nice patches/lighttpd/build.sh --build-dir "$BUILD_DIR" >&2 || return 1
  local rc=0
  VPIPE_BUILD_DIR=$PWD/$BUILD_DIR JOBS=2 nice patches/pound/build.sh --build-dir "$BUILD_DIR" >&2 || rc=$?
  if [ "$rc" = 3 ] && [ -n "$POUND_GIT" ]; then
    rc=0
    VPIPE_BUILD_DIR=$PWD/$BUILD_DIR JOBS=2 nice patches/pound/build.sh --build-dir "$BUILD_DIR" --git "$POUND_GIT" >&2 || rc=$?
  fi
  return "$rc"
}

eng_bytes() {  # OP: vm1's engine byte counter
  "$B/vpipectl" --control "$CTL" stats --json 2>/dev/null |
    jq -r --arg op "$1" '[.vms[] | select(.name == "vm1") | .bytes[$op] // 0][0] // 0'
}

to_us() {  # wrk's "1.23ms" / "456.00us" / "1.02s" -> microseconds
  awk -v v="$1" 'BEGIN { u = v; sub(/[0-9.]+/, "", u); n = v + 0
    printf "%.1f", (u == "s" ? n * 1e6 : u == "ms" ? n * 1e3 : n) }'
}
to_mib() {  # wrk's Transfer/sec "1.23GB" / "456.78MB" / "12.00KB" -> MiB
  awk -v v="$1" 'BEGIN { u = v; sub(/[0-9.]+/, "", u); n = v + 0
    printf "%.1f", (u == "GB" ? n * 1024 : u == "MB" ? n : u == "KB" ? n / 1024 : n / 1048576) }'
}

# wrk_run THREADS CONNS URL SECONDS -> "requests rps mib_s p50_us p99_us errors" (empty on failure)
wrk_run() {
  local out req rps tr p50 p99 err
  out=$(lab client -- wrk --latency -t"$1" -c"$2" -d"$4s" --timeout 30s "$3" 2>&1) || return 1
  req=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in .*/\1/p')
  rps=$(echo "$out" | sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p')
  tr=$(echo "$out" | sed -n 's/^Transfer\/sec: *\([0-9.]*[A-Z]*\)/\1/p')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  err=$(echo "$out" | awk '/Socket errors/ { gsub(",", ""); s = $4 + $6 + $8 + $10 } /Non-2xx/ { s += $NF } END { print s + 0 }')
  [ -n "$req" ] && [ -n "$rps" ] && [ -n "$p99" ] || { echo "bench: wrk: $out" >&2; return 1; }
  echo "$req $rps $(to_mib "${tr:-0B}") $(to_us "$p50") $(to_us "$p99") $err"
}

# apps_point EXPERIMENT MODE BYTES CONNS REP OP URL [BG_URL]: one wrk point, cold caches, a CSV row;
# with BG_URL, 4 curl loops download it during the whole point (they end by themselves).
apps_point() {
  local ex=$1 mode=$2 bytes=$3 conns=$4 rep=$5 op=$6 url=$7 bg=${8:-} threads=2 e0 e1 r bgpid="" bgm=""
  local secs=$APPS_SECONDS
  [ "$ex" = latency ] && threads=1
  # a 256 MiB body takes seconds through Pound's own relay: twice the time, so that requests complete
  [ "$ex" != latency ] && [ "$bytes" -ge $((256 << 20)) ] && secs=$((2 * APPS_SECONDS))
  cold
  e0=$(eng_bytes "$op")
  if [ -n "$bg" ]; then
    local d=$((APPS_SECONDS + 3))
    # each loop: downloads until the deadline (curl's --max-time ends the last one there)
    lab client -- bash -c "end=\$((SECONDS + $d)); for i in 1 2 3 4; do
        ( n=0; while [ \$SECONDS -lt \$end ]; do
            b=\$(curl -s -o /dev/null --max-time \$((end - SECONDS)) -w '%{size_download}' $bg); n=\$((n + \${b:-0})); done
          echo \$n ) & done; wait" > "$TMPD/bg.out" 2>/dev/null &
    bgpid=$!
    sleep 1   # the 4 downloads under way before wrk starts (a benchmark's settling time, not a test's sync)
  fi
  r=$(wrk_run $threads "$conns" "$url" "$secs") || { echo "bench: apps $ex $mode $bytes failed" >&2; r=""; }
  if [ -n "$bgpid" ]; then
    wait "$bgpid" || true
    bgm=$(awk -v d=$((APPS_SECONDS + 3)) '{ s += $1 } END { printf "%.1f", s / 1048576 / d }' "$TMPD/bg.out")
  fi
  e1=$(eng_bytes "$op")
  [ -n "$r" ] || return 0
  set -- $r
  echo "$ex,$mode,$bytes,$conns,$rep,$1,$secs,$2,$3,$4,$5,$6,$((e1 - e0)),$bgm" >> "$APPS_CSV"
}

upload_point() {  # MODE REP PORT
  local mode=$1 rep=$2 port=$3 e0 e1 t0 t1 i ok=1
  cold
  e0=$(eng_bytes socket_to_socket); t0=$(now)
  for i in $(seq 1 "$APPS_PUTS"); do
    put_check "http://$VM1:$port/up-$mode" "$APPS_SHM/up64" $((64 << 20)) || ok=0
  done
  t1=$(now); e1=$(eng_bytes socket_to_socket)
  [ $ok = 1 ] || echo "bench: apps upload $mode: a PUT failed" >&2
  awk -v m="$mode" -v r="$rep" -v n="$APPS_PUTS" -v t0="$t0" -v t1="$t1" -v e=$((e1 - e0)) -v ok=$ok \
    'BEGIN { s = t1 - t0; printf "upload,%s,%d,1,%d,%d,%.3f,%.3f,%.1f,,,%d,%d,\n", m, 64 * 1048576, r, n, s, n / s, n * 64 / s, !ok, e }' >> "$APPS_CSV"
}

lighttpd_conf() {  # NAME PORT VPIPE(enable|"")
  local c=$TMPD/$1.conf
  {
    echo "server.document-root = \"$LAB_VM_DISK\""
    echo "server.bind = \"$VM1\""
    echo "server.port = $2"
    echo "server.errorlog = \"$TMPD/$1.err\""
    echo "mimetype.assign = (\"\" => \"application/octet-stream\")"
    [ -n "$3" ] && echo "server.vpipe = \"enable\""
  } > "$c"
  echo "$c"
}

# a server wrapped so that `start` sees "listening on" once its port accepts, and SIGTERM reaches it
serve_wrapped() {  # NAME PORT ENV... -- CMD...
  local name=$1 port=$2
  shift 2
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  start "$name" vm1 env "${envs[@]}" bash -c "\"\$@\" & p=\$!; trap 'kill -TERM \$p; wait \$p; exit \$?' TERM
    for i in \$(seq 100); do (exec 3<>/dev/tcp/$VM1/$port) 2>/dev/null && break; sleep 0.1; done; echo listening on; wait \$p" \
    _ "$@"
}

pound_conf() {  # NAME PORT
  local c=$TMPD/$1.cfg
  printf 'Daemon 0\nLogFacility -\nLogLevel 1\nPIDFile "%s"\nListenHTTP\n  xHTTP 1\n  Address %s\n  Port %s\n  Service\n    Backend\n      Address %s\n      Port 8090\n    End\n  End\nEnd\n' \
    "$TMPD/$1.pid" "$VM1" "$2" "$VM2" > "$c"
  echo "$c"
}

run_apps() {
  local sizes="1048576 16777216 268435456" reps=${REPS_APPS:-3}
  [ "$QUICK" = 1 ] && { sizes="1048576 268435456"; reps=1; }
  local LIGHTTPD=$PWD/$BUILD_DIR/lighttpd/sbin/lighttpd POUND=$PWD/$BUILD_DIR/pound/sbin/pound
  apps_build || { echo "bench: apps: the patched lighttpd or Pound did not build (Pound: POUND_GIT=<clone>)" >&2; return 1; }
  [ -x /usr/sbin/lighttpd ] || { echo "bench: apps: no stock lighttpd (apt-get install lighttpd)" >&2; return 1; }
  echo "experiment,mode,bytes,conns,rep,requests,seconds,rps,mib_s,p50_us,p99_us,errors,engine_bytes,bg_mib_s" > "$APPS_CSV"
  echo "bench: real applications (lighttpd stock vs vPipe, small-request latency under load, Pound)" >&2
  bench_up --vms 2 --disks 1 --disk-mib 1024
  local M=$LAB_VM_DISK M2=/run/vpipe-lab/vm2/disk0 s
  APPS_SHM=/dev/shm/vpipe-bench-apps
  mkdir -p "$APPS_SHM"
  head -c $((64 << 20)) /dev/urandom > "$APPS_SHM/up64"
  for s in $sizes; do head -c "$s" /dev/urandom > "$M/f$s"; cp "$M/f$s" "$M2/f$s"; done
  head -c $((256 << 20)) /dev/urandom > "$M/big"
  head -c 1024 /dev/urandom > "$M/tiny"
  sync
  if ! serve_wrapped lighttpd-stock 8085 -- /usr/sbin/lighttpd -D -f "$(lighttpd_conf lighttpd-stock 8085 "")" ||
     ! serve_wrapped lighttpd-vpipe 8086 VPIPE_MIN_OFFLOAD=262144 -- "$LIGHTTPD" -D -f "$(lighttpd_conf lighttpd-vpipe 8086 enable)" ||
     ! start backend vm2 "$B/vpipe-httpd" --mode sendfile --port 8090 --root "$M2" ||
     ! serve_wrapped pound-stock 9085 VPIPE_MIN_OFFLOAD=262144 -- "$POUND" -F -f "$(pound_conf pound-stock 9085)" ||
     ! serve_wrapped pound-vpipe 9086 POUND_VPIPE=1 POUND_VPIPE_VERBOSE=1 VPIPE_MIN_OFFLOAD=262144 -- "$POUND" -F -f "$(pound_conf pound-vpipe 9086)"; then
    bench_down
    rm -rf "$APPS_SHM"
    return 1
  fi
  local rep mode port load
  for rep in $(seq 1 "$reps"); do
    for s in $sizes; do
      for mode in stock vpipe; do
        port=8085; [ $mode = vpipe ] && port=8086
        apps_point web $mode "$s" "$APPS_CONNS" "$rep" file_to_socket "http://$VM1:$port/f$s"
      done
    done
    for load in idle loaded; do
      for mode in stock vpipe; do
        port=8085; [ $mode = vpipe ] && port=8086
        if [ $load = idle ]; then
          apps_point latency $mode 1024 4 "$rep" file_to_socket "http://$VM1:$port/tiny"
        else
          apps_point latency $mode $((256 << 20)) 4 "$rep" file_to_socket "http://$VM1:$port/tiny" "http://$VM1:$port/big"
        fi
      done
    done
    for s in $sizes; do
      for mode in stock vpipe; do
        port=9085; [ $mode = vpipe ] && port=9086
        apps_point proxy $mode "$s" "$APPS_CONNS" "$rep" socket_to_socket "http://$VM1:$port/f$s"
      done
    done
    for mode in stock vpipe; do
      port=9085; [ $mode = vpipe ] && port=9086
      upload_point $mode "$rep" $port
    done
  done
  # lighttpd's error logs and Pound's vPipe lines: evidence (and failures) for APPS.md
  grep -hv "server started\|server stopped" "$TMPD"/lighttpd-*.err 2>/dev/null | head -5 > "$TMPD/apps_errors" || true
  grep -ho "vpipe: [a-z0-9_ ]*\(offloaded\|fallback\|failed\|enabled\)" "$TMPD"/pound-vpipe.log 2>/dev/null |
    sed 's/[0-9][0-9]*/N/g' | sort | uniq -c | sort -rn | head -5 > "$TMPD/apps_pound" || true
  bench_down
  rm -rf "$APPS_SHM"
  apps_summary
}

apps_summary() {
  local out=$R/APPS.md
  [ -s "$APPS_CSV" ] || return 0
  # medians per (experiment, mode, bytes) of a column: "key median n min max"
  med() { awk -F, -v ex="$1" 'NR == 1 || $1 == ex' "$APPS_CSV" > "$TMPD/apps_$1.csv"; csv_median "$TMPD/apps_$1.csv" "2 3" "$2"; }
  val() { awk -v k="$2,$3" '$1 == k {print $2}' "$1"; }
  spread() { awk -v k="$2,$3" '$1 == k {print $2 " [" $4 "-" $5 "]"}' "$1"; }
  mib() { awk -v b="$1" 'BEGIN { printf "%g MiB", b / 1048576 }'; }
  {
    echo "# Real applications: lighttpd and Pound, stock and on vPipe"
    echo
    echo "Regenerate: \`bench/run.sh apps\` (root; builds the patched lighttpd and Pound: patches/*/build.sh)."
    echo "One lab: 2 VMs, no neighbours, unlimited link; $(machine); load average at the start"
    echo "$START_LOAD (the host is shared: compare the ratios, each taken within one run). Written"
    echo "$(date -u +%Y-%m-%dT%H:%MZ). Medians over $(awk -F, 'NR > 1 {print $5}' "$APPS_CSV" | sort -u | wc -l) interleaved repetitions, [min-max] across them;"
    echo "caches dropped before every point; wrk ${APPS_SECONDS} s a point ($((2 * APPS_SECONDS)) s for 256 MiB files). Raw rows: apps.csv."
    echo
    echo "The lab charges the guest no virtualization tax (a VM is a namespace on the host's kernel), so"
    echo "these ratios are what the hand-over costs or saves here, not what a Xen guest would see."
    echo
    if grep -q '^web,' "$APPS_CSV"; then
      echo "## Web server: wrk against lighttpd 1.4.69 (the paper's web-server experiment)"
      echo
      echo "\`stock\` = Debian's lighttpd; \`vpipe\` = the patched one, \`server.vpipe = \"enable\"\` (non-blocking"
      echo "submits; libvpipe's default threshold). wrk: 2 threads, $APPS_CONNS connections, keep-alive."
      echo "engine MiB: what dom0 moved for vm1 during the vpipe point (median)."
      echo
      echo "| file | stock req/s | vpipe req/s | vpipe/stock | stock MiB/s | vpipe MiB/s | vpipe/stock | engine MiB (vpipe) | errors (stock/vpipe) |"
      echo "|---|---|---|---|---|---|---|---|---|"
      med web 8 > "$TMPD/a_rps"; med web 9 > "$TMPD/a_mib"; med web 13 > "$TMPD/a_eng"; med web 12 > "$TMPD/a_err"
      local s
      for s in $(awk -F, '$1 == "web" {print $3}' "$APPS_CSV" | sort -n -u); do
        local sr vr sm vm
        sr=$(val "$TMPD/a_rps" stock "$s"); vr=$(val "$TMPD/a_rps" vpipe "$s")
        sm=$(val "$TMPD/a_mib" stock "$s"); vm=$(val "$TMPD/a_mib" vpipe "$s")
        echo "| $(mib "$s") | $(spread "$TMPD/a_rps" stock "$s") | $(spread "$TMPD/a_rps" vpipe "$s") | $(ratio "$vr" "$sr") | $(spread "$TMPD/a_mib" stock "$s") | $(spread "$TMPD/a_mib" vpipe "$s") | $(ratio "$vm" "$sm") | $(awk -v b="$(val "$TMPD/a_eng" vpipe "$s")" 'BEGIN { printf "%.0f", b / 1048576 }') | $(val "$TMPD/a_err" stock "$s")/$(val "$TMPD/a_err" vpipe "$s") |"
      done
      echo
    fi
    if grep -q '^latency,' "$APPS_CSV"; then
      echo "## Small requests while large downloads are in flight (p50/p99)"
      echo
      echo "wrk --latency: 1 thread, 4 keep-alive connections, GETs of a 1 KiB file; \`loaded\`: meanwhile 4 curl"
      echo "loops download a 256 MiB file from the same lighttpd without pause (with vPipe dom0 sends"
      echo "them: the patched lighttpd submits each body and keeps serving). Latencies in µs."
      echo
      echo "| load | mode | req/s | p50 µs | p99 µs | p99 vpipe/stock | 4 downloads MiB/s | engine MiB |"
      echo "|---|---|---|---|---|---|---|---|"
      med latency 8 > "$TMPD/l_rps"; med latency 10 > "$TMPD/l_50"; med latency 11 > "$TMPD/l_99"
      med latency 14 > "$TMPD/l_bg"; med latency 13 > "$TMPD/l_eng"
      local b load mode
      for b in 1024 268435456; do
        load=idle; [ "$b" = 1024 ] || load=loaded
        for mode in stock vpipe; do
          [ -n "$(val "$TMPD/l_99" $mode $b)" ] || continue
          echo "| $load | $mode | $(spread "$TMPD/l_rps" $mode $b) | $(spread "$TMPD/l_50" $mode $b) | $(spread "$TMPD/l_99" $mode $b) | $([ $mode = vpipe ] && ratio "$(val "$TMPD/l_99" vpipe $b)" "$(val "$TMPD/l_99" stock $b)" || echo) | $([ $load = loaded ] && spread "$TMPD/l_bg" $mode $b || echo -) | $(awk -v b="$(val "$TMPD/l_eng" $mode $b)" 'BEGIN { printf "%.0f", b / 1048576 }') |"
        done
      done
      echo
    fi
    if grep -q '^proxy,' "$APPS_CSV"; then
      echo "## Proxy: wrk through Pound 4.16 (vm1) to vpipe-httpd --mode sendfile (vm2)"
      echo
      echo "\`stock\` = the patched Pound without POUND_VPIPE (Pound's own relay); \`vpipe\` = POUND_VPIPE=1 (bodies of"
      echo "at least 256 KiB relayed by dom0, socket -> socket). wrk: 2 threads, $APPS_CONNS connections."
      echo
      echo "| file | stock req/s | vpipe req/s | vpipe/stock | stock MiB/s | vpipe MiB/s | vpipe/stock | engine MiB (vpipe) | errors (stock/vpipe) |"
      echo "|---|---|---|---|---|---|---|---|---|"
      med proxy 8 > "$TMPD/p_rps"; med proxy 9 > "$TMPD/p_mib"; med proxy 13 > "$TMPD/p_eng"; med proxy 12 > "$TMPD/p_err"
      local s
      for s in $(awk -F, '$1 == "proxy" {print $3}' "$APPS_CSV" | sort -n -u); do
        local sr vr sm vm
        sr=$(val "$TMPD/p_rps" stock "$s"); vr=$(val "$TMPD/p_rps" vpipe "$s")
        sm=$(val "$TMPD/p_mib" stock "$s"); vm=$(val "$TMPD/p_mib" vpipe "$s")
        echo "| $(mib "$s") | $(spread "$TMPD/p_rps" stock "$s") | $(spread "$TMPD/p_rps" vpipe "$s") | $(ratio "$vr" "$sr") | $(spread "$TMPD/p_mib" stock "$s") | $(spread "$TMPD/p_mib" vpipe "$s") | $(ratio "$vm" "$sm") | $(awk -v b="$(val "$TMPD/p_eng" vpipe "$s")" 'BEGIN { printf "%.0f", b / 1048576 }') | $(val "$TMPD/p_err" stock "$s")/$(val "$TMPD/p_err" vpipe "$s") |"
      done
      echo
    fi
    if grep -q '^upload,' "$APPS_CSV"; then
      echo "## Uploads through Pound: $APPS_PUTS PUTs of 64 MiB (curl, one after the other)"
      echo
      echo "| mode | seconds for all | MiB/s | engine MiB | failed |"
      echo "|---|---|---|---|---|"
      med upload 7 > "$TMPD/u_s"; med upload 9 > "$TMPD/u_mib"; med upload 13 > "$TMPD/u_eng"; med upload 12 > "$TMPD/u_err"
      local mode b=$((64 << 20))
      for mode in stock vpipe; do
        echo "| $mode | $(spread "$TMPD/u_s" $mode $b) | $(spread "$TMPD/u_mib" $mode $b) | $(awk -v b="$(val "$TMPD/u_eng" $mode $b)" 'BEGIN { printf "%.0f", b / 1048576 }') | $(val "$TMPD/u_err" $mode $b) |"
      done
      echo
      echo "vpipe/stock (MiB/s): $(ratio "$(val "$TMPD/u_mib" vpipe $b)" "$(val "$TMPD/u_mib" stock $b)")."
      echo
    fi
    if [ -s "$TMPD/apps_pound" ]; then
      echo "Pound's vPipe log lines during the run (POUND_VPIPE=1 POUND_VPIPE_VERBOSE=1; numbers as N; count):"
      echo
      sed 's/^/    /' "$TMPD/apps_pound"
      echo
    fi
    if [ -s "$TMPD/apps_errors" ]; then
      echo "lighttpd logged (first lines besides start and stop):"
      echo
      sed 's/^/    /' "$TMPD/apps_errors"
      echo
    fi
  } > "$out"
}
