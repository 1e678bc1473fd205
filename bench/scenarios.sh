# Lab scenarios of bench/run.sh (sourced; uses $B, $R, $QUICK and the helpers of run.sh).
# Every scenario runs the vPipe path and the classic paths back to back in the same lab, under
# the same conditions, so that ratios are taken within one run. Rows are raw: seconds and CPU
# seconds; summary.sh turns them into MiB/s, CPU per GiB and ratios.
#
# Layout of a lab: vm1 (10.199.0.11) runs the servers; the client namespace (10.199.0.1) runs
# curl and, for socket -> socket, the backend (a vpipe-httpd --mode sendfile serving tmpfs, the
# "remote server"); dom0 (10.199.0.254) runs vpiped and, for the ceiling, the native paths.

VM1=10.199.0.11
CLIENT=10.199.0.1
DOM0=10.199.0.254
SHM=/dev/shm/vpipe-bench   # client-side data: the upload source and the backend's files
FIG4_MIB=${FIG4_MIB:-512}
FIG4_CSV=$R/fig4.csv
SIZES_CSV=$R/fig5_sizes.csv
OPS_CSV=$R/opsize.csv
SCALE_CSV=$R/scale.csv
PROF=$R/profile

PIDS=()        # background servers of the current lab, stopped by stop_servers
declare -A SERVER_PID  # name -> pid (vpipe-lab exec/client/dom0 exec in place: the server's pid)
EPID=0         # the engine's pid
FIG4_MODEL=shares  # neighbour model of the current Fig 4 lab (fig4.csv's model column)
LAB_VM_DISK=/run/vpipe-lab/vm1/disk0

lab() { "$B/vpipe-lab" "$@"; }

bench_up() {  # vpipe-lab up ARGS..., after waiting for any other lab to go away
  lab_wait_free
  lab up "$@" >/dev/null
  LAB_MINE=1
  VM_NAMES=$(lab info --json | sed -n 's/.*"name": "\(vm[0-9]*\)".*/\1/p')
  EPID=$(lab info --json | sed -n 's/.*"pid": \([0-9]*\),.*/\1/p' | awk "NR == 1")
  # the engine's pid is the first "pid" in the JSON (engine block); check it is vpiped
  if ! grep -q vpiped "/proc/$EPID/comm" 2>/dev/null; then
    EPID=$(pgrep -n -x vpiped || echo 0)
  fi
}

bench_down() {
  stop_servers
  lab down >/dev/null || lab down >/dev/null
  LAB_MINE=0
}

# start NAME WHERE(vmN|client|dom0) CMD...: a server in the background, log in $TMPD/NAME.log;
# waits until it prints "listening on".
start() {
  local name=$1 where=$2
  shift 2
  local log=$TMPD/$name.log
  # (vpipe-lab itself, not the lab function: then $! is the server, which vpipe-lab execs in place)
  if [ "$where" = client ] || [ "$where" = dom0 ]; then
    "$B/vpipe-lab" "$where" -- "$@" > "$log" 2>&1 &
  else
    "$B/vpipe-lab" exec "$where" -- "$@" > "$log" 2>&1 &
  fi
  PIDS+=($!)
  SERVER_PID[$name]=$!
  for _ in $(seq 1 100); do
    grep -q "listening on" "$log" 2>/dev/null && return 0
    kill -0 $! 2>/dev/null || { echo "bench: $name exited: $(cat "$log")" >&2; return 1; }
    sleep 0.1
  done
  echo "bench: $name did not start: $(cat "$log")" >&2
  return 1
}

stop_servers() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  SERVER_PID=()
}

