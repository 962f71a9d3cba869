#!/usr/bin/env bash
# After the whole suite: search everything the tests left for a provider
# token or an API token in clear.
#
#   scripts/scan-secrets.sh PG_BIN PG_PORT REDIS_PORT LOG_DIR JUNIT_XML
#
# Searched: every row of every database on the test Postgres (pg_dumpall,
# data only), the test Redis keyspace (an uncompressed RDB snapshot), every
# process log the tests kept under LOG_DIR, and every test's captured output
# (nextest's JUnit report, which stores passing tests' output too).
# Searched for: the marker every provider token of the suite carries
# (`oprun-canary`, tests/common) and the shape of an API token
# (`oprun_<id>_<64 hex>`; only its SHA-256 may be stored). Prints what it
# scanned; exits 1 naming each place a secret was found.
set -euo pipefail
pg_bin=$1 pg_port=$2 redis_port=$3 log_dir=$4 junit=$5
log() { printf '[scan-secrets] %s\n' "$*" >&2; }

work=$(mktemp -d /tmp/oprun-scan.XXXXXX)
trap 'rm -rf "$work"' EXIT

provider_re='oprun-canary'
api_re='oprun_[0-9a-f]{8,}_[0-9a-f]{64}'
found=0
scan() { # scan NAME FILE
  local name=$1 file=$2 hits
  for re in "$provider_re" "$api_re"; do
    hits=$(grep -a -c -E -- "$re" "$file" || true)
    if [ "$hits" != 0 ]; then
      found=1
      log "FOUND: $hits lines of $name match /$re/; where (the secret itself masked):"
      grep -a -o -E -- ".{0,60}$re.{0,20}" "$file" | head -n 3 | sed -E "s/$re/<SECRET>/g; s/^/    /" >&2
    fi
  done
}

# Postgres: every database the tests created.
# (Its warnings about restoring circular foreign keys do not apply: nothing
# is restored.)
"$pg_bin/pg_dumpall" -h 127.0.0.1 -p "$pg_port" -U oprun --data-only >"$work/pg.sql" 2>"$work/pg.err" \
  || { cat "$work/pg.err" >&2; log "FAILED: pg_dumpall"; exit 1; }
dbs=$(grep -c '^\\connect' "$work/pg.sql" || true)
[ "$dbs" -gt 0 ] || { log "FAILED: pg_dumpall shows no database"; exit 1; }
scan "the Postgres dump" "$work/pg.sql"

# Redis: a snapshot without LZF compression, so every value is plain bytes.
redis-cli -p "$redis_port" config set rdbcompression no >/dev/null
redis-cli -p "$redis_port" --rdb "$work/redis.rdb" >/dev/null 2>&1
keys=$(redis-cli -p "$redis_port" dbsize)
scan "the Redis snapshot" "$work/redis.rdb"

# Logs.
cat "$log_dir"/*.log >"$work/logs" 2>/dev/null || true
[ -f "$junit" ] && cat "$junit" >>"$work/logs"
lines=$(wc -l <"$work/logs")
scan "the test logs" "$work/logs"

log "scanned $dbs databases ($(wc -l <"$work/pg.sql") lines), Redis ($keys keys, $(wc -c <"$work/redis.rdb") bytes), $lines log lines"
if [ "$found" != 0 ]; then
  log "FAILED: a secret is stored or logged in clear"
  exit 1
fi
log "no provider token and no API token in clear"
