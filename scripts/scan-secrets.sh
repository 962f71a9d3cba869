#!/usr/bin/env bash
# After the whole suite: search everything the tests left for a secret in
# clear.
#
#   scripts/scan-secrets.sh PG_BIN PG_PORT REDIS_PORT LOG_DIR JUNIT_XML
#   scripts/scan-secrets.sh --files PATH...    (only these files, or every
#                                               file under these directories)
#   scripts/scan-secrets.sh --self-test        (each shape planted alone is
#                                               found and masked; legitimate
#                                               output passes)
#
# Searched: every row of every database on the test Postgres (pg_dumpall,
# data only), the test Redis keyspace (an uncompressed RDB snapshot), every
# process log the tests kept under LOG_DIR (*.log), every SQLite store they
# left there (*.db: each table's rows, a BLOB as its bytes, read with the WAL;
# then the raw bytes of the file and its -wal, so freed pages and frames not
# yet checkpointed count too), and every test's captured output (nextest's
# JUnit report, which stores passing tests' output too, the in-process
# servers' log lines among it; a missing report fails the scan).
# Searched for:
# - the marker every provider token of the suite carries (`oprun-canary`,
#   tests/common), also with its `-` percent-encoded and base64-encoded (a
#   token sent as a Basic credential), in any of base64's three alignments;
# - the shape of an API token (`oprun_<id>_<64 hex>`; only its SHA-256 may be
#   stored);
# - shapes no test output holds unless a secret leaked (the suite's own
#   servers take no password, so none of them is legitimate): an AWS access
#   key id (AKIA…/ASIA…), a signed URL's signature value (`sig=`,
#   `X-Amz-Signature=`), a Basic credential, a URL password
#   (`scheme://user:pw@`), a percent-encoded secret pair
#   (`password%3D…`, `access%5Ftoken%3D…`; paging cursors excepted).
#   Redacted values (`[REDACTED]`) do not match.
# Prints what it scanned; exits 1 naming each place a secret was found (the
# database and table, the test, or the file and line), the secret masked.
set -euo pipefail
log() { printf '[scan-secrets] %s\n' "$*" >&2; }

# NAME<TAB>PATTERN<TAB>REQUIRE<TAB>ALLOW (grep -E; `-` for none): a match of
# PATTERN is a finding when it also matches REQUIRE and does not match ALLOW.
b64='[A-Za-z0-9+/]'
patterns=(
  $'provider token marker\toprun(-|%2[dD])canary[A-Za-z0-9_-]*\t-\t-'
  $'provider token marker, base64\tb3BydW4tY2FuYXJ5|9wcnVuLWNhbmFye|vcHJ1bi1jYW5hcn\t-\t-'
  $'API token\toprun(_|%5[fF])[0-9a-f]{8,}(_|%5[fF])[0-9a-f]{64}\t-\t-'
  $'AWS access key id\t(^|[^A-Za-z0-9])(AKIA|ASIA)[0-9A-Z]{16}([^A-Za-z0-9]|$)\t-\t-'
  $'signed URL signature\t(^|[^A-Za-z0-9_-])([sS]ig|[sS]ignature|X-Amz-Signature)=[A-Za-z0-9%+/=._~-]{6,}\t-\t-'
  # Base64 of at least 8 characters, with a digit, + or / or padding ("Basic
  # settings" is prose).
  "Basic credential"$'\t'"[Bb]asic +($b64{4}){2,}($b64{2}==|$b64{3}=)?"$'\t'"[0-9+/=]"$'\t-'
  # The first character of the password is no `[` (of [REDACTED]).
  $'URL password\t[A-Za-z][A-Za-z0-9+.-]*://[^:/@[:space:]"\'<>]*:[^[@[:space:]"\'<>/][^@[:space:]"\'<>/]*@\t-\t-'
  # A value that is no %5B ([REDACTED]), %26 (&) or %20 (space); paging
  # cursors (skip%5Ftoken, %24skiptoken, nextPageToken) are not secrets.
  $'percent-encoded secret pair\t[A-Za-z0-9_%-]*([Pp]ass(wor)?d|[Ss]ecret|[Tt]oken|[Aa]pi(%5[fF]|_)?[Kk]ey)%3[dDaA]([^%&[:space:]"]|%([013-46-9A-Fa-f][0-9A-Fa-f]|2[1-57-9A-Fa-f]|5[0-9AC-Fac-f]))[^&[:space:]"]*\t-\t([Pp]age|[Nn]ext|[Ss]kip|[Dd]elta|[Cc]ontinuation|[Ss]ync)(%5[fF]|_)?[Tt]oken%3'
)

