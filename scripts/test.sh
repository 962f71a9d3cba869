#!/usr/bin/env bash
# The one test command (README, .ci/run): on a fresh machine it installs what
# is missing (cargo-nextest with cargo; Postgres, Redis, sqlite3, Chromium and
# chromedriver with apt),
# starts a throwaway Postgres and Redis on loopback ports in a temp dir,
# exports their URLs and the Postgres binaries' directory, checks formatting
# and lints, runs the whole workspace's tests with nextest (it keeps every
# test's output, passing or not, for the scan), scans everything the tests
# left for a secret in clear (scripts/scan-secrets.sh), fuzzes every parser
# of outside input for a bounded time (scripts/fuzz.sh, OPRUN_FUZZ_SECONDS per
# target, default 15; 0 skips it), and stops what it started (by pid).
#
#   scripts/test.sh [extra args for the test runner]
#
# Longer variants: OPRUN_LOAD_RUNS=100000 (the load test, default 2,000),
# OPRUN_FUZZ_SECONDS=300.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }

# nextest, first: it runs each test in its own process and writes every
# test's captured output to target/nextest/default/junit.xml
# (.config/nextest.toml), which the secret scan reads. `cargo test` keeps no
# output of passing tests, so there is no falling back to it.
if ! cargo nextest --version >/dev/null 2>&1; then
  log "cargo-nextest is missing: cargo install cargo-nextest --locked"
  cargo install cargo-nextest --locked \
    || { log "FAILED: cargo-nextest is missing and could not be installed (cargo install cargo-nextest --locked); the tests need it"; exit 1; }
  cargo nextest --version >/dev/null 2>&1 \
    || { log "FAILED: cargo-nextest was installed but \`cargo nextest\` does not run (is ${CARGO_HOME:-~/.cargo}/bin on PATH?)"; exit 1; }
fi

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
# The dashboard's tests drive a real Chromium through its WebDriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

work=$(mktemp -d /tmp/oprun-test.XXXXXX)
chmod 755 "$work"
pg_pid=""
redis_pid=""
cleanup() {
  set +e
  # The dashboard tests' screenshots outlive the run, for a person to look at.
  if [ -d "$work/logs/screenshots" ]; then
    rm -rf "${CARGO_TARGET_DIR:-target}/ui-screenshots"
    cp -r "$work/logs/screenshots" "${CARGO_TARGET_DIR:-target}/ui-screenshots" \
      && log "dashboard screenshots: ${CARGO_TARGET_DIR:-target}/ui-screenshots"
  fi
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null; fi
  if [ -n "$pg_pid" ]; then
    # runuser forks: signal the postmaster itself (first line of postmaster.pid).
    pm=$(head -n 1 "$work/pg/data/postmaster.pid" 2>/dev/null || true)
    [ -n "$pm" ] && kill -INT "$pm" 2>/dev/null
    kill -INT "$pg_pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pg_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pg_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Postgres refuses to run as root: run it as the postgres system user (or the
# current user when not root).
as_pg=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  as_pg=(runuser -u postgres --)
fi
pg_port=$(free_port)
mkdir -p "$work/pg"
[ ${#as_pg[@]} -eq 0 ] || chown postgres "$work/pg"
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg/data" -U oprun --auth=trust -E UTF8 --locale=C.UTF-8 >"$work/initdb.log" 2>&1 \
  || { cat "$work/initdb.log" >&2; exit 1; }
# fsync stays on: tests and benchmarks see real durability costs.
"${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg/data" -h 127.0.0.1 -p "$pg_port" -k "$work/pg" \
  -c max_connections=400 -c shared_buffers=256MB >"$work/pg/postgres.log" 2>&1 &
pg_pid=$!

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --rdbcompression no --dir "$work" \
  --daemonize no >"$work/redis.log" 2>&1 &
redis_pid=$!

for _ in $(seq 1 100); do
  "$pg_bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q && break
  kill -0 "$pg_pid" 2>/dev/null || { cat "$work/pg/postgres.log" >&2; exit 1; }
  sleep 0.2
done
"$pg_bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q || { log "Postgres did not start"; cat "$work/pg/postgres.log" >&2; exit 1; }
for _ in $(seq 1 100); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$redis_port" ping >/dev/null || { log "Redis did not start"; cat "$work/redis.log" >&2; exit 1; }

export OPRUN_TEST_POSTGRES_URL="postgres://oprun@127.0.0.1:$pg_port/postgres"
export OPRUN_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/"
export OPRUN_TEST_PG_BIN="$pg_bin"
# Process logs and the tests' SQLite stores (OPRUN_TEST_LOG_DIR/sqlite) stay
# here until the scan has read them.
export OPRUN_TEST_LOG_DIR="$work/logs"
mkdir -p "$OPRUN_TEST_LOG_DIR"
log "Postgres $pg_bin on 127.0.0.1:$pg_port (pid $pg_pid), Redis on 127.0.0.1:$redis_port (pid $redis_pid)"

log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings
log "tests"
junit=${CARGO_TARGET_DIR:-target}/nextest/default/junit.xml
rm -f "$junit"
cargo nextest run --workspace --all-features --no-fail-fast "$@"
log "secret scan"
scripts/scan-secrets.sh --self-test
scripts/scan-secrets.sh "$pg_bin" "$pg_port" "$redis_port" "$OPRUN_TEST_LOG_DIR" "$junit"
fuzz_seconds=${OPRUN_FUZZ_SECONDS:-15}
if [ "$fuzz_seconds" != 0 ]; then
  log "fuzzing (${fuzz_seconds}s per target)"
  scripts/fuzz.sh "$fuzz_seconds"
fi
