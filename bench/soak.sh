# The overload soak of bench/run.sh (sourced; uses $B, $R, $QUICK, $TMPD and the helpers of
# run.sh / scenarios.sh). Issue 15: "many concurrent connections and operations beyond the pools
# queue or fall back, never time out or fail; a 10-minute soak of mixed operations from several
# VMs with RSS, open descriptors and steering counts sampled (flat)".
#
# One lab, SOAK_VMS VMs (default 3), unlimited link. In every VM: vpipe-httpd --mode vpipe
# (libvpipe's threshold on, fallback allowed and counted: what a deployment runs) and
# vpipe-proxy --mode vpipe in front of a backend on the client host. For SOAK_SECONDS (600;
# --quick 60) the client host runs, per VM, at once:
#   - 2 loops of 64 MiB GETs (file -> socket), each body's SHA-256 checked;
#   - 1 loop of 64 MiB GETs through the proxy (socket -> socket), SHA-256 checked;
#   - 1 loop of 32 MiB PUTs to its own file (socket -> file), the stored file's SHA-256 checked
#     on the VM's disk;
#   - 1 loop of bursts of SOAK_BURST (48) concurrent 300 KiB GETs (just above the threshold:
#     offloaded) and 16 KiB GETs (below it: the counted classic path), every size checked;
# and inside every VM a loop of cp-vpipe (file -> file) of 64 MiB, compared with cmp.
# That is 5 + 48 concurrent connections per VM against an engine with 4 threads per VM: the
# pools are oversubscribed on purpose.
# Every SOAK_SAMPLE (10) seconds: the engine's RSS and open descriptors, each agent's RSS and
# descriptors, and what is in flight in dom0 (active requests, shadow sockets, steered flows,
# nft elements). Written to soak.csv; SOAK.md says whether the run passed:
#   - no operation failed (every GET, PUT, relay and copy byte-exact, no HTTP error, no time-out),
#   - after the load stopped nothing is left in dom0 (0 active, 0 shadows, 0 flows, 0 elements),
#   - a warm-up of the same load (a fifth of the run, at most 60 s) is drained and sampled: the
#     baseline (the pools, lazily opened images and channels at their working size); after the
#     soak, drained again, the engine's and agents' descriptors equal the baseline's (but for the
#     engine's per-thread splice pipes, bounded by its threads), their anonymous RSS is within
#     SOAK_RSS_SLACK_KIB (16 MiB) of it, and their shared RSS (the channel memfds: ring + area,
#     touched page by page as the area's allocator reaches new pages) within the areas' size.
# bench/run.sh soak exits non-zero when the run did not pass.

SOAK_CSV=$R/soak.csv
SOAK_MD=$R/SOAK.md
SOAK_VMS=${SOAK_VMS:-3}
SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_SAMPLE=${SOAK_SAMPLE:-10}
SOAK_BURST=${SOAK_BURST:-48}
SOAK_RSS_SLACK_KIB=${SOAK_RSS_SLACK_KIB:-16384}
# Debian's python3 (a version manager's shim in PATH starts far too slowly on a saturated host)
SOAK_PY=/usr/bin/python3; [ -x "$SOAK_PY" ] || SOAK_PY=python3

soak_pid_of() {  # NAME-REGEX NAMESPACE: the pid of a process running in that lab namespace
  local p
  for p in $(pgrep -x "$1"); do
    [ "$(ip netns identify "$p" 2>/dev/null)" = "$2" ] && { echo "$p"; return 0; }
  done
  echo 0
}
# what the engine's and agents' descriptors point to (types, not numbers: socket:[inode] -> socket)
soak_fd_list() {
  local p
  for p in "$EPID" "${SOAK_AGENT[@]}"; do
    find "/proc/$p/fd" -mindepth 1 -printf "$p %l\n" 2>/dev/null | sed 's/:\[[0-9]*\]$//' | sort | uniq -c
  done
}
# RSS as "anonymous,shared" KiB. The shared part is the channel's memfd (ring + area, mapped by
# the agent and by the engine): it grows as the area's allocator touches pages it had not used
# yet, up to the area's size, and is no leak; the anonymous part (heap, stacks, pools) must stay flat.
soak_rss() {
  awk '/^RssAnon/ {a = $2} /^RssShmem/ {s = $2} END {print (a + 0) "," (s + 0)}' "/proc/$1/status" 2>/dev/null || echo 0,0
}
soak_fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }

