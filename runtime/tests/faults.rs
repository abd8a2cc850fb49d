//! Fault injection against the real `sluice` binary on Postgres: a node killed with `kill -9`
//! mid-run, one of two nodes killed, Postgres stopped under load, a provider outage, a webhook
//! receiver that is down, a corrupted artifact cache. Each test ends on the data a user would
//! check: jobs accepted, completed, dead and lost (accepted minus terminal, always 0), effects
//! that must run once (run once), provider calls made against calls needed, and usage rows
//! against the answers providers gave.
//!
//! The handler is the `state-effects` fixture: per job (its own state prefix) it writes state,
//! runs the effect `state-effects-once` (whose body counts its own runs in state), then makes
//! one chat call to alias `fast`. The providers are simulators owned by the test, so their
//! counters outlive a killed node; their added latency keeps calls in flight when a fault hits.
//!
//! Needs Postgres as the other end-to-end tests do; the Postgres-outage test also needs the
//! server binaries (`/usr/lib/postgresql/*/bin/initdb`, `pg_ctl`) to run a cluster of its own,
//! and says it skipped when they are missing.
//!
//! Why one file over 800 lines: seven independent scenarios that share the cluster, provider
//! and node helpers in `faults_support`; each test reads top to bottom on its own.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

mod e2e_support;
mod faults_support;

use std::collections::BTreeSet;
use std::time::Duration;

use e2e_support::{Server, Site};
use faults_support::{
    ProviderSpec, Tally, eventually, provider, settle, try_submit, usage_rows, write_gateway,
};
use serde_json::{Value, json};

/// Build the plugins workspace (once per process) and read a component, off the runtime.
async fn component(name: &'static str) -> Vec<u8> {
    tokio::task::spawn_blocking(move || plugins::component(name))
        .await
        .unwrap()
}

/// Worker settings of these tests: 8 slots all usable by the one tenant, and 2 s leases so a
/// killed node's jobs come back quickly.
const WORKER: &str = "\n[worker]\nslots = 8\nlease_secs = 2\ntenant_share = 1.0\npoll_ms = 100\n";

/// The input of job `i`: its own state prefix, so its effect's run counter is its own.
fn job_input(i: usize) -> Value {
    json!({"input": {"prefix": format!("job-{i}/"), "chat_model": "fast"}})
}

/// A site whose nodes use the gateway configuration at `config`, with `state-effects`
/// deployed and a key: the site, the first server, the key.
async fn deployed_site(site: &mut Site, config: &std::path::Path) -> (Server, String) {
    site.set_var("SLUICE_CONFIG", &config.display().to_string());
    let key = site.create_key("acme", "admin").await;
    let server = site.up("127.0.0.1:0").await;
    server
        .upload(
            Some(&key),
            "state-effects",
            component("state-effects").await,
        )
        .await
        .ok(201);
    (server, key)
}

/// Submit jobs `range`, each of which must be accepted.
async fn submit_all(server: &Server, key: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let mut ids = Vec::new();
    for i in range {
        let id = try_submit(server, key, "state-effects", &job_input(i))
            .await
            .unwrap_or_else(|e| panic!("job {i} was refused: {e}"));
        ids.push(id);
    }
    ids
}

/// Every job completed, its effect's body ran exactly once (on its first attempt, whatever
/// happened later), and its chat reply came from a provider.
fn assert_effects_once(tally: &Tally) {
    for (id, job) in &tally.jobs {
        let out = &job["output"];
        assert_eq!(job["status"], "completed", "{id}: {job}");
        assert_eq!(
            out["effect_runs"], 1,
            "{id}: the effect's body ran again: {out}"
        );
        assert_eq!(out["effect"]["runs"], 1, "{id}: {out}");
        assert_eq!(out["effect"]["ran_on_attempt"], 1, "{id}: {out}");
        assert_eq!(out["chat"]["source"], "provider", "{id}: {out}");
    }
}