engine_ticks() { awk '{print $14 + $15}' "/proc/$EPID/stat" 2>/dev/null || echo 0; }
engine_rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$EPID/status" 2>/dev/null || echo 0; }
guest_cpu_ns() {  # all VMs' cgroups (neighbours excluded)
  local n=0 vm
  for vm in $VM_NAMES; do n=$((n + $(cg_cpu_ns "$vm"))); done
  echo $n
}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# measure CSV PREFIX PATH BYTES -- CMD...: cold caches, then CMD timed with the CPU time of the
# VM's cgroup (guest), dom0's cgroup and the engine process. Appends
# PREFIX,PATH,BYTES,seconds,guest_cpu_s,dom0_cpu_s,engine_cpu_s,ok (fig4.csv: ,model too)
measure() {
  local csv=$1 prefix=$2 path=$3 bytes=$4
  shift 5
  cold
  local g0 d0 e0 t0 t1 g1 d1 e1 ok=1
  g0=$(guest_cpu_ns); d0=$(cg_cpu_ns dom0); e0=$(engine_ticks); t0=$(now)
  "$@" || ok=0
  t1=$(now); g1=$(guest_cpu_ns); d1=$(cg_cpu_ns dom0); e1=$(engine_ticks)
  [ $ok = 1 ] || echo "bench: FAILED $prefix $path: $*" >&2
  local sfx=""   # fig4.csv's last column: the lab's neighbour model
  [ "$csv" = "$FIG4_CSV" ] && sfx=",$FIG4_MODEL"
  awk -v p="$prefix" -v q="$path" -v b="$bytes" -v t0="$t0" -v t1="$t1" -v g="$((g1 - g0))" -v d="$((d1 - d0))" \
      -v e="$((e1 - e0))" -v hz="$(getconf CLK_TCK)" -v ok=$ok -v sfx="$sfx" \
      'BEGIN { printf "%s,%s,%d,%.4f,%.4f,%.4f,%.4f,%d%s\n", p, q, b, t1 - t0, g / 1e9, d / 1e9, e / hz, ok, sfx }' >> "$csv"
}

# curl helpers (in the client namespace); each checks the byte count.
get_check() {  # URL BYTES
  local n
  n=$(lab client -- curl -sf -o /dev/null -w '%{size_download}' "$1") || return 1
  [ "$n" = "$2" ] || { echo "bench: GET $1: $n bytes, expected $2" >&2; return 1; }
}
put_check() {  # URL FILE BYTES
  local code
  code=$(lab client -- curl -sf -o /dev/null -w '%{http_code}' -T "$2" "$1") || return 1
  [ "$code" = 201 ] || [ "$code" = 204 ] || { echo "bench: PUT $1: HTTP $code" >&2; return 1; }
}
put_sync() {  # URL FILE BYTES GUESTPATH: PUT, then make it durable in the guest (fsync via sync -f)
  put_check "$1" "$2" "$3" && lab exec vm1 -- sync -f "$4"
}
f2f_cp() { lab exec vm1 -- sh -c "cp $1 $2 && sync -f $2"; }
f2f_vpipe() { lab exec vm1 -- "$B/cp-vpipe" --no-fallback "$1" "$2"; }

# The servers every Fig 4 lab runs (ports: httpd 8081 rw, 8082 sendfile, 8083 vpipe; proxies
# 9001 rw, 9002 splice, 9003 vpipe; backend 8090 in the client; native dom0 7001 file->socket,
# 7002 splice proxy).
start_fig4_servers() {
  local img
  img=$(lab info --json | sed -n 's/.*"image": "\([^"]*vm1[^"]*\)".*/\1/p' | awk "NR == 1")
  start httpd-rw vm1 "$B/vpipe-httpd" --mode rw --port 8081 --root "$LAB_VM_DISK" &&
  start httpd-sendfile vm1 "$B/vpipe-httpd" --mode sendfile --port 8082 --root "$LAB_VM_DISK" &&
  start httpd-vpipe vm1 "$B/vpipe-httpd" --mode vpipe --no-fallback --port 8083 --root "$LAB_VM_DISK" &&
  start backend client "$B/vpipe-httpd" --mode sendfile --port 8090 --root "$SHM" &&
  start proxy-rw vm1 "$B/vpipe-proxy" --mode rw --listen 9001 --to "$CLIENT:8090" &&
  start proxy-splice vm1 "$B/vpipe-proxy" --mode splice --listen 9002 --to "$CLIENT:8090" &&
  start proxy-vpipe vm1 "$B/vpipe-proxy" --mode vpipe --no-fallback --listen 9003 --to "$CLIENT:8090" &&
  start native-f2s dom0 "$B/vpipe-bench-tool" serve-image --image "$img" --file "$LAB_VM_DISK/src" --port 7001 &&
  start native-splice dom0 "$B/vpipe-proxy" --mode splice --listen 7002 --to "$CLIENT:8090"
}

