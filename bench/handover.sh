# The hand-over benchmarks (issue 11) of bench/run.sh (sourced; uses $B, $R, $QUICK, $TMPD and
# the helpers of run.sh / scenarios.sh). One lab, one VM, no neighbours, unlimited link: what a
# small operation costs, where vPipe breaks even, and what a web server gets from it.
#
#   latency.csv   op_bytes,path,rep,cache,ops,seconds,p50_us,p99_us,max_us
#       ranged GETs of op_bytes on one keep-alive connection (consecutive ranges of a 256 MiB
#       file); `vpipe` is offload forced (--no-fallback, threshold off), `sendfile` the guest's
#       own path. cache=cold: all caches dropped before each point (the data comes from the
#       disk on both paths); cache=warm: the file is in the guest's page cache (dom0 still reads
#       the disk image). Paths and sizes are interleaved within each repetition.
#   wrk.csv       file_bytes,conns,mode,rep,requests,seconds,rps,errors
#       wrk (2 threads, WRK_SECONDS each) against vpipe-httpd in vpipe mode (libvpipe's
#       threshold on: what a deployment gets) and sendfile mode; interleaved.
#   httperf.csv   mode,file_bytes,conns,calls,replies,errors,seconds
#       httperf: HTTPERF_CONNS connections x 5 calls at a fixed rate; every error counted.
#   HANDOVER.md   the tables, with ratios and the break-even size.

LAT_CSV=$R/latency.csv
WRK_CSV=$R/wrk.csv
HTTPERF_CSV=$R/httperf.csv
WRK_SECONDS=${WRK_SECONDS:-5}
HTTPERF_CONNS=${HTTPERF_CONNS:-200}

lat_point() {  # PORT SIZE COUNT -> "ops seconds p50 p99 max" (empty on failure)
  local out
  out=$(lab client -- "$B/vpipe-bench-tool" get --host "$VM1" --port "$1" --path /src --size "$2" \
        --count "$3" --wrap $((192 << 20)) --start "${4:-0}") || return 1
  echo "$out" | sed -n 's/^ops=\([0-9]*\) bytes=[0-9]* seconds=\([0-9.]*\) p50_us=\([0-9.]*\) p99_us=\([0-9.]*\) max_us=\([0-9.]*\)$/\1 \2 \3 \4 \5/p'
}

run_latency() {
  local sizes="4096 16384 65536 262144 1048576 4194304 16777216 67108864" reps=${REPS_LAT:-3}
  [ "$QUICK" = 1 ] && { sizes="4096 262144 4194304"; reps=1; }
  local rep s port path count r cache
  for rep in $(seq 1 "$reps"); do
    for cache in cold warm; do
      for s in $sizes; do
        count=$(( (64 << 20) / s )); [ $count -gt 400 ] && count=400; [ $count -lt 6 ] && count=6
        for path in vpipe sendfile; do
          port=8084; [ $path = sendfile ] && port=8082
          if [ $cache = cold ]; then cold; else cat "$LAB_VM_DISK/src" > /dev/null; fi
          r=$(lat_point $port "$s" "$count") || { echo "bench: latency $path $s failed" >&2; continue; }
          echo "$s,$path,$rep,$cache,$(echo "$r" | tr ' ' ',')" >> "$LAT_CSV"
        done
      done
    done
  done
}

