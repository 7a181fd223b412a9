#!/usr/bin/env bash
# Where a drain's time goes, on both sides: `perf record -e cpu-clock -g` of the drain and of
# one `drain serve` during a release drain of W1 messages, then `strace -c -w -f` of the same
# (a second drain), then a summary of both perf profiles and the syncs per message.
#
#   benches/profile.sh [MESSAGES] [OUT_DIR]      # defaults: 20000, $CARGO_TARGET_DIR/drain-profile
#
# Needs perf and strace (apt-get install -y linux-perf strace); CARGO_TARGET_DIR is honoured.
# The release profile has debug = 1, so perf resolves the drain's symbols. Everything printed
# is also in OUT_DIR/summary.txt; `perf report -i OUT_DIR/drain.perf.data` for the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-20000}
out=${2:-${CARGO_TARGET_DIR:-target}/drain-profile}
rm -rf "$out"
mkdir -p "$out"
cargo bench --bench drain -- --messages "$messages" --profile "$out" | tee "$out/summary.txt"

# Self time summed by where the code comes from: the kernel, libc, or the crate of a Rust
# symbol (`<hyper::X as core::Future>::poll` counts for hyper).
by_origin() {
    perf report -i "$1" --no-children --sort dso,sym -g none --stdio --percent-limit 0 \
        2>/dev/null | grep -v '^#' | grep -v '^$' | awk '
    { pct = $1; sub(/%/, "", pct); dso = $2; sym = $4
      if (dso ~ /kernel/) c = "kernel"
      else if (dso ~ /^(libc|ld-linux)/) c = "libc (memcpy, malloc, ...)"
      else if (sym ~ /^_?blake3/) c = "blake3"
      else if (sym ~ /^ring_core/) c = "ring (TLS crypto)"
      else { gsub(/^[<&*]+/, "", sym); split(sym, a, "::")
             c = (sym ~ /::/) ? a[1] : "std"
             if (c ~ /^(core|alloc|std)$/) c = "std" }
      tot[c] += pct }
    END { for (c in tot) printf "  %6.2f%%  %s\n", tot[c], c }' | sort -rn | head -12
}

# Kernel time under each system call, callees included (kernel call chains are complete).
by_syscall() {
    perf report -i "$1" --children --sort sym -g none --stdio --percent-limit 0 2>/dev/null |
        grep -E '\[k\] __(x64|do)_sys_' | awk '{ printf "  %7s  %s\n", $1, $4 }' | head -10
}

for side in drain serve; do
    echo
    echo "== $side: CPU time by origin (perf, self time) =="
    by_origin "$out/$side.perf.data"
    echo "== $side: kernel time by system call (perf, inclusive) =="
    by_syscall "$out/$side.perf.data"
    echo "== $side: top symbols (perf, self time) =="
    perf report -i "$out/$side.perf.data" --no-children --sort dso,sym -g none --stdio \
        --percent-limit 1.5 2>/dev/null | grep -v '^#' | grep -v '^$' | sed 's/[ -]*$//' | head -15
    echo "== $side: system calls by wall time (strace -c -w -f) =="
    head -14 "$out/$side.strace"
done | tee -a "$out/summary.txt"
