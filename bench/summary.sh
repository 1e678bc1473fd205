# Aggregation, plots and SUMMARY.md of bench/run.sh (sourced; uses $R, $TMPD, machine(),
# START_LOAD, ELAPSED, QUICK). Medians of throughput, means of CPU per GiB; rows with ok=0
# (a failed transfer) are left out and counted.

# fig4.median: link,neighbours,op,path,mib_s(median),guest_s_per_gib,dom0_s_per_gib,engine_s_per_gib,n,model
# (fig4.csv rows without the model column, of runs before it existed, are the shares model)
aggregate_fig4() {
  [ -s "$FIG4_CSV" ] || return 0
  awk -F, 'NR > 1 && $11 == 1 {
      md = (NF >= 12 && $12 != "") ? $12 : "shares"
      k = $1 "," $2 "," $4 "," $5 SUBSEP md; n[k]++; v[k, n[k]] = $6 / 1048576 / $7
      gib[k] += $6 / 1073741824; g[k] += $8; d[k] += $9; e[k] += $10
      if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
    END { for (i = 1; i <= m; i++) { k = order[i]; c = n[k]
            for (a = 2; a <= c; a++) { x = v[k, a]; b = a - 1; while (b >= 1 && v[k, b] > x) { v[k, b + 1] = v[k, b]; b-- } v[k, b + 1] = x }
            med = (c % 2) ? v[k, (c + 1) / 2] : (v[k, c / 2] + v[k, c / 2 + 1]) / 2
            split(k, kk, SUBSEP)
            printf "%s,%.1f,%.3f,%.3f,%.3f,%d,%s\n", kk[1], med, g[k] / gib[k], d[k] / gib[k], e[k] / gib[k], c, kk[2] } }' \
    "$FIG4_CSV" > "$R/fig4.median"
}

# value from fig4.median: LINK K OP PATH FIELD(5=mib_s 6=guest 7=dom0 8=engine) [MODEL (shares)]
f4() { awk -F, -v l="$1" -v k="$2" -v o="$3" -v p="$4" -v f="$5" -v m="${6:-shares}" '$1 == l && $2 == k && $3 == o && $4 == p && $10 == m {print $f}' "$R/fig4.median"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else printf "-" }'; }

classic_paths() {
  case $1 in
    file_to_socket) echo "sendfile read+write" ;;
    socket_to_file) echo "read+write+fsync" ;;   # equal durability; read+write (no fsync) is shown too
    socket_to_socket) echo "splice read+write" ;;
    file_to_file) echo "cp+sync" ;;
  esac
}
all_paths() {
  case $1 in
    file_to_socket) echo "vpipe sendfile read+write native-dom0" ;;
    socket_to_file) echo "vpipe read+write+fsync read+write" ;;
    socket_to_socket) echo "vpipe splice read+write native-dom0" ;;
    file_to_file) echo "vpipe cp+sync" ;;
  esac
}
OPS="file_to_socket socket_to_file socket_to_socket file_to_file"

best_classic() {  # LINK K OP [MODEL] -> "path mib"
  local p v best="" bv=0
  for p in $(classic_paths "$3"); do
    v=$(f4 "$1" "$2" "$3" "$p" 5 "${4:-shares}")
    [ -n "$v" ] && awk -v a="$v" -v b="$bv" 'BEGIN { exit !(a > b) }' && { best=$p; bv=$v; }
  done
  echo "$best $bv"
}

plot_fig4() {
  local link=$1 out=$2 title=$3 op p i=0
  [ -s "$R/fig4.median" ] || return 0
  grep -q "^$link," "$R/fig4.median" || return 0
  for op in $OPS; do
    for p in $(all_paths $op); do
      awk -F, -v l="$link" -v o="$op" -v q="$p" '$1 == l && $3 == o && $4 == q && $10 == "shares" {print $2, $5}' "$R/fig4.median" | sort -n > "$TMPD/f4.$op.$p.dat"
    done
  done
  {
    echo "set terminal pngcairo size 1200,900"
    echo "set output '$out'"
    echo "set multiplot layout 2,2 title '$title'"
    echo "set xlabel 'busy neighbour VMs on the guest core'; set ylabel 'MiB/s (median)'; set xtics 1; set yrange [0:*]; set key top right font ',9'"
    for op in $OPS; do
      echo "set title '${op//_/ }'"
      local cmd="plot" sep=""
      for p in $(all_paths $op); do
        cmd+="$sep '$TMPD/f4.$op.$p.dat' using 1:2 with linespoints lw 2 title '$p'"
        sep=","
      done
      echo "$cmd"
    done
    echo "unset multiplot"
  } | gnuplot
}