wrk_point() {  # PORT FILE CONNS -> "requests seconds rps errors"
  local out req rps err
  out=$(lab client -- wrk -t2 -c"$3" -d"${WRK_SECONDS}s" "http://$VM1:$1/$2" 2>&1) || return 1
  req=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in \([0-9.]*\)\([a-z]*\),.*/\1/p')
  rps=$(echo "$out" | sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p')
  # "Socket errors: connect A, read B, write C, timeout D" and "Non-2xx or 3xx responses: N"
  err=$(echo "$out" | awk '/Socket errors/ { gsub(",", ""); s = $4 + $6 + $8 + $10 } /Non-2xx/ { s += $NF } END { print s + 0 }')
  [ -n "$req" ] && [ -n "$rps" ] || return 1
  echo "$req $WRK_SECONDS $rps $err"
}

run_wrk() {
  local sizes="16384 262144 1048576 8388608" conns="4 64" reps=${REPS_WRK:-3}
  [ "$QUICK" = 1 ] && { sizes="16384 1048576"; conns=4; reps=1; }
  local rep s c mode port r
  for rep in $(seq 1 "$reps"); do
    for s in $sizes; do
      for c in $conns; do
        for mode in vpipe sendfile; do
          port=8083; [ $mode = sendfile ] && port=8082
          r=$(wrk_point $port "f$s" "$c") || { echo "bench: wrk $mode $s x$c failed" >&2; continue; }
          set -- $r
          echo "$s,$c,$mode,$rep,$1,$2,$3,$4" >> "$WRK_CSV"
        done
      done
    done
  done
}

run_httperf() {
  local s=${HTTPERF_BYTES:-1048576} mode port out replies errs secs
  for mode in vpipe sendfile; do
    port=8083; [ $mode = sendfile ] && port=8082
    out=$(lab client -- httperf --hog --server "$VM1" --port $port --uri "/f$s" --num-conns "$HTTPERF_CONNS" \
          --num-calls 5 --rate 100 --timeout 10 2>&1) || true
    replies=$(echo "$out" | sed -n 's/^Total: .* replies \([0-9]*\) .*/\1/p')
    errs=$(echo "$out" | sed -n 's/^Errors: total \([0-9]*\).*/\1/p')
    secs=$(echo "$out" | sed -n 's/^Total: .* test-duration \([0-9.]*\) s/\1/p')
    echo "$mode,$s,$HTTPERF_CONNS,5,${replies:-0},${errs:-missing},${secs:-0}" >> "$HTTPERF_CSV"
  done
}

run_handover() {
  echo "op_bytes,path,rep,cache,ops,seconds,p50_us,p99_us,max_us" > "$LAT_CSV"
  echo "file_bytes,conns,mode,rep,requests,seconds,rps,errors" > "$WRK_CSV"
  echo "mode,file_bytes,conns,calls,replies,errors,seconds" > "$HTTPERF_CSV"
  echo "bench: hand-over benchmarks (latency sweep, wrk, httperf)" >&2
  bench_up --vms 1 --disks 1 --disk-mib 1024
  local M=$LAB_VM_DISK s
  head -c $((256 << 20)) /dev/urandom > "$M/src"
  for s in 16384 262144 1048576 8388608; do head -c "$s" "$M/src" > "$M/f$s"; done
  sync
  if ! start httpd-vpipe vm1 "$B/vpipe-httpd" --mode vpipe --port 8083 --root "$M" ||
     ! start httpd-forced vm1 "$B/vpipe-httpd" --mode vpipe --no-fallback --port 8084 --root "$M" ||
     ! start httpd-sendfile vm1 "$B/vpipe-httpd" --mode sendfile --port 8082 --root "$M"; then
    bench_down
    return 1
  fi
  # warm: every file in the guest's page cache, one offload done
  lat_point 8084 262144 8 >/dev/null; lat_point 8082 262144 8 >/dev/null
  cat "$M/src" "$M"/f* > /dev/null
  run_latency
  local before
  before=$(wc -l < "$TMPD/httpd-vpipe.log")
  run_wrk
  # how vpipe-httpd's bodies moved during wrk (its log's vpipe= field): the evidence for the ratios
  # A body cut off because wrk closed the connection (it stops mid-response when its time is
  # up: EPIPE / ECONNRESET, all in the last milliseconds of a run) is counted apart from real
  # failures: in a run of 2026-12-06 all 33 "failed" of 64 connections were of that kind.
  tail -n +$((before + 1)) "$TMPD/httpd-vpipe.log" |
    awk 'match($0, / vpipe=[a-z]+/) { p = substr($0, RSTART + 7, RLENGTH - 7)
           if (p == "failed" && $0 ~ /vpipe=failed\((Broken pipe|Connection reset)/) p = "cut-off-by-the-client"
           print p }' | sort | uniq -c |
    awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 } END { print "" }' > "$R/wrk_paths.txt"
  run_httperf
  grep -h "failed" "$TMPD"/httpd-*.log | head -5 >&2 || true
  bench_down
  handover_summary
}

