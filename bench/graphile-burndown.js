// graphile-worker's side of bench/queue-vs-graphile.sh and bench/peers/queue-burndown.sh: N no-op
// jobs burned down by P worker processes. GW_MODE=tuned (the default here): each process tuned as
// graphile-worker recommends for small high-volume jobs (a local queue, batched completion).
// GW_MODE=default: one process with graphile-worker's own defaults (concurrency 1, no local
// queue, pollInterval 2000, completion per job). Prints one line:
// `graphile: <jobs> jobs in <s> s = <rate> jobs/s (…)`. Both modes use a quiet logger (the default
// one prints a line per job).
//
// Usage: node graphile-burndown.js            (parent: creates a database, inserts, times)
//        node graphile-burndown.js --worker   (a worker process; forked by the parent)
"use strict";
const { fork } = require("node:child_process");
const { Client } = require("pg");
const { run, runMigrations, makeWorkerUtils } = require("graphile-worker");

const env = (name, dflt) => process.env[name] ?? dflt;
const ADMIN = env("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres");
const JOBS = Number(env("JOBS", 100000));
const MODE = env("GW_MODE", "tuned");
if (MODE !== "tuned" && MODE !== "default") throw new Error(`GW_MODE must be tuned or default`);
const PROCS = Number(env("GW_PROCS", MODE === "default" ? 1 : 2));
const CONCURRENCY = Number(env("GW_CONCURRENCY", 24));
const LOCAL_QUEUE = Number(env("GW_LOCAL_QUEUE", 500));

function preset() {
  return {
    worker: {
      localQueue: { size: LOCAL_QUEUE },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    },
  };
}

async function worker() {
  const url = process.env.GW_URL;
  process.send("ready");
  await new Promise((resolve) => process.once("message", resolve));
  const cpuAtGo = process.cpuUsage();
  const common = {
    connectionString: url,
    noHandleSignals: true,
    logger: quietLogger(),
    taskList: { noop: async () => {} },
  };
  const tuned = {
    concurrency: CONCURRENCY,
    maxPoolSize: CONCURRENCY + 2,
    pollInterval: 1000,
    preset: preset(),
  };
  const runner = await run(MODE === "tuned" ? { ...common, ...tuned } : common);
  process.once("message", async () => {
    // This worker's CPU from "go" to now (user + system, microseconds), for the parent's report.
    const used = process.cpuUsage(cpuAtGo);
    process.send({ cpuMicros: used.user + used.system });
    await runner.stop();
    process.exit(0);
  });
}

// CPU seconds Postgres has used, when its processes are in the cpuacct cgroup whose
// `cpuacct.usage` file SLUICE_BENCH_PG_CPUACCT names (bench/queue-vs-graphile.sh sets it up).
function pgCpuSecs() {
  const path = process.env.SLUICE_BENCH_PG_CPUACCT;
  if (!path) return null;
  try {
    return Number(require("node:fs").readFileSync(path, "utf8").trim()) / 1e9;
  } catch {
    return null;
  }
}

function quietLogger() {
  const { Logger } = require("graphile-worker");
  return new Logger(() => (level, message) => {
    if (level === "error") console.error(message);
  });
}

async function parent() {
  const db = `gw_bench_${process.pid}_${Date.now()}`;
  const admin = new Client({ connectionString: ADMIN });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  const url = ADMIN.replace(/\/[^/]*$/, `/${db}`);
  try {
    await runMigrations({ connectionString: url, logger: quietLogger() });
    const utils = await makeWorkerUtils({ connectionString: url, logger: quietLogger() });
    for (let i = 0; i < JOBS; i += 1000) {
      const n = Math.min(1000, JOBS - i);
      await utils.addJobs(
        Array.from({ length: n }, (_, k) => ({ identifier: "noop", payload: { n: i + k } })),
      );
    }
    await utils.release();

    const c = new Client({ connectionString: url });
    await c.connect();
    const children = [];
    for (let p = 0; p < PROCS; p++) {
      const child = fork(__filename, ["--worker"], { env: { ...process.env, GW_URL: url } });
      await new Promise((resolve) => child.once("message", resolve));
      children.push(child);
    }
    const started = process.hrtime.bigint();
    const pgAtGo = pgCpuSecs();
    for (const child of children) child.send("go");
    let left = JOBS;
    const deadline = Date.now() + Number(env("GW_DEADLINE_SECS", 1800)) * 1000;
    while (left > 0) {
      // Every 50 ms, as the Sluice burn-down polls: a count of a 100k-row table costs Postgres
      // ~7 ms, so polling every 20 ms took a third of its CPU away from the work measured.
      await new Promise((r) => setTimeout(r, 50));
      const r = await c.query(
        "SELECT count(*)::int AS n, count(*) FILTER (WHERE last_error IS NOT NULL)::int AS failed " +
          "FROM graphile_worker._private_jobs",
      );
      left = r.rows[0].n;
      if (r.rows[0].failed > 0) throw new Error(`${r.rows[0].failed} jobs failed`);
      if (Date.now() > deadline) throw new Error(`timed out with ${left} jobs left`);
    }
    const secs = Number(process.hrtime.bigint() - started) / 1e9;
    const pgUsed = pgAtGo === null ? null : pgCpuSecs() - pgAtGo;
    let workerMicros = 0;
    await Promise.all(
      children.map(
        (child) =>
          new Promise((resolve) => {
            child.on("message", (m) => { if (m && m.cpuMicros) workerMicros += m.cpuMicros; });
            child.once("exit", resolve);
            child.send("stop");
          }),
      ),
    );
    await c.end();
    const how =
      MODE === "tuned"
        ? `${PROCS} processes x ${CONCURRENCY}, localQueue ${LOCAL_QUEUE}`
        : `default settings, ${PROCS} process${PROCS === 1 ? "" : "es"}`;
    console.log(
      `graphile: ${JOBS} jobs in ${secs.toFixed(2)} s = ${Math.round(JOBS / secs)} jobs/s (${how})`,
    );
    const perJob = (s) => ((s * 1e6) / JOBS).toFixed(1);
    console.log(
      `cpu:    workers ${perJob(workerMicros / 1e6)} µs/job` +
        (pgUsed === null ? "" : `, postgres ${perJob(pgUsed)} µs/job`),
    );
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await admin.end();
  }
}

(process.argv.includes("--worker") ? worker() : parent()).catch((e) => {
  console.error(e);
  process.exit(1);
});
