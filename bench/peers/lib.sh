# Shared helpers of the bench/peers/ scripts (sourced, not run).
#
# Every script starts its processes in the background, remembers their pids in `started`, and
# stops exactly those on exit. Builds and installs run niced; the measured part runs under an
# exclusive lock (`BENCH_LOCK`, default /tmp/bench.lock) so that only one measurement at a time
# runs on the machine.

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# Backtraces cost every job a capture in wasmtime's store drop; production leaves them off.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

started=()
databases=()
tmp="$(mktemp -d)"
cleanup() {
    local pid
    for pid in "${started[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${started[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for db in "${databases[@]}"; do
        psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

say() { printf '%s\n' "$*" >&2; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# Take the machine's measurement lock for the rest of the script.
take_bench_lock() {
    exec 9>"${BENCH_LOCK:-/tmp/bench.lock}"
    say "waiting for ${BENCH_LOCK:-/tmp/bench.lock}…"
    flock 9
    say "lock taken at $(date -u +%H:%M:%S) UTC; uptime: $(uptime)"
}

# A release `sluice` binary: $SLUICE_BIN, or target/release/sluice (built, niced, if missing).
sluice_bin() {
    local bin="${SLUICE_BIN:-$repo/target/release/sluice}"
    if [[ ! -x "$bin" ]]; then
        say "building sluice (release)…"
        (cd "$repo" && nice -n 19 cargo build -q --release -p sluice --bin sluice) >&2
    fi
    realpath "$bin"
}

# The open-loop load generator (bench/peers/loadgen), built niced.
loadgen_bin() {
    (cd "$here/loadgen" && nice -n 19 cargo build -q --release) >&2
    printf '%s\n' "$here/loadgen/target/release/peers-loadgen"
}

# Create a fresh database (dropped on exit) and set DB_URL to it. Not in a subshell: it
# records the name for the cleanup.
fresh_db() {
    local name="$1_$$_$(date +%s)"
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $name" >/dev/null
    databases+=("$name")
    DB_URL="${PG_ADMIN_URL%/*}/$name"
}

# Wait until `curl` gets a 2xx from URL (30 s at most).
wait_http() {
    local url="$1" i
    for i in $(seq 300); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    say "no answer from $url after 30 s"
    return 1
}

# Resident memory of a pid, KiB (VmRSS from /proc).
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
