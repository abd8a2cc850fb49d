#!/usr/bin/env bash
# Model-call overhead, side by side: the LiteLLM proxy and Sluice in front of the same
# `sluice sim-provider` (OpenAI wire format, instant replies), at the same open-loop rates, with
# the direct-to-simulator latency measured in the same run and subtracted from both.
#
#   bench/peers/model-overhead.sh
#
# What each side measures (Sluice has no OpenAI-compatible proxy endpoint: a user calls a model
# through Sluice from a handler job):
# - direct:  POST /v1/chat/completions straight to the simulator.
# - LiteLLM: the same request to the LiteLLM proxy (PyPI `litellm[proxy]`, no database, a master
#            key, default settings otherwise: one uvicorn worker), which forwards it.
# - Sluice:  POST /v1/plugins/one-call/jobs?wait=30s with an API key: the job is stored durably
#            in Postgres, claimed, run in a fresh wasm instance of bench/peers/one-call (one
#            `fast` chat call through the gateway: alias, limiter, breaker, usage record), completed,
#            and the finished job is the answer. Gateway cache off (LiteLLM caches nothing by
#            default); every prompt differs anyway.
# "Added" = that side's percentile minus the direct percentile at the same rate, same run.
# A rate is "kept up" when ≥ 99 % of requests succeed, ≥ 95 % of the offered rate completes and
# p99 ≤ 1 s; the saturation rate is the highest swept rate kept up (SWEEP, each side separately,
# stopping at the first rate not kept up).
#
# Environment: RATES ("10 100 1000"), SWEEP ("25 50 75 100 125 150 200 300 500 700 1000 1500
# 2000 3000"), SECS (10: seconds per level; at least 300 requests per level), LITELLM_VERSION
# (1.108.7), LITELLM_VENV (reuse an existing venv instead of installing), SLUICE_BIN,
# PG_ADMIN_URL, SIM_PORT (19090), LITELLM_PORT (14000), SLUICE_PORT (18080), BENCH_LOCK.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

rates="${RATES:-10 100 1000}"
sweep="${SWEEP:-25 50 75 100 125 150 200 300 500 700 1000 1500 2000 3000}"
level_secs="${SECS:-10}"
sim_port="${SIM_PORT:-19090}" ll_port="${LITELLM_PORT:-14000}" sl_port="${SLUICE_PORT:-18080}"
master_key="sk-bench-master"
prompt='bench {run} call {n}: reply with a few words'

# --- install and build (niced, outside the lock) ---------------------------------------------
venv="${LITELLM_VENV:-}"
if [[ -z "$venv" ]]; then
    venv="$tmp/litellm"
    say "installing litellm[proxy]==${LITELLM_VERSION:-1.108.7} into $venv"
    python3 -m venv "$venv"
    nice -n 19 "$venv/bin/pip" install -q "litellm[proxy]==${LITELLM_VERSION:-1.108.7}" >&2
fi
litellm_version="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"
sluice="$(sluice_bin)"
gen="$(loadgen_bin)"
say "building bench/peers/one-call (wasm32-wasip2)…"
(cd "$here/one-call" && nice -n 19 cargo build -q --release --target wasm32-wasip2) >&2
component="$here/one-call/target/wasm32-wasip2/release/one_call.wasm"

# --- the simulator, LiteLLM and a Sluice node ------------------------------------------------
"$sluice" sim-provider --listen "127.0.0.1:$sim_port" --ttft-ms 0 --tokens-per-sec 0 \
    2>"$tmp/sim.log" &
started+=($!)

cat >"$tmp/litellm.yaml" <<EOF
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:$sim_port/v1
      api_key: sk-sim
general_settings:
  master_key: $master_key
litellm_settings:
  telemetry: false
EOF
# No database (DATABASE_URL unset), the bundled model cost map (no download at start).
(cd "$tmp" && exec env -u DATABASE_URL LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
    "$venv/bin/litellm" --config "$tmp/litellm.yaml" --host 127.0.0.1 --port "$ll_port" \
    >"$tmp/litellm.log" 2>&1) &