/// Wait until `n` chat calls have reached `sim`, none answered yet.
async fn wait_in_flight(sim: &sluice_gateway::SimHandle, n: u64) {
    eventually(&format!("{n} calls in flight"), || async {
        let s = sim.stats();
        (s.chat_requests >= n).then_some(())
    })
    .await;
    let s = sim.stats();
    assert_eq!(
        (s.chat_requests, s.ok),
        (n, 0),
        "exactly {n} calls in flight and none answered when the fault hits: {s:?}"
    );
}

/// `kill -9` of the only node while every slot is in a model call; started again, it finishes
/// every accepted job: none lost, none dead, each effect run once, and exactly one repeated
/// provider call per job that was cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_run_loses_nothing_and_repeats_no_effect() {
    const JOBS: usize = 24;
    const SLOTS: u64 = 8;
    let sim = provider(1, 3_000).await;
    let mut site = Site::new(&[]).await;
    let spec = [ProviderSpec {
        name: "primary",
        sim: &sim,
        extra: "",
    }];
    let config = write_gateway(site.dir(), &spec, WORKER);
    let (mut server, key) = deployed_site(&mut site, &config).await;
    let ids = submit_all(&server, &key, 0..JOBS).await;

    // Every slot is waiting on the provider: kill the node.
    wait_in_flight(&sim, SLOTS).await;
    server.kill9();
    sim.update_faults(|f| f.extra_latency_ms = 20);
    let server = site.up("127.0.0.1:0").await;

    let tally = settle(&server, &key, &ids).await;
    assert_eq!(
        (tally.accepted, tally.completed, tally.dead, tally.lost),
        (JOBS, JOBS, 0, 0),
        "{tally:#?}"
    );
    assert_effects_once(&tally);
    // The jobs cut off ran again (their lease expired); no other job did.
    assert_eq!(tally.rerun().len() as u64, SLOTS, "{tally:#?}");
    for job in tally.rerun() {
        assert_eq!(job["attempt"], 2, "{job}");
    }
    // Calls needed: one per job. Made: those, plus one for each call the kill cut off.
    let stats = sim.stats();
    assert_eq!(stats.chat_requests, JOBS as u64 + SLOTS, "{stats:?}");
    // Every answer the node received has its usage row; the answers written to the dead
    // node's sockets (if the simulator finished them) are the only ones without.
    let rows = usage_rows(&site.db.url).await;
    let provider_ok = rows[&("provider".into(), "ok".into())];
    assert_eq!(provider_ok, JOBS as i64, "{rows:?}");
    assert_eq!(rows.values().sum::<i64>(), provider_ok, "{rows:?}");
    assert!(
        (JOBS as u64..=JOBS as u64 + SLOTS).contains(&stats.ok),
        "{stats:?}"
    );
    // The accepted jobs are all the database holds.
    let stored = faults_support::stored_jobs(&site.db.url).await;
    assert_eq!(stored.len(), JOBS, "{stored:?}");
    assert!(stored.iter().all(|(_, s)| s == "completed"), "{stored:?}");
}