prepare_shm() {
  mkdir -p "$SHM"
  if [ "$(stat -c %s "$SHM/src" 2>/dev/null)" != $((FIG4_MIB << 20)) ]; then
    head -c $((FIG4_MIB << 20)) /dev/urandom > "$SHM/src"
  fi
}

# file -> file into a new file on vm1's disk, vPipe then cp + sync: measure_f2f_new CSV PREFIX REP
# (the copy is compared with its source in the first repetition)
measure_f2f_new() {
  local M=$LAB_VM_DISK bytes=$((FIG4_MIB << 20))
  rm -f "$M/dst"; sync
  measure "$1" "$2" vpipe "$bytes" -- f2f_vpipe "$M/src" "$M/dst"
  if [ "$3" = 1 ] && ! cmp -s "$M/src" "$M/dst"; then echo "bench: cp-vpipe produced a different file" >&2; fi
  rm -f "$M/dst"; sync
  measure "$1" "$2" cp+sync "$bytes" -- f2f_cp "$M/src" "$M/dst"
  rm -f "$M/dst"; sync
}

# One Fig 4 condition: all paths of all four operations, REPS times, in one lab whose K busy
# neighbours follow MODEL (vpipe-lab up --neighbour-model: shares | hypervisor).
# Appends link,neighbours,rep,op,path,bytes,seconds,guest_cpu_s,dom0_cpu_s,engine_cpu_s,ok,model
fig4_condition() {
  local link=$1 k=$2 reps=$3 extra=${4:-} model=${5:-shares}
  local bytes=$((FIG4_MIB << 20)) M=$LAB_VM_DISK
  FIG4_MODEL=$model
  bench_up --vms 1 --disks 1 --disk-mib $((FIG4_MIB * 4 + 3072)) --neighbours "$k" --link-mbit "$link" \
    --neighbour-model "$model"
  cp "$SHM/src" "$M/src"; sync
  if ! start_fig4_servers; then bench_down; return 1; fi
  # Steady state, as a server sees hot content: the guest's cache holds src (just copied), and
  # one unmeasured vPipe GET brings it into dom0's page cache (the lab's disks: cache = "host"),
  # which the native dom0 sendfile then shares. Without it the first path measured pays the cold read.
  get_check "http://$VM1:8083/src" "$bytes" || true
  local rep pfx
  for rep in $(seq 1 "$reps"); do
    pfx="$link,$k,$rep"
    # (a) file -> socket: GET from vm1's disk
    measure "$FIG4_CSV" "$pfx,file_to_socket" vpipe "$bytes" -- get_check "http://$VM1:8083/src" "$bytes"
    measure "$FIG4_CSV" "$pfx,file_to_socket" sendfile "$bytes" -- get_check "http://$VM1:8082/src" "$bytes"
    measure "$FIG4_CSV" "$pfx,file_to_socket" read+write "$bytes" -- get_check "http://$VM1:8081/src" "$bytes"
    measure "$FIG4_CSV" "$pfx,file_to_socket" native-dom0 "$bytes" -- get_check "http://$DOM0:7001/src" "$bytes"
    # (b) socket -> file: PUT to vm1's disk (a new file each time)
    rm -f "$M/put"; sync
    measure "$FIG4_CSV" "$pfx,socket_to_file" vpipe "$bytes" -- put_check "http://$VM1:8083/put" "$SHM/src" "$bytes"
    if [ "$rep" = 1 ] && ! cmp -s "$SHM/src" "$M/put"; then echo "bench: vPipe PUT stored different bytes" >&2; fi
    rm -f "$M/put"; sync
    measure "$FIG4_CSV" "$pfx,socket_to_file" read+write+fsync "$bytes" -- put_sync "http://$VM1:8081/put" "$SHM/src" "$bytes" "$M/put"
    rm -f "$M/put"; sync
    measure "$FIG4_CSV" "$pfx,socket_to_file" read+write "$bytes" -- put_check "http://$VM1:8081/put" "$SHM/src" "$bytes"
    rm -f "$M/put"; sync
    # (c) socket -> socket: GET through a proxy in vm1 from the backend on the client host
    measure "$FIG4_CSV" "$pfx,socket_to_socket" vpipe "$bytes" -- get_check "http://$VM1:9003/src" "$bytes"
    measure "$FIG4_CSV" "$pfx,socket_to_socket" splice "$bytes" -- get_check "http://$VM1:9002/src" "$bytes"
    measure "$FIG4_CSV" "$pfx,socket_to_socket" read+write "$bytes" -- get_check "http://$VM1:9001/src" "$bytes"
    measure "$FIG4_CSV" "$pfx,socket_to_socket" native-dom0 "$bytes" -- get_check "http://$DOM0:7002/src" "$bytes"
    # (d) file -> file: a new file on the same disk, made durable
    measure_f2f_new "$FIG4_CSV" "$pfx,file_to_file" "$rep"
  done
  [ -n "$extra" ] && $extra
  bench_down
}

