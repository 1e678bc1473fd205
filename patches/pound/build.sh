#!/usr/bin/env bash
# Builds Pound 4.16 (Debian 13's source package pound 4.16-3) with patches/pound/pound-4.16-vpipe.patch
# against the libvpipe of this tree's CMake build. See --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${VPIPE_BUILD_DIR:-$root/build}"
out="$build/pound"
version=4.16
deb=4.16-3
patch="$here/pound-$version-vpipe.patch"
pool=http://deb.debian.org/debian/pool/main/p/pound
# Debian trixie's Sources (Checksums-Sha256 of pound 4.16-3)
declare -A sums=(
  [pound_$version.orig.tar.gz]=e2b322b949cb53b2e8f80113b666be53d16301f8a2a2189612e8280392d720c1
  [pound_$deb.debian.tar.xz]=5f29809c1e5ececcb7ca900ae011e54867e66544a9445958f1de7e0dceaa538d
  [pound_$deb.dsc]=ce3b8e3bccd4d122fe6aacee5cef5534f3d88d1eb6ba3812e762f43b7a58e0fa
)
# upstream's tag v4.16 (github.com/graygnuorg/pound), for --git
git_commit=9803081c5547903b75b58cf13fd16cee4ffd1408

usage() {
  cat <<EOT
usage: $0 [--build-dir DIR] [--no-deps] [--force] [--git REPO]

Fetches Pound $version's Debian source package ($deb, from $pool), checks its files'
SHA-256 against Debian trixie's Sources, unpacks it with dpkg-source -x (Debian's patches applied),
applies patches/pound/pound-$version-vpipe.patch, configures it with -DPOUND_VPIPE against
libvpipe from the project's CMake build, and builds it. Upstream source stays outside git, in
DIR/pound/src.

  --build-dir DIR  the project's CMake build directory (default: build/ or \$VPIPE_BUILD_DIR);
                   libvpipe.so must be built there (cmake --build build --target vpipe)
  --no-deps        do not touch apt (build packages): they are there already
  --force          unpack, patch and build again even if the binary is up to date
  --git REPO       when the archive has no pound $deb: take upstream's tag v$version from a git
                   clone of github.com/graygnuorg/pound (its commit must be $git_commit;
                   Debian's patches are then not applied; needs autoconf, automake)

Exit status: 0 built (or up to date), 3 the Debian archive could not be fetched (scripts/test.sh
then tries --git with a local mirror), 1 any other failure, 2 a bad command line.

Result: DIR/pound/sbin/pound. Run it with POUND_VPIPE=1 in its environment (default off: Pound's
own BIO_read()/BIO_write() relay). Needs root for apt.
EOT
}

deps=1 force=0 gitrepo=""
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --build-dir) build="$(cd "$2" && pwd)"; out="$build/pound"; shift ;;
    --no-deps) deps=0 ;;
    --force) force=1 ;;
    --git) gitrepo="$2"; shift ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

lib="$build/lib/libvpipe.so"
inc="$root/libvpipe/include"
[ -e "$lib" ] || { echo "pound/build.sh: $lib is not built (cmake --build $build --target vpipe)" >&2; exit 1; }
[ -e "$inc/vpipe/vpipe.h" ] || { echo "pound/build.sh: no $inc/vpipe/vpipe.h" >&2; exit 1; }

bin="$out/sbin/pound"
if ((!force)) && [ -x "$bin" ] && [ "$bin" -nt "$patch" ] && [ "$bin" -nt "$lib" ]; then
  echo "pound/build.sh: $bin is up to date"; exit 0
fi

if ((deps)); then
  export DEBIAN_FRONTEND=noninteractive
  # Pound's build: OpenSSL, PCRE2, adns (bookworm has all three); dpkg-dev for dpkg-source;
  # autoconf/automake only for --git (upstream's tree has no configure)
  need=()
  for p in build-essential pkg-config dpkg-dev libssl-dev libpcre2-dev libadns1-dev curl ca-certificates \
           $( [ -n "$gitrepo" ] && echo autoconf automake libtool ); do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if ((${#need[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
fi

src="$out/src"
tree="$src/pound-$version"
mkdir -p "$src"
if ((force)) || [ ! -e "$tree/.vpipe-patched" ] || [ "$patch" -nt "$tree/.vpipe-patched" ]; then
  rm -rf "$tree"
  if [ -n "$gitrepo" ]; then
    got="$(git -C "$gitrepo" rev-parse "v$version^{commit}")"
    [ "$got" = "$git_commit" ] || { echo "pound/build.sh: $gitrepo: v$version is $got, not $git_commit" >&2; exit 1; }
    git -C "$gitrepo" archive --prefix="pound-$version/" "$git_commit" | tar -x -C "$src"
    (cd "$tree" && ./bootstrap >/dev/null)
  else
    for f in "${!sums[@]}"; do
      if [ ! -e "$src/$f" ] || ! echo "${sums[$f]}  $src/$f" | sha256sum -c --quiet - 2>/dev/null; then
        curl -fsS -o "$src/$f.part" "$pool/$f" || {
          echo "pound/build.sh: cannot fetch $pool/$f (with a clone of github.com/graygnuorg/pound: --git REPO)" >&2; exit 3; }
        mv "$src/$f.part" "$src/$f"
      fi
      echo "${sums[$f]}  $src/$f" | sha256sum -c --quiet - || { echo "pound/build.sh: $f: SHA-256 mismatch" >&2; exit 1; }
    done
    (cd "$src" && dpkg-source -x "pound_$deb.dsc" "pound-$version" >/dev/null)
  fi
  (cd "$tree" && patch -p1 --forward < "$patch")
  touch "$tree/.vpipe-patched"
fi

cd "$tree"
# -DPOUND_VPIPE compiles the vPipe path; the rpath finds libvpipe.so in the build tree. In CFLAGS,
# not CPPFLAGS: Pound 4.16's configure replaces CPPFLAGS by CFLAGS after its OpenSSL check
# (saved_CPPFLAGS=$CFLAGS), so a CPPFLAGS define never reaches the compiler.
./configure -q --prefix="$out" \
  CFLAGS="${CFLAGS:--g -O2} -DPOUND_VPIPE -I$inc" \
  LIBS="-L$(dirname "$lib") -Wl,-rpath,$(dirname "$lib") -lvpipe"
make -s -j"${JOBS:-$(nproc)}" -C src  # JOBS=N to share the machine; src/ only (doc/ needs makeinfo)
make -s -C src install >/dev/null
# the vPipe path must be in the binary (a define lost on the way would build stock Pound silently)
nm "$bin" | grep -q ' U vpipe_socket_to_socket_fd' || { echo "pound/build.sh: $bin has no vPipe path (-DPOUND_VPIPE lost?)" >&2; exit 1; }
"$bin" -V 2>&1 | sed -n 1p  # (not head: it would die of SIGPIPE under pipefail)
echo "pound/build.sh: built $bin (POUND_VPIPE=1 in its environment turns vPipe on)"