# what is in flight in dom0: "active shadows flows elements". The nft elements only with
# "drained": under churn `nft list ruleset` restarts its dump whenever the sets change (30+ s
# with this load), so during the load the column is "-" and the engine's steered_flows stand.
soak_inflight() {
  local st el=- t0=$(date +%s%N)
  st=$("$B/vpipectl" --control /run/vpipe-lab/vpiped.ctl stats --json 2>/dev/null) || { echo "-1 -1 -1 -1"; return; }
  local t1=$(date +%s%N)
  [ "${1:-}" = drained ] && el=$(lab dom0 -- nft -j list ruleset 2>/dev/null | "$SOAK_PY" -c '
import json, sys
n = 0
for o in json.load(sys.stdin).get("nftables", []):
    for k in ("set", "map"):
        s = o.get(k)
        if s and s.get("family") == "bridge" and s.get("table") == "vpipe":
            n += len(s.get("elem", []))
print(n)' 2>/dev/null || echo -1)
  echo "$st" | "$SOAK_PY" -c '
import json, sys
j = json.load(sys.stdin)
vms = j.get("vms", [])
print(sum(v.get("active", 0) for v in vms), sum(v.get("shadow_sockets", 0) for v in vms),
      sum(v.get("steered_flows", 0) for v in vms), end=" ")' 2>/dev/null || echo -n "-1 -1 -1 "
  echo "$el"
}

# the engine's operations per type summed over the VMs, e.g. "file_to_socket=12 ..."
soak_ops_by_type() {
  "$B/vpipectl" --control /run/vpipe-lab/vpiped.ctl stats --json 2>/dev/null | "$SOAK_PY" -c '
import json, sys, collections
c = collections.Counter()
for v in json.load(sys.stdin).get("vms", []):
    c.update(v.get("ops", {}))
print(" ".join(f"{k}={n}" for k, n in sorted(c.items())))' 2>/dev/null
}

# engine counters summed over the VMs: "requests failed rejected ops bytes"
soak_counters() {
  "$B/vpipectl" --control /run/vpipe-lab/vpiped.ctl stats --json 2>/dev/null | "$SOAK_PY" -c '
import json, sys
j = json.load(sys.stdin)
vms = j.get("vms", [])
ops = sum(sum(v.get("ops", {}).values()) for v in vms)
byt = sum(sum(v.get("bytes", {}).values()) for v in vms)
print(sum(v.get("requests", 0) for v in vms), sum(v.get("failed", 0) for v in vms),
      sum(v.get("rejected", 0) for v in vms), ops, byt)' 2>/dev/null || echo "-1 -1 -1 -1 -1"
}

soak_sample() {  # PHASE -> one CSV row (sample_ms: how long taking the sample took)
  local t0 row i inflight
  t0=$(date +%s%N)
  row="$(soak_rss "$EPID"),$(soak_fds "$EPID")"
  for i in $(seq 1 "$SOAK_VMS"); do
    row+=",$(soak_rss "${SOAK_AGENT[$i]}"),$(soak_fds "${SOAK_AGENT[$i]}")"
  done
  case "$1" in idle|baseline|end) inflight=$(soak_inflight drained | tr ' ' ',') ;;
                *) inflight=$(soak_inflight | tr ' ' ',') ;; esac
  echo "$(($(date +%s) - SOAK_T0)),$1,$((($(date +%s%N) - t0) / 1000000)),$row,$inflight"
}

