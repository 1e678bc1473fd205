# New files against overwrites in place: what the zero-fill of a new destination costs
# (bench/run.sh inplace; sourced; uses $B, $R, $QUICK, $TMPD and the helpers of run.sh /
# scenarios.sh).
#
# Why: file -> file and socket -> file into a NEW file must make the guest's ext4 accept blocks
# dom0 wrote behind its back. ext4 hands a new file's blocks out as *unwritten* extents, which
# read as zeros whatever is on the disk, and the only way a guest converts them without a kernel
# patch is to write them (docs/append.md): the agent zero-fills the destination (overlapped with
# dom0's writes, below a watermark), so the disk is written twice against the classic path's
# once. Overwriting an existing file's written blocks needs no zero-fill. This scenario measures
# both in the same lab, so the SUMMARY can say which part of the gap is the zero-fill (a rule of
# the guest's filesystem) and which is the data path:
#   file -> file: cp-vpipe into a new file vs cp + sync; cp-vpipe --inplace over an existing
#                 file vs dd conv=notrunc,fsync (the guest's in-place copy);
#   socket -> file: a vPipe PUT into a new file vs read+write+fsync (as Fig 4);
#   zero-fill alone: the guest writing FIG4_MIB MiB of zeros with O_DIRECT + fsync, i.e. what
#                 the agent adds to a new destination.
# One lab per link (unlimited, 1 Gbit/s), no neighbours, INPLACE_REPS (3; --quick 1) interleaved
# repetitions. Rows: link_mbit,rep,op,path,bytes,seconds,guest_cpu_s,dom0_cpu_s,engine_cpu_s,ok
INPLACE_CSV=$R/inplace.csv

inplace_condition() {  # LINK REPS
  local link=$1 reps=$2 bytes=$((FIG4_MIB << 20)) M=$LAB_VM_DISK rep pfx
  bench_up --vms 1 --disks 1 --disk-mib $((FIG4_MIB * 5 + 3072)) --neighbours 0 --link-mbit "$link"
  cp "$SHM/src" "$M/src"; sync
  if ! start httpd-rw vm1 "$B/vpipe-httpd" --mode rw --port 8081 --root "$M" ||
     ! start httpd-vpipe vm1 "$B/vpipe-httpd" --mode vpipe --port 8083 --root "$M"; then
    bench_down; return 1
  fi
  # the destination overwritten in place: a fully written file of the same size
  lab exec vm1 -- sh -c "cp $M/src $M/old && sync -f $M/old"
  for rep in $(seq 1 "$reps"); do
    pfx="$link,$rep"
    measure_f2f_new "$INPLACE_CSV" "$pfx,file_to_file_new" "$rep"
    measure "$INPLACE_CSV" "$pfx,file_to_file_inplace" vpipe "$bytes" -- \
      lab exec vm1 -- "$B/cp-vpipe" --no-fallback --inplace "$M/src" "$M/old"
    if [ "$rep" = 1 ] && ! cmp -s "$M/src" "$M/old"; then echo "bench: cp-vpipe --inplace produced a different file" >&2; fi
    measure "$INPLACE_CSV" "$pfx,file_to_file_inplace" dd+fsync "$bytes" -- \
      lab exec vm1 -- dd if="$M/src" of="$M/old" bs=1M conv=notrunc,fsync status=none
    measure "$INPLACE_CSV" "$pfx,socket_to_file_new" vpipe "$bytes" -- put_check "http://$VM1:8083/put" "$SHM/src" "$bytes"
    rm -f "$M/put"; sync
    measure "$INPLACE_CSV" "$pfx,socket_to_file_new" read+write+fsync "$bytes" -- put_sync "http://$VM1:8081/put" "$SHM/src" "$bytes" "$M/put"
    rm -f "$M/put"; sync
    measure "$INPLACE_CSV" "$pfx,zero_fill" guest-dio-zeros "$bytes" -- \
      lab exec vm1 -- dd if=/dev/zero of="$M/zeros" bs=1M count="$FIG4_MIB" oflag=direct conv=fsync status=none
    rm -f "$M/zeros"; sync
  done
  bench_down
}