/// Two nodes on one database, `kill -9` one while both are busy: the other rescues its jobs
/// when their leases expire, finishes everything, and takes the whole of the provider limits
/// once the dead node drops out of the node list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_surviving_node_takes_the_dead_nodes_work_and_its_share() {
    const JOBS: usize = 32;
    const SLOTS: u64 = 8;
    let sim = provider(2, 3_000).await;
    let mut site = Site::new(&[]).await;
    // A provider limit the nodes split between them: each takes 1/live of it.
    let spec = [ProviderSpec {
        name: "primary",
        sim: &sim,
        extra: "rpm = 60000",
    }];
    let config = write_gateway(site.dir(), &spec, WORKER);
    let (a, key) = deployed_site(&mut site, &config).await;
    let mut b = site.up("127.0.0.1:0").await;
    eventually("both nodes in the node list", || async {
        let nodes = a.get(Some(&key), "/v1/nodes").await;
        (nodes.body["nodes"].as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
    eventually("a's share of the limits to be a half", || async {
        (live_nodes_gauge(&a, &key).await == 2.0).then_some(())
    })
    .await;

    let ids = submit_all(&a, &key, 0..JOBS).await;
    // Both nodes' slots are all waiting on the provider: kill b.
    wait_in_flight(&sim, 2 * SLOTS).await;
    b.kill9();
    sim.update_faults(|f| f.extra_latency_ms = 20);

    let tally = settle(&a, &key, &ids).await;
    assert_eq!(
        (tally.accepted, tally.completed, tally.dead, tally.lost),
        (JOBS, JOBS, 0, 0),
        "{tally:#?}"
    );
    assert_effects_once(&tally);
    // b's jobs, and only those, ran twice: first on b, then on a.
    let rerun = tally.rerun();
    assert_eq!(rerun.len() as u64, SLOTS, "{tally:#?}");
    let worker = |job: &Value, i: usize| job["attempts"][i]["worker_id"].as_str().map(String::from);
    let dead_worker: BTreeSet<_> = rerun.iter().map(|j| worker(j, 0)).collect();
    assert_eq!(
        dead_worker.len(),
        1,
        "one node's jobs were cut off: {rerun:#?}"
    );
    let dead_worker = dead_worker.into_iter().next().unwrap();
    for job in tally.jobs.values() {
        let last = job["attempts"].as_array().unwrap().len() - 1;
        assert_ne!(
            worker(job, last),
            dead_worker,
            "finished by the dead node: {job}"
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.chat_requests, JOBS as u64 + SLOTS, "{stats:?}");
    let rows = usage_rows(&site.db.url).await;
    assert_eq!(
        rows[&("provider".into(), "ok".into())],
        JOBS as i64,
        "{rows:?}"
    );
    assert_eq!(stats.rate_limited, 0, "{stats:?}");

    // The dead node leaves the node list when its entry expires, and a takes its share.
    eventually("the dead node to leave the node list", || async {
        let nodes = a.get(Some(&key), "/v1/nodes").await;
        (nodes.body["nodes"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    eventually("a's share of the limits to be whole", || async {
        (live_nodes_gauge(&a, &key).await == 1.0).then_some(())
    })
    .await;
}

/// `sluice_live_nodes` from a node's `/metrics`: the count its share of every provider limit
/// is one over.
async fn live_nodes_gauge(server: &Server, key: &str) -> f64 {
    metric(server, key, "sluice_live_nodes", &[]).await
}

/// What every `state-effects` attempt that ran to its end persists, in order, as
/// `(type, message)` (`model_call` has no message).
const ATTEMPT_EVENTS: [(&str, &str); 5] = [
    ("progress", "state"),
    ("progress", "effect"),
    ("log", "effect ran"),
    ("model_call", ""),
    ("progress", "done"),
];

/// Postgres stopped for 20 s while jobs are in model calls and submissions keep coming, then
/// started again: the node rides it out. Submissions during the outage are refused, never
/// accepted; every accepted job completes on its first attempt (no completion given up and
/// run again), each effect runs once, every provider answer has its usage row, and every job
/// has all of its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_loses_nothing() {
    const SLOTS: u64 = 8;
    const OUTAGE: Duration = Duration::from_secs(20);
    let Some(pg) = faults_support::PrivatePostgres::start() else {
        return;
    };
    let sim = provider(3, 1_500).await;
    let db = e2e_support::Db::create_on(&pg.admin_url()).await;
    let mut site = Site::on(db, &[]);
    let spec = [ProviderSpec {
        name: "primary",
        sim: &sim,
        extra: "",
    }];
    // Leases far shorter than the outage: they have all expired when the database is back,
    // and the node must renew its own (running or finishing) before it rescues expired ones,
    // or it would send its live jobs back to the queue to run again.
    let worker = WORKER.replace("lease_secs = 2", "lease_secs = 5");
    let config = write_gateway(site.dir(), &spec, &worker);
    let (server, key) = deployed_site(&mut site, &config).await;

    let stop = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match try_submit(&server, &key, "state-effects", &job_input(i)).await {
                Ok(id) => accepted.push(id),
                Err(e) => refused.push(e),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (accepted, refused)
    };
    let outage = async {
        wait_until_calls(&sim, SLOTS).await;
        let before = sim.stats();
        tokio::task::block_in_place(|| pg.stop_server());
        tokio::time::sleep(OUTAGE).await;
        tokio::task::block_in_place(|| pg.start_server());
        // Load goes on a while after the database is back.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        before
    };
    let ((accepted, refused), before) = tokio::join!(load, outage);
    eprintln!(
        "outage: {} accepted, {} refused, {} calls in flight when it began",
        accepted.len(),
        refused.len(),
        before.chat_requests - before.ok
    );
    assert!(
        before.chat_requests >= SLOTS,
        "jobs were in flight: {before:?}"
    );
    assert!(
        !refused.is_empty(),
        "submissions during the outage were refused"
    );

    let tally = settle(&server, &key, &accepted).await;
    assert_eq!(
        (tally.completed, tally.dead, tally.lost),
        (tally.accepted, 0, 0),
        "refused: {refused:?}\n{tally:#?}"
    );
    for (id, job) in &tally.jobs {
        let out = &job["output"];
        assert_eq!(job["attempt"], 1, "{id} ran again: {job}");
        assert_eq!(out["effect_runs"], 1, "{id}: {out}");
        assert_eq!(out["chat"]["source"], "provider", "{id}: {out}");
    }
    // Nothing but accepted jobs, or submissions whose answer was lost with the database,
    // is stored, and all of them finished.
    let stored = faults_support::stored_jobs(&site.db.url).await;
    assert!(stored.len() >= accepted.len(), "{stored:?}");
    assert!(stored.iter().all(|(_, s)| s == "completed"), "{stored:?}");
    // One provider call per stored job, and a usage row for every answer.
    let stats = sim.stats();
    assert_eq!(stats.chat_requests, stored.len() as u64, "{stats:?}");
    assert_eq!(stats.ok, stats.chat_requests, "{stats:?}");
    let rows = usage_rows(&site.db.url).await;
    assert_eq!(
        rows.get(&("provider".into(), "ok".into())).copied(),
        Some(stats.ok as i64),
        "usage rows against provider answers: {rows:?}"
    );
    // Every job has every event of its attempt, numbered without a gap.
    for (id, _) in &stored {
        let events = faults_support::stored_events(&site.db.url, &id.to_string()).await;
        let seqs: Vec<i64> = events.iter().map(|(s, _)| *s).collect();
        let kinds: Vec<(&str, &str)> = events
            .iter()
            .map(|(_, e)| {
                (
                    e["type"].as_str().unwrap_or_default(),
                    e["message"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(kinds, ATTEMPT_EVENTS, "events of {id}: {events:?}");
        assert_eq!(seqs, (1..=ATTEMPT_EVENTS.len() as i64).collect::<Vec<_>>());
    }
}

/// Wait until at least `n` chat calls have reached `sim`.
async fn wait_until_calls(sim: &sluice_gateway::SimHandle, n: u64) {
    eventually(&format!("{n} calls"), || async {
        (sim.stats().chat_requests >= n).then_some(())
    })
    .await;
}

/// A counter or gauge of a node's `/metrics`: the sum of the series of `name` whose labels
/// include every one of `labels` (`provider="primary"`).
async fn metric(server: &Server, key: &str, name: &str, labels: &[&str]) -> f64 {
    let text = server
        .http
        .get(server.url("/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The primary provider answers 503 to everything for a while: every job fails over to the
/// backup and completes, the primary's breaker opens so it gets a bounded number of calls (no
/// retry storm: far fewer than jobs × attempts), and once it heals the next calls go to it
/// again. Each job's call is answered exactly once, with one usage row per answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_fails_over_without_a_retry_storm() {
    const DOWN_JOBS: usize = 40;
    const UP_JOBS: usize = 6;
    const SLOTS: u64 = 8;
    const MAX_RETRIES: u64 = 2;
    const MIN_CALLS: u64 = 4;
    const COOLDOWN_MS: u64 = 1_000;
    let primary = provider(4, 0).await;
    let backup = provider(5, 0).await;
    primary.update_faults(|f| f.fail_all = Some(503));
    let mut site = Site::new(&[]).await;
    let primary_extra = format!(
        "max_retries = {MAX_RETRIES}\n[gateway.providers.primary.breaker]\n\
         min_calls = {MIN_CALLS}\nfailure_rate = 0.5\nwindow_ms = 60000\ncooldown_ms = {COOLDOWN_MS}"
    );
    let spec = [
        ProviderSpec {
            name: "primary",
            sim: &primary,
            extra: &primary_extra,
        },
        ProviderSpec {
            name: "backup",
            sim: &backup,
            extra: "",
        },
    ];
    let retry = "\n[gateway.retry]\nbase_delay_ms = 20\nmax_delay_ms = 100\n";
    let config = write_gateway(site.dir(), &spec, &format!("{WORKER}{retry}"));
    let (server, key) = deployed_site(&mut site, &config).await;

    // The outage.
    let started = std::time::Instant::now();
    let ids = submit_all(&server, &key, 0..DOWN_JOBS).await;
    let tally = settle(&server, &key, &ids).await;
    let outage = started.elapsed();
    assert_eq!(
        (tally.accepted, tally.completed, tally.dead, tally.lost),
        (DOWN_JOBS, DOWN_JOBS, 0, 0),
        "{tally:#?}"
    );
    for job in tally.jobs.values() {
        assert_eq!(job["output"]["chat"]["provider"], "backup", "{job}");
        assert_eq!(job["attempt"], 1, "failover happens inside the call: {job}");
    }
    let down = primary.stats();
    eprintln!(
        "primary outage: {} calls to the primary in {outage:?}",
        down.requests
    );
    // Without a breaker: every job's call tries the primary 1 + MAX_RETRIES times. With it:
    // the calls until it opens, those already in flight then, and one probe per cooldown.
    let storm = DOWN_JOBS as u64 * (1 + MAX_RETRIES);
    let probes = outage.as_millis() as u64 / COOLDOWN_MS + 1;
    let bound = MIN_CALLS + SLOTS + probes;
    assert!(
        down.requests <= bound,
        "{} calls to the failing primary in {outage:?} (bound {bound}; a retry storm is {storm})",
        down.requests
    );
    assert_eq!(
        (down.ok, down.server_errors),
        (0, down.requests),
        "{down:?}"
    );
    assert!(
        metric(
            &server,
            &key,
            "sluice_breaker_transitions_total",
            &["provider=\"primary\"", "to=\"open\""]
        )
        .await
            >= 1.0,
        "the primary's breaker opened"
    );
    assert_eq!(
        metric(
            &server,
            &key,
            "sluice_breaker_state",
            &["provider=\"primary\""]
        )
        .await,
        2.0,
        "and is open"
    );

    // The primary heals: after the cooldown a probe finds it well and calls go back to it.
    primary.update_faults(|f| f.fail_all = None);
    tokio::time::sleep(Duration::from_millis(COOLDOWN_MS + 200)).await;
    let mut healed = Vec::new();
    for i in DOWN_JOBS..DOWN_JOBS + UP_JOBS {
        let id = submit_all(&server, &key, i..i + 1).await;
        let t = settle(&server, &key, &id).await;
        assert_eq!(t.completed, 1, "{t:#?}");
        healed.extend(t.jobs.into_values());
    }
    for job in &healed {
        assert_eq!(job["output"]["chat"]["provider"], "primary", "{job}");
    }
    assert_eq!(
        metric(
            &server,
            &key,
            "sluice_breaker_state",
            &["provider=\"primary\""]
        )
        .await,
        0.0,
        "closed again"
    );

    // Calls needed: one answer per job; each was answered exactly once, with its usage row.
    let (p, b) = (primary.stats(), backup.stats());
    let jobs = (DOWN_JOBS + UP_JOBS) as u64;
    assert_eq!(p.ok + b.ok, jobs, "{p:?} {b:?}");
    assert_eq!(
        b.requests, DOWN_JOBS as u64,
        "the backup never failed: {b:?}"
    );
    let rows = usage_rows(&site.db.url).await;
    assert_eq!(
        rows[&("provider".into(), "ok".into())],
        jobs as i64,
        "{rows:?}"
    );
    assert_eq!(
        rows.values().sum::<i64>(),
        jobs as i64,
        "one row per call: {rows:?}"
    );
}

/// Webhooks to a receiver that is down: each is retried up to `webhooks.max_attempts`, then
/// dead-lettered where a user sees it (`GET /v1/webhooks/deliveries?status=dead`, `sluice
/// webhooks list --status dead`); once the receiver is back, `sluice webhooks retry` delivers
/// each exactly once. The jobs themselves completed all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_a_receiver_that_is_down_are_dead_lettered_then_retried_by_hand() {
    const JOBS: usize = 3;
    const ATTEMPTS: u64 = 3;
    let sim = provider(6, 0).await;
    let mut site = Site::new(&[
        ("SLUICE_WEBHOOKS__ALLOW_PRIVATE", "true"),
        ("SLUICE_WEBHOOKS__MAX_ATTEMPTS", &ATTEMPTS.to_string()),
    ])
    .await;
    let spec = [ProviderSpec {
        name: "primary",
        sim: &sim,
        extra: "",
    }];
    let config = write_gateway(site.dir(), &spec, WORKER);
    let (server, key) = deployed_site(&mut site, &config).await;
    // Nothing listens on this address until the receiver comes back.
    let addr = format!("127.0.0.1:{}", faults_support::free_port());
    let hook = format!("http://{addr}/hook");

    let mut ids = Vec::new();
    for i in 0..JOBS {
        let mut body = job_input(i);
        body["webhook"] = json!({"url": hook});
        ids.push(
            try_submit(&server, &key, "state-effects", &body)
                .await
                .unwrap(),
        );
    }
    let tally = settle(&server, &key, &ids).await;
    assert_eq!((tally.completed, tally.lost), (JOBS, 0), "{tally:#?}");

    let dead = eventually("every delivery to be dead-lettered", || async {
        let list = server
            .get(Some(&key), "/v1/webhooks/deliveries?status=dead")
            .await;
        let rows = list.body["deliveries"].as_array()?.clone();
        (rows.len() == JOBS).then_some(rows)
    })
    .await;
    let mut dead_jobs = BTreeSet::new();
    for d in &dead {
        assert_eq!(d["attempts"], ATTEMPTS, "retried, then given up: {d}");
        assert_eq!(d["url"], hook.as_str(), "{d}");
        assert!(!d["last_error"].as_str().unwrap_or("").is_empty(), "{d}");
        dead_jobs.insert(d["job_id"].as_str().unwrap().to_string());
    }
    assert_eq!(dead_jobs, ids.iter().cloned().collect(), "one per job");
    let base = server.url("");
    let listed = site
        .cli(&[
            "webhooks", "list", "--status", "dead", "--url", &base, "--key", &key,
        ])
        .await;
    assert!(
        listed.status.success(),
        "{}",
        e2e_support::stderr_of(&listed)
    );
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    for d in &dead {
        assert!(
            listed.contains(&format!("{}  dead", d["id"])),
            "`webhooks list --status dead` shows delivery {}:\n{listed}",
            d["id"]
        );
    }
    assert_eq!(
        metric(&server, &key, "sluice_webhook_dead_total", &[]).await,
        JOBS as f64
    );

    // The receiver comes back; each dead delivery is retried by hand and arrives once.
    let mut receiver = e2e_support::Receiver::start_on(&addr).await;
    for d in &dead {
        let id = d["id"].to_string();
        let out = site
            .cli(&["webhooks", "retry", &id, "--url", &base, "--key", &key])
            .await;
        assert!(out.status.success(), "{}", e2e_support::stderr_of(&out));
    }
    let mut delivered = BTreeSet::new();
    for _ in 0..JOBS {
        let got = receiver.next().await;
        let body: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["status"], "completed", "{body}");
        assert!(
            delivered.insert(body["id"].as_str().unwrap().to_string()),
            "delivered twice: {body}"
        );
    }
    assert_eq!(delivered, dead_jobs);
    assert!(
        receiver.next_within(Duration::from_secs(2)).await.is_none(),
        "a delivery arrived more than once"
    );
    let all = server.get(Some(&key), "/v1/webhooks/deliveries").await;
    for d in all.body["deliveries"].as_array().unwrap() {
        assert_eq!(d["status"], "delivered", "{d}");
    }
}

/// The compiled-artifact cache on disk is damaged between two runs of a node: bytes flipped in
/// the middle of the file, or the file cut short. The node never loads it: it compiles the
/// component again, rewrites the file with what it compiled (the original bytes), and runs
/// jobs as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_truncated_artifact_is_recompiled_never_loaded() {
    let sim = provider(7, 0).await;
    let mut site = Site::new(&[]).await;
    let spec = [ProviderSpec {
        name: "primary",
        sim: &sim,
        extra: "",
    }];
    let config = write_gateway(site.dir(), &spec, WORKER);
    let (mut server, key) = deployed_site(&mut site, &config).await;
    let first = run_one(&server, &key, 0).await;
    assert_eq!(server.terminate().await, Some(0));

    let artifacts = site.dir().join("data/artifacts");
    let files = cache_files(&artifacts);
    assert_eq!(files.len(), 1, "one component, one artifact: {files:?}");
    let file = &files[0];
    let original = std::fs::read(file).unwrap();

    let damages: [(&str, Damage); 2] = [
        ("bytes flipped in the middle", |b| {
            let mid = b.len() / 2;
            for x in &mut b[mid..mid + 64] {
                *x ^= 0xA5;
            }
        }),
        ("cut short", |b| b.truncate(b.len() * 2 / 3)),
    ];
    for (i, (what, damage)) in damages.iter().enumerate() {
        let mut bytes = original.clone();
        damage(&mut bytes);
        std::fs::write(file, &bytes).unwrap();
        let mut server = site.up("127.0.0.1:0").await;
        let job = run_one(&server, &key, i + 1).await;
        assert_eq!(
            job["output"]["chat"]["content"],
            first["output"]["chat"]["content"]
        );
        assert!(
            server
                .stderr()
                .contains("ignoring unusable cached artifact"),
            "{what}: the damaged file was not refused:\n{}",
            server.stderr()
        );
        assert_eq!(cache_files(&artifacts), files, "{what}");
        assert!(
            std::fs::read(file).unwrap() == original,
            "{what}: the file was not rewritten with the compiled artifact"
        );
        assert_eq!(server.terminate().await, Some(0));
    }
}

/// A way to damage a file's bytes.
type Damage = fn(&mut Vec<u8>);

/// Submit job `i`, wait for it, and check it completed.
async fn run_one(server: &Server, key: &str, i: usize) -> Value {
    let id = try_submit(server, key, "state-effects", &job_input(i))
        .await
        .unwrap();
    let tally = settle(server, key, std::slice::from_ref(&id)).await;
    assert_eq!(tally.completed, 1, "{tally:#?}");
    tally.jobs[&id].clone()
}

/// The artifact files under `dir` (in the engine's compatibility subdirectory).
fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "cwasm") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The disk fills up under the embedded SQLite store. A file-size limit on the node
/// (`RLIMIT_FSIZE` through `prlimit`, with `SIGXFSZ` ignored so writes fail instead of killing
/// the process) stands in for a full disk, so the test needs no root or mount. Submissions
/// past the limit get a clear error and no 202; once the limit is lifted the running node
/// accepts jobs again; every job that got a 202 was stored: after a `kill -9` and a restart,
/// each is there and completes with its input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_sqlite_is_refused_clearly_and_nothing_accepted_is_lost() {
    const LIMIT_BYTES: u64 = 4 << 20;
    const INPUT_BYTES: usize = 48 << 10;
    let Some(prlimit) = which("prlimit") else {
        eprintln!("SKIPPED: `prlimit` (util-linux) is needed to limit the node's file size");
        return;
    };
    let sim = provider(8, 0).await;
    let mut site = Site::new(&[]).await;
    let sqlite = format!("sqlite://{}", site.dir().join("data/sluice.db").display());
    site.set_var("SLUICE_DATABASE__URL", &sqlite);
    let spec = [ProviderSpec {
        name: "primary",
        sim: &sim,
        extra: "",
    }];
    let config = write_gateway(site.dir(), &spec, WORKER);
    site.set_var("SLUICE_CONFIG", &config.display().to_string());
    let key = site.create_key("acme", "admin").await;
    let wrapper = site.dir().join("sluice-limited");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntrap '' XFSZ\nexec {} --fsize={LIMIT_BYTES}:unlimited {} \"$@\"\n",
            prlimit.display(),
            env!("CARGO_BIN_EXE_sluice")
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).unwrap();
    site.set_program(Some(wrapper));
    let mut server = site.up("127.0.0.1:0").await;
    server
        .upload(Some(&key), "noop", component("noop").await)
        .await
        .ok(201);

    // Submit until the store cannot take more, then a few more.
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for i in 0..400 {
        let body = json!({"input": {"i": i, "pad": "x".repeat(INPUT_BYTES)}});
        let res = server
            .send(
                server
                    .request(reqwest::Method::POST, "/v1/plugins/noop/jobs", Some(&key))
                    .json(&body),
            )
            .await;
        match res.status.as_u16() {
            202 => accepted.push((i as i64, res.body["id"].as_str().unwrap().to_string())),
            _ => refused.push(res),
        }
        if refused.len() >= 5 {
            break;
        }
    }
    assert!(
        !accepted.is_empty() && refused.len() >= 5,
        "the limit was reached after some jobs: {} accepted, {} refused",
        accepted.len(),
        refused.len()
    );
    for res in &refused {
        let problem = res.problem(507, "storage-full");
        assert!(
            problem["detail"].as_str().unwrap().contains("disk"),
            "{problem}"
        );
    }

    // Room again (the limit lifted on the running node): submissions are accepted again at
    // once, without a restart.
    let lifted = std::process::Command::new(&prlimit)
        .args([
            "--pid",
            &server.pid().to_string(),
            "--fsize=unlimited:unlimited",
        ])
        .status()
        .unwrap();
    assert!(lifted.success(), "prlimit --pid could not lift the limit");
    let body = json!({"input": {"i": -1, "pad": "after"}});
    let after = try_submit(&server, &key, "noop", &body)
        .await
        .expect("accepted again once there is room");
    accepted.push((-1, after));

    // kill -9 and a restart: everything accepted is there and runs.
    server.kill9();
    site.set_program(None);
    let server = site.up("127.0.0.1:0").await;
    let ids: Vec<String> = accepted.iter().map(|(_, id)| id.clone()).collect();
    let tally = settle(&server, &key, &ids).await;
    assert_eq!(
        (tally.completed, tally.dead, tally.lost),
        (accepted.len(), 0, 0),
        "{tally:#?}"
    );
    for (i, id) in &accepted {
        assert_eq!(tally.jobs[id]["output"]["i"], *i, "{id}");
    }
}

/// The path of program `name` on `PATH`.
fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