# One phase of load from every VM for SECS seconds, sampled every SOAK_SAMPLE seconds.
soak_phase() {  # NAME SECS
  local end=$(($(date +%s) + $2)) loads=() i p next
  for i in $(seq 1 "$SOAK_VMS"); do
    soak_client_load "$i" "$end" & loads+=($!)
    soak_vm_load "$i" "$end" & loads+=($!)
  done
  # the sampler must not starve behind the load it watches (2 cores, ~60 runnable processes):
  # the load was forked at nice 0, the sampling shell goes to -10
  renice -n -10 -p "$BASHPID" >/dev/null 2>&1 || true
  next=$(($(date +%s) + SOAK_SAMPLE))
  while [ "$(date +%s)" -lt "$end" ]; do
    sleep 1
    [ "$(date +%s)" -ge "$next" ] || continue
    soak_sample "$1" >> "$SOAK_CSV"
    next=$(($(date +%s) + SOAK_SAMPLE))
  done
  for p in "${loads[@]}"; do wait "$p" || true; done
  renice -n 0 -p "$BASHPID" >/dev/null 2>&1 || true
}

# After the load stopped, what is in flight must drain (a request ends in well under 10 s):
# prints what is left ("active shadows flows elements").
soak_drain() {
  local left
  for _ in $(seq 1 20); do left=$(soak_inflight drained); [ "$left" = "0 0 0 0" ] && break; sleep 0.5; done
  echo "$left"
}

# The client's load for one VM until the deadline; one line per operation in $TMPD/soak-vmI.log:
# "ok KIND" or "FAIL KIND reason".
soak_client_load() {  # I DEADLINE
  local i=$1 end=$2 ip=10.199.0.$((10 + $1))
  cat > "$TMPD/soak-load-$i.sh" <<EOF
set -u
end=$end; ip=$ip; log=$TMPD/soak-vm$i.log; big=$SOAK_BIG_SHA; put=$SOAK_PUT_SHA
small=$((300 << 10)); tiny=$((16 << 10)); burst=$SOAK_BURST
get_loop() {  # KIND URL SHA
  while [ \$(date +%s) -lt \$end ]; do
    s=\$(curl -sf --max-time 120 "\$2" | sha256sum | cut -d' ' -f1)
    if [ "\$s" = "\$3" ]; then echo "ok \$1"; else echo "FAIL \$1 sha \$s"; fi
  done >> "\$log"
}
burst_loop() {
  while [ \$(date +%s) -lt \$end ]; do
    for k in \$(seq 1 \$burst); do
      f=small; n=\$small; [ \$((k % 2)) = 0 ] && { f=tiny; n=\$tiny; }
      ( m=\$(curl -sf --max-time 60 -o /dev/null -w '%{size_download}' "http://\$ip:8083/\$f") &&
        [ "\$m" = "\$n" ] && echo "ok burst-\$f" || echo "FAIL burst-\$f got '\$m'" ) &
    done
    wait
  done >> "\$log"
}
put_loop() {
  while [ \$(date +%s) -lt \$end ]; do
    c=\$(curl -sf --max-time 120 -o /dev/null -w '%{http_code}' -T $SHM/put "http://\$ip:8083/put")
    case "\$c" in 201|204) echo "putdone" ;; *) echo "FAIL put HTTP '\$c'" ;; esac
  done >> "\$log"
}
get_loop get "http://\$ip:8083/f" "\$big" & get_loop get "http://\$ip:8083/f" "\$big" &
get_loop relay "http://\$ip:9003/src" "\$big" &
burst_loop & put_loop &
wait
EOF
  lab client -- bash "$TMPD/soak-load-$i.sh"
}