FIG4_HEADER=link_mbit,neighbours,rep,op,path,bytes,seconds,guest_cpu_s,dom0_cpu_s,engine_cpu_s,ok,model

# FIG4_MODELS ("shares hypervisor") selects the neighbour models. shares: every link and K, with
# the extras (Fig 5 sizes, op sizes, profiles); hypervisor: the unlimited link only, every K (the
# 1 Gbit/s link is link-bound). Without shares (FIG4_MODELS=hypervisor) the other rows of fig4.csv
# and the other CSVs stay: rows of older runs without the model column are rows of the shares model.
run_fig4() {
  prepare_shm
  local models=${FIG4_MODELS:-"shares hypervisor"}
  case " $models " in
    *" shares "*)
      echo "$FIG4_HEADER" > "$FIG4_CSV"
      echo "size_mib,path,bytes,seconds,guest_cpu_s,dom0_cpu_s,engine_cpu_s,ok" > "$SIZES_CSV"
      echo "op_bytes,path,ops,seconds,guest_cpu_s,dom0_cpu_s,engine_cpu_s,ok" > "$OPS_CSV"
      rm -rf "$PROF"; mkdir -p "$PROF" ;;
    *)
      local m
      for m in $models; do
        [ "$m" = hypervisor ] || { echo "bench: FIG4_MODELS: unknown model '$m' (shares hypervisor)" >&2; return 1; }
      done
      [ -s "$FIG4_CSV" ] || echo "$FIG4_HEADER" > "$FIG4_CSV"
      awk -F, -v h="$FIG4_HEADER" -v drop=" $models " 'NR == 1 { print h; next }
          { m = (NF >= 12 && $12 != "") ? $12 : "shares"; if (index(drop, " " m " ")) next
            if (NF < 12) $0 = $0 ",shares"; print }' "$FIG4_CSV" > "$TMPD/fig4.kept"
      cp "$TMPD/fig4.kept" "$FIG4_CSV" ;;
  esac
  local ks="0 1 2 3" reps0=${REPS:-2} reps1=${REPS_LINK:-1} links=${FIG4_LINKS:-"0 1000"}
  if [ "$QUICK" = 1 ]; then ks="0 2"; reps0=1; fi
  ks=${FIG4_NEIGHBOURS:-$ks}   # (a developer's partial run: FIG4_NEIGHBOURS=0 FIG4_LINKS=0 FIG4_EXTRA=0)
  local k extra
  case " $models " in *" shares "*) ;; *) links=${links/1000/} ;; esac
  for k in $ks; do
    case " $links " in *" 0 "*) ;; *) break ;; esac
    case " $models " in
      *" shares "*)
        extra=""
        [ "$k" = 0 ] && extra="run_opsize_and_profile"
        [ "$k" = 2 ] && extra="run_sizes"
        [ "${FIG4_EXTRA:-1}" = 0 ] && extra=""
        echo "bench: Fig 4, unlimited link, $k busy neighbour(s), shares model" >&2
        fig4_condition 0 "$k" "$reps0" "$extra" shares ;;
    esac
    case " $models " in
      *" hypervisor "*)
        echo "bench: Fig 4, unlimited link, $k busy neighbour(s), hypervisor model" >&2
        fig4_condition 0 "$k" "$reps0" "" hypervisor ;;
    esac
  done
  case " $links " in *" 1000 "*) ;; *) ks="" ;; esac
  for k in $ks; do
    echo "bench: Fig 4, link 1 Gbit/s, $k busy neighbour(s), shares model" >&2
    fig4_condition 1000 "$k" "$reps1" "" shares
  done
}

