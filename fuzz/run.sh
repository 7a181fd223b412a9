#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (see fuzz/README.md).
#
#   fuzz/run.sh [SECONDS] [--asan]
#
# Installs cargo-fuzz when missing, builds every target, runs each for SECONDS (default 20)
# from the checked-in seeds (fuzz/seeds/TARGET; new inputs go to the ignored fuzz/corpus/),
# prints executions/s and coverage per target, and exits non-zero when any target crashes,
# times out or runs out of memory (the input is kept in fuzz/artifacts/TARGET/).
# Without --asan the address sanitizer is off (`-s none`, about 4x faster), as CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
sanitizer=none
if [[ "${2:-}" == "--asan" ]]; then sanitizer=address; fi
# cargo-fuzz passes -Z flags to rustc; RUSTC_BOOTSTRAP lets the stable compiler take them.
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

dict_of() {
  case "$1" in
    spool_file|transfer_frames) echo fuzz/dict/spool_file.dict ;;
    destination) echo fuzz/dict/destination.dict ;;
    settings_file) echo fuzz/dict/settings.dict ;;
    forwarded_headers) echo fuzz/dict/destination.dict ;;
    proxy_header) echo fuzz/dict/proxy_header.dict ;;
    *) echo fuzz/dict/json.dict ;;
  esac
}

echo "== building fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build -s "$sanitizer"

failed=0
printf '%-18s %8s %12s %10s %8s  %s\n' target seconds executions exec/s cov result
for t in $(cargo fuzz list); do
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  if cargo fuzz run -s "$sanitizer" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -dict="$(dict_of "$t")" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    failed=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-18s %8s %12s %10s %8s  %s\n' "$t" "$secs" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$result"
  if [[ $result != ok ]]; then
    echo "---- $t: last lines of the fuzzer's output"
    tail -40 "$log"
    echo "---- artifacts:"; ls -l "fuzz/artifacts/$t" 2>/dev/null || true
  fi
  rm -f "$log"
done
if [[ $failed != 0 ]]; then
  echo "fuzz: a target failed (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "fuzz: every target ran ${secs}s without a crash"