plot_fig6() {
  [ -s "$R/fig4.median" ] || return 0
  local op p
  : > "$TMPD/f6.dat"
  for op in $OPS; do
    for p in $(all_paths $op); do
      [ "$p" = native-dom0 ] && continue
      local g d
      g=$(f4 0 0 "$op" "$p" 6); d=$(f4 0 0 "$op" "$p" 7)
      [ -n "$g" ] && echo "\"${op//_to_/->}\\n$p\" $g $d" >> "$TMPD/f6.dat"
    done
  done
  gnuplot <<GP
set terminal pngcairo size 1300,550
set output "$R/fig6_cpu.png"
set title "CPU-seconds per GiB moved (unlimited link, no neighbours): guest (VM cgroup) and dom0 (dom0 cgroup)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel "CPU s / GiB"
set xtics font ",8"
set yrange [0:*]
plot "$TMPD/f6.dat" using 2:xtic(1) title "guest", "" using 3 title "dom0"
GP
}

plot_simple() {  # CSV OUT TITLE XLABEL LOGX PATHS...: MiB/s (median per x) against column 1
  local csv=$1 out=$2 title=$3 xl=$4 logx=$5 p
  shift 5
  [ -s "$csv" ] || return 0
  local cmd="plot" sep=""
  for p in "$@"; do
    awk -F, -v q="$p" 'NR > 1 && $2 == q && $8 == 1 { print $1, $3 / 1048576 / $4 }' "$csv" | sort -n -k1,1 -k2,2g \
      | awk '{ n[$1]++; v[$1, n[$1]] = $2; if (!($1 in s)) { s[$1] = 1; o[++m] = $1 } }
             END { for (i = 1; i <= m; i++) { k = o[i]; print k, v[k, int((n[k] + 1) / 2)] } }' > "$TMPD/s.$p.dat"
    cmd+="$sep '$TMPD/s.$p.dat' using 1:2 with linespoints lw 2 title '$p'"
    sep=","
  done
  gnuplot <<GP
set terminal pngcairo size 900,520
set output "$out"
set title "$title"
set xlabel "$xl"
set ylabel "MiB/s"
set yrange [0:*]
$( [ "$logx" = 1 ] && echo "set logscale x 2" || true)
$( [ "$logx" = 1 ] && [ "$xl" = "bytes per operation" ] && echo "set format x \"%.0b %BB\"" || true)
set key top left
$cmd
GP
}

plot_scale() {
  [ -s "$SCALE_CSV" ] || return 0
  local c cmd="plot" sep=""
  for c in $(awk -F, 'NR > 1 {print $2}' "$SCALE_CSV" | sort -un); do
    for p in vpipe sendfile; do
      awk -F, -v c="$c" -v q="$p" 'NR > 1 && $2 == c && $3 == q && $9 == 1 { print $1, $4 / 1048576 / $5 }' "$SCALE_CSV" > "$TMPD/sc.$c.$p.dat"
      cmd+="$sep '$TMPD/sc.$c.$p.dat' using 1:2 with linespoints lw 2 $([ $p = sendfile ] && echo "dt 2" || true) title '$p, $c op(s)/VM'"
      sep=","
    done
  done
  gnuplot <<GP
set terminal pngcairo size 900,520
set output "$R/scale.png"
set title "Scale: aggregate file->socket throughput, N VMs x C concurrent ranged GETs (256 MiB per VM)"
set xlabel "VMs"
set ylabel "aggregate MiB/s"
set logscale x 2
set yrange [0:*]
set key outside right font ",9"
$cmd
GP
}

