#!/usr/bin/env bash
# Pound's own test suite (its tests/testsuite, driven by tests/poundharness.pl) with the patched
# Pound of build.sh running in lab VM vm1, with and without POUND_VPIPE=1. See --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${VPIPE_BUILD_DIR:-$root/build}"
version=4.16

usage() {
  cat <<EOT
usage: $0 [--build-dir DIR] [--net loopback|lab] [--vpipe off|on|both] [--min-offload N]
          [--split-ms N] [--keep-up] [-- TESTSUITE-ARGS...]

Runs Pound $version's own test suite (make check's tests/testsuite, 77 autotest groups driven by
tests/poundharness.pl) against the patched Pound that patches/pound/build.sh built in
DIR/pound/src/pound-$version, with Pound as a process of lab VM vm1: the lab is brought up
(vpipe-lab up --vms 2 --disks 0), the suite runs under \`vpipe-lab exec vm1\` (Pound gets vm1's
agent socket), once without POUND_VPIPE and once with POUND_VPIPE=1 (--vpipe), and the lab is
taken down again. Run it under the lab lock: flock /tmp/vpipe-lab.lock $0 ...

  --net loopback  the suite as upstream wrote it: the harness's clients, its backends and Pound
                  all on 127.0.0.1 inside vm1. Nothing crosses vm1's interface, so libvpipe
                  finds nothing to hand over (every body is a fallback, relayed by the guest)
  --net lab       (default) the harness is run from a copy, DIR/pound/check/poundharness.pl,
                  made by sed from the extracted tree's (nothing of Pound is in git): its
                  listeners bind vm1's address (10.199.0.11), its backends are created in vm2's
                  namespace on 10.199.0.12 and its HTTP client connects from the client host
                  (10.199.0.1), each by setns(2) of one thread (patches/pound/harness-lab.pl).
                  Pound's client and backend connections then leave vm1 through its interface,
                  which vPipe can take over. Groups that choose a 127.x source address or
                  backend keep it (those connections stay in vm1). Nine groups expect
                  127.0.0.1 where an endpoint now has its lab address (a log's client address,
                  ACLs and X-Forwarded-For on the client, poundctl's listing of the listener
                  and backends): the suite is run as DIR/pound/src/pound-$version/tests/testsuite-lab,
                  made by autom4te from upstream's .at files with copies of those nine in
                  DIR/pound/check/at-lab, where patches/pound/lab-expectations.pl replaced each
                  127.0.0.1 by that endpoint's lab address (requests and checks unchanged)
  --vpipe W       off, on or both (default both: off first)
  --min-offload N VPIPE_MIN_OFFLOAD for Pound's libvpipe (default 1: every Content-Length body
                  goes through the vPipe path; the suite's bodies are small)
  --split-ms N    --net lab: the harness's backends send a response's head, wait N ms, then its
                  body (default 20; 0: head and body together, as upstream's harness). Pound then
                  reads the head alone and the body is still in the socket, so it is handed over;
                  sent together, the body is already in Pound's 4 KiB buffer and Pound relays it
  --keep-up       leave the lab up afterwards (to look at it; \`vpipe-lab down\` removes it)
  TESTSUITE-ARGS  passed to tests/testsuite (e.g. test numbers or -k KEYWORD)

Each run's testsuite log goes to DIR/pound/check/<net>-<off|on>.log. Printed per run: the groups
run, passed, failed (their numbers), skipped, vm1's engine socket_to_socket bytes and ops before
and after, and the leftovers check (no shadow socket, steered flow or nft flow element).

Exit status: 0 every run passed (the testsuite's exit status 0: no group failed), nothing was
left behind, the engine moved no body without POUND_VPIPE and (--net lab, --split-ms > 0) at
least one with it; 1 otherwise; 77 Pound not built (patches/pound/build.sh) or not root; 2 bad usage.
EOT
}

net=lab which=both min=1 split=20 keep=0 args=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --build-dir) build="$(cd "$2" && pwd)"; shift ;;
    --net) net="$2"; shift ;;
    --vpipe) which="$2"; shift ;;
    --min-offload) min="$2"; shift ;;
    --split-ms) split="$2"; shift ;;
    --keep-up) keep=1 ;;
    --) shift; args=("$@"); break ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$net" in loopback|lab) ;; *) echo "--net: loopback or lab" >&2; exit 2 ;; esac
case "$which" in off) modes=(off) ;; on) modes=(on) ;; both) modes=(off on) ;;
  *) echo "--vpipe: off, on or both" >&2; exit 2 ;; esac

tree="$build/pound/src/pound-$version"
lab="$build/bin/vpipe-lab"
ctl="$build/bin/vpipectl"
out="$build/pound/check"
[ "$(id -u)" = 0 ] || { echo "pound/check.sh: needs root (the lab)" >&2; exit 77; }
[ -x "$build/pound/sbin/pound" ] && [ -f "$tree/tests/Makefile" ] ||
  { echo "pound/check.sh: the patched Pound is not built in $tree: run patches/pound/build.sh" >&2; exit 77; }
[ -x "$lab" ] && [ -x "$ctl" ] || { echo "pound/check.sh: $lab or $ctl is not built" >&2; exit 77; }
perl -MIO::FDPass -MJSON -MIO::Socket::SSL -e1 2>/dev/null ||
  { echo "pound/check.sh: the harness needs perl's IO::FDPass and JSON and IO::Socket::SSL for its HTTPS groups (apt-get install libio-fdpass-perl libjson-perl libio-socket-ssl-perl)" >&2; exit 77; }
mkdir -p "$out"

# The suite's helpers (fakedns, tmplrun) and tests/testsuite (autom4te), as `make check` builds them
make -s -C "$tree/tests" all atconfig atlocal testsuite >/dev/null

harness="$tree/tests/poundharness.pl"
suite=testsuite
if [ "$net" = lab ]; then
  # The suite with the lab addresses in the nine groups that expect 127.0.0.1 (see --help)
  atlab="$out/at-lab"
  rm -rf "$atlab" && mkdir -p "$atlab"
  perl "$here/lab-expectations.pl" "$tree/tests" "$atlab" loglevrun.at logfmt.at acl.at nacl.at \
    optfwd.at optorder.at list.at disable.at sessctl.at > "$atlab/replaced.txt" ||
    { echo "pound/check.sh: lab-expectations.pl found no 127.0.0.1 to replace in a file (upstream's suite changed?)" >&2; cat "$atlab/replaced.txt" >&2; exit 1; }
  # m4_include looks in the current directory first: the copies in $atlab win over upstream's
  (cd "$atlab" && autom4te --language=autotest --no-cache -I "$atlab" -I "$tree/tests" \
     "$tree/tests/testsuite.at" -o "$tree/tests/testsuite-lab")
  suite=testsuite-lab

  # A copy of the harness, edited by sed; each edit must apply exactly once.
  harness="$out/poundharness.pl"
  sed -e "0,/^use Socket;\$/{/^use Socket;\$/r $here/harness-lab.pl
}" \
      -e 's|^    socket(\$socket, PF_INET, SOCK_STREAM, 0)$|    ::vpipe_in_netns(($keepopen \|\| defined($ip)) ? undef : $ENV{VPIPE_CHECK_BACKEND_NETNS}, sub { socket($socket, PF_INET, SOCK_STREAM, 0) })|' \
      -e "s|inet_aton(\$ip // '127.0.0.1')|inet_aton(\$ip // (\$keepopen ? \$ENV{VPIPE_CHECK_LISTEN_IP} : \$ENV{VPIPE_CHECK_BACKEND_IP}) // '127.0.0.1')|" \
      -e "s|local_address => \$addr\$|local_address => (\$addr eq '127.0.0.1' ? (\$ENV{VPIPE_CHECK_CLIENT_IP} // \$addr) : \$addr)|" \
      -e 's|^    print \$fh \$CRLF;$|    print $fh $CRLF; ::vpipe_split_body($fh);|' \
      -e "s|^    my \$response = \$self->http->request(\(.*\));\$|    my \$response = ::vpipe_in_netns(\$self->{source_addr} eq '127.0.0.1' ? \$ENV{VPIPE_CHECK_CLIENT_NETNS} : undef, sub { \$self->http->request(\1) });|" \
      "$tree/tests/poundharness.pl" > "$harness"
  for want in '^sub vpipe_in_netns' '^sub vpipe_split_body' '::vpipe_split_body' 'VPIPE_CHECK_BACKEND_NETNS' 'VPIPE_CHECK_LISTEN_IP' \
              'VPIPE_CHECK_CLIENT_IP' 'VPIPE_CHECK_CLIENT_NETNS'; do
    [ "$(grep -c "$want" "$harness")" = 1 ] ||
      { echo "pound/check.sh: editing poundharness.pl failed at $want (upstream's harness changed?)" >&2; exit 1; }
  done
  perl -c "$harness" 2>/dev/null || { echo "pound/check.sh: the edited harness does not compile" >&2; perl -c "$harness"; exit 1; }
fi

# vm1's engine counters and the leftovers, from the engine's stats and nft in dom0 and the VMs
stats() { "$ctl" --control "$("$lab" info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["engine"]["control_socket"])')" stats --json; }
s2s() {
  stats | python3 -c '
import json, sys
s = json.load(sys.stdin)
v = [v for v in s["vms"] if v["name"] == "vm1"][0]
print(v.get("bytes", {}).get("socket_to_socket", 0), v.get("ops", {}).get("socket_to_socket", 0))'
}
leftovers() {
  local s n=0
  s="$(stats)"
  n=$(python3 -c '
import json, sys
s = json.loads(sys.argv[1])
bad = [k for k in ("shadow_sockets", "steered_flows") if s.get(k, -1) != 0]
bad += [v["name"] + "." + k for v in s["vms"] for k in ("shadow_sockets", "steered_flows") if v.get(k, -1) != 0]
print(len(bad), *bad)' "$s")
  "$lab" dom0 -- nft -j list ruleset | python3 -c '
import json, sys
j = json.load(sys.stdin)["nftables"]
print(sum(len(o[k].get("elem", [])) for o in j for k in ("set", "map")
          if k in o and o[k].get("family") == "bridge" and o[k].get("table") == "vpipe"))' | {
    read -r elems; [ "$elems" = 0 ] || n="$n dom0-nft-elements:$elems"; echo "$n"; }
  for vm in vm1 vm2; do
    ! "$lab" exec "$vm" -- nft -j list table ip vpipe_guest 2>/dev/null | grep -q '"elem"' || echo "$vm: per-flow nft elements"
  done
}

up=0
down() { if ((up && !keep)); then "$lab" down >/dev/null || echo "pound/check.sh: vpipe-lab down failed" >&2; fi; }
trap down EXIT
"$lab" info >/dev/null 2>&1 && { echo "pound/check.sh: a lab is up already (vpipe-lab info): not touching it" >&2; exit 1; }
"$lab" up --vms 2 --disks 0 >/dev/null
up=1
env_lab=()
if [ "$net" = lab ]; then
  env_lab=(VPIPE_CHECK_LISTEN_IP=10.199.0.11 VPIPE_CHECK_BACKEND_IP=10.199.0.12
           VPIPE_CHECK_BACKEND_NETNS=/run/netns/vpl-vm2 VPIPE_CHECK_CLIENT_IP=10.199.0.1
           VPIPE_CHECK_CLIENT_NETNS=/run/netns/vpl-client VPIPE_CHECK_SPLIT_MS="$split")
  for ns in vpl-vm2 vpl-client; do [ -e "/run/netns/$ns" ] || { echo "pound/check.sh: no /run/netns/$ns" >&2; exit 1; }; done
fi

rc=0 failed_off=""
for mode in "${modes[@]}"; do
  env_vpipe=(); [ "$mode" = on ] && env_vpipe=(POUND_VPIPE=1)
  read -r b0 o0 < <(s2s)
  set +e
  (cd "$tree/tests" && rm -rf "$suite.dir" &&
   "$lab" exec vm1 -- env "${env_vpipe[@]}" VPIPE_MIN_OFFLOAD="$min" "${env_lab[@]}" \
     "./$suite" HARNESS="$harness" "${args[@]}") > "$out/$net-$mode.out" 2>&1
  st=$?
  set -e
  cp "$tree/tests/$suite.log" "$out/$net-$mode.log" 2>/dev/null || true
  read -r b1 o1 < <(s2s)
  # the per-group result lines: "  12: file.at:17   title   ok|skipped (...)|FAILED (...)|expected failure"
  ran=$(grep -cE '^ *[0-9]+: .* (ok|FAILED \(.*\)|expected failure|UNEXPECTED PASS)$' "$out/$net-$mode.out" || true)
  ok=$(grep -cE '^ *[0-9]+: .* ok$' "$out/$net-$mode.out" || true)
  skipped=$(grep -cE '^ *[0-9]+: .* skipped \(.*\)$' "$out/$net-$mode.out" || true)
  failed=$(grep -E '^ *[0-9]+: .* FAILED \(.*\)$' "$out/$net-$mode.out" | sed -E 's/^ *([0-9]+):.*/\1/' | tr '\n' ' ' | sed 's/ $//' || true)
  left="$(leftovers)"
  printf 'pound/check.sh: --net %s POUND_VPIPE=%s VPIPE_MIN_OFFLOAD=%s: testsuite exit %s; %s run, %s ok, %s failed [%s], %s skipped; vm1 engine socket_to_socket +%s B in +%s ops; leftovers: %s\n' \
    "$net" "$([ "$mode" = on ] && echo 1 || echo unset)" "$min" "$st" "$ran" "$ok" \
    "$(wc -w <<<"$failed")" "$failed" "$skipped" "$((b1 - b0))" "$((o1 - o0))" "$left"
  [ "$left" = 0 ] || rc=1
  # Without vPipe nothing reaches the engine; with it and split bodies, the suite's bodies do
  if [ "$mode" = off ] && ((o1 - o0 != 0)); then
    echo "pound/check.sh: without POUND_VPIPE the engine moved $((o1 - o0)) bodies" >&2; rc=1
  elif [ "$mode" = on ] && [ "$net" = lab ] && ((split > 0 && o1 - o0 == 0)); then
    echo "pound/check.sh: with POUND_VPIPE=1 and split bodies no body went through the engine" >&2; rc=1
  fi
  if [ "$mode" = off ]; then
    failed_off="$failed"
  elif [ "$which" = both ]; then
    # the groups that fail with POUND_VPIPE=1 and not without it
    extra=()
    for g in $failed; do [[ " $failed_off " == *" $g "* ]] || extra+=("$g"); done
    echo "pound/check.sh: --net $net: groups failing only with POUND_VPIPE=1: [${extra[*]}]"
  fi
  [ "$st" = 0 ] || rc=1
done
echo "pound/check.sh: logs in $out"
exit "$rc"
