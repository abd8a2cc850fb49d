#!/usr/bin/env bash
# Side by side on one Postgres: graphile-worker (tuned) and Sluice's burn-down, N no-op jobs,
# alternating, RUNS times each, each run on a fresh database. Prints every rate, the medians and
# Sluice's ratio to graphile-worker.
#
#   bench/queue-vs-graphile.sh
#
# Environment: PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres), JOBS (100000),
# RUNS (3), GRAPHILE_VERSION (0.17.3), GW_PROCS (2), GW_CONCURRENCY (24), GW_LOCAL_QUEUE (500),
# SLUICE_BENCH_SLOTS (1024). Needs node + npm (graphile-worker is installed into a temporary
# directory) and cargo.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
export PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export SLUICE_TEST_PG_URL="$PG_ADMIN_URL"
export JOBS="${JOBS:-100000}" SLUICE_BENCH_JOBS="${JOBS:-100000}"
runs="${RUNS:-3}"
version="${GRAPHILE_VERSION:-0.17.3}"
# Backtraces cost every job a capture in wasmtime's store drop; production leaves them off.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

# Which side of the queue the two cores went to: when the cgroup v1 cpuacct controller is
# writable (root), Postgres' processes are moved into a group of their own and both benches
# print Postgres' CPU per job beside their own.
cg=/sys/fs/cgroup/cpuacct/sluice-bench-pg
if [ -z "${SLUICE_BENCH_PG_CPUACCT:-}" ] && mkdir -p "$cg" 2>/dev/null && [ -w "$cg/cgroup.procs" ]; then
    for p in $(pgrep -x postgres; pgrep -f '^postgres: '); do echo "$p" >"$cg/cgroup.procs" 2>/dev/null || true; done
    export SLUICE_BENCH_PG_CPUACCT="$cg/cpuacct.usage"
fi
# Sluice's burn-down tuned as graphile-worker is (its 2 processes hold up to 2 x 500 jobs
# locally): 1,024 worker slots. The node's default (`worker.slots`) is 64.
export SLUICE_BENCH_SLOTS="${SLUICE_BENCH_SLOTS:-1024}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "installing graphile-worker@$version into $tmp"
(cd "$tmp" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund \
    "graphile-worker@$version" pg@8 >/dev/null)
cp "$here/graphile-burndown.js" "$tmp/"

echo "building the Sluice burn-down (release)"
(cd "$repo" && cargo bench -p sluice --bench burndown --no-run 2>&1 | tail -1)

load() { cut -d' ' -f1-3 /proc/loadavg; }
gw=() sl=()
for i in $(seq "$runs"); do
    echo "--- run $i: load average $(load)"
    out="$(cd "$tmp" && node graphile-burndown.js)"
    line="$(grep '^graphile:' <<<"$out")"
    echo "$line"
    grep '^cpu:' <<<"$out" | sed 's/^cpu: /          cpu:/' || true
    gw+=("$(sed -E 's/.*= ([0-9]+) jobs\/s.*/\1/' <<<"$line")")
    echo "    load average $(load)"
    out="$(cd "$repo" && cargo bench -q -p sluice --bench burndown 2>/dev/null)"
    line="$(grep '^work:' <<<"$out")"
    echo "sluice:   ${line#work:   }"
    grep '^cpu:' <<<"$out" | sed 's/^cpu: /          cpu:/' || true
    sl+=("$(sed -E 's/.*= ([0-9]+) jobs\/s.*/\1/' <<<"$line")")
    echo "    load average $(load)"
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
gm="$(median "${gw[@]}")" sm="$(median "${sl[@]}")"
echo "=== $JOBS jobs, $runs runs each, $(nproc) cores"
echo "graphile-worker $version (${GW_PROCS:-2} x ${GW_CONCURRENCY:-24}, localQueue ${GW_LOCAL_QUEUE:-500}): ${gw[*]} jobs/s, median $gm"
echo "sluice burn-down ($SLUICE_BENCH_SLOTS slots): ${sl[*]} jobs/s, median $sm"
awk -v s="$sm" -v g="$gm" 'BEGIN {printf "ratio sluice / graphile-worker (medians): %.2f\n", s / g}'