plots() {
  aggregate_fig4
  command -v gnuplot >/dev/null || return 0
  plot_fig4 0 "$R/fig4_unlimited.png" "Fig 4: ${FIG4_MIB} MiB per transfer, unlimited link (lab, shares neighbour model)"
  plot_fig4 1000 "$R/fig4_1gbit.png" "Fig 4: ${FIG4_MIB} MiB per transfer, link limited to 1 Gbit/s (lab)"
  plot_fig6
  plot_simple "$SIZES_CSV" "$R/fig5_sizes.png" "Fig 5: file->socket, 2 busy neighbours, unlimited link" "file size (MiB)" 1 vpipe sendfile read+write
  # op-size CSV: column 3 is the op count, not bytes: convert on the fly
  if [ -s "$OPS_CSV" ]; then
    awk -F, 'NR == 1 {print; next} {printf "%s,%s,%d,%s,%s,%s,%s,%s\n", $1, $2, $1 * $3, $4, $5, $6, $7, $8}' "$OPS_CSV" > "$TMPD/ops_bytes.csv"
    plot_simple "$TMPD/ops_bytes.csv" "$R/opsize.png" "Operation size sweep: repeated ranged GETs on one keep-alive connection (cold cache)" "bytes per operation" 1 vpipe sendfile
  fi
  plot_scale
}

# median MiB/s of PATH at X in a sweep CSV (col1 = x, col2 = path, col3 bytes, col4 seconds)
sweep_mib() {
  awk -F, -v x="$2" -v q="$3" -v ops="${4:-0}" 'NR > 1 && $1 == x && $2 == q && $8 == 1 { b = ops ? $1 * $3 : $3; print b / 1048576 / $4 }' "$1" \
    | sort -g | awk '{ v[++n] = $1 } END { if (n) printf "%.1f", v[int((n + 1) / 2)] }'
}