# Fig 5 (in the 2-neighbour, unlimited-link lab): file -> socket of 64 MiB .. 1 GiB files.
run_sizes() {
  local M=$LAB_VM_DISK s sizes="64 128 256 512 1024"
  [ "$QUICK" = 1 ] && sizes="64 256"
  echo "bench: Fig 5, file size sweep with 2 busy neighbours" >&2
  for s in $sizes; do  # cut from the random source, repeated when the file is larger than it
    local n
    : > "$M/sz$s"
    for n in $(seq 0 "$FIG4_MIB" $((s - 1))); do cat "$M/src" >> "$M/sz$s"; done
    truncate -s $((s << 20)) "$M/sz$s"
  done
  sync
  for s in $sizes; do
    local b=$((s << 20))
    measure "$SIZES_CSV" "$s" vpipe "$b" -- get_check "http://$VM1:8083/sz$s" "$b"
    measure "$SIZES_CSV" "$s" sendfile "$b" -- get_check "http://$VM1:8082/sz$s" "$b"
    measure "$SIZES_CSV" "$s" read+write "$b" -- get_check "http://$VM1:8081/sz$s" "$b"
  done
  rm -f "$M"/sz*
}

# Operation-size sweep (in the 0-neighbour, unlimited-link lab): COUNT ranged GETs of SIZE bytes
# on one keep-alive connection, consecutive ranges of the cold 512 MiB file.
opsize_get() {  # PORT SIZE COUNT
  lab client -- "$B/vpipe-bench-tool" get --host "$VM1" --port "$1" --path /src --size "$2" --count "$3" >/dev/null
}
run_opsize() {
  local s count sizes="4096 16384 65536 262144 1048576 4194304 16777216 67108864"
  [ "$QUICK" = 1 ] && sizes="4096 262144 16777216"
  echo "bench: operation-size sweep" >&2
  for s in $sizes; do
    count=$(( (256 << 20) / s )); [ $count -gt 40 ] && count=40; [ $count -lt 4 ] && count=4
    [ $((count * s)) -gt $((FIG4_MIB << 20)) ] && count=$(( (FIG4_MIB << 20) / s ))
    measure "$OPS_CSV" "$s" vpipe "$count" -- opsize_get 8083 "$s" "$count"
    measure "$OPS_CSV" "$s" sendfile "$count" -- opsize_get 8082 "$s" "$count"
  done
}

