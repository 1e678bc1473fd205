#!/usr/bin/env bash
# libvpipe.so exports exactly the functions vpipe.h declares VPIPE_API, each in a version node of
# libvpipe.map, and nothing else (no C++ runtime or helper symbols). Usage: check_abi.sh LIB HEADER MAP
set -euo pipefail
lib=$1 header=$2 map=$3
declared=$(grep -v '^#define' "$header" | grep -o 'VPIPE_API [^(]*(' | sed 's/(//' | awk '{print $NF}' | tr -d '*' | sort)
mapped=$(sed -n 's/^ *\(vpipe_[a-z0-9_]*\);$/\1/p' "$map" | sort)
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TWVDBR]$/ {print $3}' | sort)
unversioned=$(echo "$exported" | grep -v '@@VPIPE_' || true)
names=$(echo "$exported" | sed 's/@@.*//' | grep -v '^VPIPE_' | sort)
rc=0
[ -z "$unversioned" ] || { echo "unversioned exports: $unversioned"; rc=1; }
[ "$declared" = "$mapped" ] || { echo "vpipe.h vs libvpipe.map:"; diff <(echo "$declared") <(echo "$mapped") || true; rc=1; }
[ "$declared" = "$names" ] || { echo "vpipe.h vs libvpipe.so's exports:"; diff <(echo "$declared") <(echo "$names") || true; rc=1; }
[ $rc = 0 ] && echo "libvpipe ABI: $(echo "$declared" | wc -l) functions, all versioned, nothing else exported"
exit $rc