summary() {
  local S=$R/SUMMARY.md
  {
    echo "# Benchmark results"
    echo
    local info el ld qk dt
    info=$(cat "$R/run_info.txt" 2>/dev/null || echo "${ELAPSED:-?}|$START_LOAD|$QUICK|$(date -u +%Y-%m-%dT%H:%MZ)")
    IFS='|' read -r el ld qk dt <<< "$info"
    QUICK=$qk
    echo "Regenerate with \`bench/run.sh\` (root; \`--quick\` for a smoke run). Machine: $(machine)."
    echo "Last full run: $dt, took $el s$([ "$qk" = 1 ] && echo ", **--quick run**" || true); load average at its start: $ld (the host"
    echo "is shared with other builds and QEMU runs, so absolute numbers are noisy: compare the ratios,"
    echo "each taken within one lab with the paths run back to back). This file written $(date -u +%Y-%m-%dT%H:%MZ)."
    if [ -s "$R/runs.txt" ]; then
      echo
      echo "Parts re-run on their own since (\`bench/run.sh PART\`; their tables are from that run):"
      local part pdt pel pld pqk
      while IFS='|' read -r part pdt pel pld pqk; do
        [ "$part" = all ] && continue
        echo "- \`$part\`: $pdt, $pel s, load $pld$([ "$pqk" = 1 ] && echo ", --quick" || true)"
      done < "$R/runs.txt"
    fi
    echo
    echo "## What the lab models and what it does not"
    echo
    echo "- A VM is a network namespace + a cgroup (vpipe-lab) on one kernel; its disk is an ext4 image on a"
    echo "  loop device (direct I/O), its NIC a veth on dom0's bridge; the client is another namespace behind"
    echo "  dom0's \"physical\" port (tbf-shaped when the link is limited). The guest and its busy neighbours"
    echo "  share CPU 0; dom0 (vpiped) has CPU 1."
    echo "- There is **no hypervisor**: device-virtualization cost (grant copies, event channels,"
    echo "  netfront/blkfront, VM exits) is absent, so the guest's classic paths are cheaper here than on Xen,"
    echo "  which understates what vPipe saves."
    echo "- VM scheduling delay is modelled by busy-looping neighbour cgroups sharing the guest's core, in one"
    echo "  of two neighbour models (\`vpipe-lab up --neighbour-model\`, the **model** column of the Fig 4 tables):"
    echo "  - **shares**: the cgroup scheduler gives the VM and each neighbour an equal share. The guest's kernel"
    echo "    work that runs in kernel threads (loop device workers, writeback, softirq processed on the other"
    echo "    core) is **not** charged to or slowed by the VM's cgroup, so neighbours hurt the classic paths less"
    echo "    than a real VMM would."
    echo "  - **hypervisor**: Xen's credit scheduler with K busy neighbour vCPUs: the VM's cgroup may run one"
    echo "    30 ms slice per (K+1) x 30 ms (cpu.max; no cap with K = 0), and the receive processing of the VM's"
    echo "    traffic is steered onto the guest core (RPS on its eth0; what it sends is bridged on dom0's core,"
    echo "    netback's side). Loop-device workers and writeback still escape (kworkers no cgroup caps), and"
    echo "    softirq time is paid by whatever task it interrupts (docs/operations.md, \"Busy neighbours\")."
    echo "    Run on the unlimited link only."
    echo "- Guest CPU = the VMs' cgroup cpuacct (the application, the agent and syscalls they make); dom0 CPU ="
    echo "  dom0's cgroup (vpiped and, for the ceiling rows, the native program); engine = vpiped's"
    echo "  /proc/PID/stat. All per GiB moved."
    echo "- The client namespace is not pinned: it shares the host's two cores with everything else, so busy"
    echo "  neighbours slow even the native dom0 paths (the native column); hence the engine / native ratio."
    echo "- With \`--link-mbit\` the lab sets the engine's credit rate for socket operations to 90 % of the link"
    echo "  (fairness configuration, docs/operations.md), so on the 1 Gbit/s link vPipe's socket paths are"
    echo "  capped a little below what the classic paths may use; file → file is credited at the disk's rate."
    echo "- The engine reads the images for file → socket through dom0's page cache (\`cache = \"host\"\`,"
    echo "  coherent because the images are on loop devices; docs/protocol.md §6); one unmeasured vPipe GET"
    echo "  warms it before each Fig 4 condition, as the guest's cache is warm from copying the file in."
    if [ "$QUICK" = 1 ]; then
      echo "- **Quick run**: 0 and 2 neighbours only, one repetition, fewer sizes."
    else
      echo "- Repetitions: ${REPS:-2} per path with the unlimited link, ${REPS_LINK:-1} with the 1 Gbit/s link (link-bound, less"
      echo "  noisy; fewer repetitions to fit the 30-minute budget). Medians are reported."
    fi
    if [ -s "$R/fig4.median" ]; then
      echo
      echo "## Fig 4: ${FIG4_MIB} MiB per transfer, vPipe against the classic paths (fig4.csv, fig4_*.png)"
      # real Xen first (bench/xen.sh: XEN.md, xen.csv), then the lab's models of it
      if [ -f "$R/XEN.md" ] && grep -q '^## Targets' "$R/XEN.md"; then
        echo
        echo "### Real Xen (Xen 4.17 under QEMU TCG; [XEN.md](XEN.md), \`bench/run.sh xen\`)"
        echo
        echo "The VM under test and K busy neighbour domUs share one physical CPU, dom0 has the other;"
        echo "every ratio below is taken within one run (the full tables, the native dom0 control and what"
        echo "TCG distorts are in XEN.md; the plot is [xen_fig4.png](xen_fig4.png)). Columns SCHED are neighbours"
        echo "that loop without sleeping; SCHED/duty:PCT:MS lookbusy-like ones (PCT % busy in every MS ms, as"
        echo "the paper's). The lab's models follow."
        echo
        sed -n '/^## Targets/,/^Rows with ok=0/p' "$R/XEN.md" | sed '1d;$d'
      fi
      local link op k p v bc
      for link in 0 1000; do
        grep -q "^$link," "$R/fig4.median" || continue
        echo
        [ $link = 0 ] && echo "### Unlimited link" || echo "### Link limited to 1 Gbit/s"
        echo
        echo "MiB/s (median). Ratio = vPipe / best classic path of equal durability; engine / native = vPipe / the"
        echo "same data path done natively in dom0 (sendfile from the disk image; splice between dom0 sockets)."
        echo
        echo "Model (see \"What the lab models\"): shares = neighbours take equal cgroup shares, the guest's"
        echo "kernel work escapes them; hypervisor = Xen credit slices (cpu.max 30 ms per (K+1) x 30 ms) and the"
        echo "guest's receive processing on its own core. Rows of one model and K come from one lab; the runs"
        echo "of each part are listed at the top."
        echo
        echo "| operation | neighbours | model | vPipe | classic paths | vPipe / best classic | engine / native dom0 |"
        echo "|---|---|---|---|---|---|---|"
        for op in $OPS; do
          for k in $(awk -F, -v l=$link -v o=$op '$1 == l && $3 == o {print $2}' "$R/fig4.median" | sort -un); do
            local md
            for md in shares hypervisor; do
              v=$(f4 $link $k $op vpipe 5 $md)
              local cl="" sep="" any=""
              for p in $(all_paths $op); do
                [ -n "$(f4 $link $k $op "$p" 5 $md)" ] && any=1
                [ "$p" = vpipe ] || [ "$p" = native-dom0 ] && continue
                cl+="$sep$p $(f4 $link $k $op "$p" 5 $md)"; sep=", "
              done
              [ -n "$any" ] || continue
              bc=$(best_classic $link $k $op $md)
              local nat
              nat=$(f4 $link $k $op native-dom0 5 $md)
              echo "| ${op//_to_/ → } | $k | $md | $v | $cl | **$(ratio "$v" "${bc#* }")** (vs ${bc% *}) | $( [ -n "$nat" ] && echo "$(ratio "$v" "$nat") (native $nat)" || echo "-") |"
            done
          done
        done
      done
      echo
      echo "## Fig 6: CPU-seconds per GiB (means; unlimited link) (fig6_cpu.png)"
      echo
      echo "| operation | path | guest CPU s/GiB, 0 nb | dom0 CPU s/GiB, 0 nb | engine s/GiB, 0 nb | guest CPU s/GiB, 3 nb | guest / vPipe's guest (0 nb) |"
      echo "|---|---|---|---|---|---|---|"
      for op in $OPS; do
        local gv
        gv=$(f4 0 0 $op vpipe 6)
        for p in $(all_paths $op); do
          local g d e g3
          g=$(f4 0 0 $op "$p" 6); d=$(f4 0 0 $op "$p" 7); e=$(f4 0 0 $op "$p" 8); g3=$(f4 0 3 $op "$p" 6)
          [ -n "$g" ] || continue
          echo "| ${op//_to_/ → } | $p | $g | $d | $e | ${g3:--} | $(ratio "$g" "$gv") |"
        done
      done
    fi
    inplace_summary
    if [ -s "$SIZES_CSV" ] && [ "$(wc -l < "$SIZES_CSV")" -gt 1 ]; then
      echo
      echo "## Fig 5: file → socket against file size, 2 busy neighbours, unlimited link (fig5_sizes.csv/png)"
      echo
      echo "| MiB | vPipe MiB/s | sendfile | read+write | vPipe / best classic |"
      echo "|---|---|---|---|---|"
      local s
      for s in $(awk -F, 'NR > 1 {print $1}' "$SIZES_CSV" | sort -un); do
        local a b c
        a=$(sweep_mib "$SIZES_CSV" "$s" vpipe); b=$(sweep_mib "$SIZES_CSV" "$s" sendfile); c=$(sweep_mib "$SIZES_CSV" "$s" read+write)
        echo "| $s | $a | $b | $c | $(ratio "$a" "$(awk -v x="$b" -v y="$c" 'BEGIN { print (x > y ? x : y) }')") |"
      done
    fi
    if [ -s "$OPS_CSV" ] && [ "$(wc -l < "$OPS_CSV")" -gt 1 ]; then
      echo
      echo "## Operation size: repeated ranged GETs on one keep-alive connection, cold cache (opsize.csv/png)"
      echo
      echo "| bytes per op | ops | vPipe MiB/s | sendfile MiB/s | vPipe / sendfile | vPipe ms/op | sendfile ms/op |"
      echo "|---|---|---|---|---|---|---|"
      local s be=""
      for s in $(awk -F, 'NR > 1 {print $1}' "$OPS_CSV" | sort -un); do
        local a b n ma mb
        a=$(sweep_mib "$OPS_CSV" "$s" vpipe 1); b=$(sweep_mib "$OPS_CSV" "$s" sendfile 1)
        n=$(awk -F, -v x="$s" 'NR > 1 && $1 == x {print $3; exit}' "$OPS_CSV")
        ma=$(awk -F, -v x="$s" 'NR > 1 && $1 == x && $2 == "vpipe" {printf "%.2f", $4 / $3 * 1000; exit}' "$OPS_CSV")
        mb=$(awk -F, -v x="$s" 'NR > 1 && $1 == x && $2 == "sendfile" {printf "%.2f", $4 / $3 * 1000; exit}' "$OPS_CSV")
        echo "| $s | $n | $a | $b | $(ratio "$a" "$b") | $ma | $mb |"
        if awk -v a="$a" -v b="$b" 'BEGIN { exit !(a != "" && b != "" && a >= b) }'; then [ -z "$be" ] && be=$s; else be=""; fi
      done
      echo
      if [ -n "$be" ]; then
        echo "**Break-even operation size: $be bytes** (from there up to the largest size measured, vPipe ≥ sendfile)."
      else
        echo "**Break-even operation size: none in this range** (vPipe < sendfile at the largest size measured)."
      fi
    fi
    if [ -s "$SCALE_CSV" ] && [ "$(wc -l < "$SCALE_CSV")" -gt 1 ]; then
      echo
      echo "## Scale: N VMs x C concurrent file → socket GETs per VM (scale.csv, scale.png)"
      echo
      echo "Each VM serves one 256 MiB file, fetched as C ranged GETs at once (all VMs at once); the engine"
      echo "runs 4 operations per VM in parallel (threads = 4), more queue. RSS = vpiped's peak VmRSS sampled"
      echo "every 0.1 s during the point. Grid trimmed to C = 1, 4, 16 (not every value 1..16) for time."
      echo
      echo "| VMs | ops/VM | vPipe MiB/s | sendfile MiB/s | vPipe / sendfile | guest CPU s/GiB vPipe | sendfile | engine RSS peak MiB |"
      echo "|---|---|---|---|---|---|---|---|"
      awk -F, 'NR > 1 && $9 == 1 { k = $1 "," $2; m[k, $3] = $4 / 1048576 / $5; g[k, $3] = $6 / ($4 / 1073741824); if ($3 == "vpipe") r[k] = $10; if (!(k in s)) { s[k] = 1; o[++n] = k } }
               END { for (i = 1; i <= n; i++) { k = o[i]; split(k, a, ","); rt = m[k, "sendfile"] > 0 ? sprintf("%.2f", m[k, "vpipe"] / m[k, "sendfile"]) : "-"
                     printf "| %s | %s | %.1f | %.1f | %s | %.3f | %.3f | %.1f |\n", a[1], a[2], m[k, "vpipe"], m[k, "sendfile"], rt, g[k, "vpipe"], g[k, "sendfile"], r[k] / 1024 } }' "$SCALE_CSV"
    fi
    [ -f bench/why.md ] && { echo; cat bench/why.md; }
    if [ -d "$PROF" ]; then
      echo
      echo "### Profile evidence (profile/, regenerated by every run)"
      local f
      for f in ss_socket_to_file_vpipe ss_socket_to_socket_vpipe ss_socket_to_file_rw; do
        [ -s "$PROF/$f.txt" ] || continue
        local ssl
        ssl=$(awk '/^###/ { ns = $2 } /skmem|rwnd_limited/ { line = $0; out = ns ":"; n = split(line, w, " ")
               for (i = 1; i <= n; i++) if (w[i] ~ /^(skmem|mss|rcv_space|rcv_ssthresh|rwnd_limited|busy|snd_wnd|wscale)/) out = out " " w[i]
               if (length(out) > length(ns) + 1) print out }' "$PROF/$f.txt" | head -8)
        [ -n "$ssl" ] || continue   # (the transfer ended before the first sample)
        echo
        echo "\`$f.txt\` (socket memory while the transfer runs; dom0's shadow socket vs the client):"
        echo
        echo '```'
        echo "$ssl"
        echo '```'
      done
      for f in perf_engine_socket_to_file perf_engine_socket_to_socket perf_engine_file_to_socket perf_native_file_to_socket; do
        [ -s "$PROF/$f.txt" ] || continue
        echo
        echo "\`$f.txt\` (perf record -g, 1-3 s during the transfer, of vpiped or for perf_native of the native dom0 program; inclusive share of samples, selected symbols):"
        echo
        echo '```'
        grep -E 'recv|send|poll|nanosleep|io_submit|io_getevents|pwrite|tcp_|sock_|copy|futex|memcpy|write|splice|dio|filemap|aio|file_to_socket|read' "$PROF/$f.txt" | head -16
        echo '```'
      done
      for f in strace_engine_socket_to_file strace_engine_4k_ops strace_agent_4k_ops; do
        [ -s "$PROF/$f.txt" ] || continue
        echo
        echo "\`$f.txt\` (strace -c -f -w: wall-clock seconds per syscall, top 6):"
        echo
        echo '```'
        awk '/^ *% time/ || /^-----/ { print; next } NF >= 5 && $1 ~ /^[0-9.]+$/ { if (++n <= 6) print } /total/ { print } /ops under strace|schedstat/ { print }' "$PROF/$f.txt"
        echo '```'
      done
    fi
    if [ -s "$PROF/agent_ack_waits.txt" ]; then
      echo
      echo "\`agent_ack_waits.txt\` (from \`strace_agent_4k_trace.txt\`: the agent's wait for the peer's ACK of what the"
      echo "application sent before the hand-over, per 4 KiB operation):"
      echo
      echo '```'
      tail -6 "$PROF/agent_ack_waits.txt"
      echo '```'
    fi
    if [ -s "$R/fairness.csv" ]; then
      echo
      echo "## Sharing dom0 (Fig 7): weights 1:1:2, client-side shares (fairness.csv, fairness.png)"
      echo
      echo "| seconds | vm1 MiB/s | vm2 MiB/s | vm3 MiB/s | phase |"
      echo "|---|---|---|---|---|"
      awk -F, 'NR > 1 { k = int($1 - 0.001); n[k]++; a[k] += $2; b[k] += $3; c[k] += $4; p[k] = $8 }
               END { for (k = 0; k in n; k++) printf "| %d-%d | %.1f | %.1f | %.1f | %s |\n", k, k + 1, a[k] / n[k], b[k] / n[k], c[k] / n[k], p[k] }' "$R/fairness.csv"
    fi
    if [ -s "$R/APPS.md" ]; then
      echo
      echo "## Real applications (APPS.md, apps.csv)"
      echo
      echo "lighttpd stock vs on vPipe (wrk, and small-request p50/p99 under large downloads) and Pound stock vs"
      echo "POUND_VPIPE=1: [APPS.md](APPS.md) (\`bench/run.sh apps\`)."
    fi
    if [ -s "$R/micro.csv" ]; then
      echo
      echo "## Micro-benchmarks (micro.csv)"
      echo
      echo "| benchmark | real time | unit |"
      echo "|---|---|---|"
      awk -F, 'NR > 1 { gsub(/"/, "", $1); printf "| %s | %.1f | %s |\n", $1, $3, $5 }' "$R/micro.csv"
      if head -1 "$R/micro.csv" | grep -q p50_us; then
        echo
        echo "Per operation (bench_steering, bench_handover: each operation timed alone, microseconds;"
        echo "mean = real time above):"
        echo
        echo "| mechanism | p50 | p99 | mean |"
        echo "|---|---|---|---|"
        awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) { gsub(/"/, "", $i); c[$i] = i }; next }
                 $c["p50_us"] != "" {
                   gsub(/"/, "", $1); n = $1; sub(/\/manual_time$/, "", n)
                   m = n; a = ""; if (match(n, /\/[0-9]+$/)) { m = substr(n, 1, RSTART - 1); a = ", " substr(n, RSTART + 1) " other flows steered" }
                   d["BM_SteeringAdd"] = "steering: add one flow element"
                   d["BM_SteeringRemove"] = "steering: remove one flow element (2 nft transactions)"
                   d["BM_HandoverFreeze"] = "TCP_REPAIR freeze"
                   d["BM_HandoverShadowRestore"] = "shadow restore (dom0)"
                   d["BM_HandoverGiveBack"] = "give-back: freeze + silent close (dom0)"
                   d["BM_HandoverWhole"] = "whole hand-over: freeze, restore, replace + steering add/remove"
                   printf "| %s%s | %.1f | %.1f | %.1f |\n", (m in d) ? d[m] : m, a, $c["p50_us"], $c["p99_us"], $3 }' "$R/micro.csv"
      fi
    fi
  } > "$S"
}
