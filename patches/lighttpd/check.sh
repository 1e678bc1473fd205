#!/usr/bin/env bash
# Runs lighttpd 1.4.69's own test suite (tests/*.t, LightyTest.pm) against the patched lighttpd in a
# lab VM, with server.vpipe on and off, the client outside the VM. See --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${VPIPE_BUILD_DIR:-$root/build}"
version=1.4.69
vm=vm1 vm_ip=10.199.0.11 client_ip=10.199.0.1
modes=(enable disable) min_offload=0 tests="" half_close=""

usage() {
  cat <<EOT
usage: $0 [--build-dir DIR] [--vpipe on|off|both] [--min-offload BYTES] [--tests "NAME..."]
       [--half-close]

Runs lighttpd $version's upstream test suite (what \`make check\` runs: tests/prepare.sh, then
tests/run-tests.pl over request.t, core-condition.t, mod-fastcgi.t, mod-scgi.t, then
cleanup.sh) against the lighttpd that patches/lighttpd/build.sh built, with lighttpd in a lab
VM and the suite's client on the lab's client host, so that its connections arrive on the VM's
interface, where vPipe takes them (loopback traffic it cannot).

Brings up its own lab (\`vpipe-lab up --vms 1 --disks 1\`; waits up to 10 minutes while
someone else's lab is up, never touching it) and takes it down at the end. Copies the extracted
tests/ directory (DIR/lighttpd/src/lighttpd-$version/tests, after building its fcgi-responder
and scgi-responder) onto $vm's disk, so that the documents the suite serves are on the VM's disk,
and changes the copy, not the tree:
  - LightyTest.pm: handle_http connects to $vm_ip instead of 127.0.0.1; it does not shut down
    its sending side after the requests (as upstream's harness does on OpenBSD: it reads until
    the server closes), unless --half-close; and it loads
    patches/lighttpd/check-lab.pl, which starts each lighttpd in $vm (vpipe-lab exec) listening
    on 0.0.0.0 and a free port (tmp/bind.conf, which every test config includes; it also says
    server.vpipe) instead of a loopback socket passed by socket activation;
  - lighttpd.conf: the client host's address $client_ip is trusted by mod_extforward and is
    the remote IP of the bug255 condition, as 127.0.0.1 is upstream.
After tests/prepare.sh the suite's files are written back and dropped from the page cache:
libvpipe's cache rule sends a range that is wholly in the guest's cache itself. lighttpd runs
with VPIPE_MIN_OFFLOAD=0 (--min-offload): the suite's files are a few bytes to a few KiB, and
with server.vpipe on, a body at or above the threshold is not read into memory by lighttpd's
small-response path (the patch's response.c hunk): the suite's static bodies are offered to dom0.

Per mode it prints the suite's counts (planned, passed, failed, skipped; Test::Harness's
verdict) and vm1's engine counters for file -> socket over the run (bytes and operations: each
operation is one response body, or one part, moved by dom0). Exit status 0 when every mode
passed its whole suite, server.vpipe = "enable" had at least one operation moved by dom0,
"disable" none, and no shadow socket, steered flow, per-flow nftables element (dom0's table
bridge vpipe, the VM's ip vpipe_guest) or lighttpd is left behind; 1 otherwise; 2 for a bad
command line; 77 when it cannot run here (not root, something not built): nothing was tested.

  --build-dir DIR      the project's CMake build directory (default: build/ or \$VPIPE_BUILD_DIR);
                       needs bin/vpipe-lab, vpiped, vpipe-guestd, vpipectl and lighttpd/ (build.sh)
  --vpipe on|off|both  server.vpipe "enable", "disable" or both, in that order (default both)
  --min-offload BYTES  lighttpd's VPIPE_MIN_OFFLOAD (default 0: every file chunk is offered to
                       dom0; the suite's files are a few bytes to a few KiB)
  --half-close         keep upstream's shutdown(SHUT_WR) after the requests. vPipe does not hand
                       over a connection whose peer has half-closed (EOPNOTSUPP: libvpipe's
                       fallback copy sends the body, docs/protocol.md): nothing is moved by dom0,
                       and "enable" is not required to have offloaded anything
  --tests "NAME..."    only these .t files (run-tests.pl's RUNTESTS, e.g. "request core-condition");
                       counts are then those of the files run
Needs root. Logs in DIR/lighttpd/check/: MODE.log (the harness's verbose TAP output) and
MODE.error.log (lighttpd's error log, with the suite's request/response debug lines).
EOT
}

while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --build-dir) build="$(cd "$2" && pwd)"; shift ;;
    --vpipe)
      case "$2" in
        on) modes=(enable) ;; off) modes=(disable) ;; both) modes=(enable disable) ;;
        *) echo "check.sh: --vpipe on|off|both, not $2" >&2; exit 2 ;;
      esac
      shift ;;
    --min-offload) [[ "$2" =~ ^[0-9]+$ ]] || { echo "check.sh: --min-offload takes bytes" >&2; exit 2; }
                   min_offload="$2"; shift ;;
    --tests) tests="$2"; shift ;;
    --half-close) half_close=1 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

[ "$(id -u)" = 0 ] || { echo "check.sh: needs root (the lab)" >&2; exit 77; }
lab="$build/bin/vpipe-lab" ctl="$build/bin/vpipectl" bin="$build/lighttpd/sbin/lighttpd"
tree="$build/lighttpd/src/lighttpd-$version"
for f in "$lab" "$ctl" "$build/bin/vpiped" "$build/bin/vpipe-guestd" "$bin"; do
  [ -x "$f" ] || { echo "check.sh: $f is not built (cmake --build / patches/lighttpd/build.sh)" >&2; exit 77; }
done
[ -e "$tree/tests/LightyTest.pm" ] || { echo "check.sh: no $tree/tests (patches/lighttpd/build.sh)" >&2; exit 77; }
for t in perl jq nft; do command -v "$t" >/dev/null || { echo "check.sh: $t is not installed" >&2; exit 77; }; done
perl -MTest::Harness -MTest::More -e1 || { echo "check.sh: perl's Test::Harness is missing" >&2; exit 77; }
logs="$build/lighttpd/check"
mkdir -p "$logs"

# the suite's FastCGI and SCGI backends (make check builds them; `make` does not)
make -s -C "$tree/tests" fcgi-responder scgi-responder >/dev/null

lab_present() { "$lab" info >/dev/null 2>&1 || [ -e /run/vpipe-lab ] || ls /run/netns/vpl-* >/dev/null 2>&1; }
owns=0
cleanup() {
  local rc=$?
  if ((owns)); then
    # a lighttpd the harness left (it died mid-suite): this build's binary, started by this run
    for p in $(pgrep -x -f "$bin -D -f .*" || true); do kill -TERM "$p" 2>/dev/null || true; done
    "$lab" down >/dev/null || { echo "check.sh: vpipe-lab down failed" >&2; rc=1; }
  fi
  exit $rc
}
trap cleanup EXIT
deadline=$((SECONDS + 600))
while :; do
  if ! lab_present; then
    if out="$("$lab" up --vms 1 --disks 1 2>&1)"; then owns=1; break; fi
    [[ "$out" == *"already up"* ]] || { echo "check.sh: vpipe-lab up failed: $out" >&2; exit 1; }
  fi
  ((SECONDS < deadline)) || { echo "check.sh: a lab has been up for 10 minutes (vpipe-lab info): not touching it" >&2; exit 1; }
  echo "check.sh: another lab is up; retrying in 10 s" >&2
  sleep 10
done
disk="$(sed -n 's/^VPIPE_DISK=//p' < <("$lab" exec "$vm" -- env))"
[ -d "$disk" ] || { echo "check.sh: $vm has no disk ($disk)" >&2; exit 1; }

# vm1's engine counters: "bytes ops shadow_sockets steered_flows" (file -> socket), or fail
engine() {
  local out
  out="$("$ctl" --control /run/vpipe-lab/vpiped.ctl stats --json | jq -r --arg vm "$vm" \
    '[(.vms[] | select(.name == $vm) | .bytes.file_to_socket, .ops.file_to_socket), .shadow_sockets, .steered_flows] | map(tostring) | join(" ")')"
  [[ "$out" =~ ^[0-9]+\ [0-9]+\ [0-9]+\ [0-9]+$ ]] || { echo "check.sh: engine stats: '$out'" >&2; return 1; }
  echo "$out"
}
# per-flow nftables elements left in dom0's steering table and the VM's guest table
nft_elems() {
  local d g
  d="$("$lab" dom0 -- nft -j list table bridge vpipe | jq '[.nftables[] | (.set // .map // empty) | .elem // [] | length] | add // 0')"
  g="$("$lab" exec "$vm" -- nft -j list table ip vpipe_guest 2>/dev/null | jq '[.nftables[] | (.set // .map // empty) | .elem // [] | length] | add // 0' || echo 0)"
  echo $((d + g))
}

# The staged copy: DIR/tests as top_builddir/tests, changed where the suite assumes loopback.
stage="$disk/lighttpd-check"
stage_suite() {
  rm -rf "$stage"
  mkdir -p "$stage"
  cp -a "$tree/tests" "$stage/tests"
  local t="$stage/tests"
  # edit(file, sed script, expected number of new or changed lines): fails loudly if upstream's text moved
  edit() {
    local before; before="$(cat "$1")"
    sed -i "$2" "$1"
    local n; n="$(diff <(echo "$before") "$1" | grep -c '^>' || true)"
    [ "$n" = "$3" ] || { echo "check.sh: $1: $n lines changed by '$2', expected $3 (upstream changed?)" >&2; exit 1; }
  }
  edit "$t/LightyTest.pm" 's|^\(\s*my \$host = \)"127.0.0.1";|\1$ENV{VPIPE_CHECK_HOST};|' 1
  edit "$t/LightyTest.pm" 's|^\(\s*shutdown(\$remote, 1) if (\)\(\$^O ne "openbsd"\)|\1$ENV{VPIPE_CHECK_HALF_CLOSE} \&\& \2|' 1
  edit "$t/LightyTest.pm" '$s|^1;$|do "'"$here"'/check-lab.pl" or die "check-lab.pl: $@$!";\n1;|' 1
  edit "$t/lighttpd.conf" 's|^\(\s*\)"127.0.0.1" => "trust",|&\n\1"'"$client_ip"'" => "trust",|' 1
  edit "$t/lighttpd.conf" 's|\$HTTP\["remoteip"\] == "127.0.0.1"|$HTTP["remoteip"] == "'"$client_ip"'"|' 1
  chmod -R a+rX "$stage"
}

failed=0
for mode in "${modes[@]}"; do
  stage_suite
  (cd "$stage/tests" && srcdir=. top_builddir=.. ./prepare.sh >/dev/null)
  # written back and out of the page cache: dom0 reads the disk, the guest's cache holds nothing
  sync -f "$stage"
  find "$stage/tests/tmp" -type f -exec dd iflag=nocache count=0 status=none if={} \;
  e="$(engine)"; read -r b0 o0 _ _ <<< "$e"
  log="$logs/$mode.log"
  set +e
  (cd "$stage/tests" && "$lab" client -- env srcdir=. top_builddir=.. VERBOSE=1 \
     LIGHTTPD_EXE_PATH="$bin" VPIPE_MIN_OFFLOAD="$min_offload" \
     VPIPE_CHECK_HOST="$vm_ip" VPIPE_CHECK_LAB="$lab" VPIPE_CHECK_VM="$vm" VPIPE_CHECK_VPIPE="$mode" \
     RUNTESTS="$tests" VPIPE_CHECK_HALF_CLOSE="$half_close" \
     perl ./run-tests.pl) > "$log" 2>&1
  rc=$?
  set -e
  e="$(engine)"; read -r b1 o1 shadow steered <<< "$e"
  elems="$(nft_elems)"
  cp "$stage/tests/tmp/lighttpd/logs/lighttpd.error.log" "$logs/$mode.error.log" 2>/dev/null || true
  (cd "$stage/tests" && srcdir=. top_builddir=.. ./cleanup.sh >/dev/null)
  # the TAP lines of every .t: planned (1..N), ok, not ok, skipped ("ok N # skip")
  planned=$(grep -aE '^1\.\.[0-9]+' "$log" | awk -F'[. ]+' '{n += $2} END {print n + 0}')
  ok=$(grep -acE '^ok [0-9]+' "$log" || true)
  notok=$(grep -acE '^not ok [0-9]+' "$log" || true)
  skipped=$(grep -acE '^ok [0-9]+ # skip' "$log" || true)
  verdict="$(grep -aE '^(All tests successful|Failed [0-9]+/[0-9]+ test programs|Result: )' "$log" | tail -1 || true)"
  left="$(pgrep -x -f "$bin -D -f .*" || true)"
  echo "server.vpipe=$mode: $planned planned, $((ok - skipped)) passed, $notok failed, $skipped skipped," \
       "$((planned - ok - notok)) not run; run-tests.pl exit $rc (${verdict:-no verdict}); engine $vm" \
       "file_to_socket +$((b1 - b0)) B in $((o1 - o0)) ops; left: $shadow shadow sockets, $steered steered flows," \
       "$elems nft elements, lighttpd ${left:-none} (log: $log)"
  grep -aE '^(not ok|#   Failed test)' "$log" | sed 's/^/  /' || true
  good=1
  ((rc == 0 && notok == 0 && ok == planned && planned > 0)) || good=0
  if [ "$mode" = disable ]; then ((o1 == o0)) || good=0; elif [ -z "$half_close" ]; then ((o1 > o0)) || good=0; fi
  ((shadow == 0 && steered == 0 && elems == 0)) && [ -z "$left" ] || good=0
  ((good)) || failed=1
done
rm -rf "$stage"
exit $failed
