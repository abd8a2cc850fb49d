// pg-boss's side of bench/peers/queue-burndown.sh: N no-op jobs inserted with `insert` (1,000 a
// call), then one pg-boss instance works them; timed from the first `work()` to no job left in
// `created`, `retry` or `active`. Aborts if any job fails. Prints one line:
// `pg-boss <mode>: <done> jobs in <s> s = <rate> jobs/s (...)`.
//
// PGB_MODE=default: `work(name, handler)` with pg-boss's defaults — batchSize 1, one local
//   worker, a 2 s polling interval that it waits after every fetch (no burst mode, queue
//   without `notify`): about one job per 2 s. It would take days for 100,000 jobs, so the run
//   stops after PGB_MAX_SECS (default 60) and reports the rate over that window.
// PGB_MODE=tuned: batchSize PGB_BATCH (100), PGB_LOCAL (4) local workers, burstWhenBatchFull
//   (fetch again at once while batches come back full), pollingIntervalSeconds 0.5.
//
// Environment: PG_ADMIN_URL, JOBS (100000), PGB_MODE, PGB_MAX_SECS, PGB_BATCH, PGB_LOCAL.
import pg from "pg";
import { PgBoss } from "pg-boss";

const env = (name, dflt) => process.env[name] ?? dflt;
const ADMIN = env("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres");
const JOBS = Number(env("JOBS", 100000));
const MODE = env("PGB_MODE", "default");
const MAX_SECS = Number(env("PGB_MAX_SECS", MODE === "default" ? 60 : 900));
const BATCH = Number(env("PGB_BATCH", 100));
const LOCAL = Number(env("PGB_LOCAL", 4));
const QUEUE = "noop";

function workOptions() {
  if (MODE === "default") return {};
  if (MODE === "tuned") {
    return {
      batchSize: BATCH,
      localConcurrency: LOCAL,
      burstWhenBatchFull: true,
      pollingIntervalSeconds: 0.5,
    };
  }
  throw new Error(`PGB_MODE must be default or tuned, not ${MODE}`);
}

async function main() {
  const db = `pgb_bench_${process.pid}_${Date.now()}`;
  const admin = new pg.Client({ connectionString: ADMIN });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  const url = ADMIN.replace(/\/[^/]*$/, `/${db}`);
  let boss;
  try {
    boss = new PgBoss({ connectionString: url });
    boss.on("error", (e) => console.error(`pg-boss error: ${e.message}`));
    await boss.start();
    await boss.createQueue(QUEUE);
    for (let i = 0; i < JOBS; i += 1000) {
      const n = Math.min(1000, JOBS - i);
      await boss.insert(QUEUE, Array.from({ length: n }, (_, k) => ({ data: { n: i + k } })));
    }

    const c = new pg.Client({ connectionString: url });
    await c.connect();
    const count = async () => {
      const r = await c.query(
        "SELECT count(*) FILTER (WHERE state IN ('created', 'retry', 'active'))::int AS left, " +
          "count(*) FILTER (WHERE state = 'failed')::int AS failed FROM pgboss.job WHERE name = $1",
        [QUEUE],
      );
      return r.rows[0];
    };
    const before = await count();
    if (before.left !== JOBS) throw new Error(`expected ${JOBS} queued jobs, found ${before.left}`);

    const started = process.hrtime.bigint();
    const opts = workOptions();
    await boss.work(QUEUE, opts, async () => {});
    const deadline = Date.now() + MAX_SECS * 1000;
    let left = JOBS;
    while (left > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      const r = await count();
      left = r.left;
      if (r.failed > 0) throw new Error(`${r.failed} jobs failed`);
    }
    const secs = Number(process.hrtime.bigint() - started) / 1e9;
    const done = JOBS - left;
    await boss.stop({ graceful: false, wait: true }).catch(() => {});
    boss = null;
    await c.end();
    const how =
      MODE === "default"
        ? "defaults: batchSize 1, 1 local worker, pollingIntervalSeconds 2"
        : `batchSize ${BATCH}, localConcurrency ${LOCAL}, burstWhenBatchFull, poll 0.5 s`;
    const partial = left > 0 ? `; stopped after ${MAX_SECS} s with ${left} left` : "";
    console.log(
      `pg-boss ${MODE}: ${done} jobs in ${secs.toFixed(2)} s = ${rate(done / secs)} jobs/s ` +
        `(${how}${partial})`,
    );
  } finally {
    if (boss) await boss.stop({ graceful: false, wait: true }).catch(() => {});
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await admin.end();
  }
}

// Whole jobs per second, or two decimals below 10 (the default mode does about 0.5).
const rate = (r) => (r < 10 ? r.toFixed(2) : String(Math.round(r)));

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