started+=($!)

fresh_db peers_overhead
cat >"$tmp/sluice.toml" <<EOF
[server]
listen = "127.0.0.1:$sl_port"
[database]
url = "$DB_URL"
data_dir = "$tmp/sluice-data"
[gateway.cache]
enabled = false
[gateway.providers.sim]
kind = "openai"
base_url = "http://127.0.0.1:$sim_port/v1"
api_key = "sk-sim"
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
started+=($!)

wait_http "http://127.0.0.1:$sim_port/health"
wait_http "http://127.0.0.1:$sl_port/healthz" || wait_http "http://127.0.0.1:$sl_port/readyz"
SLUICE_URL="http://127.0.0.1:$sl_port" SLUICE_API_KEY="$key" \
    "$sluice" deploy "$component" --name one-call >&2
for i in $(seq 600); do
    curl -fsS -o /dev/null "http://127.0.0.1:$ll_port/health/liveliness" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$ll_port/health/liveliness" \
    || { say "LiteLLM did not start:"; tail -20 "$tmp/litellm.log" >&2; exit 1; }

# --- measure ---------------------------------------------------------------------------------
direct=(--url "http://127.0.0.1:$sim_port/v1/chat/completions" --expect '"choices"'
    --body "{\"model\":\"gpt-4o-mini\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"$prompt\"}]}")
litellm=(--url "http://127.0.0.1:$ll_port/v1/chat/completions" --expect '"choices"'
    --header "Authorization: Bearer $master_key"
    --body "{\"model\":\"gpt-4o-mini\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"$prompt\"}]}")
sluice_side=(--url "http://127.0.0.1:$sl_port/v1/plugins/one-call/jobs?wait=30s"
    --expect '"status":"completed"' --header "Authorization: Bearer $key"
    --body "{\"input\":\"$prompt\"}")

# After a level a saturated side may still be working through a backlog (LiteLLM keeps serving
# requests whose callers gave up; Sluice keeps the queued jobs): wait until a single call answers
# within 5x the direct latency of the last level (at most 120 s), so the next level starts clean.
drain() {
    local t end=$((SECONDS + 120))
    while ((SECONDS < end)); do
        t="$("$gen" --label drain --rate 5 --secs 1 --warmup-secs 0 --timeout-ms 10000 "$@" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["p99_ms"])')"
        awk -v t="$t" -v d="${last_direct_p99:-20}" 'BEGIN {exit !(t >= 0 && t <= 5 * d + 20)}' && return 0
        sleep 1
    done
    say "still not drained after 120 s"
}

results="$tmp/results.jsonl"
# One level: label, rate, then the side's loadgen arguments.
level() {
    local label="$1" rate="$2"
    shift 2
    local secs
    secs="$(awk -v r="$rate" -v s="$level_secs" 'BEGIN {n = 300 / r; print (n > s ? n : s)}')"
    local line
    line="$("$gen" --label "$label" --rate "$rate" --secs "$secs" --warmup-secs 1 "$@")"
    printf '%s\n' "$line" | tee -a "$results" >&2
    printf '%s\n' "$line"
}
kept_up() {
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); n=r["sent"]
ok = n > 0 and r["ok"] >= 0.99*n and r["ok_per_sec"] >= 0.95*r["rate"] and 0 <= r["p99_ms"] <= 1000
sys.exit(0 if ok else 1)' "$1"
}

take_bench_lock
uptime_before="$(uptime)"
# Warm every path (connections, LiteLLM's first-call imports, Sluice's compiled component).
for side in direct litellm sluice_side; do
    declare -n args="$side"
    "$gen" --label warmup --rate 20 --secs 3 --warmup-secs 0 "${args[@]}" >/dev/null
    unset -n args