work=$(mktemp -d /tmp/oprun-scan.XXXXXX)
trap 'rm -rf "$work"' EXIT
found=0

# Where line LINE of FILE is, for KIND: pg (database and table), junit (the
# test), redis (the snapshot's line), sqlite (the SQLite file and table, from
# the last section header at or before LINE), else the file and line.
where() { # where KIND FILE LINE
  local kind=$1 file=$2 line=$3
  case $kind in
    sqlite) grep -a -n -F -- "$sqlite_mark" "$file" | awk -F '\t' -v n="$line" '
          { split($1, a, ":"); if (a[1] + 0 > n + 0) exit; f = $2; what = $3 }
          END { printf "SQLite file %s, %s", (f == "" ? "?" : f), (what == "" ? "?" : what) }' ;;
    pg) awk -v n="$line" '
          /^\\connect / { db = $2 }
          /^COPY / { t = $2 }
          /^\\\.$/ { t = "" }
          NR == n { printf "database %s, %s", db, (t == "" ? "outside a table" : "table " t); exit }' "$file" ;;
    junit) awk -v n="$line" '
          function attr(s, a) { return match(s, " " a "=\"[^\"]*\"") ? substr(s, RSTART + length(a) + 3, RLENGTH - length(a) - 4) : "?" }
          /<testcase / { s = substr($0, index($0, "<testcase ")); tc = attr(s, "classname") " " attr(s, "name") }
          NR == n { printf "test %s", (tc == "" ? "(none)" : tc); exit }' "$file" ;;
    redis) printf 'snapshot line %s (an RDB file: the key precedes its value)' "$line" ;;
    *) printf '%s line %s' "$file" "$line" ;;
  esac
}

