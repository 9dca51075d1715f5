#!/usr/bin/env bash
# Installs what is missing, builds, and runs tally or its tests.
#
#   ./make.sh run     build, then serve ./data (binary 127.0.0.1:7420, HTTP 127.0.0.1:7421;
#                     flags after `run` go to `tally serve`: ./make.sh run --http 127.0.0.1:8080)
#   ./make.sh demo    build, then apply a generated workload to ./demo-data and verify it
#   ./make.sh test    build (release and address+undefined sanitizers), run every test
#                     suite but soak (meson test --setup soak --suite soak runs that)
#   ./make.sh tsan    build with ThreadSanitizer, run the C++ unit tests (not in CI)
#   ./make.sh build   build only
#   ./make.sh deps    install the Debian packages the build needs
#
# Environment: BUILD_DIR (default build), ASAN_BUILD_DIR (default build-asan),
# TSAN_BUILD_DIR (default build-tsan), TALLY_SKIP_DEPS=1 to skip the package
# check, CI=true adds -Dwerror=true (not to tsan: GCC warns about the fences
# Boost.Asio uses, which ThreadSanitizer cannot see).
set -euo pipefail
cd "$(dirname "$0")"

packages=(meson ninja-build g++ pkg-config python3 libboost-dev capnproto libcapnp-dev
          liblmdb-dev libxxhash-dev doctest-dev)

deps() {
  [ "${TALLY_SKIP_DEPS:-0}" = 1 ] && return 0
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo > /dev/null; then
      echo "make.sh: missing packages (${missing[*]}) and no sudo to install them with:" \
           "run this as root once, or install sudo" >&2
      return 1
    fi
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

setup() {  # setup DIR [meson options...]
  local dir=$1
  shift
  local werror=false
  [ "${CI:-}" = true ] && werror=true
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" -Dwerror=$werror "$@"
  fi
}

build() {
  deps
  setup "${BUILD_DIR:-build}"
  ninja -C "${BUILD_DIR:-build}"
}

run() {
  build
  echo "serving ./data; stop with Ctrl-C (the log is closed cleanly)"
  exec "${BUILD_DIR:-build}/tools/tally" serve --data data "$@"
}

demo() {
  build
  local tally="${BUILD_DIR:-build}/tools/tally"
  if [ -d demo-data/log ]; then
    echo "./demo-data already holds a ledger; verifying it (remove ./demo-data to start over)"
    "$tally" verify --data demo-data
    return
  fi
  # Beside the data directory, not in it: a ledger's directory holds only
  # what a ledger makes, and the tools refuse one that holds anything else
  # (as an older demo left it).
  rm -f demo-data/workload.csv demo-data/workload.expect
  "$tally" workload --subjects 10000 --ops 200000 --seed 1 \
    --out demo-workload.csv --expect demo-workload.expect
  echo "applying ./demo-workload.csv to ./demo-data"
  "$tally" bench --data demo-data --workload demo-workload.csv \
    --expect demo-workload.expect --progress
  "$tally" verify --data demo-data
}

test_all() {
  build
  meson test -C "${BUILD_DIR:-build}" --print-errorlogs
  setup "${ASAN_BUILD_DIR:-build-asan}" -Db_sanitize=address,undefined -Dbuildtype=debugoptimized \
    -Db_lundef=false
  ninja -C "${ASAN_BUILD_DIR:-build-asan}"
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
    meson test -C "${ASAN_BUILD_DIR:-build-asan}" --print-errorlogs
}

# The threads of replay, snapshot loading, the ledger and the server under
# ThreadSanitizer. Slower than the other builds; run it when threads change.
tsan() {
  deps
  local dir=${TSAN_BUILD_DIR:-build-tsan}
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" -Dwerror=false -Db_sanitize=thread -Dbuildtype=debugoptimized -Db_lundef=false
  fi
  ninja -C "$dir"
  # Left out: the cases whose forked child starts threads, which
  # ThreadSanitizer does not support after a fork of a threaded process.
  # Spaces are written `?` (any one character): meson splits --test-args
  # at spaces.
  local forking="lock.mdb?is?made?with?its?blocks*,a?reader?without?write?access?to?lock.mdb*"
  forking+=",backups?taken?while?another?process?writes*"
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    meson test -C "$dir" --print-errorlogs --suite log --suite projections --suite snapshots \
    --suite engine --suite server --test-args="-tce=$forking"
}

case "${1:-}" in
  deps) deps ;;
  build) build ;;
  run) shift; run "$@" ;;
  demo) demo ;;
  test) test_all ;;
  tsan) tsan ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
