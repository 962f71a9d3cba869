#!/usr/bin/env bash
# Fuzz every parser of outside input for a bounded time (cargo-fuzz,
# libFuzzer): the config file, the access file, the operation catalog, a
# schedule's cron expression and time zone, and the HTTP
# API's request bodies, query string and run id (fuzz/fuzz_targets/).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]    (default 20; 0 runs only the seeds)
#
# Installs cargo-fuzz if it is missing, builds all targets once, runs each
# for SECONDS_PER_TARGET from its seeds in fuzz/corpus/<target>/ (what the
# fuzzer finds goes to a temp dir, never into the tree), prints per target the
# executions and whether it crashed, and exits non-zero if a target failed to
# build or crashed (the crashing input is kept in fuzz/artifacts/<target>/).
#
# Stable Rust is enough: the targets build with `--sanitizer none` (the
# project forbids unsafe code, so AddressSanitizer would add cost and no
# findings), which needs no -Z flag; libFuzzer's coverage instrumentation
# (-Cpasses=sancov-module, -Cllvm-args=...) is stable. Build output is in
# fuzz/target, apart from the workspace's target/.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[fuzz.sh] %s\n' "$*" >&2; }

seconds=${1:-20}
case $seconds in '' | *[!0-9]*) log "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]"; exit 2 ;; esac
# Inputs are config files and request bodies: 64 KiB is ample (API bodies are
# capped at 16 KiB). A single input taking longer than `timeout_s` counts as a
# failure (a hang), as does using more than `rss_mb` of memory.
max_len=65536
rss_mb=2048
timeout_s=10

if ! command -v c++ >/dev/null 2>&1; then
  log "installing g++ (libFuzzer is C++)"
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq g++ >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install --locked cargo-fuzz --version '^0.13'
fi

build_flags=(--sanitizer none --fuzz-dir fuzz)
log "building the fuzz targets ($(cargo fuzz --version))"
if ! cargo fuzz build "${build_flags[@]}"; then
  log "FAILED: the fuzz targets do not build"
  exit 1
fi
host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$host/release
mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
[ ${#targets[@]} -gt 0 ] || { log "FAILED: no fuzz targets"; exit 1; }

work=$(mktemp -d /tmp/oprun-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

if [ "$seconds" = 0 ]; then limit=(-runs=0); else limit=(-max_total_time="$seconds"); fi
failed=0
results=()
for t in "${targets[@]}"; do
  # The first corpus dir is where libFuzzer writes what it finds: a temp dir.
  # The seeds are read from the tree, plus the current deploy files for the
  # config and access file targets.
  mkdir -p "$work/$t/new" "$work/$t/deploy" "fuzz/artifacts/$t"
  case $t in
    config) cp deploy/demo.toml deploy/production.toml "$work/$t/deploy/" ;;
    access_file) cp deploy/access.toml deploy/demo-access.toml "$work/$t/deploy/" ;;
  esac
  seeds=(fuzz/corpus/"$t")
  [ -d "${seeds[0]}" ] || seeds=()
  log "fuzzing $t for ${seconds}s"
  rc=0
  "$bin_dir/$t" "${limit[@]}" -max_len="$max_len" -rss_limit_mb="$rss_mb" -timeout="$timeout_s" \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
    "$work/$t/new" "${seeds[@]}" "$work/$t/deploy" >"$work/$t/log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -n 1)
  [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$work/$t/log" | tail -n 1 | tr -d '#')
  corpus=$(find "$work/$t/new" -type f | wc -l)
  if [ "$rc" = 0 ]; then
    results+=("$(printf '%-12s %12s executions  %5s new inputs  ok' "$t" "${execs:-?}" "$corpus")")
  else
    failed=1
    results+=("$(printf '%-12s %12s executions  %5s new inputs  CRASHED (exit %s)' "$t" "${execs:-?}" "$corpus" "$rc")")
    log "$t crashed (exit $rc); the end of its log:"
    tail -n 40 "$work/$t/log" >&2
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$work/$t/log" | tail -n 1)
    if [ -n "$artifact" ]; then
      log "reproduce: $bin_dir/$t $artifact"
    fi
  fi
done

printf '[fuzz.sh] %s\n' "results (${seconds}s per target):" >&2
printf '[fuzz.sh]   %s\n' "${results[@]}" >&2
if [ "$failed" != 0 ]; then
  log "FAILED: a fuzz target crashed"
  exit 1
fi
log "no crashes"
