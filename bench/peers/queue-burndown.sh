#!/usr/bin/env bash
# Queue burn-down, side by side on one Postgres: JOBS (100,000) no-op jobs, each peer on a fresh
# database, back to back, once each:
#   graphile-worker tuned   (bench/graphile-burndown.js, GW_MODE=tuned: 2 processes x 24,
#                            localQueue 500, batched completion)
#   graphile-worker default (GW_MODE=default: 1 process, graphile-worker's defaults)
#   pg-boss default         (bench/peers/pgboss-burndown.mjs: batchSize 1 and a 2 s poll after
#                            every fetch; stopped after PGB_MAX_SECS = 60 s, rate over that window)
#   pg-boss tuned           (batchSize 100, 4 local workers, burst while batches come back full)
#   Sluice                  (`cargo bench -p sluice --bench burndown`; skipped with SLUICE=0)
# and prints each rate and Sluice's ratio to each peer. Peers are installed from npm into a
# temporary directory (niced); the runs take the machine's bench lock (BENCH_LOCK).
#
#   bench/peers/queue-burndown.sh            # everything
#   SLUICE=0 bench/peers/queue-burndown.sh   # the peers only
#   PEERS="graphile-default pgboss-tuned" bench/peers/queue-burndown.sh
#
# Environment: JOBS (100000), PEERS ("graphile-tuned graphile-default pgboss-default
# pgboss-tuned"), SLUICE (1), GRAPHILE_VERSION (0.17.3), PGBOSS_VERSION (12.38.1), PG_ADMIN_URL,
# and the knobs of the two JS files (GW_*, PGB_*).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

export JOBS="${JOBS:-100000}" SLUICE_BENCH_JOBS="${JOBS:-100000}"
export SLUICE_TEST_PG_URL="$PG_ADMIN_URL"
# Sluice tuned as graphile-worker tuned is (bench/queue-vs-graphile.sh does the same).
export SLUICE_BENCH_SLOTS="${SLUICE_BENCH_SLOTS:-1024}"
peers="${PEERS:-graphile-tuned graphile-default pgboss-default pgboss-tuned}"
with_sluice="${SLUICE:-1}"
gw_version="${GRAPHILE_VERSION:-0.17.3}" pgb_version="${PGBOSS_VERSION:-12.38.1}"

say "installing graphile-worker@$gw_version and pg-boss@$pgb_version into $tmp"
(cd "$tmp" && npm init -y >/dev/null && nice -n 19 npm install --silent --no-audit --no-fund \
    "graphile-worker@$gw_version" "pg-boss@$pgb_version" pg@8 >/dev/null)
cp "$repo/bench/graphile-burndown.js" "$here/pgboss-burndown.mjs" "$tmp/"
if [[ $with_sluice == 1 ]]; then
    say "building the Sluice burn-down (release)"
    (cd "$repo" && nice -n 19 cargo bench -q -p sluice --bench burndown --no-run) >&2
fi

rate_of() { sed -E 's/.*= ([0-9.]+) jobs\/s.*/\1/' <<<"$1"; }
declare -A rate line
take_bench_lock
for peer in $peers; do
    say "--- $peer: load average $(load)"
    case "$peer" in
        graphile-tuned) out="$(cd "$tmp" && GW_MODE=tuned node graphile-burndown.js)" ;;
        graphile-default) out="$(cd "$tmp" && GW_MODE=default node graphile-burndown.js)" ;;
        pgboss-default) out="$(cd "$tmp" && PGB_MODE=default node pgboss-burndown.mjs)" ;;
        pgboss-tuned) out="$(cd "$tmp" && PGB_MODE=tuned node pgboss-burndown.mjs)" ;;
        *) say "unknown peer $peer"; exit 2 ;;
    esac
    say "$out"
    first="$(grep -m1 'jobs/s' <<<"$out")"
    line[$peer]="$first" rate[$peer]="$(rate_of "$first")"
done
if [[ $with_sluice == 1 ]]; then
    say "--- sluice: load average $(load)"
    out="$(cd "$repo" && cargo bench -q -p sluice --bench burndown 2>/dev/null | grep '^work:')"
    say "sluice:   ${out#work:   }"
    line[sluice]="sluice: ${out#work:   }" rate[sluice]="$(rate_of "$out")"
fi
say "uptime after: $(uptime)"

echo "=== $JOBS no-op jobs, $(nproc) cores, Postgres at ${PG_ADMIN_URL%/*}"
for k in $peers ${with_sluice/#1/sluice}; do
    [[ $k == 0 ]] && continue
    echo "${line[$k]}"
done
if [[ $with_sluice == 1 ]]; then
    for peer in $peers; do
        awk -v s="${rate[sluice]}" -v p="${rate[$peer]}" -v n="$peer" \
            'BEGIN {if (p > 0) printf "ratio sluice / %s: %.2f\n", n, s / p}'
    done
fi