# Evidence for where vPipe loses (profile/*.txt): socket buffers of the connection while dom0
# owns it (ss -tinm in dom0, in vm1 and on the client) for the receive paths, the engine's
# syscalls (strace -c -f -w: wall time per syscall) for a receive path and for small
# operations, and the engine's scheduler statistics.
ss_sample() {  # OUT: at 0.8, 1.6 and 2.4 s, the TCP sockets of dom0, vm1 and the client
  local i ns
  for i in 1 2 3; do
    sleep 0.8
    for ns in vpl-dom0 vpl-vm1 vpl-client; do
      echo "### $ns sample $i: ss -tinm"
      ip netns exec "$ns" ss -tinm state established 2>/dev/null
    done
  done > "$1"
}
perf_engine() {  # OUT [PID]: perf profile of vpiped (or PID) for 3 s (at most 1.5 s for file->socket,
  # which is short), starting 0.3 s from now; top symbols
  local pid=${2:-$EPID} secs=3
  case $1 in *file_to_socket*) secs=1 ;; *socket_to_socket*) secs=1.5 ;; esac
  sleep 0.3
  perf record -q -g -o "$TMPD/perf.data" -p "$pid" -- sleep $secs >/dev/null 2>&1 || return 0
  # inclusive ("children") shares: which calls the time is spent under
  perf report -i "$TMPD/perf.data" --stdio --children --sort sym -g none --percent-limit 2 2>/dev/null \
    | grep -v '^#' | grep '%' | head -40 > "$1" || true
  rm -f "$TMPD/perf.data"
}
run_profile() {
  local M=$LAB_VM_DISK bytes=$((FIG4_MIB << 20))
  echo "bench: profiles" >&2
  local sp
  rm -f "$M/put"; sync
  ss_sample "$PROF/ss_socket_to_file_vpipe.txt" & sp=$!
  put_check "http://$VM1:8083/put" "$SHM/src" "$bytes"; wait $sp || true
  rm -f "$M/put"; sync
  ss_sample "$PROF/ss_socket_to_file_rw.txt" & sp=$!
  put_check "http://$VM1:8081/put" "$SHM/src" "$bytes"; wait $sp || true
  rm -f "$M/put"; sync
  ss_sample "$PROF/ss_socket_to_socket_vpipe.txt" & sp=$!
  get_check "http://$VM1:9003/src" "$bytes"; wait $sp || true
  ss_sample "$PROF/ss_socket_to_socket_splice.txt" & sp=$!
  get_check "http://$VM1:9002/src" "$bytes"; wait $sp || true
  if command -v perf >/dev/null; then
    # where the engine's CPU goes on the two receive paths (user and kernel symbols, 3 s)
    perf_engine "$PROF/perf_engine_socket_to_file.txt" & sp=$!
    put_check "http://$VM1:8083/put" "$SHM/src" "$bytes"; wait $sp || true
    rm -f "$M/put"; sync
    # (a 512 MiB relay takes ~0.4 s: four back to back fill the sampling window)
    perf_engine "$PROF/perf_engine_socket_to_socket.txt" & sp=$!
    for _ in 1 2 3 4 5 6; do get_check "http://$VM1:9003/src" "$bytes"; done; wait $sp || true
    # the same relay natively in dom0 (splice proxy), for comparison
    perf_engine "$PROF/perf_native_socket_to_socket.txt" "$(pgrep -f 'vpipe-proxy --mode splice --listen 7002' | head -1)" & sp=$!
    for _ in 1 2 3 4 5 6; do get_check "http://$DOM0:7002/src" "$bytes"; done; wait $sp || true
    cold
    perf_engine "$PROF/perf_engine_file_to_socket.txt" & sp=$!
    get_check "http://$VM1:8083/src" "$bytes"; wait $sp || true
    # the same 512 MiB GET natively in dom0 (sendfile from the image), for comparison
    cold
    perf_engine "$PROF/perf_native_file_to_socket.txt" "$(pgrep -f 'vpipe-bench-tool serve-image' | head -1)" & sp=$!
    get_check "http://$DOM0:7001/src" "$bytes"; wait $sp || true
  fi
  if command -v strace >/dev/null; then
    strace -f -c -w -o "$PROF/strace_engine_socket_to_file.txt" -p "$EPID" 2>/dev/null & sp=$!
    sleep 0.5
    put_check "http://$VM1:8083/put" "$SHM/src" "$bytes"
    sleep 0.2; kill -INT $sp; wait $sp 2>/dev/null || true
    rm -f "$M/put"; sync
    cold
    local s0 s1
    s0=$(cat "/proc/$EPID/schedstat")
    strace -f -c -w -o "$PROF/strace_engine_4k_ops.txt" -p "$EPID" 2>/dev/null & sp=$!
    sleep 0.5
    local t0 t1
    t0=$(now); opsize_get 8083 4096 20; t1=$(now)
    sleep 0.2; kill -INT $sp; wait $sp 2>/dev/null || true
    s1=$(cat "/proc/$EPID/schedstat")
    echo "20 x 4 KiB vPipe file->socket ops under strace: $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f s", b - a}')" \
      >> "$PROF/strace_engine_4k_ops.txt"
    echo "engine schedstat (run ns, wait ns, slices) before: $s0 after: $s1" >> "$PROF/strace_engine_4k_ops.txt"
    # the same 4 KiB ops with timestamps: where one operation's time goes
    cold
    strace -f -tt -T -o "$PROF/strace_engine_4k_trace.txt" -p "$EPID" 2>/dev/null & sp=$!
    sleep 0.5
    opsize_get 8083 4096 3
    sleep 0.2; kill -INT $sp; wait $sp 2>/dev/null || true
    local apid
    apid=$(lab info --json | sed -n 's/.*"agent_pid": \([0-9]*\).*/\1/p' | awk "NR == 1")
    if [ -n "$apid" ]; then
      cold
      strace -f -c -w -o "$PROF/strace_agent_4k_ops.txt" -p "$apid" 2>/dev/null & sp=$!
      sleep 0.5
      opsize_get 8083 4096 20
      sleep 0.2; kill -INT $sp; wait $sp 2>/dev/null || true
      # timestamps: how long the agent waits for the peer's ACK of the response head
      # (wait_acked: SIOCOUTQ polls) before it may hand the connection over
      cold
      strace -f -tt -T -o "$PROF/strace_agent_4k_trace.txt" -p "$apid" 2>/dev/null & sp=$!
      sleep 0.5
      opsize_get 8083 4096 5
      sleep 0.2; kill -INT $sp; wait $sp 2>/dev/null || true
      ack_waits "$PROF/strace_agent_4k_trace.txt" > "$PROF/agent_ack_waits.txt"
    fi
  fi
  "$B/vpipectl" --control /run/vpipe-lab/vpiped.ctl stats --json > "$PROF/engine_stats.json" 2>/dev/null || true
}

