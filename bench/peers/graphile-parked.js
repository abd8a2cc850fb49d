// The peer's side of bench/peers/parked-memory.sh: one graphile-worker process with concurrency
// N, whose task makes one OpenAI-format chat call (Node's fetch) to the slow simulator at SIM_URL
// and waits for it. The worker starts on an empty queue (idle memory), N jobs are added, and
// once the simulator holds N more unanswered chat requests (every job parked in its call; it
// fails if that takes longer than PARK_MS) the worker process's resident memory is
// read from /proc. Prints one JSON line: {"peer", "jobs", "idle_rss_kib", "parked_rss_kib",
// "parked_hwm_kib", "seconds_to_park"}.
//
// Environment: PG_ADMIN_URL, SIM_URL (http://127.0.0.1:19091), JOBS (10000), PARK_MS (120000).
"use strict";
const fs = require("node:fs");
const { fork } = require("node:child_process");
const { Client } = require("pg");
const { run, runMigrations, makeWorkerUtils, Logger } = require("graphile-worker");

const env = (name, dflt) => process.env[name] ?? dflt;
const ADMIN = env("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres");
const SIM = env("SIM_URL", "http://127.0.0.1:19091");
const JOBS = Number(env("JOBS", 10000));

const quiet = () =>
  new Logger(() => (level, message) => {
    if (level === "error") console.error(message);
  });

async function worker() {
  const runner = await run({
    connectionString: process.env.GW_URL,
    concurrency: JOBS,
    noHandleSignals: true,
    logger: quiet(),
    taskList: {
      call: async (payload) => {
        const res = await fetch(`${SIM}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: "Bearer sk-sim" },
          body: JSON.stringify({
            model: "gpt-4o-mini",
            max_tokens: 16,
            messages: [{ role: "user", content: `parked ${payload.n}` }],
          }),
        });
        if (!res.ok) throw new Error(`status ${res.status}`);
        await res.json();
      },
    },
  });
  process.send("running");
  process.once("message", async () => {
    await runner.stop();
    process.exit(0);
  });
}

const rss = (pid) => {
  const s = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(s)[1]);
  return { rss: kib("VmRSS"), hwm: kib("VmHWM") };
};
// Chat requests the simulator has received and not answered yet.
const inFlight = async () => {
  const s = await (await fetch(`${SIM}/admin/stats`)).json();
  return s.chat_requests - s.ok - s.rate_limited - s.server_errors - s.client_errors - s.broken;
};

async function parent() {
  const db = `gw_parked_${process.pid}_${Date.now()}`;
  const admin = new Client({ connectionString: ADMIN });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  const url = ADMIN.replace(/\/[^/]*$/, `/${db}`);
  let child;
  try {
    await runMigrations({ connectionString: url, logger: quiet() });
    // Idle: the worker running on the empty queue.
    child = fork(__filename, ["--worker"], { env: { ...process.env, GW_URL: url } });
    await new Promise((resolve) => child.once("message", resolve));
    await new Promise((r) => setTimeout(r, 1000));
    const idle = rss(child.pid);
    const base = await inFlight();
    const started = Date.now();
    const utils = await makeWorkerUtils({ connectionString: url, logger: quiet() });
    for (let i = 0; i < JOBS; i += 1000) {
      const n = Math.min(1000, JOBS - i);
      await utils.addJobs(
        Array.from({ length: n }, (_, k) => ({ identifier: "call", payload: { n: i + k } })),
      );
    }
    await utils.release();
    const deadline = Date.now() + Number(env("PARK_MS", 120000)) - 2000;
    while ((await inFlight()) - base < JOBS) {
      if (Date.now() > deadline) throw new Error("the jobs were never all in their call at once");
      await new Promise((r) => setTimeout(r, 200));
    }
    const parkedAfter = (Date.now() - started) / 1000;
    let parked = { rss: 0, hwm: 0 };
    for (let i = 0; i < 10; i++) {
      const m = rss(child.pid);
      parked = { rss: Math.max(parked.rss, m.rss), hwm: m.hwm };
      await new Promise((r) => setTimeout(r, 300));
    }
    console.log(
      JSON.stringify({
        peer: "graphile-worker",
        jobs: JOBS,
        idle_rss_kib: idle.rss,
        parked_rss_kib: parked.rss,
        parked_hwm_kib: parked.hwm,
        seconds_to_park: parkedAfter,
      }),
    );
  } finally {
    if (child) child.kill("SIGKILL");
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await admin.end();
  }
}

(process.argv.includes("--worker") ? worker() : parent()).then(
  () => {},
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