# In the VM: the file -> file loop (cp-vpipe, then cmp), and a loop that drops the guest's cached
# pages of the served files every 0.5 s: a range wholly in the guest's page cache is sent by the
# guest itself (libvpipe's cache rule, counted as a fallback), so without it most GETs would
# never reach the engine.
soak_vm_load() {  # I DEADLINE
  local i=$1 end=$2 M=/run/vpipe-lab/vm$1/disk0 log=$TMPD/soak-vm$1.copies
  ( while [ "$(date +%s)" -lt "$end" ]; do
      for f in f small; do dd if="$M/$f" iflag=nocache count=0 status=none 2>/dev/null; done
      sleep 0.5
    done ) &
  while [ "$(date +%s)" -lt "$end" ]; do
    rm -f "$M/copy"
    if lab exec "vm$i" -- "$B/cp-vpipe" "$M/f" "$M/copy" >/dev/null 2>"$TMPD/soak-cp$i.err" && cmp -s "$M/f" "$M/copy"; then
      echo "ok copy"
    else
      echo "FAIL copy $(head -c 200 "$TMPD/soak-cp$i.err")"
    fi
  done >> "$log"
  wait
}

run_soak() {
  local secs=$SOAK_SECONDS i t0 end
  [ "$QUICK" = 1 ] && secs=60
  prepare_shm
  head -c $((64 << 20)) "$SHM/src" > "$TMPD/big"
  head -c $((32 << 20)) /dev/urandom > "$SHM/put"
  SOAK_BIG_SHA=$(sha256sum < "$TMPD/big" | cut -d' ' -f1)
  SOAK_PUT_SHA=$(sha256sum < "$SHM/put" | cut -d' ' -f1)
  # the backend serves the first 64 MiB of src as /src: a file of its own in a directory of its own
  mkdir -p "$SHM/soak"; cp "$TMPD/big" "$SHM/soak/src"
  echo "bench: soak, $SOAK_VMS VMs, $secs s" >&2
  bench_up --vms "$SOAK_VMS" --disks 1 --disk-mib 1024 --neighbours 0
  declare -gA SOAK_AGENT
  start backend client "$B/vpipe-httpd" --mode sendfile --port 8090 --root "$SHM/soak" || { bench_down; return 1; }
  for i in $(seq 1 "$SOAK_VMS"); do
    local M=/run/vpipe-lab/vm$i/disk0
    cp "$TMPD/big" "$M/f"
    head -c $((300 << 10)) "$TMPD/big" > "$M/small"
    head -c $((16 << 10)) "$TMPD/big" > "$M/tiny"
    start "httpd-vm$i" "vm$i" "$B/vpipe-httpd" --mode vpipe --threads 64 --port 8083 --root "$M" || { bench_down; return 1; }
    start "proxy-vm$i" "vm$i" "$B/vpipe-proxy" --mode vpipe --listen 9003 --to "$CLIENT:8090" || { bench_down; return 1; }
    SOAK_AGENT[$i]=$(soak_pid_of vpipe-guestd "vpl-vm$i")
  done
  sync
  local hdr="t_s,phase,sample_ms,engine_anon_kib,engine_shmem_kib,engine_fds" c0 c1 left0 left warm
  for i in $(seq 1 "$SOAK_VMS"); do hdr+=",vm${i}_agent_anon_kib,vm${i}_agent_shmem_kib,vm${i}_agent_fds"; done
  echo "$hdr,active,shadow_sockets,steered_flows,nft_elements" > "$SOAK_CSV"
  rm -f "$TMPD"/soak-vm*.log "$TMPD"/soak-vm*.copies
  SOAK_T0=$(date +%s)
  soak_sample idle >> "$SOAK_CSV"
  c0=$(soak_counters)
  # warm-up: the pools, lazily opened images and connections reach their working size; the
  # sample after it drained is the baseline the end is compared with
  warm=$((secs / 5)); [ $warm -gt 60 ] && warm=60
  soak_phase warm-up "$warm"
  left0=$(soak_drain)
  soak_sample baseline >> "$SOAK_CSV"
  soak_fd_list > "$TMPD/soak-fds.baseline"
  soak_phase soak "$secs"
  left=$(soak_drain)
  soak_sample end >> "$SOAK_CSV"
  soak_fd_list > "$TMPD/soak-fds.end"
  c1=$(soak_counters)
  SOAK_OPS_BY_TYPE=$(soak_ops_by_type)
  # PUT checks: the last stored file of each VM (every PUT replaces it; a check per PUT would
  # race the next PUT), read on the VM's disk
  local put_bad=0
  for i in $(seq 1 "$SOAK_VMS"); do
    [ "$(sha256sum < "/run/vpipe-lab/vm$i/disk0/put" | cut -d' ' -f1)" = "$SOAK_PUT_SHA" ] || put_bad=$((put_bad + 1))
  done
  local rc=0
  soak_report "$secs" "$c0" "$c1" "$left0 / $left" "$put_bad" || rc=1
  bench_down
  rm -rf "$SHM/soak" "$SHM/put"
  return $rc
}