# From an agent trace: each run of consecutive SIOCOUTQ polls (wait_acked) of one thread, as
# "start end ms polls", then the mean per operation.
ack_waits() {
  awk '{ split($2, t, ":"); s = t[1] * 3600 + t[2] * 60 + t[3] }
       /ioctl\([0-9]+, TIOCOUTQ|ioctl\([0-9]+, SIOCOUTQ/ { if (!(($1) in st)) { st[$1] = s; n[$1] = 0 } last[$1] = s; n[$1]++; next }
       /sched_yield|nanosleep|TCP_INFO/ { next }
       { if (($1) in st) { if (n[$1] > 3) { printf "wait_acked %s %d polls %.1f ms\n", $1, n[$1], (last[$1] - st[$1]) * 1000; tot += last[$1] - st[$1]; cnt++ } delete st[$1] } }
       END { if (cnt) printf "mean %.1f ms over %d waits (5 ops)\n", tot * 1000 / cnt, cnt }' "$1"
}

# `bench/run.sh profile`: only the evidence, in a fresh 0-neighbour, unlimited-link lab.
run_profile_only() {
  prepare_shm
  rm -rf "$PROF"; mkdir -p "$PROF"
  bench_up --vms 1 --disks 1 --disk-mib $((FIG4_MIB * 4 + 3072)) --neighbours 0 --link-mbit 0
  cp "$SHM/src" "$LAB_VM_DISK/src"; sync
  if start_fig4_servers; then run_profile || true; fi
  bench_down
}

run_opsize_and_profile() {
  run_opsize
  run_profile || true   # evidence only: a failure here must not end the run
}

# Scale: V VMs each serving one 256 MiB file; the client fetches it in C concurrent ranged GETs
# per VM (all V*C at once). Aggregate throughput, and the engine's peak RSS sampled every 0.1 s.
scale_point() {  # PORT VMS CONC
  local port=$1 v=$2 c=$3 per=$(((256 << 20) / $3)) script="" i j
  for i in $(seq 1 "$v"); do
    for j in $(seq 0 $((c - 1))); do
      script+="curl -sf -o /dev/null -r $((j * per))-$(((j + 1) * per - 1)) http://10.199.0.$((10 + i)):$port/f & "
    done
  done
  lab client -- bash -c "ok=0; $script for p in \$(jobs -p); do wait \$p || ok=1; done; exit \$ok"
}
run_scale() {
  echo "vms,conc,path,bytes,seconds,guest_cpu_s,dom0_cpu_s,engine_cpu_s,ok,engine_rss_peak_kib" > "$SCALE_CSV"
  local vms_list="1 2 4 8" conc_list="1 4 16" v c i
  [ "$QUICK" = 1 ] && { vms_list="1 4"; conc_list="1 16"; }
  prepare_shm
  # one 256 MiB file for every VM, cut from the shared random data (repeated if it is shorter)
  local n
  : > "$TMPD/f256"
  for n in $(seq 0 "$FIG4_MIB" 255); do cat "$SHM/src" >> "$TMPD/f256"; done
  truncate -s $((256 << 20)) "$TMPD/f256"
  for v in $vms_list; do
    echo "bench: scale, $v VM(s)" >&2
    bench_up --vms "$v" --disks 1 --disk-mib 1024 --neighbours 0
    for i in $(seq 1 "$v"); do
      cp "$TMPD/f256" "/run/vpipe-lab/vm$i/disk0/f"
      start "httpd-vpipe-vm$i" "vm$i" "$B/vpipe-httpd" --mode vpipe --no-fallback --port 8083 --root "/run/vpipe-lab/vm$i/disk0" || true
      start "httpd-sendfile-vm$i" "vm$i" "$B/vpipe-httpd" --mode sendfile --port 8082 --root "/run/vpipe-lab/vm$i/disk0" || true
    done
    sync
    for c in $conc_list; do
      for path in vpipe sendfile; do
        local port=8083 peak=$TMPD/rss_peak sampler
        [ $path = sendfile ] && port=8082
        engine_rss_kib > "$peak"
        ( while :; do r=$(engine_rss_kib); [ "$r" -gt "$(cat "$peak")" ] && echo "$r" > "$peak"; sleep 0.1; done ) & sampler=$!
        measure "$TMPD/scale.part" "$v,$c" "$path" $((v * (256 << 20))) -- scale_point "$port" "$v" "$c"
        kill $sampler; wait $sampler 2>/dev/null || true
        sed -i "\$s/\$/,$(cat "$peak")/" "$TMPD/scale.part"
      done
    done
    cat "$TMPD/scale.part" >> "$SCALE_CSV"; rm -f "$TMPD/scale.part"
    bench_down
  done
  rm -f "$TMPD/f256"
}
