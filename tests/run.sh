#!/usr/bin/env bash
# The whole test suite: the README's test command, which .ci/run calls.
#
#   bash tests/run.sh [CARGO TEST ARGS...]
#
# Installs what the tests need when it is missing (haproxy, nginx and curl for the access
# tests behind real balancers; fuse3 for the power-loss file system in
# tests/powerloss, e2fsprogs and mount for ext4 on a loop device over it; as root, from
# Debian's packages), then runs every test of the workspace:
# the drain crate (unit tests, real `drain serve` processes with real TLS on 127.0.0.x, the
# kill harness) and the power-loss crate (its file system's semantics, then the power-loss
# harness). Prints one closing line `tests: N passed, M failed`; exits non-zero when a test
# fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

need() { # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" = 0 ]; then
    echo "== installing $2 (for $1)"
    apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$2"; }
  else
    echo "!!! $1 is missing: install the Debian package $2 (as root), or the tests that need it fail !!!"
  fi
}
need fusermount3 fuse3
need haproxy haproxy
need nginx nginx
need curl curl
need mkfs.ext4 e2fsprogs   # ext4 on a loop device over the power-loss file system
need losetup mount
if [ ! -e /dev/fuse ]; then
  echo "!!! /dev/fuse is missing: the power-loss tests SKIP (they cannot mount) !!!"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?

# One closing line for the whole suite (cargo prints one `test result:` line per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0) }' "$log" || status=1
exit "$status"
