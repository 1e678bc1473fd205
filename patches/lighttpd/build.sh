#!/usr/bin/env bash
# Builds lighttpd 1.4.69 (Debian 12's source package) with patches/lighttpd/lighttpd-1.4.69-vpipe.patch
# against the libvpipe of this tree's CMake build. See --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${VPIPE_BUILD_DIR:-$root/build}"
out="$build/lighttpd"
version=1.4.69
patch="$here/lighttpd-$version-vpipe.patch"

usage() {
  cat <<EOT
usage: $0 [--build-dir DIR] [--no-deps] [--force]

Fetches lighttpd $version's Debian source package (apt-get source; adds a deb-src entry for
bookworm to /etc/apt/sources.list.d/ if there is none), applies
patches/lighttpd/lighttpd-$version-vpipe.patch, configures it (autotools, minimal: no TLS,
pcre2, zlib as the only compression) with -DLIGHTTPD_VPIPE against libvpipe from the project's CMake build,
and builds it. Upstream source stays outside git, in DIR/lighttpd/src.

  --build-dir DIR  the project's CMake build directory (default: build/ or \$VPIPE_BUILD_DIR);
                   libvpipe.so must be built there (cmake --build build --target vpipe)
  --no-deps        do not touch apt (sources, build packages): they are there already
  --force          unpack, patch and build again even if the binary is up to date (newer than
                   the patch, libvpipe.so and this script)

Result: DIR/lighttpd/sbin/lighttpd (modules in DIR/lighttpd/lib). Run it with
  server.vpipe = "enable"
in its configuration (default off: the stock sendfile() path). Needs root for apt.
EOT
}

deps=1 force=0
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --build-dir) build="$(cd "$2" && pwd)"; out="$build/lighttpd"; shift ;;
    --no-deps) deps=0 ;;
    --force) force=1 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

lib="$build/lib/libvpipe.so"
inc="$root/libvpipe/include"
[ -e "$lib" ] || { echo "lighttpd/build.sh: $lib is not built (cmake --build $build --target vpipe)" >&2; exit 1; }
[ -e "$inc/vpipe/vpipe.h" ] || { echo "lighttpd/build.sh: no $inc/vpipe/vpipe.h" >&2; exit 1; }

bin="$out/sbin/lighttpd"
if ((!force)) && [ -x "$bin" ] && [ "$bin" -nt "$patch" ] && [ "$bin" -nt "$lib" ] && [ "$bin" -nt "$here/build.sh" ]; then
  echo "lighttpd/build.sh: $bin is up to date"; exit 0
fi

if ((deps)); then
  export DEBIAN_FRONTEND=noninteractive
  if ! grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "lighttpd/build.sh: adding deb-src for bookworm (/etc/apt/sources.list.d/vpipe-deb-src.sources)"
    cat > /etc/apt/sources.list.d/vpipe-deb-src.sources <<'EOT'
# added by vPipe's patches/lighttpd/build.sh: Debian 12's source packages (apt-get source)
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
    apt-get update -qq
  fi
  # the minimal build needs only a compiler, pkg-config, pcre2 and zlib (not the whole build-dep
  # list: TLS libraries, databases, LDAP, lua, ... for modules this build leaves out; zlib for
  # mod_deflate, which lighttpd's own test suite expects: check.sh)
  need=()
  for p in build-essential pkg-config libpcre2-dev zlib1g-dev dpkg-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if ((${#need[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
fi

src="$out/src"
tree="$src/lighttpd-$version"
mkdir -p "$src"
if ((force)) || [ ! -e "$tree/.vpipe-patched" ] || [ "$patch" -nt "$tree/.vpipe-patched" ]; then
  rm -rf "$tree"
  if ! ls "$src"/lighttpd_"$version"-*.dsc >/dev/null 2>&1; then
    # the Debian revision of $version that the archive has (bookworm: 1.4.69-1)
    showsrc() { { apt-cache showsrc lighttpd 2>/dev/null || true; } | sed -n "s/^Version: \($version-.*\)/\1/p" | sed -n 1p; }
    deb="$(showsrc)"
    # a deb-src entry whose index was never fetched (a fresh host): fetch it once
    if [ -z "$deb" ] && ((deps)); then apt-get update -qq; deb="$(showsrc)"; fi
    [ -n "$deb" ] || { echo "lighttpd/build.sh: no source package lighttpd $version (deb-src for bookworm?)" >&2; exit 1; }
    (cd "$src" && apt-get source --download-only "lighttpd=$deb")
  fi
  (cd "$src" && dpkg-source -x "$(ls lighttpd_"$version"-*.dsc | tail -1)" "lighttpd-$version")
  (cd "$tree" && patch -p1 --forward < "$patch")
  touch "$tree/.vpipe-patched"
fi

cd "$tree"
# -DLIGHTTPD_VPIPE compiles the vPipe path; the rpath finds libvpipe.so in the build tree
./configure -q --prefix="$out" --libdir="$out/lib" \
  --with-zlib --without-bzip2 --without-brotli --without-zstd --without-libdeflate \
  --without-openssl --without-lua --without-pcre --with-pcre2 \
  CPPFLAGS="-DLIGHTTPD_VPIPE -I$inc" \
  LIBS="-L$(dirname "$lib") -Wl,-rpath,$(dirname "$lib") -lvpipe"  # (configure drops LDFLAGS in a check)
make -s -j"${JOBS:-$(nproc)}"  # JOBS=N to share the machine
make -s install >/dev/null
"$bin" -V | sed -n 1p  # (not head: lighttpd would die of SIGPIPE under pipefail)
echo "lighttpd/build.sh: built $bin (server.vpipe = \"enable\" turns vPipe on)"