done
for rate in $rates; do
    say "--- $rate calls/s (load average $(load))"
    last_direct_p99="$(level direct "$rate" "${direct[@]}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["p99_ms"])')"
    level litellm "$rate" "${litellm[@]}" >/dev/null
    drain "${litellm[@]}"
    level sluice "$rate" "${sluice_side[@]}" >/dev/null
    drain "${sluice_side[@]}"
done
for side in litellm sluice; do
    say "--- saturation sweep: $side"
    [[ $side == sluice ]] && declare -n args=sluice_side || declare -n args=litellm
    for rate in $sweep; do
        line="$(level "sweep-$side" "$rate" "${args[@]}")"
        drain "${args[@]}"
        kept_up "$line" || break
    done
    unset -n args
done
uptime_after="$(uptime)"

# --- report ----------------------------------------------------------------------------------
python3 - "$results" "$litellm_version" "$uptime_before" "$uptime_after" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
version, before, after = sys.argv[2:5]
def get(label, rate):
    for r in rows:
        if r["label"] == label and r["rate"] == rate:
            return r
def kept(r):
    n = r["sent"]
    return n > 0 and r["ok"] >= 0.99 * n and r["ok_per_sec"] >= 0.95 * r["rate"] and 0 <= r["p99_ms"] <= 1000
print(f"uptime before: {before.strip()}")
print(f"uptime after:  {after.strip()}")
print(f"LiteLLM {version} (1 worker, no database) vs Sluice (one-call job, ?wait=), simulator instant")
print("rate/s | direct p50/p99 ms | LiteLLM p50/p99 ms (added) | Sluice p50/p99 ms (added) | ok/sent L, S")
for rate in sorted({r["rate"] for r in rows if r["label"] == "direct"}):
    d, l, s = get("direct", rate), get("litellm", rate), get("sluice", rate)
    def side(x):
        return (f"{x['p50_ms']:.2f}/{x['p99_ms']:.2f} (+{x['p50_ms']-d['p50_ms']:.2f}/+{x['p99_ms']-d['p99_ms']:.2f})"
                + ("" if kept(x) else " NOT KEPT UP"))
    print(f"{rate:>6g} | {d['p50_ms']:.2f}/{d['p99_ms']:.2f} | {side(l)} | {side(s)} | "
          f"{l['ok']}/{l['sent']}, {s['ok']}/{s['sent']}")
sat = {}
for side in ("litellm", "sluice"):
    sweep = [r for r in rows if r["label"] == f"sweep-{side}"]
    good = [r["rate"] for r in sweep if kept(r)]
    top = max(good) if good else 0
    first_bad = next((r for r in sweep if not kept(r)), None)
    sat[side] = top
    tail = (f"; at {first_bad['rate']:g}/s: {first_bad['ok_per_sec']:.0f} ok/s, p99 {first_bad['p99_ms']:.0f} ms, "
            f"{first_bad['failed']} failed" if first_bad else "; never saturated in the sweep")
    print(f"{side}: kept up to {top:g} calls/s{tail}")
for rate in sorted({r["rate"] for r in rows if r["label"] == "direct"}):
    d, l, s = get("direct", rate), get("litellm", rate), get("sluice", rate)
    al, as_ = l["p50_ms"] - d["p50_ms"], s["p50_ms"] - d["p50_ms"]
    bl, bs = l["p99_ms"] - d["p99_ms"], s["p99_ms"] - d["p99_ms"]
    if not (kept(l) and kept(s)):
        print(f"ratio LiteLLM added / Sluice added at {rate:g}/s: n/a (not kept up: "
              + ", ".join(n for n, x in (("LiteLLM", l), ("Sluice", s)) if not kept(x)) + ")")
        continue
    r50 = f"{al/as_:.2f}" if as_ > 0 else "n/a"
    r99 = f"{bl/bs:.2f}" if bs > 0 else "n/a"
    print(f"ratio LiteLLM added / Sluice added at {rate:g}/s: p50 {r50}, p99 {r99}")
if sat["litellm"]:
    print(f"ratio saturation Sluice / LiteLLM: {sat['sluice']/sat['litellm']:.2f}")
EOF
