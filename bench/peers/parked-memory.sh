#!/usr/bin/env bash
# Memory of parked jobs: JOBS (10,000) jobs, each waiting in one model call on a slow simulated
# provider (`sluice sim-provider --ttft-ms PARK_MS`, default 300 s to the first token), and the
# resident memory (VmRSS from /proc) of the process holding them:
# - Sluice: one `sluice up` node on Postgres, worker.slots = JOBS + 1 (one for a warm-up job),
#   tenant_share 1.0, engine.max_instances = JOBS + 1, call and job timeouts past PARK_MS; each
#   job is bench/peers/one-call (one `fast` chat call through the gateway), submitted through
#   the batch endpoint, 1,000 jobs a request.
#   Each parked job holds a live wasm instance (its store and linear memory), its gateway call
#   and an HTTP connection to the provider.
# - graphile-worker (peer): one Node process, concurrency JOBS, each job one `fetch` to the same
#   simulator (bench/peers/graphile-parked.js).
# Idle RSS is read with the worker running on an empty queue; parked RSS is the highest of ten
# samples over 3 s once the simulator holds JOBS unanswered chat requests (every job is in its
# call; the run fails if that takes longer than PARK_MS, when the first calls start to return).
# Prints both, the growth per parked job and the ratio.
#
# Environment: JOBS (10000), PARK_MS (300000), PEER (1: also graphile-worker),
# GRAPHILE_VERSION (0.17.3), SLUICE_BIN, PG_ADMIN_URL, SIM_PORT (19091), SLUICE_PORT (18081),
# BENCH_LOCK.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

jobs="${JOBS:-10000}" park_ms="${PARK_MS:-300000}"
sim_port="${SIM_PORT:-19091}" sl_port="${SLUICE_PORT:-18081}"
sim="http://127.0.0.1:$sim_port"

sluice="$(sluice_bin)"
(cd "$here/one-call" && nice -n 19 cargo build -q --release --target wasm32-wasip2) >&2
component="$here/one-call/target/wasm32-wasip2/release/one_call.wasm"
if [[ ${PEER:-1} == 1 ]]; then
    say "installing graphile-worker@${GRAPHILE_VERSION:-0.17.3} into $tmp"
    (cd "$tmp" && npm init -y >/dev/null && nice -n 19 npm install --silent --no-audit \
        --no-fund "graphile-worker@${GRAPHILE_VERSION:-0.17.3}" pg@8 >/dev/null)
    cp "$here/graphile-parked.js" "$tmp/"
fi
# Each parked call holds a socket on both ends.
ulimit -n "$(ulimit -Hn)"

start_sim() {
    "$sluice" sim-provider --listen "127.0.0.1:$sim_port" --ttft-ms "$park_ms" \
        --tokens-per-sec 0 2>>"$tmp/sim.log" &
    sim_pid=$!
    started+=($sim_pid)
}
start_sim

fresh_db peers_parked
cat >"$tmp/sluice.toml" <<EOF
[server]
listen = "127.0.0.1:$sl_port"
[database]
url = "$DB_URL"
data_dir = "$tmp/sluice-data"
[engine]
max_instances = $((jobs + 1))
default_timeout_secs = $((park_ms / 1000 + 600))
[worker]
slots = $((jobs + 1))
tenant_share = 1.0
[gateway]
max_call_ms = $((park_ms + 300000))
[gateway.cache]
enabled = false
[gateway.providers.sim]
kind = "openai"
base_url = "$sim/v1"
api_key = "sk-sim"
timeout_ms = $((park_ms + 300000))
[gateway.models."sim/gpt-4o-mini"]
name = "gpt-4o-mini"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
[gateway.aliases]
fast = ["sim/gpt-4o-mini"]
EOF
sl() { "$sluice" --config "$tmp/sluice.toml" "$@"; }
sl migrate >/dev/null
key="$(sl keys create --tenant default --scopes admin 2>/dev/null)"
(cd "$tmp" && exec "$sluice" --config "$tmp/sluice.toml" up >"$tmp/sluice.log" 2>&1) &
node_pid=$!
started+=($node_pid)
wait_http "$sim/health"
wait_http "http://127.0.0.1:$sl_port/healthz"
SLUICE_URL="http://127.0.0.1:$sl_port" SLUICE_API_KEY="$key" \
    "$sluice" deploy "$component" --name one-call >&2