# CSV "KEYCOL..." VALCOL -> one line per key (key fields joined by commas, in first-seen order):
# "key median n min max"
csv_median() {
  awk -F, -v kc="$2" -v vc="$3" 'BEGIN { nk = split(kc, c, " ") }
    NR > 1 { k = $c[1]; for (i = 2; i <= nk; i++) k = k "," $c[i]
      n[k]++; v[k, n[k]] = $vc; if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
    END { for (i = 1; i <= m; i++) { k = order[i]; cnt = n[k]
            for (a = 2; a <= cnt; a++) { x = v[k, a]; b = a - 1; while (b >= 1 && v[k, b] + 0 > x + 0) { v[k, b + 1] = v[k, b]; b-- } v[k, b + 1] = x }
            med = (cnt % 2) ? v[k, (cnt + 1) / 2] : (v[k, cnt / 2] + v[k, cnt / 2 + 1]) / 2
            printf "%s %s %d %s %s\n", k, med, cnt, v[k, 1], v[k, cnt] } }' "$1"
}

handover_summary() {
  local out=$R/HANDOVER.md
  {
    echo "# Hand-over benchmarks"
    echo
    echo "Regenerate: \`bench/run.sh handover\` (one lab: 1 VM, no neighbours, unlimited link; $(machine))."
    echo "Medians over repetitions interleaved in one run; [min-max] across repetitions."
    echo
    if [ -s "$LAT_CSV" ]; then
      local cache
      for cache in cold warm; do
      echo "## One operation, $cache caches: ranged GETs on one keep-alive connection"
      echo
      echo "\`vpipe\` = offload forced (no threshold); \`sendfile\` = the guest's own path. Per-GET time from"
      echo "request to last body byte, p50 and p99 over the GETs of a repetition."
      echo
      echo "| op size | vpipe p50 µs | vpipe p99 µs | sendfile p50 µs | sendfile p99 µs | sendfile/vpipe (p50) |"
      echo "|---|---|---|---|---|---|"
      awk -F, -v c=$cache 'NR == 1 || $4 == c' "$LAT_CSV" > "$TMPD/lat_$cache.csv"
      csv_median "$TMPD/lat_$cache.csv" "1 2" 7 > "$TMPD/lat50"
      csv_median "$TMPD/lat_$cache.csv" "1 2" 8 > "$TMPD/lat99"
      local s be=""
      for s in $(awk -F, 'NR > 1 {print $1}' "$TMPD/lat_$cache.csv" | sort -n -u); do
        local v50 v99 s50 s99 r
        v50=$(awk -v k="$s,vpipe" '$1 == k {print $2, "[" $4 "-" $5 "]"}' "$TMPD/lat50")
        v99=$(awk -v k="$s,vpipe" '$1 == k {print $2}' "$TMPD/lat99")
        s50=$(awk -v k="$s,sendfile" '$1 == k {print $2, "[" $4 "-" $5 "]"}' "$TMPD/lat50")
        s99=$(awk -v k="$s,sendfile" '$1 == k {print $2}' "$TMPD/lat99")
        r=$(ratio "${s50%% *}" "${v50%% *}")
        [ -z "$be" ] && [ "$r" != - ] && awk -v r="$r" 'BEGIN { exit !(r >= 1) }' && be=$s
        echo "| $s | $v50 | $v99 | $s50 | $s99 | $r |"
      done
      echo
      echo "Break-even ($cache; the smallest size where vpipe's p50 is at most sendfile's): ${be:-not reached in this sweep}."
      echo
      done
    fi
    if [ -s "$WRK_CSV" ]; then
      echo "## wrk against vpipe-httpd (threshold on) and sendfile mode"
      echo
      echo "| file | conns | vpipe req/s | sendfile req/s | vpipe/sendfile | errors (vpipe/sendfile) |"
      echo "|---|---|---|---|---|---|"
      csv_median "$WRK_CSV" "1 2 3" 7 > "$TMPD/wrk"
      awk -F, 'NR > 1 { e[$1 "," $2 "," $3] += $8 }  END { for (k in e) print k, e[k] }' "$WRK_CSV" > "$TMPD/wrkerr"
      local key
      for key in $(awk -F, 'NR > 1 {print $1 "," $2}' "$WRK_CSV" | sort -t, -k1,1n -k2,2n -u); do
        local v p ev ep
        v=$(awk -v k="$key,vpipe" '$1 == k {print $2}' "$TMPD/wrk")
        p=$(awk -v k="$key,sendfile" '$1 == k {print $2}' "$TMPD/wrk")
        ev=$(awk -v k="$key,vpipe" '$1 == k {print $2}' "$TMPD/wrkerr")
        ep=$(awk -v k="$key,sendfile" '$1 == k {print $2}' "$TMPD/wrkerr")
        echo "| ${key%,*} | ${key#*,} | $v | $p | $(ratio "$v" "$p") | ${ev:-0}/${ep:-0} |"
      done
      echo
      [ -s "$R/wrk_paths.txt" ] && echo "How vpipe-httpd moved the bodies during wrk (requests per path): $(cat "$R/wrk_paths.txt")." && echo
    fi
    if [ -s "$HTTPERF_CSV" ]; then
      echo "## httperf ($HTTPERF_CONNS connections x 5 calls, rate 100/s)"
      echo
      echo "| mode | file | replies | errors | seconds |"
      echo "|---|---|---|---|---|"
      awk -F, 'NR > 1 { printf "| %s | %s | %s | %s | %s |\n", $1, $2, $5, $6, $7 }' "$HTTPERF_CSV"
      echo
    fi
  } > "$out"
}