scan() { # scan KIND NAME FILE
  local kind=$1 name=$2 file=$3 entry pname re require allow hits
  for entry in "${patterns[@]}"; do
    IFS=$'\t' read -r pname re require allow <<<"$entry"
    # Matches, one per line as LINE:TEXT; REQUIRE and ALLOW look at TEXT.
    grep -a -n -o -E -- "$re" "$file" >"$work/hits" || true
    if [ "$require" != - ]; then
      grep -a -E -- "^[0-9]+:.*($require)" "$work/hits" >"$work/kept" || true
      mv "$work/kept" "$work/hits"
    fi
    if [ "$allow" != - ]; then
      grep -a -v -E -- "^[0-9]+:.*($allow)" "$work/hits" >"$work/kept" || true
      mv "$work/kept" "$work/hits"
    fi
    hits=$(wc -l <"$work/hits")
    [ "$hits" != 0 ] || continue
    found=1
    log "FOUND in $name: $hits matches of: $pname; where (the secret itself masked):"
    head -n 3 "$work/hits" | while IFS= read -r hit; do
      n=${hit%%:*} text=${hit#*:}
      line=$(sed -n "${n}p" "$file" | tr -d '\000')
      before=${line%%"$text"*} after=${line#*"$text"}
      [ ${#before} -le 60 ] || before=${before: -60}
      printf '    %s: %s\n' "$(where "$kind" "$file" "$n")" "$(printf '%s<SECRET>%s' "$before" "${after:0:20}" | mask)" >&2
    done
  done
}

# dump_sqlite OUT FILE...: into OUT, for each SQLite FILE, every table's rows
# (list mode: a BLOB as its bytes), then the raw bytes of FILE and FILE-wal,
# each part under a header line `SQLITE_MARK<TAB>FILE<TAB>WHAT`. A copy is
# read (with its WAL), so the tests' files stay as they were. A file that
# cannot be read fails the scan: it cannot be shown clean.
sqlite_mark='-- oprun-scan: SQLite part'
unreadable=0
dump_sqlite() {
  local out=$1 f copy t tables part
  shift
  : >"$out"
  copy="$work/sqlite-copy.db"
  for f in "$@"; do
    rm -f "$copy" "$copy-wal" "$copy-shm"
    cp "$f" "$copy"
    [ ! -f "$f-wal" ] || cp "$f-wal" "$copy-wal"
    if ! tables=$(sqlite3 -batch -noheader "$copy" \
      "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name" 2>"$work/sqlite.err"); then
      log "FAILED: cannot read the SQLite file $f: $(head -c 300 "$work/sqlite.err")"
      unreadable=1
      continue
    fi
    while IFS= read -r t; do
      [ -n "$t" ] || continue
      printf '.print "\\n%s\\t%s\\ttable %s"\nSELECT * FROM "%s";\n' \
        "$sqlite_mark" "${f//\"/}" "${t//\"/}" "${t//\"/\"\"}"
    done <<<"$tables" >"$work/sqlite.sql"
    if ! sqlite3 -batch -list -noheader "$copy" <"$work/sqlite.sql" >>"$out" 2>"$work/sqlite.err"; then
      log "FAILED: cannot read the rows of the SQLite file $f: $(head -c 300 "$work/sqlite.err")"
      unreadable=1
    fi
    for part in "$f" "$f-wal"; do
      [ -f "$part" ] || continue
      printf '\n%s\t%s\traw bytes of %s (freed pages and WAL frames too)\n' "$sqlite_mark" "$f" "$(basename "$part")" >>"$out"
      cat "$part" >>"$out"
    done
  done
}

# Stdin with every match of every pattern masked (a context shows no other
# secret either).
mask() {
  local entry pname re rest script=()
  for entry in "${patterns[@]}"; do
    IFS=$'\t' read -r pname re rest <<<"$entry"
    script+=(-e "s"$'\001'"$re"$'\001'"<SECRET>"$'\001'"g")
  done
  sed -E "${script[@]}" | LC_ALL=C tr -c '[:print:]\n' '.' | cut -c1-160
}

if [ "${1:-}" = --self-test ]; then
  # Each shape planted alone must fail the scan under its own name; text the
  # suite legitimately writes (redacted values, paging cursors, local URLs)
  # must pass.
  b=$(printf 'user:tok-oprun-canary-x' | base64 | tr -d '\n')
  # NAME<TAB>TEXT<TAB>THE SECRET IN IT
  planted=(
    $'provider token marker\tbad token tok-oprun-canary-leak\toprun-canary-leak'
    "provider token marker, base64"$'\t'"header $b"$'\t'"$b"
    $'API token\ttoken oprun_0190b2c4_'"$(printf '%064d' 7)"$'\t'"$(printf '%064d' 7)"
    $'AWS access key id\tkey AKIAIOSFODNN7EXAMPLE used\tAKIAIOSFODNN7EXAMPLE'
    $'signed URL signature\tGET /c?sv=2022&sig=sv-sas-signature-value-3Fq9&se=x\tsv-sas-signature-value-3Fq9'
    $'signed URL signature\tX-Amz-Signature=aws-signature-value-7c1e\taws-signature-value-7c1e'
    $'Basic credential\tAuthorization: Basic YWRhOnMzY3IzdA==\tYWRhOnMzY3IzdA=='
    $'URL password\tstore postgres://app:hunter2@db:5432/oprun\thunter2'
    $'percent-encoded secret pair\tstate=access%5Ftoken%3Dabc123&x=1\tabc123'
  )
  clean='store postgres://oprun@127.0.0.1:55432/db queue redis://127.0.0.1:56379/ sig=[REDACTED]
Authorization: [REDACTED] password=[REDACTED] postgres://app:[REDACTED]@db/x X-Amz-Signature=[REDACTED]
GET http://127.0.0.1:43210/v1.0/users/ada@contoso.com?%24skiptoken%3Dcursor-2&page%5Ftoken%3Dp-3 nextPageToken%3Dxyz
Basic settings apply; basic auth is not supported; access%5Ftoken%3D%5BREDACTED%5D design=blue signature verified
run 0190b2c4-7e1a-7c3d-9f2e-4b5a6c7d8e9f sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
  failed=0
  for entry in "${planted[@]}"; do
    IFS=$'\t' read -r pname text secret <<<"$entry"
    printf '%s\n' "$text" >"$work/planted.log"
    out=$("$0" --files "$work/planted.log" 2>&1) && { log "SELF-TEST FAILED: a $pname passed: $text"; failed=1; continue; }
    grep -q -F "matches of: $pname;" <<<"$out" || { log "SELF-TEST FAILED: a $pname was not named: $out"; failed=1; }
    ! grep -q -F -- "$secret" <<<"$out" || { log "SELF-TEST FAILED: a $pname was shown unmasked: $out"; failed=1; }
  done
  printf '%s\n' "$clean" >"$work/clean.log"
  out=$("$0" --files "$work/clean.log" 2>&1) || { log "SELF-TEST FAILED: legitimate output failed the scan: $out"; failed=1; }

  # SQLite stores: a token in a TEXT row, in a BLOB (the SQLite queue's job
  # payloads) and in a row only the WAL holds (a test process that exited with
  # its pool open) is found, named by file and table, and masked; a store of
  # legitimate rows passes.
  # TABLE<TAB>SQL (SECRET for the secret; WAL: a row left in the WAL alone)
  sqlite_planted=(
    $'operation_runs\tCREATE TABLE operation_runs(id TEXT, failure_summary TEXT); INSERT INTO operation_runs VALUES (\'r1\', \'provider said: Bearer SECRET\');'
    $'Jobs\tCREATE TABLE Jobs(id TEXT, job BLOB); INSERT INTO Jobs VALUES (\'j1\', CAST(\'{"token":"SECRET"}\' AS BLOB));'
    $'audit_events\tWAL'
  )
  n=0
  for entry in "${sqlite_planted[@]}"; do
    IFS=$'\t' read -r table sql <<<"$entry"
    n=$((n + 1))
    secret="tok-oprun-canary-sqlite-$n"
    mkdir -p "$work/sqlite-$n"
    db="$work/sqlite-$n/oprun.db"
    if [ "$sql" = WAL ]; then
      python3 - "$db" "$table" "$secret" <<'PY'
import os, sqlite3, sys
db, table, secret = sys.argv[1:]
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=wal")
c.execute("PRAGMA wal_autocheckpoint=0")
c.execute(f"CREATE TABLE {table}(id TEXT, detail TEXT)")
c.execute(f"INSERT INTO {table} VALUES ('a1', ?)", (secret,))
os._exit(0)  # no close, so no checkpoint: the row is in the WAL alone
PY
      if grep -a -q -F -- "$secret" "$db" || ! grep -a -q -F -- "$secret" "$db-wal"; then
        log "SELF-TEST FAILED: the WAL case is not set up (the row should be in $db-wal alone)"
        failed=1
      fi
    else
      sqlite3 "$db" "${sql//SECRET/$secret}"
    fi
    out=$("$0" --files "$work/sqlite-$n" 2>&1) && { log "SELF-TEST FAILED: a token in SQLite table $table passed"; failed=1; continue; }
    grep -q -F "SQLite file $db, table $table:" <<<"$out" \
      || { log "SELF-TEST FAILED: a token in SQLite table $table was not named by file and table: $out"; failed=1; }
    ! grep -q -F -- "$secret" <<<"$out" || { log "SELF-TEST FAILED: a token in SQLite table $table was shown unmasked: $out"; failed=1; }
  done
  mkdir -p "$work/sqlite-clean"
  sqlite3 "$work/sqlite-clean/oprun.db" "CREATE TABLE operation_runs(id TEXT, failure_summary TEXT, job BLOB);
    INSERT INTO operation_runs VALUES ('r1', '${clean//\'/\'\'}', CAST('${clean//\'/\'\'}' AS BLOB));"
  out=$("$0" --files "$work/sqlite-clean" 2>&1) || { log "SELF-TEST FAILED: a SQLite store of legitimate rows failed the scan: $out"; failed=1; }
  [ "$failed" = 0 ] || exit 1
  log "self-test: ${#planted[@]} planted secrets and ${#sqlite_planted[@]} in SQLite stores found and masked, legitimate output passes"
  exit 0
fi

if [ "${1:-}" = --files ]; then
  shift
  [ $# -gt 0 ] || { log "usage: scan-secrets.sh --files PATH..."; exit 2; }
  files=0
  sqlite_files=()
  while IFS= read -r -d '' f; do
    files=$((files + 1))
    case $f in
      *.db) sqlite_files+=("$f"); continue ;;
      # Read with its database (a WAL without one is scanned as bytes).
      *.db-wal | *.db-shm) [ ! -f "${f%-*}" ] || continue ;;
    esac
    case $f in *.xml) kind=junit ;; *.sql) kind=pg ;; *) kind=file ;; esac
    scan "$kind" "$f" "$f"
  done < <(find "$@" -type f -print0)
  if [ ${#sqlite_files[@]} -gt 0 ]; then
    dump_sqlite "$work/sqlite.txt" "${sqlite_files[@]}"
    scan sqlite "the SQLite files" "$work/sqlite.txt"
  fi
  log "scanned $files files (${#sqlite_files[@]} SQLite)"
else
  [ $# -eq 5 ] || { log "usage: scan-secrets.sh PG_BIN PG_PORT REDIS_PORT LOG_DIR JUNIT_XML | --files PATH..."; exit 2; }
  pg_bin=$1 pg_port=$2 redis_port=$3 log_dir=$4 junit=$5

  # Postgres: every database the tests created.
  # (Its warnings about restoring circular foreign keys do not apply: nothing
  # is restored.)
  "$pg_bin/pg_dumpall" -h 127.0.0.1 -p "$pg_port" -U oprun --data-only >"$work/pg.sql" 2>"$work/pg.err" \
    || { cat "$work/pg.err" >&2; log "FAILED: pg_dumpall"; exit 1; }
  dbs=$(grep -c '^\\connect' "$work/pg.sql" || true)
  [ "$dbs" -gt 0 ] || { log "FAILED: pg_dumpall shows no database"; exit 1; }
  scan pg "the Postgres dump" "$work/pg.sql"

  # Redis: a snapshot without LZF compression, so every value is plain bytes.
  redis-cli -p "$redis_port" config set rdbcompression no >/dev/null
  redis-cli -p "$redis_port" --rdb "$work/redis.rdb" >/dev/null 2>&1
  keys=$(redis-cli -p "$redis_port" dbsize)
  scan redis "the Redis snapshot" "$work/redis.rdb"

  # The SQLite stores the tests left (TestStore keeps them under
  # LOG_DIR/sqlite).
  : >"$work/sqlite.txt"
  mapfile -d '' -t sqlite_files < <(find "$log_dir" -type f -name '*.db' -print0 | sort -z)
  if [ ${#sqlite_files[@]} -gt 0 ]; then
    dump_sqlite "$work/sqlite.txt" "${sqlite_files[@]}"
    scan sqlite "the SQLite stores" "$work/sqlite.txt"
  fi

  # Logs, one file at a time (a finding names its file), then the captured
  # test output: without it the in-process servers' and the tests' own lines
  # go unread, so a missing report fails the scan.
  lines=0
  while IFS= read -r -d '' f; do
    lines=$((lines + $(wc -l <"$f")))
    scan file "the process log ${f#"$log_dir"/}" "$f"
  done < <(find "$log_dir" -type f -name '*.log' -print0 | sort -z)
  [ -s "$junit" ] || { log "FAILED: no captured test output at $junit (nextest writes it: .config/nextest.toml)"; exit 1; }
  lines=$((lines + $(wc -l <"$junit")))
  scan junit "the captured test output ($junit)" "$junit"

  log "scanned $dbs databases ($(wc -l <"$work/pg.sql") lines), Redis ($keys keys, $(wc -c <"$work/redis.rdb") bytes), ${#sqlite_files[@]} SQLite files ($(wc -c <"$work/sqlite.txt") bytes), $lines log lines"
fi
if [ "$unreadable" != 0 ]; then
  log "FAILED: a SQLite file could not be read (see above)"
  exit 1
fi
if [ "$found" != 0 ]; then
  log "FAILED: a secret is stored or logged in clear"
  exit 1
fi
log "no secret in clear"