# Chat requests the simulator has received and not answered yet.
in_flight() {
    curl -fsS "$sim/admin/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin)
print(s["chat_requests"] - s["ok"] - s["rate_limited"] - s["server_errors"] - s["client_errors"] - s["broken"])'
}

take_bench_lock
uptime_before="$(uptime)"
# Warm the path (the component's first instance, the gateway's client) with one job.
curl -fsS -o /dev/null -H "Authorization: Bearer $key" -H 'content-type: application/json' \
    -X POST "http://127.0.0.1:$sl_port/v1/plugins/one-call/jobs" -d '{"input":"warm"}'
for i in $(seq 100); do [[ $(in_flight) -ge 1 ]] && break; sleep 0.1; done
sleep 1
idle_kib="$(rss_kib "$node_pid")"
base="$(in_flight)"
t0="$(date +%s.%N)"
say "submitting $jobs jobs in batches of 1,000 (idle RSS $idle_kib KiB)"
for ((first = 0; first < jobs; first += 1000)); do
    python3 -c 'import json,sys; a,n=int(sys.argv[1]),int(sys.argv[2])
print(json.dumps({"jobs": [{"input": f"parked {i}"} for i in range(a, min(a + 1000, n))]}))' \
        "$first" "$jobs" >"$tmp/batch.json"
    curl -fsS -o /dev/null -H "Authorization: Bearer $key" -H 'content-type: application/json' \
        -X POST "http://127.0.0.1:$sl_port/v1/plugins/one-call/jobs/batch" --data-binary @"$tmp/batch.json"
done
# The first calls are answered after PARK_MS: every job must be in its call before that.
deadline=$((SECONDS + park_ms / 1000 - 2))
while (($(in_flight) - base < jobs)); do
    if ((SECONDS > deadline)); then
        say "only $(($(in_flight) - base)) of $jobs jobs were in their model call at once; raise PARK_MS"
        tail -5 "$tmp/sluice.log" >&2
        exit 1
    fi
    ((SECONDS % 10 == 0)) && say "  $(($(in_flight) - base)) in their call"
    sleep 0.2
done
park_secs="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')"
parked_kib=0
for i in $(seq 10); do
    r="$(rss_kib "$node_pid")"
    ((r > parked_kib)) && parked_kib=$r
    sleep 0.3
done
hwm_kib="$(awk '/^VmHWM:/ {print $2}' "/proc/$node_pid/status")"
kill -9 "$node_pid" 2>/dev/null || true
# A fresh simulator for the peer: the killed node's calls would otherwise still count.
kill "$sim_pid" && wait "$sim_pid" 2>/dev/null || true
start_sim
wait_http "$sim/health"

peer_line=""
if [[ ${PEER:-1} == 1 ]]; then
    say "graphile-worker: $jobs jobs, concurrency $jobs"
    peer_line="$(cd "$tmp" && SIM_URL="$sim" JOBS="$jobs" PARK_MS="$park_ms" node graphile-parked.js)"
fi
uptime_after="$(uptime)"

python3 - "$jobs" "$idle_kib" "$parked_kib" "$hwm_kib" "$park_secs" "$peer_line" \
    "$uptime_before" "$uptime_after" <<'EOF'
import json, sys
jobs, idle, parked, hwm = (int(x) for x in sys.argv[1:5])
park_secs, peer_line, before, after = sys.argv[5:9]
mib = lambda k: k / 1024
print(f"uptime before: {before.strip()}")
print(f"uptime after:  {after.strip()}")
per = (parked - idle) / jobs
print(f"sluice up: idle {mib(idle):.1f} MiB, {jobs} jobs parked {mib(parked):.1f} MiB "
      f"(peak {mib(hwm):.1f} MiB), {per:.1f} KiB per parked job; all parked {park_secs} s after the first submit")
if peer_line:
    p = json.loads(peer_line)
    pper = (p["parked_rss_kib"] - p["idle_rss_kib"]) / jobs
    print(f"graphile-worker: idle {mib(p['idle_rss_kib']):.1f} MiB, {jobs} jobs parked "
          f"{mib(p['parked_rss_kib']):.1f} MiB (peak {mib(p['parked_hwm_kib']):.1f} MiB), "
          f"{pper:.1f} KiB per parked job; all parked {p['seconds_to_park']:.1f} s after the first add")
    print(f"ratio parked RSS sluice / graphile-worker: {parked / p['parked_rss_kib']:.2f}")
    if pper > 0:
        print(f"ratio per-job growth sluice / graphile-worker: {per / pper:.2f}")
EOF