soak_report() {  # SECS COUNTERS0 COUNTERS1 "LEFT_AFTER_WARMUP / LEFT_AT_END" PUT_BAD
  local secs=$1 c0=$2 c1=$3 left=$4 put_bad=$5
  local logs ok fail kinds pass=1 fd_line rss_line
  logs=$(cat "$TMPD"/soak-vm*.log "$TMPD"/soak-vm*.copies 2>/dev/null)
  ok=$(echo "$logs" | grep -c '^ok \|^putdone' || true)
  fail=$(echo "$logs" | grep -c '^FAIL' || true)
  kinds=$(echo "$logs" | awk '{k = ($1 == "putdone") ? "put" : $2; n[k]++; if ($1 == "FAIL") f[k]++}
          END { for (k in n) printf "| %s | %d | %d |\n", k, n[k], f[k] + 0 }' | sort)
  [ "$fail" = 0 ] && [ "$put_bad" = 0 ] || pass=0
  [ "$left" = "0 0 0 0 / 0 0 0 0" ] || pass=0
  # the baseline row (drained after the warm-up) against the end row (drained after the soak):
  # descriptors equal except the engine's splice pipes (one per engine thread, made on the
  # thread's first socket -> socket: at most 2 descriptors per thread), RSS within
  # SOAK_RSS_SLACK_KIB
  local pipes0 pipes1 threads
  pipes0=$(awk -v p="$EPID" '$2 == p && $3 == "pipe" {print $1}' "$TMPD/soak-fds.baseline"); pipes0=${pipes0:-0}
  pipes1=$(awk -v p="$EPID" '$2 == p && $3 == "pipe" {print $1}' "$TMPD/soak-fds.end"); pipes1=${pipes1:-0}
  threads=$("$B/vpipectl" --control /run/vpipe-lab/vpiped.ctl stats --json | "$SOAK_PY" -c '
import json, sys
print(sum(v.get("threads", 0) for v in json.load(sys.stdin).get("vms", [])))')
  [ "$pipes1" -le $((2 * threads)) ] || pass=0
  # the shared part's bound: one ring page and the area per channel (the agent maps its own,
  # the engine every VM's)
  local area_kib=$(( ($(sed -n 's/^area_pages = \([0-9]*\)/\1/p' /run/vpipe-lab/vm1/agent.toml 2>/dev/null || true) + 0) * 4 ))
  [ "$area_kib" -gt 0 ] || area_kib=$((4096 * 4))
  area_kib=$((area_kib + 4))
  local cmp
  cmp=$(awk -F, -v slack="$SOAK_RSS_SLACK_KIB" -v dp="$((pipes1 - pipes0))" -v area="$area_kib" -v vms="$SOAK_VMS" '
    NR == 1 { nf = NF; for (i = 4; i <= NF; i++) if ($i ~ /_(anon_kib|shmem_kib|fds)$/) col[i] = $i; next }
    $2 == "baseline" { split($0, b, ",") } $2 == "end" { split($0, e, ",") }
    END { fd = ""; rss = ""; shm = ""; fbad = 0; rbad = 0
          for (i = 4; i <= nf; i++) {
            if (!(i in col)) continue
            d = e[i] - b[i]; if (col[i] == "engine_fds") d -= dp
            if (col[i] ~ /fds$/) { fd = fd sprintf("%s %d -> %d; ", col[i], b[i], e[i]); if (d != 0) fbad = 1 }
            else if (col[i] ~ /anon_kib$/) { rss = rss sprintf("%s %d -> %d (%+d); ", col[i], b[i], e[i], d); if (d > slack) rbad = 1 }
            else { bound = (col[i] ~ /^engine/) ? vms * area : area
                   shm = shm sprintf("%s %d -> %d (bound %d); ", col[i], b[i], e[i], bound); if (e[i] > bound) rbad = 1 } }
          printf "%s%s\n%s%s\n%s\n", fd, (fbad ? "GROWS" : "equal"), rss shm, (rbad ? "GROWS" : "flat"), "" }' "$SOAK_CSV")
  fd_line=$(echo "$cmp" | sed -n 1p); rss_line=$(echo "$cmp" | sed -n 2p)
  case "$fd_line" in *GROWS) pass=0 ;; esac
  case "$rss_line" in *GROWS) pass=0 ;; esac
  local verdict="PASSED"; [ $pass = 1 ] || verdict="FAILED"
  read -r r0 f0 j0 o0 b0 <<< "$c0"; read -r r1 f1 j1 o1 b1 <<< "$c1"
  {
    echo "# Overload soak (bench/run.sh soak): $verdict"
    echo
    echo "$(date -u +%F), $(machine). $SOAK_VMS lab VMs, ${secs} s of mixed operations, unlimited link;"
    echo "per VM 5 long-running loops, a file -> file loop and bursts of $SOAK_BURST concurrent small GETs,"
    echo "against $threads engine threads in all (see the head of bench/soak.sh). Samples every ${SOAK_SAMPLE} s"
    echo "in soak.csv (nft elements only when drained: '-' under load)."
    echo
    echo "| operations (client and VM side) | done | failed |"
    echo "|---|---|---|"
    echo "$kinds"
    echo
    echo "- operations checked: $ok passed, $fail failed; last stored PUT wrong on $put_bad VM(s)"
    echo "- engine: $((r1 - r0)) ring requests, $((o1 - o0)) operations ($SOAK_OPS_BY_TYPE), $(((b1 - b0) >> 20)) MiB moved,"
    echo "  $((f1 - f0)) failed, $((j1 - j0)) rejected (failed/rejected requests are answered errors the"
    echo "  guest then completes on its classic path, counted; the operations above must still pass)"
    echo "- left in dom0 (active, shadow sockets, steered flows, nft elements): $left"
    echo "- left in dom0 is given after the warm-up / after the soak; the baseline is the drained"
    echo "  state after the warm-up (pools, lazily opened images at their working size), the end the"
    echo "  drained state after the soak"
    echo "- descriptors, baseline -> end: ${fd_line} (the engine's splice pipes, one per engine"
    echo "  thread at most, are not counted: $pipes0 -> $pipes1 pipe descriptors, bound $((2 * threads)))"
    echo "- RSS in KiB, baseline -> end: anonymous (heap, stacks, pools: at most +${SOAK_RSS_SLACK_KIB}),"
    echo "  then shared (the channels' ring + area memfd, touched page by page up to its size: at most"
    echo "  the bound): ${rss_line}"
    echo
    if [ -s "$TMPD/soak-fds.baseline" ] && ! cmp -s "$TMPD/soak-fds.baseline" "$TMPD/soak-fds.end"; then
      echo "Descriptors that differ (count pid target; < baseline, > end):"
      echo
      echo '```'
      diff "$TMPD/soak-fds.baseline" "$TMPD/soak-fds.end" | grep '^[<>]' | head -20
      echo '```'
      echo
    fi
    echo "First failures (if any):"
    echo
    echo '```'
    echo "$logs" | grep '^FAIL' | head -10
    echo '```'
  } > "$SOAK_MD"
  cat "$SOAK_MD" >&2
  [ $pass = 1 ]
}