run_inplace() {
  prepare_shm
  echo "link_mbit,rep,op,path,bytes,seconds,guest_cpu_s,dom0_cpu_s,engine_cpu_s,ok" > "$INPLACE_CSV"
  local reps=${INPLACE_REPS:-3} link
  [ "$QUICK" = 1 ] && reps=1
  for link in 0 1000; do
    echo "bench: new files vs in place, link $([ "$link" = 0 ] && echo unlimited || echo "$link Mbit/s")" >&2
    inplace_condition "$link" "$reps"
  done
}

# inplace_rates LINK OP PATH: MiB/s of the good rows, sorted
inplace_rates() {
  awk -F, -v l="$1" -v o="$2" -v p="$3" 'NR > 1 && $1 == l && $3 == o && $4 == p && $10 == 1 { print $5 / 1048576 / $6 }' "$INPLACE_CSV" | sort -g
}
inplace_mib() {  # LINK OP PATH: median MiB/s
  inplace_rates "$@" | awk '{ v[++n] = $1 } END { if (n) printf "%.1f", v[int((n + 1) / 2)] }'
}
inplace_range() {  # LINK OP PATH: min–max MiB/s
  inplace_rates "$@" | awk '{ v[++n] = $1 } END { if (n) printf "%.0f–%.0f", v[1], v[n] }'
}

inplace_summary() {
  [ -s "$INPLACE_CSV" ] && [ "$(wc -l < "$INPLACE_CSV")" -gt 1 ] || return 0
  echo
  echo "## New files against overwrites in place: the zero-fill's share (inplace.csv; \`bench/run.sh inplace\`)"
  echo
  echo "A new destination's blocks are unwritten extents to the guest's ext4; the agent zero-fills"
  echo "them (overlapped with dom0's writes) so that ext4 accepts what dom0 wrote: the disk is written"
  echo "twice. In place, over blocks already written, it is written once. ${FIG4_MIB} MiB, no neighbours,"
  echo "median MiB/s (range over the repetitions) of interleaved repetitions in one lab per link."
  echo
  echo "| link | operation | vPipe | classic path | vPipe / classic | guest zero-fill alone |"
  echo "|---|---|---|---|---|---|"
  local link lname op classic label a b z
  for link in $(awk -F, 'NR > 1 {print $1}' "$INPLACE_CSV" | sort -un); do
    lname=unlimited; [ "$link" != 0 ] && lname="$link Mbit/s"
    z=$(inplace_mib "$link" zero_fill guest-dio-zeros)
    for op in file_to_file_new file_to_file_inplace socket_to_file_new; do
      case $op in
        file_to_file_new) classic=cp+sync label="file → file, new file" ;;
        file_to_file_inplace) classic=dd+fsync label="file → file, in place" ;;
        socket_to_file_new) classic=read+write+fsync label="socket → file, new file" ;;
      esac
      a=$(inplace_mib "$link" "$op" vpipe); b=$(inplace_mib "$link" "$op" "$classic")
      [ -n "$a$b" ] || continue
      echo "| $lname | $label | $a ($(inplace_range "$link" "$op" vpipe)) | $classic $b ($(inplace_range "$link" "$op" "$classic")) | **$(ratio "$a" "$b")** | $([ "$op" = file_to_file_inplace ] && echo "– (none needed)" || echo "$z MiB/s") |"
    done
  done
  echo
  echo "The in-place rows are vPipe's data path alone; the difference between a new-file row and the"
  echo "in-place row is the zero-fill, which docs/append.md's strategy (a) would make metadata-only on a"
  echo "virtual disk that supports write-zeroes with unmap (this host's vda, under every loop device, does"
  echo "not). The classic paths' spread is the shared host's (their page-cache writeback competes with"
  echo "whatever else runs)."
}
