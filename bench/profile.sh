#!/usr/bin/env bash
# Profiles the GraphQL hot path of a release `pulse` server: where the CPU
# of a cached metric request goes (JWT verification, GraphQL parse and
# validation, the hot cache, serialization, ...). See bench/README.md,
# "HTTP load: cached metrics (issue #11)".
#
#   PROFILER=callgrind (default): the server runs under valgrind with
#     instrumentation off; after a warm-up it is switched on for exactly
#     REQUESTS requests (`pulse-bench http --requests`), dumped, and the
#     inclusive instruction counts are grouped. Deterministic, counts
#     instructions (not time: no kernel, no cache misses, no waiting).
#   PROFILER=perf: the server runs normally and `perf record` samples it
#     (user and kernel, DWARF call graphs) during SECONDS of the real load
#     at CONNECTIONS connections; the inclusive ("children") shares are
#     grouped the same way.
#
# Environment (defaults in brackets): DATABASE_URL
# [postgres://postgres@127.0.0.1/pulse_bench_http], REDIS_URL
# [redis://127.0.0.1:6379; empty: in-process cache], MODE [cached],
# REQUESTS [2000], WARMUP_REQUESTS [300], CONNECTIONS [4 for callgrind, 64
# for perf], PERF_SECONDS [10], PORT [18099], OUT [/tmp/pulse-profile],
# TARGET_DIR [target], TOP [40] (lines of the raw inclusive listing shown).
#
# Build first: cargo build --release -p pulse -p pulse-bench
set -euo pipefail

PROFILER=${PROFILER:-callgrind}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1/pulse_bench_http}
REDIS_URL=${REDIS_URL-redis://127.0.0.1:6379}
MODE=${MODE:-cached}
REQUESTS=${REQUESTS:-2000}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-300}
PERF_SECONDS=${PERF_SECONDS:-10}
PORT=${PORT:-18099}
OUT=${OUT:-/tmp/pulse-profile}
TARGET_DIR=${TARGET_DIR:-target}
TOP=${TOP:-40}
PULSE=$TARGET_DIR/release/pulse
BENCH=$TARGET_DIR/release/pulse-bench
HERE=$(cd "$(dirname "$0")" && pwd)

case $PROFILER in
callgrind) CONNECTIONS=${CONNECTIONS:-4} ;;
perf) CONNECTIONS=${CONNECTIONS:-64} ;;
*) echo "PROFILER must be callgrind or perf" >&2; exit 2 ;;
esac
for bin in "$PULSE" "$BENCH"; do
    [[ -x $bin ]] || { echo "no $bin: cargo build --release -p pulse -p pulse-bench" >&2; exit 2; }
done
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.out.* "$OUT"/perf.data*

export PULSE_DATABASE_URL=$DATABASE_URL
export PULSE_JWT_SECRET=pulse-bench-secret-not-for-production
export PULSE_DEMO=0 PULSE_LOG=warn
export PULSE_HOT_CACHE=$([[ $MODE == uncached ]] && echo 0 || echo 1)
if [[ -n $REDIS_URL ]]; then export PULSE_REDIS_URL=$REDIS_URL; else unset PULSE_REDIS_URL; fi
base=http://127.0.0.1:$PORT

# `pulse-bench http` against the server started here: it seeds the demo
# data (a no-op when present), raises the tenant's limits, mints the
# tokens with the bench secret, and checks every answer.
bench() {
    "$BENCH" http --pulse "$PULSE" --database-url "$DATABASE_URL" --external "$base" \
        --mode "$MODE" "$@"
}

server_pid= perf_pid=
cleanup() {
    [[ -n $perf_pid ]] && kill -INT "$perf_pid" 2>/dev/null
    [[ -n $server_pid ]] && kill -TERM "$server_pid" 2>/dev/null
    true
}
trap cleanup EXIT

# Seed before the server starts (seeding under valgrind would take ages).
"$PULSE" seed-demo >"$OUT/seed.log" 2>&1 || { cat "$OUT/seed.log" >&2; exit 1; }

if [[ $PROFILER == callgrind ]]; then
    valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$OUT/callgrind.out.%p" \
        "$PULSE" serve --listen "127.0.0.1:$PORT" 2>"$OUT/valgrind.log" &
else
    "$PULSE" serve --listen "127.0.0.1:$PORT" &
fi
server_pid=$!
echo "profile.sh: $PROFILER, mode $MODE, server pid $server_pid; waiting for /readyz"
for _ in $(seq 1 600); do
    curl -fs "$base/readyz" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fs "$base/readyz" >/dev/null || { echo "the server did not become ready" >&2; exit 1; }

echo "profile.sh: warm-up, $WARMUP_REQUESTS requests"
bench --connections "$CONNECTIONS" --warmup 0s --requests "$WARMUP_REQUESTS" | sed 's/^/  /'

if [[ $PROFILER == callgrind ]]; then
    callgrind_control --instr=on "$server_pid" >/dev/null
    echo "profile.sh: instrumented, $REQUESTS requests"
    bench --connections "$CONNECTIONS" --warmup 0s --requests "$REQUESTS" | sed 's/^/  /'
    callgrind_control --dump=measured "$server_pid" >/dev/null
    callgrind_control --instr=off "$server_pid" >/dev/null
    kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=
    # The dump of the measured part (the final dump at exit is empty of it).
    dump=$(grep -l "^desc: Trigger: .*measured" "$OUT"/callgrind.out.* | head -1)
    [[ -n $dump ]] || { echo "no measured dump in $OUT" >&2; exit 1; }
    callgrind_annotate --inclusive=yes --threshold=99.9 "$dump" >"$OUT/inclusive.txt"
    echo "profile.sh: $dump, $REQUESTS requests; inclusive listing in $OUT/inclusive.txt"
    python3 "$HERE/profile_groups.py" callgrind "$dump" "$REQUESTS" "$TOP"
else
    perf record -e cpu-clock -F 249 -g --call-graph dwarf,65528 -p "$server_pid" -o "$OUT/perf.data" \
        2>"$OUT/perf-record.log" &
    perf_pid=$!
    sleep 1
    echo "profile.sh: perf recording, $PERF_SECONDS s at $CONNECTIONS connections"
    bench --connections "$CONNECTIONS" --warmup 0s --duration "${PERF_SECONDS}s" | sed 's/^/  /'
    kill -INT "$perf_pid"; wait "$perf_pid" || true; perf_pid=
    kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=
    perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none --no-inline \
        --percent-limit 0.05 2>/dev/null >"$OUT/inclusive.txt"
    echo "profile.sh: $OUT/perf.data; inclusive listing in $OUT/inclusive.txt"
    python3 "$HERE/profile_groups.py" perf "$OUT/inclusive.txt" 0 "$TOP"
fi
