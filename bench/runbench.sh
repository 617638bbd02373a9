#!/usr/bin/env bash
# The four rows of bench/README.md's "HTTP load" results: each on a fresh
# database (every run with ingestion adds to today's bucket). Build first:
#   cargo build --release -p pulse -p pulse-bench
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${DB:-pulse_bench_http}
run() {
  name=$1; shift
  dropdb -h 127.0.0.1 -U postgres --if-exists "$DB"
  createdb -h 127.0.0.1 -U postgres "$DB"
  echo "=== $name: $*"
  ./target/release/pulse-bench http --database-url "postgres://postgres@127.0.0.1/$DB" \
    --redis-url redis://127.0.0.1:6379 "$@" 2>&1 | tail -25
}
run a --mode cached
run b --mode cached --ingest-rate 1000
run c --mode uncached
run d --mode dashboard --ingest-rate 1000
