//! One conformance suite, run against both backends: every case in `cases` becomes a
//! `sqlite::<case>` and a `postgres::<case>` test.
//!
//! Postgres tests need a server: `postgres://postgres@127.0.0.1:5432/postgres` unless
//! `SLUICE_TEST_PG_URL` names another admin URL. Each test creates its own database
//! (`sluice_test_<uuid>`) and drops it afterwards; SQLite tests use a temporary file.
//!
//! Why one file over 800 lines: it is the one contract both backends must meet, and a case
//! added here runs on both; the cases are grouped by the store's sections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_store::*;
use sqlx::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// What a case gets: a fresh store and a way to open another on the same database.
#[derive(Clone)]
pub struct Ctx {
    pub store: Arc<dyn JobStore>,
    pub kind: Kind,
    url: String,
    db_name: Option<String>,
    admin_url: Option<String>,
}

pub fn test_config() -> StoreConfig {
    StoreConfig {
        backoff: BackoffPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(3600),
        },
        max_connections: 8,
        notify_debounce: Duration::from_millis(2),
        ..StoreConfig::default()
    }
}

fn admin_url() -> String {
    std::env::var("SLUICE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

impl Ctx {
    /// Another store on the same database, with another config.
    pub async fn reopen(&self, config: StoreConfig) -> Arc<dyn JobStore> {
        open(&self.url, config).await.expect("reopen store")
    }

    /// Register a component and an active plugin version.
    pub async fn plugin(
        &self,
        tenant: &str,
        plugin: &str,
        settings: PluginSettings,
    ) -> PluginVersion {
        let digest = self
            .store
            .put_component(format!("component of {tenant}/{plugin}").as_bytes())
            .await
            .unwrap();
        self.store
            .create_plugin_version(tenant, plugin, &digest, &settings, true)
            .await
            .unwrap()
    }

    /// Postgres: terminate every backend connected to this test's database (what a server
    /// restart looks like to a client).
    pub async fn kill_connections(&self) -> u64 {
        let (Some(admin), Some(db)) = (&self.admin_url, &self.db_name) else {
            return 0;
        };
        let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(db)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let _ = conn.close().await;
        killed.len() as u64
    }
}

/// Run `case` against a fresh store of `kind`, then tear the database down even if it
/// panicked.
pub async fn run<F, Fut>(kind: Kind, case: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut _dir = None;
    let (url, db_name, admin) = match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("sluice.db").display());
            _dir = Some(dir);
            (url, None, None)
        }
        Kind::Postgres => {
            let admin = admin_url();
            let name = format!("sluice_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to Postgres (set SLUICE_TEST_PG_URL)");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut conn)
                .await
                .unwrap();
            let _ = conn.close().await;
            (with_database(&admin, &name), Some(name), Some(admin))
        }
    };
    let store = open(&url, test_config()).await.expect("open store");
    let ctx = Ctx {
        store: store.clone(),
        kind,
        url,
        db_name: db_name.clone(),
        admin_url: admin.clone(),
    };
    let result = tokio::spawn(case(ctx)).await;
    store.close().await;
    drop(store);
    if let (Some(admin), Some(name)) = (admin, db_name) {
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        let _ = conn.close().await;
    }
    if let Err(e) = result {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("case did not finish: {e}");
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(super::Kind::Sqlite, super::cases::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run(super::Kind::Postgres, super::cases::$name).await;
                }
            )*
        }
    };
}

conformance!(
    enqueue_claim_complete,
    unknown_plugin_is_not_found,
    oversized_input_is_rejected,
    enqueue_batch_is_atomic,
    delayed_jobs_wait,
    claim_order_within_tenant,
    tenants_share_claims_fairly,
    concurrency_caps_hold,
    retry_then_dead_keeps_history,
    permanent_error_is_dead_at_once,
    retry_after_is_honoured,
    heartbeat_extends_and_reports,
    cancel_transitions,
    completion_wins_over_cancel_request,
    rescued_job_sees_committed_effects,
    rescue_out_of_attempts_is_dead,
    late_finalize_after_rescue_is_ignored,
    complete_many_mixes_outcomes,
    idempotent_enqueue,
    idempotency_race_makes_one_job,
    idempotency_key_expires,
    dead_letter_redrive,
    journal_replay_records,
    effects_commit_once,
    state_backend_semantics,
    usage_aggregates,
    events_resume_after_seq,
    events_batch_in_one_call,
    nul_characters_are_contained,
    waiting_jobs_quota_per_tenant,
    state_bytes_quota_per_tenant,
    api_keys,
    api_keys_across_tenants_and_by_id,
    list_jobs_filters_and_pages,
    purge_respects_retention,
    plugins_and_components,
    work_signal_wakes,
    queue_stats_count,
    queue_breakdown_by_plugin,
    connections_killed_mid_loop,
    budget_ledger_never_overshoots,
    budget_rules_are_per_tenant,
    webhook_outbox_follows_finished_jobs,
    nodes_count_live,
);

mod cases {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, Ordering};

    use serde_json::json;
    use sluice_types::model::{ResponseSource, Usage};
    use sluice_types::{JobError, JobEvent, Micros, ModelOutcome, StateScope};
    use uuid::Uuid;

    use super::*;

    const T: &str = "acme";
    const P: &str = "summarize";

    fn req(limit: u32) -> ClaimRequest {
        ClaimRequest::new("w1", limit, Duration::from_secs(30))
    }

    /// Claim until `n` jobs are held or `tries` polls found nothing new (waits out small
    /// backoffs without asserting on time).
    async fn claim_n(store: &Arc<dyn JobStore>, r: &ClaimRequest, n: usize) -> Vec<ClaimedJob> {
        let mut out = Vec::new();
        for _ in 0..500 {
            out.extend(store.claim(r).await.unwrap());
            if out.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out
    }

    pub async fn enqueue_claim_complete(ctx: Ctx) {
        let s = &ctx.store;
        let settings = PluginSettings {
            timeout_ms: Some(1234),
            max_attempts: Some(7),
            ..Default::default()
        };
        let pv = ctx.plugin(T, P, settings).await;
        let job = NewJob::new(T, P, json!({"text": "hello", "n": 1}))
            .tag("user", "u1")
            .tag("feature", "digest");
        let e = s.enqueue(job).await.unwrap();
        assert!(!e.existing);
        let rec = s.get_job(e.id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Queued);
        assert_eq!(rec.digest, pv.digest);
        assert_eq!(rec.timeout_ms, 1234);
        assert_eq!(rec.max_attempts, 7);

        let claimed = s.claim(&req(10)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let c = &claimed[0];
        assert_eq!(c.id, e.id);
        assert_eq!(c.attempt, 1);
        assert_eq!(c.digest, pv.digest);
        assert_eq!(c.plugin_version, pv.version);
        assert_eq!(c.input, json!({"text": "hello", "n": 1}));
        assert_eq!(c.tags.get("user").map(String::as_str), Some("u1"));
        assert_eq!(c.timeout_ms, 1234);
        assert!(c.lease_expires_at > c.attempted_at);
        let info = c.job_info();
        assert_eq!(info.attempt, 1);
        assert_eq!(info.max_attempts, 7);
        assert_eq!(
            info.deadline_unix_ms,
            (c.attempted_at.timestamp_millis() + 1234) as u64
        );
        assert_eq!(
            s.get_job(e.id).await.unwrap().unwrap().status,
            JobStatus::Running
        );
        assert!(
            s.claim(&req(10)).await.unwrap().is_empty(),
            "a running job is not claimed twice"
        );

        let out = s
            .complete(c.lease, &json!({"summary": "hi"}))
            .await
            .unwrap();
        assert_eq!(out, Finalized::Completed);
        let rec = s.get_job(e.id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Completed);
        assert_eq!(rec.output, Some(json!({"summary": "hi"})));
        assert_eq!(rec.attempts.len(), 1);
        assert_eq!(rec.attempts[0].outcome, AttemptOutcome::Completed);
        assert_eq!(rec.attempts[0].worker_id.as_deref(), Some("w1"));
        assert!(rec.finished_at.is_some());
        assert_eq!(
            s.complete(c.lease, &json!(null)).await.unwrap(),
            Finalized::LeaseLost
        );
        assert!(s.claim(&req(10)).await.unwrap().is_empty());
        assert!(s.get_job(Uuid::now_v7()).await.unwrap().is_none());
    }

    pub async fn unknown_plugin_is_not_found(ctx: Ctx) {
        let s = &ctx.store;
        let err = s
            .enqueue(NewJob::new(T, "nope", json!({})))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound { what: "plugin", .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("nope") && msg.contains(T), "{msg}");
        // A plugin that exists for another tenant is still unknown to this one.
        ctx.plugin("other", P, PluginSettings::default()).await;
        let err = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
        // A plugin without an active version cannot take jobs.
        let digest = s.put_component(b"x").await.unwrap();
        s.create_plugin_version(T, "inactive", &digest, &PluginSettings::default(), false)
            .await
            .unwrap();
        let err = s
            .enqueue(NewJob::new(T, "inactive", json!({})))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
        // Same through the idempotent path.
        let err = s
            .enqueue(NewJob::new(T, "nope", json!({})).idempotency_key("k"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
        assert_eq!(
            s.list_jobs(&JobFilter::default(), PageRequest::default())
                .await
                .unwrap()
                .items
                .len(),
            0
        );
    }

    pub async fn oversized_input_is_rejected(ctx: Ctx) {
        ctx.plugin(T, P, PluginSettings::default()).await;
        let limit = ctx.store.config().max_input_bytes;
        let big = "x".repeat(limit + 1);
        let err = ctx
            .store
            .enqueue(NewJob::new(T, P, json!({ "text": big })))
            .await
            .unwrap_err();
        match &err {
            StoreError::InputTooLarge { size, limit: l } => {
                assert!(*size > limit);
                assert_eq!(*l, limit);
            }
            other => panic!("expected InputTooLarge, got {other:?}"),
        }
        assert!(err.to_string().contains("limit"));
        let ok = "x".repeat(limit - 20);
        ctx.store
            .enqueue(NewJob::new(T, P, json!({ "t": ok })))
            .await
            .unwrap();
    }

    pub async fn enqueue_batch_is_atomic(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let jobs: Vec<NewJob> = (0..500)
            .map(|i| NewJob::new(T, P, json!({ "i": i })))
            .collect();
        let out = s.enqueue_batch(jobs).await.unwrap();
        assert_eq!(out.len(), 500);
        assert_eq!(out.iter().map(|e| e.id).collect::<HashSet<_>>().len(), 500);
        let mut bad: Vec<NewJob> = (0..10)
            .map(|i| NewJob::new(T, P, json!({ "i": i })))
            .collect();
        bad.push(NewJob::new(T, "missing", json!({})));
        let err = s.enqueue_batch(bad).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
        assert_eq!(
            s.queue_stats().await.unwrap().queued,
            500,
            "a failed batch inserts nothing"
        );
        let got = claim_n(s, &req(1000), 500).await;
        assert_eq!(got.len(), 500);
        // Input order is preserved in results and ids are time-ordered.
        let c: Vec<Completion> = got
            .iter()
            .map(|c| Completion {
                lease: c.lease,
                output: c.input.clone(),
            })
            .collect();
        assert!(
            s.complete_many(&c)
                .await
                .unwrap()
                .iter()
                .all(|f| *f == Finalized::Completed)
        );
        assert!(s.enqueue_batch(vec![]).await.unwrap().is_empty());
    }

    pub async fn delayed_jobs_wait(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let mut job = NewJob::new(T, P, json!({}));
        job.run_at = Some(chrono::Utc::now() + chrono::Duration::hours(1));
        let e = s.enqueue(job).await.unwrap();
        assert_eq!(e.status, JobStatus::Scheduled, "the enqueue says so itself");
        assert_eq!(
            s.get_job(e.id).await.unwrap().unwrap().status,
            JobStatus::Scheduled
        );
        assert!(s.claim(&req(10)).await.unwrap().is_empty());
        let mut soon = NewJob::new(T, P, json!({}));
        soon.run_at = Some(chrono::Utc::now() + chrono::Duration::milliseconds(50));
        let e2 = s.enqueue(soon).await.unwrap();
        let got = claim_n(s, &req(10), 1).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, e2.id);
        assert_eq!(s.queue_stats().await.unwrap().scheduled, 1);
    }

    pub async fn claim_order_within_tenant(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let mut ids = Vec::new();
        for (i, prio) in [5, 1, 3, 1, 0].into_iter().enumerate() {
            let mut j = NewJob::new(T, P, json!({ "i": i }));
            j.priority = prio;
            ids.push((prio, s.enqueue(j).await.unwrap().id));
        }
        let mut claimed = Vec::new();
        for _ in 0..5 {
            claimed.extend(s.claim(&req(1)).await.unwrap().into_iter().map(|c| c.id));
        }
        let mut expected = ids.clone();
        expected.sort_by_key(|(p, id)| (*p, *id));
        assert_eq!(
            claimed,
            expected.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
        );
    }

    pub async fn tenants_share_claims_fairly(ctx: Ctx) {
        let s = &ctx.store;
        for t in ["big", "small", "tiny"] {
            ctx.plugin(t, P, PluginSettings::default()).await;
        }
        // The big tenant floods the queue first, and with a better priority.
        let flood: Vec<NewJob> = (0..300)
            .map(|i| {
                let mut j = NewJob::new("big", P, json!({ "i": i }));
                j.priority = -10;
                j
            })
            .collect();
        s.enqueue_batch(flood).await.unwrap();
        s.enqueue_batch(
            (0..4)
                .map(|i| NewJob::new("small", P, json!({ "i": i })))
                .collect(),
        )
        .await
        .unwrap();
        s.enqueue_batch(
            (0..1)
                .map(|i| NewJob::new("tiny", P, json!({ "i": i })))
                .collect(),
        )
        .await
        .unwrap();
        let got = s.claim(&req(9)).await.unwrap();
        assert_eq!(got.len(), 9);
        let count = |t: &str| got.iter().filter(|c| c.tenant == t).count();
        assert_eq!(
            count("tiny"),
            1,
            "every tenant with work is served in the same claim"
        );
        assert_eq!(
            count("small"),
            4,
            "leftover slots go to tenants that still have work"
        );
        assert_eq!(
            count("big"),
            4,
            "a flood with a better priority does not take the claim"
        );
        // Many tenants, small claims: the cursor rotates so each is served in turn.
        for i in 0..6 {
            let t = format!("t{i}");
            ctx.plugin(&t, P, PluginSettings::default()).await;
            s.enqueue(NewJob::new(&t, P, json!({}))).await.unwrap();
        }
        let mut seen = HashSet::new();
        for _ in 0..6 {
            for c in s.claim(&req(2)).await.unwrap() {
                seen.insert(c.tenant.clone());
            }
        }
        for i in 0..6 {
            assert!(seen.contains(&format!("t{i}")), "t{i} starved: {seen:?}");
        }
    }

    pub async fn concurrency_caps_hold(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(
            T,
            P,
            PluginSettings {
                concurrency: Some(2),
                ..Default::default()
            },
        )
        .await;
        ctx.plugin(T, "other", PluginSettings::default()).await;
        s.enqueue_batch((0..10).map(|_| NewJob::new(T, P, json!({}))).collect())
            .await
            .unwrap();
        s.enqueue_batch((0..3).map(|_| NewJob::new(T, "other", json!({}))).collect())
            .await
            .unwrap();
        let caps = s.concurrency_caps().await.unwrap();
        assert_eq!(
            caps,
            vec![PluginCap {
                tenant: T.into(),
                plugin: P.into(),
                max_running: 2
            }]
        );
        let mut r = req(20);
        r.plugin_caps = caps;
        let got = s.claim(&r).await.unwrap();
        assert_eq!(got.iter().filter(|c| c.plugin == P).count(), 2);
        assert_eq!(got.iter().filter(|c| c.plugin == "other").count(), 3);
        assert!(
            s.claim(&r).await.unwrap().is_empty(),
            "capped plugin stays at its cap"
        );
        let one = got.iter().find(|c| c.plugin == P).unwrap();
        s.complete(one.lease, &json!(1)).await.unwrap();
        let more = s.claim(&r).await.unwrap();
        assert_eq!(more.len(), 1, "a freed slot is reused");
        // A tenant cap bounds all of a tenant's plugins together.
        ctx.plugin("t2", P, PluginSettings::default()).await;
        s.enqueue_batch((0..10).map(|_| NewJob::new("t2", P, json!({}))).collect())
            .await
            .unwrap();
        let mut r2 = req(20);
        r2.tenant_cap = Some(100);
        r2.tenant_caps.insert("t2".into(), 4);
        r2.plugin_caps = r.plugin_caps.clone();
        let got = s.claim(&r2).await.unwrap();
        assert_eq!(got.iter().filter(|c| c.tenant == "t2").count(), 4);
        assert!(
            got.iter().all(|c| c.tenant == "t2"),
            "acme's capped plugin is still full"
        );
        assert!(s.claim(&r2).await.unwrap().is_empty());
    }

    pub async fn retry_then_dead_keeps_history(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let mut j = NewJob::new(T, P, json!({}));
        j.max_attempts = Some(2);
        let id = s.enqueue(j).await.unwrap().id;
        let c1 = s.claim(&req(1)).await.unwrap().remove(0);
        let before = chrono::Utc::now();
        let f = Failure {
            error: JobError::retryable("provider 503"),
            detail: Some(json!({"trap": false})),
        };
        let out = s.fail(c1.lease, &f).await.unwrap();
        let Finalized::Retrying { run_at, attempt } = out else {
            panic!("expected retry, got {out:?}")
        };
        assert_eq!(attempt, 1);
        // Backoff bounds: within [now, now + window(1)] (window = base = 1 ms in tests).
        let window = ctx.store.config().backoff.window(1);
        assert!(run_at >= before - chrono::Duration::seconds(1));
        assert!(
            run_at
                <= chrono::Utc::now()
                    + chrono::Duration::from_std(window).unwrap()
                    + chrono::Duration::seconds(1)
        );
        let rec = s.get_job(id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Retrying);
        assert_eq!(
            s.fail(c1.lease, &f).await.unwrap(),
            Finalized::LeaseLost,
            "a second fail is ignored"
        );

        let c2 = claim_n(s, &req(1), 1).await.remove(0);
        assert_eq!(c2.attempt, 2);
        assert_ne!(c2.lease.token, c1.lease.token);
        let out = s
            .fail(c2.lease, &Failure::new(JobError::retryable("still 503")))
            .await
            .unwrap();
        assert_eq!(out, Finalized::Dead, "out of attempts");
        let rec = s.get_job(id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Dead);
        assert_eq!(rec.error.as_ref().map(|e| e.message()), Some("still 503"));
        assert_eq!(rec.attempts.len(), 2);
        assert_eq!(rec.attempts[0].attempt, 1);
        assert_eq!(
            rec.attempts[0].error.as_ref().map(|e| e.message()),
            Some("provider 503")
        );
        assert_eq!(rec.attempts[0].detail, Some(json!({"trap": false})));
        assert_eq!(rec.attempts[1].attempt, 2);
        assert!(
            rec.attempts
                .iter()
                .all(|a| a.outcome == AttemptOutcome::Failed)
        );
        assert_eq!(s.count_dead(Some(T), None).await.unwrap(), 1);
        assert_eq!(s.count_dead(Some("x"), None).await.unwrap(), 0);
        let dead = s
            .list_dead(Some(T), Some(P), PageRequest::default())
            .await
            .unwrap();
        assert_eq!(dead.items.len(), 1);
        assert_eq!(dead.items[0].id, id);
        assert_eq!(dead.items[0].status, JobStatus::Dead);
    }

    pub async fn permanent_error_is_dead_at_once(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let id = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap().id;
        let c = s.claim(&req(1)).await.unwrap().remove(0);
        assert_eq!(
            s.fail(c.lease, &Failure::new(JobError::permanent("bad input")))
                .await
                .unwrap(),
            Finalized::Dead
        );
        let rec = s.get_job(id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Dead);
        assert_eq!(rec.error, Some(JobError::permanent("bad input")));
        assert_eq!(rec.attempt, 1);
    }

    pub async fn retry_after_is_honoured(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let id = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap().id;
        let c = s.claim(&req(1)).await.unwrap().remove(0);
        let err = JobError::Retryable {
            message: "429".into(),
            retry_after_ms: Some(60_000),
        };
        let before = chrono::Utc::now();
        let Finalized::Retrying { run_at, .. } = s.fail(c.lease, &Failure::new(err)).await.unwrap()
        else {
            panic!("expected retry")
        };
        assert!(run_at >= before + chrono::Duration::seconds(59));
        assert!(s.claim(&req(1)).await.unwrap().is_empty());
        assert_eq!(
            s.get_job(id).await.unwrap().unwrap().status,
            JobStatus::Retrying
        );
        assert_eq!(s.queue_stats().await.unwrap().retrying, 1);
    }

    pub async fn heartbeat_extends_and_reports(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        s.enqueue_batch((0..2).map(|_| NewJob::new(T, P, json!({}))).collect())
            .await
            .unwrap();
        let got = s.claim(&req(2)).await.unwrap();
        let before = s
            .get_job(got[0].id)
            .await
            .unwrap()
            .unwrap()
            .lease_expires_at
            .unwrap();
        let fake = Lease {
            id: got[1].id,
            token: Uuid::new_v4(),
        };
        let st = s
            .heartbeat(&[got[0].lease, fake], Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(st, vec![LeaseStatus::Held, LeaseStatus::Lost]);
        let after = s
            .get_job(got[0].id)
            .await
            .unwrap()
            .unwrap()
            .lease_expires_at
            .unwrap();
        assert!(after > before);
        assert_eq!(
            s.cancel(got[1].id).await.unwrap(),
            CancelOutcome::CancelRequested
        );
        let st = s
            .heartbeat(&[got[0].lease, got[1].lease], Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(st, vec![LeaseStatus::Held, LeaseStatus::CancelRequested]);
        assert!(
            s.heartbeat(&[], Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn cancel_transitions(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let queued = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap().id;
        assert_eq!(s.cancel(queued).await.unwrap(), CancelOutcome::Cancelled);
        assert_eq!(
            s.get_job(queued).await.unwrap().unwrap().status,
            JobStatus::Cancelled
        );
        assert_eq!(
            s.cancel(queued).await.unwrap(),
            CancelOutcome::AlreadyFinished {
                status: JobStatus::Cancelled
            }
        );
        assert!(s.claim(&req(5)).await.unwrap().is_empty());

        let running = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap().id;
        let c = s.claim(&req(5)).await.unwrap().remove(0);
        assert_eq!(
            s.cancel(running).await.unwrap(),
            CancelOutcome::CancelRequested
        );
        assert!(s.get_job(running).await.unwrap().unwrap().cancel_requested);
        // The worker stops the handler and reports; the job ends cancelled, not retried.
        let out = s
            .fail(
                c.lease,
                &Failure::new(JobError::retryable("stopped: cancelled")),
            )
            .await
            .unwrap();
        assert_eq!(out, Finalized::Cancelled);
        let rec = s.get_job(running).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Cancelled);
        assert_eq!(
            rec.attempts.last().map(|a| a.outcome),
            Some(AttemptOutcome::Cancelled)
        );
        assert_eq!(
            s.cancel(Uuid::now_v7()).await.unwrap(),
            CancelOutcome::NotFound
        );

        let done = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap().id;
        let c = s.claim(&req(5)).await.unwrap().remove(0);
        s.complete(c.lease, &json!(1)).await.unwrap();
        assert_eq!(
            s.cancel(done).await.unwrap(),
            CancelOutcome::AlreadyFinished {
                status: JobStatus::Completed
            }
        );
    }

    pub async fn completion_wins_over_cancel_request(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let id = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap().id;
        let c = s.claim(&req(1)).await.unwrap().remove(0);
        s.cancel(id).await.unwrap();
        assert_eq!(
            s.complete(c.lease, &json!("done")).await.unwrap(),
            Finalized::Completed
        );
        let rec = s.get_job(id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Completed);
        assert!(rec.cancel_requested);
        assert_eq!(rec.output, Some(json!("done")));
    }

    pub async fn rescued_job_sees_committed_effects(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let id = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap().id;
        // Attempt 1 commits an effect and a journal entry, then its worker dies: no heartbeat.
        let short = ClaimRequest::new("doomed", 1, Duration::from_millis(50));
        let c1 = s.claim(&short).await.unwrap().remove(0);
        s.commit(id, "send-email", "{\"message_id\":\"m1\"}")
            .await
            .unwrap();
        let entry = JournalEntry {
            job_id: id,
            seq: 0,
            fingerprint: "fp0".into(),
            response: json!({"content": "hi"}),
            usage: Usage {
                input_tokens: 3,
                output_tokens: 1,
                cached_input_tokens: 0,
            },
        };
        s.journal_put(&entry).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let report = s.rescue_expired_leases().await.unwrap();
        assert_eq!(report.retried, vec![id]);
        assert_eq!(s.rescue_expired_leases().await.unwrap().total(), 0);
        let rec = s.get_job(id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Retrying);
        assert_eq!(rec.attempts.len(), 1);
        assert_eq!(rec.attempts[0].outcome, AttemptOutcome::LeaseExpired);
        assert_eq!(rec.attempts[0].worker_id.as_deref(), Some("doomed"));

        let c2 = claim_n(s, &req(1), 1).await.remove(0);
        assert_eq!(c2.id, id);
        assert_eq!(c2.attempt, 2);
        assert_eq!(
            s.lookup(id, "send-email").await.unwrap().as_deref(),
            Some("{\"message_id\":\"m1\"}")
        );
        assert_eq!(s.lookup(id, "other").await.unwrap(), None);
        assert_eq!(s.journal_get(id, 0).await.unwrap(), Some(entry));
        assert_eq!(
            s.heartbeat(&[c1.lease], Duration::from_secs(1))
                .await
                .unwrap(),
            vec![LeaseStatus::Lost]
        );
        assert_eq!(
            s.complete(c2.lease, &json!("ok")).await.unwrap(),
            Finalized::Completed
        );
    }

    pub async fn rescue_out_of_attempts_is_dead(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let mut j = NewJob::new(T, P, json!({}));
        j.max_attempts = Some(1);
        let id = s.enqueue(j).await.unwrap().id;
        let cancelled = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap().id;
        let short = ClaimRequest::new("doomed", 2, Duration::from_millis(30));
        assert_eq!(s.claim(&short).await.unwrap().len(), 2);
        s.cancel(cancelled).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        let report = s.rescue_expired_leases().await.unwrap();
        assert_eq!(report.dead, vec![id]);
        assert_eq!(report.cancelled, vec![cancelled]);
        let rec = s.get_job(id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Dead);
        assert!(rec.error.unwrap().message().contains("lease expired"));
        assert_eq!(
            s.get_job(cancelled).await.unwrap().unwrap().status,
            JobStatus::Cancelled
        );
    }

    pub async fn late_finalize_after_rescue_is_ignored(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let id = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap().id;
        let zombie = s
            .claim(&ClaimRequest::new("zombie", 1, Duration::from_millis(30)))
            .await
            .unwrap()
            .remove(0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(s.rescue_expired_leases().await.unwrap().retried.len(), 1);
        // Before the re-claim: every finalize from the zombie is a no-op.
        assert_eq!(
            s.complete(zombie.lease, &json!("zombie")).await.unwrap(),
            Finalized::LeaseLost
        );
        let fresh = claim_n(
            s,
            &ClaimRequest::new("fresh", 1, Duration::from_secs(30)),
            1,
        )
        .await
        .remove(0);
        // After it too, and the new owner is untouched.
        assert_eq!(
            s.complete(zombie.lease, &json!("zombie")).await.unwrap(),
            Finalized::LeaseLost
        );
        assert_eq!(
            s.fail(zombie.lease, &Failure::new(JobError::permanent("zombie")))
                .await
                .unwrap(),
            Finalized::LeaseLost
        );
        assert_eq!(
            s.complete_many(&[Completion {
                lease: zombie.lease,
                output: json!(1)
            }])
            .await
            .unwrap(),
            vec![Finalized::LeaseLost]
        );
        let rec = s.get_job(id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Running);
        assert_eq!(rec.worker_id.as_deref(), Some("fresh"));
        assert_eq!(
            s.heartbeat(&[fresh.lease], Duration::from_secs(30))
                .await
                .unwrap(),
            vec![LeaseStatus::Held]
        );
        assert_eq!(
            s.complete(fresh.lease, &json!("fresh")).await.unwrap(),
            Finalized::Completed
        );
        let rec = s.get_job(id).await.unwrap().unwrap();
        assert_eq!(rec.output, Some(json!("fresh")));
        assert_eq!(rec.attempts.len(), 2);
    }

    pub async fn complete_many_mixes_outcomes(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        s.enqueue_batch((0..5).map(|i| NewJob::new(T, P, json!(i))).collect())
            .await
            .unwrap();
        let got = s.claim(&req(5)).await.unwrap();
        let mut items: Vec<Completion> = got
            .iter()
            .map(|c| Completion {
                lease: c.lease,
                output: json!({"in": c.input}),
            })
            .collect();
        items[2].lease.token = Uuid::new_v4();
        let out = s.complete_many(&items).await.unwrap();
        assert_eq!(
            out.iter().filter(|f| **f == Finalized::Completed).count(),
            4
        );
        assert_eq!(out[2], Finalized::LeaseLost);
        assert_eq!(
            s.get_job(got[2].id).await.unwrap().unwrap().status,
            JobStatus::Running
        );
        let rec = s.get_job(got[0].id).await.unwrap().unwrap();
        assert_eq!(rec.output, Some(json!({"in": got[0].input})));
    }

    pub async fn idempotent_enqueue(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        ctx.plugin("other", P, PluginSettings::default()).await;
        let a = s
            .enqueue(NewJob::new(T, P, json!({"a": 1, "b": 2})).idempotency_key("k1"))
            .await
            .unwrap();
        assert!(!a.existing);
        assert_eq!(a.status, JobStatus::Queued);
        // Same body (key order does not matter) → the same job.
        let b = s
            .enqueue(NewJob::new(T, P, json!({"b": 2, "a": 1})).idempotency_key("k1"))
            .await
            .unwrap();
        assert_eq!(
            b,
            Enqueued {
                id: a.id,
                existing: true,
                status: JobStatus::Queued,
            }
        );
        // Different body → conflict naming the key.
        let err = s
            .enqueue(NewJob::new(T, P, json!({"a": 2})).idempotency_key("k1"))
            .await
            .unwrap_err();
        match &err {
            StoreError::Conflict { key, job_id } => {
                assert_eq!(key, "k1");
                assert_eq!(*job_id, a.id);
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert!(err.to_string().contains("k1"));
        // Keys are per tenant.
        let c = s
            .enqueue(NewJob::new("other", P, json!({"a": 1, "b": 2})).idempotency_key("k1"))
            .await
            .unwrap();
        assert!(!c.existing);
        // Still the same job after it finished.
        let got = s.claim(&req(10)).await.unwrap();
        for g in &got {
            s.complete(g.lease, &json!(null)).await.unwrap();
        }
        let d = s
            .enqueue(NewJob::new(T, P, json!({"a": 1, "b": 2})).idempotency_key("k1"))
            .await
            .unwrap();
        assert_eq!(
            d,
            Enqueued {
                id: a.id,
                existing: true,
                status: JobStatus::Completed,
            }
        );
        // In a batch: duplicates resolve to one job, a conflict fails the whole batch.
        let batch = vec![
            NewJob::new(T, P, json!(1)).idempotency_key("b1"),
            NewJob::new(T, P, json!(1)).idempotency_key("b1"),
            NewJob::new(T, P, json!({"a": 1, "b": 2})).idempotency_key("k1"),
            NewJob::new(T, P, json!(2)),
        ];
        let out = s.enqueue_batch(batch).await.unwrap();
        assert!(!out[0].existing);
        assert_eq!(
            out[1],
            Enqueued {
                id: out[0].id,
                existing: true,
                status: JobStatus::Queued,
            }
        );
        assert_eq!(
            out[2],
            Enqueued {
                id: a.id,
                existing: true,
                status: JobStatus::Completed,
            }
        );
        assert!(!out[3].existing);
        let before = s.queue_stats().await.unwrap().queued;
        let bad = vec![
            NewJob::new(T, P, json!(3)).idempotency_key("b2"),
            NewJob::new(T, P, json!("different")).idempotency_key("k1"),
        ];
        assert!(matches!(
            s.enqueue_batch(bad).await.unwrap_err(),
            StoreError::Conflict { .. }
        ));
        assert_eq!(s.queue_stats().await.unwrap().queued, before);
        let e = s
            .enqueue(NewJob::new(T, P, json!(3)).idempotency_key("b2"))
            .await
            .unwrap();
        assert!(!e.existing, "the failed batch did not keep its keys");
    }

    pub async fn idempotency_race_makes_one_job(ctx: Ctx) {
        ctx.plugin(T, P, PluginSettings::default()).await;
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let s = ctx.store.clone();
            tasks.push(tokio::spawn(async move {
                s.enqueue(NewJob::new(T, P, json!({"same": true})).idempotency_key("race"))
                    .await
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap().unwrap());
        }
        let ids: HashSet<Uuid> = results.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(results.iter().filter(|e| !e.existing).count(), 1);
        let page = ctx
            .store
            .list_jobs(&JobFilter::default(), PageRequest::default())
            .await
            .unwrap();
        assert_eq!(page.items.len(), 1);
    }

    pub async fn idempotency_key_expires(ctx: Ctx) {
        let cfg = StoreConfig {
            idempotency_ttl: Duration::from_millis(1000),
            ..test_config()
        };
        let s = ctx.reopen(cfg).await;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let a = s
            .enqueue(NewJob::new(T, P, json!(1)).idempotency_key("k"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // After the window the key may be reused, even with another body.
        let b = s
            .enqueue(NewJob::new(T, P, json!(2)).idempotency_key("k"))
            .await
            .unwrap();
        assert!(!b.existing);
        assert_ne!(a.id, b.id);
        let c = s
            .enqueue(NewJob::new(T, P, json!(2)).idempotency_key("k"))
            .await
            .unwrap();
        assert_eq!(c.id, b.id);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(s.purge().await.unwrap().idempotency_keys, 1);
        s.close().await;
    }

    pub async fn dead_letter_redrive(ctx: Ctx) {
        let s = &ctx.store;
        let v1 = ctx.plugin(T, P, PluginSettings::default()).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(s.enqueue(NewJob::new(T, P, json!(i))).await.unwrap().id);
        }
        s.journal_put(&JournalEntry {
            job_id: ids[0],
            seq: 0,
            fingerprint: "f".into(),
            response: json!(1),
            usage: Usage::default(),
        })
        .await
        .unwrap();
        for c in s.claim(&req(3)).await.unwrap() {
            s.fail(c.lease, &Failure::new(JobError::permanent("boom")))
                .await
                .unwrap();
        }
        assert_eq!(s.count_dead(None, None).await.unwrap(), 3);

        // One job, same code.
        let filter = DeadFilter {
            ids: Some(vec![ids[0]]),
            ..Default::default()
        };
        let back = s
            .redrive(&filter, &RedriveOptions::default())
            .await
            .unwrap();
        assert_eq!(back, vec![ids[0]]);
        let rec = s.get_job(ids[0]).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Queued);
        assert_eq!((rec.run, rec.attempt), (1, 0));
        assert_eq!(rec.digest, v1.digest);
        assert_eq!(rec.attempts.len(), 1, "history survives the redrive");
        assert_eq!(rec.attempts[0].run, 0);
        assert!(
            s.journal_get(ids[0], 0).await.unwrap().is_some(),
            "journal kept by default"
        );
        let c = s.claim(&req(1)).await.unwrap().remove(0);
        assert_eq!((c.attempt, c.run), (1, 1));
        s.complete(c.lease, &json!("second time lucky"))
            .await
            .unwrap();
        let rec = s.get_job(ids[0]).await.unwrap().unwrap();
        assert_eq!(rec.attempts.len(), 2);
        assert_eq!(rec.attempts[1].outcome, AttemptOutcome::Completed);
        assert_eq!(rec.attempts[1].run, 1);

        // The rest, onto a newer version.
        let digest2 = s.put_component(b"v2 bytes").await.unwrap();
        let v2 = s
            .create_plugin_version(T, P, &digest2, &PluginSettings::default(), false)
            .await
            .unwrap();
        let err = s
            .redrive(
                &DeadFilter::default(),
                &RedriveOptions {
                    target: RedriveTarget::Version(v2.version),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)));
        let filter = DeadFilter {
            tenant: Some(T.into()),
            plugin: Some(P.into()),
            ..Default::default()
        };
        let opts = RedriveOptions {
            target: RedriveTarget::Version(v2.version),
            max_attempts: Some(9),
            clear_journal: true,
        };
        let back = s.redrive(&filter, &opts).await.unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(s.count_dead(None, None).await.unwrap(), 0);
        for id in &back {
            let rec = s.get_job(*id).await.unwrap().unwrap();
            assert_eq!(rec.digest, digest2);
            assert_eq!(rec.plugin_version, v2.version);
            assert_eq!(rec.max_attempts, 9);
        }
        let missing = RedriveOptions {
            target: RedriveTarget::Version(99),
            ..Default::default()
        };
        assert!(matches!(
            s.redrive(&filter, &missing).await.unwrap_err(),
            StoreError::NotFound { .. }
        ));

        // Active target follows the active version.
        for c in s.claim(&req(5)).await.unwrap() {
            s.fail(c.lease, &Failure::new(JobError::permanent("boom")))
                .await
                .unwrap();
        }
        s.activate_plugin_version(T, P, v1.version).await.unwrap();
        let opts = RedriveOptions {
            target: RedriveTarget::Active,
            ..Default::default()
        };
        let back = s
            .redrive(
                &DeadFilter {
                    limit: Some(1),
                    ..Default::default()
                },
                &opts,
            )
            .await
            .unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(s.get_job(back[0]).await.unwrap().unwrap().digest, v1.digest);
        assert_eq!(s.count_dead(None, None).await.unwrap(), 1);
    }

    pub async fn journal_replay_records(ctx: Ctx) {
        let s = &ctx.store;
        let job = Uuid::now_v7();
        assert_eq!(s.journal_get(job, 0).await.unwrap(), None);
        for seq in [1u32, 0, 2] {
            s.journal_put(&JournalEntry {
                job_id: job,
                seq,
                fingerprint: format!("fp{seq}"),
                response: json!({"content": seq}),
                usage: Usage {
                    input_tokens: seq,
                    output_tokens: 1,
                    cached_input_tokens: 0,
                },
            })
            .await
            .unwrap();
        }
        let all = s.journal_list(job).await.unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        // A diverged later attempt replaces the entry at that position.
        let replaced = JournalEntry {
            job_id: job,
            seq: 1,
            fingerprint: "other".into(),
            response: json!("new"),
            usage: Usage::default(),
        };
        s.journal_put(&replaced).await.unwrap();
        assert_eq!(s.journal_get(job, 1).await.unwrap(), Some(replaced));
        assert!(s.journal_list(Uuid::now_v7()).await.unwrap().is_empty());
    }

    pub async fn effects_commit_once(ctx: Ctx) {
        let s = &ctx.store;
        let job = Uuid::now_v7();
        assert_eq!(s.lookup(job, "charge").await.unwrap(), None);
        s.commit(job, "charge", "first").await.unwrap();
        s.commit(job, "charge", "second").await.unwrap();
        assert_eq!(
            s.lookup(job, "charge").await.unwrap().as_deref(),
            Some("first")
        );
        assert_eq!(s.lookup(Uuid::now_v7(), "charge").await.unwrap(), None);
        assert!(matches!(
            s.commit(job, "", "x").await,
            Err(sluice_types::EffectError::InvalidKey(_))
        ));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            s.lookup(job, &long).await,
            Err(sluice_types::EffectError::InvalidKey(_))
        ));
    }

    pub async fn state_backend_semantics(ctx: Ctx) {
        let s = &ctx.store;
        let sc = StateScope {
            tenant: T.into(),
            plugin: P.into(),
        };
        let other = StateScope {
            tenant: T.into(),
            plugin: "other".into(),
        };
        assert_eq!(s.get(&sc, "a").await.unwrap(), None);
        s.set(&sc, "a", "1", None).await.unwrap();
        assert_eq!(s.get(&sc, "a").await.unwrap().as_deref(), Some("1"));
        assert_eq!(s.get(&other, "a").await.unwrap(), None, "scoped per plugin");
        s.set(&sc, "a", "2", None).await.unwrap();
        assert_eq!(s.get(&sc, "a").await.unwrap().as_deref(), Some("2"));

        // TTL.
        s.set(&sc, "tmp", "x", Some(Duration::from_millis(800)))
            .await
            .unwrap();
        assert_eq!(s.get(&sc, "tmp").await.unwrap().as_deref(), Some("x"));
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(s.get(&sc, "tmp").await.unwrap(), None);
        assert!(
            !s.delete(&sc, "tmp").await.unwrap(),
            "an expired key counts as absent"
        );

        // Prefix listing, in order, bounded.
        for k in [
            "user:2",
            "user:1",
            "user:10",
            "users",
            "u",
            "user:\u{10FFFF}x",
        ] {
            s.set(&sc, k, "v", None).await.unwrap();
        }
        let keys = s.list_keys(&sc, "user:", 10).await.unwrap();
        assert_eq!(
            keys,
            vec!["user:1", "user:10", "user:2", "user:\u{10FFFF}x"]
        );
        assert_eq!(
            s.list_keys(&sc, "user:", 2).await.unwrap(),
            vec!["user:1", "user:10"]
        );
        assert_eq!(s.list_keys(&sc, "", 100).await.unwrap().len(), 7);
        assert!(s.list_keys(&other, "", 100).await.unwrap().is_empty());

        // Compare-and-swap.
        assert!(
            !s.compare_and_swap(&sc, "a", None, "x").await.unwrap(),
            "exists"
        );
        assert!(
            !s.compare_and_swap(&sc, "a", Some("1"), "x").await.unwrap(),
            "wrong value"
        );
        assert!(s.compare_and_swap(&sc, "a", Some("2"), "3").await.unwrap());
        assert_eq!(s.get(&sc, "a").await.unwrap().as_deref(), Some("3"));
        assert!(s.compare_and_swap(&sc, "new", None, "n").await.unwrap());
        assert!(!s.compare_and_swap(&sc, "new", None, "n2").await.unwrap());
        s.set(&sc, "exp", "old", Some(Duration::from_millis(20)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            !s.compare_and_swap(&sc, "exp", Some("old"), "x")
                .await
                .unwrap(),
            "expired is absent"
        );
        assert!(s.compare_and_swap(&sc, "exp", None, "fresh").await.unwrap());
        assert_eq!(s.get(&sc, "exp").await.unwrap().as_deref(), Some("fresh"));

        // Delete.
        assert!(s.delete(&sc, "a").await.unwrap());
        assert!(!s.delete(&sc, "a").await.unwrap());

        // Limits.
        use sluice_types::StateError;
        assert!(matches!(
            s.get(&sc, "").await,
            Err(StateError::InvalidKey(_))
        ));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            s.set(&sc, &long, "v", None).await,
            Err(StateError::InvalidKey(_))
        ));
        let ok = "k".repeat(MAX_KEY_BYTES);
        s.set(&sc, &ok, "v", None).await.unwrap();
        let big = "v".repeat(s.config().max_state_value_bytes + 1);
        assert!(matches!(
            s.set(&sc, "big", &big, None).await,
            Err(StateError::TooLarge(_))
        ));
        assert!(matches!(
            s.compare_and_swap(&sc, "big", None, &big).await,
            Err(StateError::TooLarge(_))
        ));
    }

    pub async fn usage_aggregates(ctx: Ctx) {
        let s = &ctx.store;
        let now = chrono::Utc::now();
        let rec =
            |plugin: &str, user: Option<&str>, model: &str, latency: u32, cost: u64| UsageRecord {
                job_id: Some(Uuid::now_v7()),
                attempt: 1,
                plugin: plugin.into(),
                tenant: T.into(),
                tags: user
                    .map(|u| [("user".to_string(), u.to_string())].into_iter().collect())
                    .unwrap_or_default(),
                provider: "sim".into(),
                model: model.into(),
                input_tokens: 100,
                output_tokens: 10,
                cached_input_tokens: 5,
                cost_micros: Micros::new(cost),
                latency_ms: latency,
                ttft_ms: Some(7),
                source: ResponseSource::Provider,
                outcome: ModelOutcome::Ok,
                created_at: now,
            };
        let mut records = Vec::new();
        for (i, lat) in [10, 20, 30, 40, 50].into_iter().enumerate() {
            records.push(rec(
                "a",
                Some(if i % 2 == 0 { "u1" } else { "u2" }),
                "m1",
                lat,
                3,
            ));
        }
        records.push(rec("b", None, "m2", 100, 1000));
        let mut old = rec("a", Some("u1"), "m1", 1, 1);
        old.created_at = now - chrono::Duration::days(2);
        records.push(old);
        let mut foreign = rec("a", Some("u1"), "m1", 1, 1);
        foreign.tenant = "else".into();
        records.push(foreign);
        s.record_usage(&records).await.unwrap();
        let q = |g: UsageGroupBy| UsageQuery {
            tenant: Some(T.into()),
            from: now - chrono::Duration::hours(1),
            to: now + chrono::Duration::hours(1),
            group_by: g,
        };
        let by_plugin = s.usage_summary(&q(UsageGroupBy::Plugin)).await.unwrap();
        assert_eq!(by_plugin.len(), 2);
        let a = &by_plugin[0];
        assert_eq!(a.key.as_deref(), Some("a"));
        assert_eq!(a.calls, 5);
        assert_eq!(
            (
                a.input_tokens,
                a.output_tokens,
                a.cached_input_tokens,
                a.cost_micros.get()
            ),
            (500, 50, 25, 15)
        );
        assert_eq!(a.latency_p50_ms, 30.0);
        assert!(
            (a.latency_p95_ms - 48.0).abs() < 1e-9,
            "{}",
            a.latency_p95_ms
        );
        assert_eq!(by_plugin[1].cost_micros.get(), 1000);
        let by_user = s
            .usage_summary(&q(UsageGroupBy::Tag("user".into())))
            .await
            .unwrap();
        let keys: Vec<Option<&str>> = by_user.iter().map(|u| u.key.as_deref()).collect();
        assert_eq!(keys, vec![Some("u1"), Some("u2"), None]);
        assert_eq!(by_user[0].calls, 3);
        assert_eq!(by_user[1].latency_p50_ms, 30.0);
        let by_model = s.usage_summary(&q(UsageGroupBy::Model)).await.unwrap();
        assert_eq!(by_model.iter().map(|m| m.calls).sum::<u64>(), 6);
        let all = UsageQuery {
            tenant: None,
            ..q(UsageGroupBy::Provider)
        };
        assert_eq!(s.usage_summary(&all).await.unwrap()[0].calls, 7);
    }

    pub async fn events_batch_in_one_call(ctx: Ctx) {
        let s = &ctx.store;
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let ev = |m: &str| JobEvent::Progress {
            message: m.into(),
            fraction: None,
        };
        s.append_event(a, &ev("a1")).await.unwrap();
        s.append_event(a, &ev("a2")).await.unwrap();
        // Two jobs interleaved: each numbered after its own last event, in input order.
        let seqs = s
            .append_events(&[(a, ev("a3")), (b, ev("b1")), (a, ev("a4")), (b, ev("b2"))])
            .await
            .unwrap();
        assert_eq!(seqs, vec![3, 1, 4, 2]);
        let stored = s.events_after(a, 0, 10).await.unwrap();
        let messages: Vec<_> = stored
            .iter()
            .map(|e| match &e.event {
                JobEvent::Progress { message, .. } => message.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(messages, ["a1", "a2", "a3", "a4"]);
        assert_eq!(s.events_after(b, 0, 10).await.unwrap().len(), 2);
        assert!(s.append_events(&[]).await.unwrap().is_empty());
    }

    /// Postgres refuses NUL in `jsonb` and `text`: what a handler or a provider controls must
    /// not fail a statement that other jobs' rows share, and both backends behave alike.
    pub async fn nul_characters_are_contained(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        // Input: refused at submit on both backends, with a clear reason.
        let err = s
            .enqueue(NewJob::new(T, P, json!({"text": "a\u{0}b"})))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
        // A key with NUL is refused too.
        assert!(
            s.enqueue(NewJob::new(T, P, json!({"a\u{0}": 1})))
                .await
                .is_err()
        );

        // A handler's error message with NUL: the job still becomes dead, readable.
        s.enqueue(NewJob::new(T, P, json!({"n": 1}))).await.unwrap();
        let c = s.claim(&req(1)).await.unwrap().remove(0);
        let finalized = s
            .fail(c.lease, &Failure::new(JobError::permanent("bad\u{0}input")))
            .await
            .unwrap();
        assert_eq!(finalized, Finalized::Dead);
        let rec = s.get_job(c.id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Dead);
        assert!(rec.error.unwrap().message().starts_with("bad"));

        // One row with NUL in a batch of completions does not fail the others.
        for n in 0..3 {
            s.enqueue(NewJob::new(T, P, json!({ "i": n })))
                .await
                .unwrap();
        }
        let held = s.claim(&req(3)).await.unwrap();
        assert_eq!(held.len(), 3);
        let items: Vec<Completion> = held
            .iter()
            .enumerate()
            .map(|(i, c)| Completion {
                lease: c.lease,
                output: if i == 1 {
                    json!({"text": "x\u{0}y"})
                } else {
                    json!({ "ok": i })
                },
            })
            .collect();
        let outcomes = s.complete_many(&items).await.unwrap();
        assert_eq!(outcomes, vec![Finalized::Completed; 3]);
        let clean = s.get_job(held[0].id).await.unwrap().unwrap();
        assert_eq!(clean.output, Some(json!({"ok": 0})));

        // Events and usage rows with NUL are stored (Postgres: as U+FFFD), never dropped.
        let job = Uuid::now_v7();
        let ev = JobEvent::Progress {
            message: "nul\u{0}here".into(),
            fraction: None,
        };
        assert_eq!(s.append_event(job, &ev).await.unwrap(), 1);
        assert_eq!(s.append_events(&[(job, ev)]).await.unwrap(), vec![2]);
        let usage = UsageRecord {
            job_id: Some(job),
            attempt: 1,
            plugin: P.into(),
            tenant: T.into(),
            tags: [("user".to_string(), "u\u{0}1".to_string())]
                .into_iter()
                .collect(),
            provider: "sim".into(),
            model: "model\u{0}name".into(),
            input_tokens: 1,
            output_tokens: 1,
            cached_input_tokens: 0,
            cost_micros: Micros::new(1),
            latency_ms: 1,
            ttft_ms: None,
            source: ResponseSource::Provider,
            outcome: ModelOutcome::Ok,
            created_at: chrono::Utc::now(),
        };
        s.record_usage(&[usage]).await.unwrap();
        let summary = s
            .usage_summary(&UsageQuery {
                tenant: Some(T.into()),
                from: chrono::Utc::now() - chrono::Duration::hours(1),
                to: chrono::Utc::now() + chrono::Duration::hours(1),
                group_by: UsageGroupBy::Model,
            })
            .await
            .unwrap();
        assert_eq!(summary.len(), 1);
        assert!(summary[0].key.as_deref().unwrap().starts_with("model"));
    }

    pub async fn waiting_jobs_quota_per_tenant(ctx: Ctx) {
        ctx.plugin(T, P, PluginSettings::default()).await;
        ctx.plugin("other", P, PluginSettings::default()).await;
        let cfg = StoreConfig {
            max_waiting_jobs_per_tenant: Some(3),
            ..StoreConfig::default()
        };
        let s = ctx.reopen(cfg).await;
        for i in 0..3 {
            s.enqueue(NewJob::new(T, P, json!({ "i": i })))
                .await
                .unwrap();
        }
        let err = s
            .enqueue(NewJob::new(T, P, json!({ "i": 3 })))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::QuotaExceeded {
                    waiting: 3,
                    limit: 3,
                    ..
                }
            ),
            "{err}"
        );
        // A batch that would cross the limit is refused whole.
        assert!(
            s.enqueue_batch(vec![NewJob::new(T, P, json!({ "b": 1 }))])
                .await
                .is_err()
        );
        // Another tenant is not affected.
        s.enqueue(NewJob::new("other", P, json!({}))).await.unwrap();
        // Finished jobs free the quota (once the cached count is re-read).
        // (One claim of two takes one job of each tenant.)
        for c in s.claim(&req(2)).await.unwrap() {
            s.complete(c.lease, &json!({})).await.unwrap();
        }
        tokio::time::sleep(sluice_store::QUOTA_COUNT_TTL).await;
        s.enqueue(NewJob::new(T, P, json!({ "i": 4 })))
            .await
            .unwrap();
        assert_eq!(s.queue_stats().await.unwrap().queued, 3);
    }

    pub async fn state_bytes_quota_per_tenant(ctx: Ctx) {
        let cfg = StoreConfig {
            max_state_bytes_per_tenant: Some(100),
            ..StoreConfig::default()
        };
        let s = ctx.reopen(cfg).await;
        let scope = |tenant: &str| StateScope {
            tenant: tenant.into(),
            plugin: P.into(),
        };
        let (acme, other) = (scope(T), scope("other"));
        // 2 + 40 bytes, twice: 84 of 100.
        s.set(&acme, "k1", &"x".repeat(40), None).await.unwrap();
        s.set(&acme, "k2", &"x".repeat(40), None).await.unwrap();
        let err = s.set(&acme, "k3", &"x".repeat(40), None).await.unwrap_err();
        assert!(
            matches!(&err, sluice_types::StateError::TooLarge(m) if m.contains("limit is 100")),
            "{err}"
        );
        // Compare-and-swap is held to the same quota; another tenant is not affected.
        assert!(
            s.compare_and_swap(&acme, "k4", None, &"y".repeat(40))
                .await
                .is_err()
        );
        s.set(&other, "k1", &"x".repeat(40), None).await.unwrap();
        // Deleting frees room (once the tally is counted again).
        assert!(s.delete(&acme, "k1").await.unwrap());
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        s.set(&acme, "k3", &"x".repeat(40), None).await.unwrap();
    }

    pub async fn events_resume_after_seq(ctx: Ctx) {
        let s = &ctx.store;
        let job = Uuid::now_v7();
        let mut seqs = Vec::new();
        for i in 0..5 {
            let ev = JobEvent::Progress {
                message: format!("step {i}"),
                fraction: Some(i as f32 / 4.0),
            };
            seqs.push(s.append_event(job, &ev).await.unwrap());
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        let after = s.events_after(job, 2, 100).await.unwrap();
        assert_eq!(
            after.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(
            after[0].event,
            JobEvent::Progress {
                message: "step 2".into(),
                fraction: Some(0.5)
            }
        );
        assert_eq!(s.events_after(job, 0, 2).await.unwrap().len(), 2);
        assert!(s.events_after(job, 5, 10).await.unwrap().is_empty());
        // Concurrent appenders still get distinct, gapless sequence numbers.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = ctx.store.clone();
            tasks.push(tokio::spawn(async move {
                s.append_event(
                    job,
                    &JobEvent::Status {
                        status: JobStatus::Running,
                        attempt: 1,
                        reason: None,
                    },
                )
                .await
                .unwrap()
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        got.sort();
        assert_eq!(got, (6..=13).collect::<Vec<u64>>());
    }

    pub async fn api_keys_across_tenants_and_by_id(ctx: Ctx) {
        let s = &ctx.store;
        let mut made = Vec::new();
        for (i, tenant) in ["zeta", T, "alpha", T].into_iter().enumerate() {
            made.push(
                s.create_api_key(&NewApiKey {
                    tenant: tenant.into(),
                    name: format!("key-{i}"),
                    scopes: vec!["read".into()],
                    secret_hash: format!("{i:064x}"),
                })
                .await
                .unwrap(),
            );
        }
        let all = s.list_all_api_keys().await.unwrap();
        let order: Vec<(&str, &str)> = all
            .iter()
            .map(|k| (k.tenant.as_str(), k.name.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                (T, "key-1"),
                (T, "key-3"),
                ("alpha", "key-2"),
                ("zeta", "key-0")
            ],
            "by tenant, then oldest first"
        );
        assert_eq!(
            s.api_key(made[1].id).await.unwrap().as_ref(),
            Some(&made[1])
        );
        assert!(s.api_key(Uuid::now_v7()).await.unwrap().is_none());
        // A revoked key is still found by id and listed, marked revoked; the others are not.
        assert!(s.revoke_api_key(made[1].id).await.unwrap());
        assert!(s.api_key(made[1].id).await.unwrap().unwrap().revoked);
        let revoked: Vec<bool> = s
            .list_all_api_keys()
            .await
            .unwrap()
            .iter()
            .map(|k| k.revoked)
            .collect();
        assert_eq!(revoked, [true, false, false, false]);
        assert!(
            s.api_key_by_hash(&made[1].secret_hash)
                .await
                .unwrap()
                .is_none()
        );
    }

    pub async fn api_keys(ctx: Ctx) {
        let s = &ctx.store;
        let k = s
            .create_api_key(&NewApiKey {
                tenant: T.into(),
                name: "ci".into(),
                scopes: vec!["jobs:write".into(), "jobs:read".into()],
                secret_hash: "ab".repeat(32),
            })
            .await
            .unwrap();
        assert!(!k.revoked);
        let found = s.api_key_by_hash(&"ab".repeat(32)).await.unwrap().unwrap();
        assert_eq!(found, k);
        assert_eq!(found.scopes, vec!["jobs:write", "jobs:read"]);
        assert!(s.api_key_by_hash("nope").await.unwrap().is_none());
        assert_eq!(s.list_api_keys(T).await.unwrap().len(), 1);
        assert_eq!(s.count_api_keys().await.unwrap(), 1);
        assert!(s.revoke_api_key(k.id).await.unwrap());
        assert!(!s.revoke_api_key(k.id).await.unwrap());
        assert!(s.api_key_by_hash(&"ab".repeat(32)).await.unwrap().is_none());
        assert!(s.list_api_keys(T).await.unwrap()[0].revoked);
        assert_eq!(
            s.count_api_keys().await.unwrap(),
            0,
            "revoked keys do not count"
        );
    }

    pub async fn list_jobs_filters_and_pages(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        ctx.plugin(T, "other", PluginSettings::default()).await;
        ctx.plugin("t2", P, PluginSettings::default()).await;
        let mut all = Vec::new();
        for i in 0..12 {
            let j =
                NewJob::new(T, P, json!(i)).tag("user", if i % 2 == 0 { "even" } else { "odd" });
            all.push(s.enqueue(j).await.unwrap().id);
        }
        s.enqueue(NewJob::new(T, "other", json!(0))).await.unwrap();
        s.enqueue(NewJob::new("t2", P, json!(0))).await.unwrap();
        let mut r = req(3);
        r.tenant_caps.insert("t2".into(), 0);
        for c in s.claim(&r).await.unwrap() {
            s.complete(c.lease, &json!(null)).await.unwrap();
        }
        let f = JobFilter {
            tenant: Some(T.into()),
            plugin: Some(P.into()),
            ..Default::default()
        };
        let mut pages = Vec::new();
        let mut page = PageRequest {
            limit: 5,
            before: None,
        };
        loop {
            let p = s.list_jobs(&f, page).await.unwrap();
            pages.push(p.items.iter().map(|j| j.id).collect::<Vec<_>>());
            match p.next {
                Some(n) => page.before = Some(n),
                None => break,
            }
        }
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![5, 5, 2]
        );
        let flat: Vec<Uuid> = pages.concat();
        let mut newest_first = all.clone();
        newest_first.reverse();
        assert_eq!(
            flat, newest_first,
            "newest first, across live and finished jobs"
        );
        let done = JobFilter {
            status: Some(JobStatus::Completed),
            ..f.clone()
        };
        assert_eq!(
            s.list_jobs(&done, PageRequest::default())
                .await
                .unwrap()
                .items
                .len(),
            3
        );
        let queued = JobFilter {
            status: Some(JobStatus::Queued),
            ..f.clone()
        };
        assert_eq!(
            s.list_jobs(&queued, PageRequest::default())
                .await
                .unwrap()
                .items
                .len(),
            9
        );
        let mut odd = f.clone();
        odd.tags.insert("user".into(), "odd".into());
        let odd_jobs = s
            .list_jobs(&odd, PageRequest::default())
            .await
            .unwrap()
            .items;
        assert_eq!(odd_jobs.len(), 6);
        assert!(odd_jobs.iter().all(|j| j.tags["user"] == "odd"));
        let t2 = JobFilter {
            tenant: Some("t2".into()),
            ..Default::default()
        };
        assert_eq!(
            s.list_jobs(&t2, PageRequest::default())
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        let running = JobFilter {
            status: Some(JobStatus::Running),
            ..Default::default()
        };
        assert!(
            s.list_jobs(&running, PageRequest::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }

    pub async fn purge_respects_retention(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let ids: Vec<Uuid> = s
            .enqueue_batch((0..3).map(|i| NewJob::new(T, P, json!(i))).collect())
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        let got = s.claim(&req(3)).await.unwrap();
        let (first, rest) = got.split_first().unwrap();
        s.complete(first.lease, &json!(1)).await.unwrap();
        for c in rest {
            s.fail(c.lease, &Failure::new(JobError::permanent("x")))
                .await
                .unwrap();
        }
        s.commit(first.id, "e", "r").await.unwrap();
        s.append_event(
            first.id,
            &JobEvent::Progress {
                message: "m".into(),
                fraction: None,
            },
        )
        .await
        .unwrap();
        let sc = StateScope {
            tenant: T.into(),
            plugin: P.into(),
        };
        s.set(&sc, "gone", "v", Some(Duration::from_millis(1)))
            .await
            .unwrap();
        s.set(&sc, "kept", "v", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Default retention: nothing finished is old enough.
        let r = s.purge().await.unwrap();
        assert_eq!(r.jobs, 0);
        assert_eq!(r.state_entries, 1);
        // Zero retention for finished work, long for dead letters.
        let cfg = StoreConfig {
            history_retention: Duration::ZERO,
            ..test_config()
        };
        let short = ctx.reopen(cfg).await;
        assert_eq!(short.purge().await.unwrap().jobs, 1);
        assert!(short.get_job(first.id).await.unwrap().is_none());
        assert_eq!(short.lookup(first.id, "e").await.unwrap(), None);
        assert!(
            short
                .events_after(first.id, 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(short.count_dead(None, None).await.unwrap(), 2);
        assert!(
            short.get_job(ids[1]).await.unwrap().is_some()
                || short.get_job(ids[2]).await.unwrap().is_some()
        );
        short.close().await;
        let cfg = StoreConfig {
            dead_retention: Duration::ZERO,
            ..test_config()
        };
        let short = ctx.reopen(cfg).await;
        assert_eq!(short.purge().await.unwrap().jobs, 2);
        assert_eq!(short.count_dead(None, None).await.unwrap(), 0);
        assert_eq!(short.get(&sc, "kept").await.unwrap().as_deref(), Some("v"));
        short.close().await;
    }

    pub async fn plugins_and_components(ctx: Ctx) {
        let s = &ctx.store;
        let d1 = s.put_component(b"one").await.unwrap();
        assert_eq!(
            s.put_component(b"one").await.unwrap(),
            d1,
            "content-addressed, idempotent"
        );
        assert_eq!(d1, component_digest(b"one"));
        assert!(d1.starts_with("sha256:"));
        assert_eq!(
            s.get_component(&d1).await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(s.get_component("sha256:none").await.unwrap(), None);
        let err = s
            .create_plugin_version(T, P, "sha256:none", &PluginSettings::default(), true)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::NotFound {
                what: "component",
                ..
            }
        ));

        let settings = PluginSettings {
            timeout_ms: Some(10),
            memory_limit_bytes: Some(64 << 20),
            max_attempts: Some(3),
            concurrency: Some(4),
            allowed_models: Some(vec!["fast".into()]),
            limits: PluginLimits {
                max_events: Some(100),
                max_output_bytes: Some(4096),
                ..PluginLimits::default()
            },
            extra: [("x".to_string(), json!(1))].into_iter().collect(),
        };
        let v1 = s
            .create_plugin_version(T, P, &d1, &settings, true)
            .await
            .unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(v1.settings, settings);
        let d2 = s.put_component(b"two").await.unwrap();
        let v2 = s
            .create_plugin_version(T, P, &d2, &PluginSettings::default(), false)
            .await
            .unwrap();
        assert_eq!(v2.version, 2);
        let info = s.get_plugin(T, P).await.unwrap().unwrap();
        assert_eq!(info.active_version, Some(1));
        assert_eq!(info.versions.len(), 2);
        assert_eq!(info.active().unwrap().digest, d1);
        s.activate_plugin_version(T, P, 2).await.unwrap();
        assert_eq!(
            s.get_plugin(T, P)
                .await
                .unwrap()
                .unwrap()
                .active()
                .unwrap()
                .digest,
            d2
        );
        assert!(matches!(
            s.activate_plugin_version(T, P, 9).await.unwrap_err(),
            StoreError::NotFound { .. }
        ));
        assert_eq!(
            s.get_plugin_version(T, P, 1)
                .await
                .unwrap()
                .unwrap()
                .settings,
            settings
        );
        s.create_plugin_version(T, "b", &d1, &PluginSettings::default(), true)
            .await
            .unwrap();
        let names: Vec<String> = s
            .list_plugins(T)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["b", P]);
        assert!(s.list_plugins("nobody").await.unwrap().is_empty());
        // Jobs keep the digest they were enqueued with.
        let id = s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap().id;
        assert!(s.delete_plugin(T, P).await.unwrap());
        assert!(!s.delete_plugin(T, P).await.unwrap());
        assert!(s.get_plugin(T, P).await.unwrap().is_none());
        let c = s.claim(&req(1)).await.unwrap().remove(0);
        assert_eq!((c.id, c.digest.as_str()), (id, d2.as_str()));
        assert!(s.get_component(&d2).await.unwrap().is_some());
        assert!(matches!(
            s.enqueue(NewJob::new(T, P, json!({}))).await.unwrap_err(),
            StoreError::NotFound { .. }
        ));
        // Version numbers restart only when the plugin is recreated.
        let v = s
            .create_plugin_version(T, P, &d1, &PluginSettings::default(), true)
            .await
            .unwrap();
        assert_eq!(v.version, 1);
    }

    pub async fn work_signal_wakes(ctx: Ctx) {
        ctx.plugin(T, P, PluginSettings::default()).await;
        let mut sig = ctx.store.work_signal();
        if ctx.kind == Kind::Postgres {
            // The listener announces itself once it is subscribed.
            sig.wait(Duration::from_secs(5)).await;
        }
        let store = ctx.store.clone();
        let waiter = tokio::spawn(async move { sig.wait(Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.enqueue(NewJob::new(T, P, json!({}))).await.unwrap();
        assert!(waiter.await.unwrap(), "an enqueue wakes a waiting worker");
        let mut idle = ctx.store.work_signal();
        assert!(!idle.wait(Duration::from_millis(20)).await || ctx.kind == Kind::Postgres);

        if ctx.kind == Kind::Postgres {
            // Across processes: another store on the same database hears the NOTIFY.
            let other = ctx.reopen(test_config()).await;
            let mut sig = other.work_signal();
            sig.wait(Duration::from_secs(5)).await;
            let waiter = tokio::spawn(async move { sig.wait(Duration::from_secs(30)).await });
            tokio::time::sleep(Duration::from_millis(50)).await;
            ctx.store
                .enqueue(NewJob::new(T, P, json!({})))
                .await
                .unwrap();
            assert!(waiter.await.unwrap(), "NOTIFY reaches another node");
            other.close().await;
        }
    }

    pub async fn queue_stats_count(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        s.enqueue_batch((0..4).map(|_| NewJob::new(T, P, json!({}))).collect())
            .await
            .unwrap();
        let mut later = NewJob::new(T, P, json!({}));
        later.run_at = Some(chrono::Utc::now() + chrono::Duration::hours(1));
        s.enqueue(later).await.unwrap();
        let got = s.claim(&req(2)).await.unwrap();
        s.fail(got[0].lease, &Failure::new(JobError::permanent("x")))
            .await
            .unwrap();
        let err = JobError::Retryable {
            message: "later".into(),
            retry_after_ms: Some(3_600_000),
        };
        let mut j = s.claim(&req(1)).await.unwrap();
        s.fail(j.remove(0).lease, &Failure::new(err)).await.unwrap();
        let st = s.queue_stats().await.unwrap();
        assert_eq!(
            st,
            QueueStats {
                scheduled: 1,
                queued: 1,
                retrying: 1,
                running: 1,
                dead: 1
            }
        );
    }

    pub async fn queue_breakdown_by_plugin(ctx: Ctx) {
        let s = &ctx.store;
        assert_eq!(
            s.queue_breakdown().await.unwrap(),
            QueueBreakdown::default(),
            "empty"
        );
        ctx.plugin(T, P, PluginSettings::default()).await;
        ctx.plugin(T, "other-plugin", PluginSettings::default())
            .await;
        s.enqueue_batch((0..3).map(|_| NewJob::new(T, P, json!({}))).collect())
            .await
            .unwrap();
        s.enqueue(NewJob::new(T, "other-plugin", json!({})))
            .await
            .unwrap();
        // One of `P`'s jobs dies; the others wait.
        let before = chrono::Utc::now() - chrono::Duration::seconds(1);
        let got = s.claim(&req(1)).await.unwrap();
        let dead_plugin = got[0].plugin.clone();
        s.fail(got[0].lease, &Failure::new(JobError::permanent("x")))
            .await
            .unwrap();
        let b = s.queue_breakdown().await.unwrap();
        let total = |f: fn(&QueueStats) -> u64| b.by_plugin.iter().map(|(_, q)| f(q)).sum::<u64>();
        let st = s.queue_stats().await.unwrap();
        assert_eq!(total(|q| q.queued), st.queued, "{b:?}");
        assert_eq!(total(|q| q.dead), st.dead);
        assert_eq!(st.dead, 1);
        let names: Vec<&str> = b.by_plugin.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["other-plugin", P], "sorted by name");
        let of = |name: &str| b.by_plugin.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(of(&dead_plugin).dead, 1);
        assert_eq!(of(P).queued + of("other-plugin").queued, 3);
        let oldest = b.oldest_dead_at.expect("a dead job");
        assert!(oldest >= before && oldest <= chrono::Utc::now(), "{oldest}");
    }

    /// Postgres: terminate the database's connections repeatedly while workers claim and
    /// complete; the pool reconnects and every job completes exactly once.
    pub async fn connections_killed_mid_loop(ctx: Ctx) {
        ctx.plugin(T, P, PluginSettings::default()).await;
        const N: usize = 600;
        let ids: Vec<Uuid> = ctx
            .store
            .enqueue_batch((0..N).map(|i| NewJob::new(T, P, json!(i))).collect())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(tokio::sync::Notify::new());
        let mut workers = Vec::new();
        for w in 0..3 {
            let s = ctx.store.clone();
            let errors = errors.clone();
            workers.push(tokio::spawn(async move {
                let r = ClaimRequest::new(format!("w{w}"), 10, Duration::from_millis(400));
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                loop {
                    if tokio::time::Instant::now() > deadline {
                        panic!("jobs did not finish");
                    }
                    // Jobs whose claim response was lost come back after their lease.
                    if let Err(e) = s.rescue_expired_leases().await {
                        assert!(e.is_transient(), "unexpected error: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let claimed = match s.claim(&r).await {
                        Ok(c) => c,
                        Err(e) => {
                            assert!(e.is_transient(), "unexpected error: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    if claimed.is_empty() {
                        let st = loop {
                            match s.queue_stats().await {
                                Ok(st) => break st,
                                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        };
                        if st.queued + st.retrying + st.running == 0 {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let items: Vec<Completion> = claimed
                        .iter()
                        .map(|c| Completion {
                            lease: c.lease,
                            output: c.input.clone(),
                        })
                        .collect();
                    // Retry a completion until it is known to have landed (or the lease is gone).
                    for _ in 0..50 {
                        match s.complete_many(&items).await {
                            Ok(_) => break,
                            Err(e) => {
                                assert!(e.is_transient(), "unexpected error: {e}");
                                errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                }
            }));
        }
        let killer = {
            let ctx = ctx.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut kills = 0;
                for _ in 0..8 {
                    tokio::select! {
                        _ = stop.notified() => break,
                        _ = tokio::time::sleep(Duration::from_millis(40)) => {}
                    }
                    kills += ctx.kill_connections().await;
                }
                kills
            })
        };
        for w in workers {
            w.await.unwrap();
        }
        stop.notify_one();
        let kills = killer.await.unwrap();
        if ctx.kind == Kind::Postgres {
            assert!(kills > 0, "the test killed no connections");
        }
        let s = &ctx.store;
        // The killer's last round can land after the workers finished: a pooled connection it
        // killed fails its next statement once, with a transient error, as any caller sees
        // after a database restart. The checks retry those, as the workers did.
        let st = retry_transient(|| s.queue_stats()).await;
        assert_eq!(st, QueueStats::default(), "nothing left behind");
        for id in &ids {
            let rec = retry_transient(|| s.get_job(*id)).await.unwrap();
            assert_eq!(rec.status, JobStatus::Completed, "job {id}");
            assert_eq!(rec.output.as_ref(), Some(&rec.input));
        }
        let _ = errors.load(Ordering::Relaxed);
    }

    /// A store call retried while it fails with a transient error (a killed connection).
    async fn retry_transient<T, F, Fut>(mut call: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = sluice_store::Result<T>>,
    {
        for _ in 0..20 {
            match call().await {
                Ok(v) => return v,
                Err(e) => {
                    assert!(e.is_transient(), "unexpected error: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        panic!("the store stayed unreachable after its connections were killed");
    }

    fn line(budget: &str, limit: u64) -> LedgerLine {
        LedgerLine {
            budget: budget.into(),
            scope: "tenant:acme".into(),
            window: "total".into(),
            limit_micros: limit,
        }
    }

    pub async fn budget_ledger_never_overshoots(ctx: Ctx) {
        let s = &ctx.store;
        let ttl = Duration::from_secs(60);
        let a = line("a", 100);
        let b = line("b", 50);
        let both = [a.clone(), b.clone()];
        s.ledger_reserve(1, &both, 40, ttl).await.unwrap().unwrap();
        // b has 10 left: refused, and nothing is held in a either.
        let refused = s
            .ledger_reserve(2, &both, 20, ttl)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.line, 1);
        assert_eq!(refused.level.reserved_micros, 40);
        let level = s.ledger_level("a", "tenant:acme", "total").await.unwrap();
        assert_eq!((level.spent_micros, level.reserved_micros), (0, 40));
        // Settling releases the hold and records the actual spend.
        let after = s.ledger_settle(1, &both, 15).await.unwrap();
        assert_eq!(after[0].spent_micros, 15);
        assert_eq!(after[0].reserved_micros, 0);
        assert_eq!(after[1].spent_micros, 15);

        // Many reservations at once, from several connections: exactly as many fit as the
        // limit allows.
        let c = line("c", 100);
        let mut tasks = Vec::new();
        for i in 0..24 {
            let s = s.clone();
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                s.ledger_reserve(100 + i, &[c], 10, ttl)
                    .await
                    .unwrap()
                    .is_ok()
            }));
        }
        let mut granted = 0;
        for t in tasks {
            granted += usize::from(t.await.unwrap());
        }
        assert_eq!(granted, 10);
        let level = s.ledger_level("c", "tenant:acme", "total").await.unwrap();
        assert_eq!(level.reserved_micros, 100);

        // A hold whose node died expires and stops counting.
        let d = line("d", 10);
        s.ledger_reserve(7, std::slice::from_ref(&d), 10, Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.ledger_reserve(8, std::slice::from_ref(&d), 10, ttl)
            .await
            .unwrap()
            .unwrap();

        assert!(
            s.ledger_mark_alert("a", "tenant:acme", "total", "50%")
                .await
                .unwrap()
        );
        assert!(
            !s.ledger_mark_alert("a", "tenant:acme", "total", "50%")
                .await
                .unwrap()
        );
        assert!(
            s.ledger_mark_alert("a", "tenant:acme", "2026-11", "50%")
                .await
                .unwrap()
        );
        let windows = s.ledger_windows("a", 10).await.unwrap();
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].level.spent_micros, 15);
        assert!(s.purge_control(Duration::from_secs(3600)).await.unwrap() >= 1);
    }

    pub async fn budget_rules_are_per_tenant(ctx: Ctx) {
        let s = &ctx.store;
        let spec = json!({"scope": "tenant", "period": "day", "limit_usd": 5.0});
        let first = s.put_budget(T, "daily", &spec).await.unwrap();
        s.put_budget("globex", "daily", &json!({"limit_usd": 1}))
            .await
            .unwrap();
        let changed = json!({"scope": "tenant", "period": "day", "limit_usd": 7.5});
        let second = s.put_budget(T, "daily", &changed).await.unwrap();
        assert_eq!(second.created_at, first.created_at);
        assert_eq!(second.spec, changed);
        let mine = s.list_budgets(Some(T)).await.unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].spec, changed);
        assert_eq!(s.list_budgets(None).await.unwrap().len(), 2);
        assert!(!s.delete_budget("globex", "nope").await.unwrap());
        assert!(s.delete_budget(T, "daily").await.unwrap());
        assert!(s.list_budgets(Some(T)).await.unwrap().is_empty());
    }

    pub async fn webhook_outbox_follows_finished_jobs(ctx: Ctx) {
        let s = &ctx.store;
        ctx.plugin(T, P, PluginSettings::default()).await;
        let mut with_hook = NewJob::new(T, P, json!(1));
        with_hook.webhook_url = Some("https://hooks.example.com/a".into());
        let hooked = s.enqueue(with_hook).await.unwrap().id;
        s.enqueue(NewJob::new(T, P, json!(2))).await.unwrap();
        for c in claim_n(s, &req(2), 2).await {
            s.complete(c.lease, &json!("ok")).await.unwrap();
        }
        // Exactly one delivery, queued by finishing the job.
        let lease = Duration::from_secs(60);
        let claimed = s.webhook_claim(10, lease).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let d = &claimed[0];
        assert_eq!(d.job_id, Some(hooked));
        assert_eq!(d.event, "job.completed");
        assert_eq!(d.tenant, T);
        assert_eq!(d.status, DeliveryStatus::Pending);
        // Leased: another dispatcher does not get it.
        assert!(s.webhook_claim(10, lease).await.unwrap().is_empty());

        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        s.webhook_finish(
            d.id,
            &DeliveryResult::Retry {
                at: past,
                error: "HTTP 503".into(),
            },
        )
        .await
        .unwrap();
        let again = s.webhook_claim(10, lease).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
        assert_eq!(
            again[0].delivery_id, d.delivery_id,
            "same id on every attempt"
        );
        s.webhook_finish(
            d.id,
            &DeliveryResult::Dead {
                error: "HTTP 410 (not retried)".into(),
            },
        )
        .await
        .unwrap();
        let dead = s
            .webhook_list(T, Some(DeliveryStatus::Dead), None, 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(
            dead[0].last_error.as_deref(),
            Some("HTTP 410 (not retried)")
        );
        assert!(dead[0].finished_at.is_some());
        // Another tenant sees nothing and cannot retry it.
        assert!(
            s.webhook_list("globex", None, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(s.webhook_get("globex", d.id).await.unwrap().is_none());
        assert!(!s.webhook_retry("globex", d.id).await.unwrap());
        // Retried by its owner: pending and due now.
        assert!(s.webhook_retry(T, d.id).await.unwrap());
        assert!(!s.webhook_retry(T, d.id).await.unwrap(), "only dead ones");
        let retried = s.webhook_claim(10, lease).await.unwrap();
        assert_eq!(retried.len(), 1);
        s.webhook_finish(d.id, &DeliveryResult::Delivered)
            .await
            .unwrap();
        let got = s.webhook_get(T, d.id).await.unwrap().unwrap();
        assert_eq!(got.status, DeliveryStatus::Delivered);

        // Dead and cancelled jobs report too, with their own event.
        let mut dying = NewJob::new(T, P, json!(3));
        dying.webhook_url = Some("https://hooks.example.com/dead".into());
        dying.max_attempts = Some(1);
        let dying = s.enqueue(dying).await.unwrap().id;
        for c in claim_n(s, &req(1), 1).await {
            s.fail(c.lease, &Failure::new(JobError::permanent("boom")))
                .await
                .unwrap();
        }
        let mut waiting = NewJob::new(T, P, json!(4));
        waiting.webhook_url = Some("https://hooks.example.com/cancel".into());
        let waiting = s.enqueue(waiting).await.unwrap().id;
        assert_eq!(s.cancel(waiting).await.unwrap(), CancelOutcome::Cancelled);
        let mut events: Vec<(Option<Uuid>, String)> = s
            .webhook_claim(10, lease)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.job_id, d.event))
            .collect();
        events.sort();
        let mut want = vec![
            (Some(dying), "job.dead".to_string()),
            (Some(waiting), "job.cancelled".to_string()),
        ];
        want.sort();
        assert_eq!(events, want);
        for d in s
            .webhook_list(T, Some(DeliveryStatus::Pending), None, 10)
            .await
            .unwrap()
        {
            s.webhook_finish(d.id, &DeliveryResult::Delivered)
                .await
                .unwrap();
        }

        // Non-job events carry their own body.
        let alert = s
            .webhook_enqueue(&NewDelivery {
                tenant: T.into(),
                job_id: None,
                url: "https://hooks.example.com/b".into(),
                event: "budget.alert".into(),
                payload: Some(json!({"budget": "daily"})),
            })
            .await
            .unwrap();
        assert_eq!(alert.payload, Some(json!({"budget": "daily"})));
        let claimed = s.webhook_claim(10, lease).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, alert.id);
        let all = s.webhook_list(T, None, None, 10).await.unwrap();
        assert_eq!(all.len(), 4);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        let page = s.webhook_list(T, None, Some(all[0].id), 10).await.unwrap();
        assert_eq!(page.len(), 3);
    }

    pub async fn nodes_count_live(ctx: Ctx) {
        let s = &ctx.store;
        let node = |id: &str| NodeRecord {
            id: id.into(),
            hostname: "h".into(),
            version: "0".into(),
            roles: "api,worker".into(),
            started_at: chrono::Utc::now(),
            last_seen: chrono::Utc::now(),
        };
        let ttl = Duration::from_secs(15);
        assert_eq!(s.node_heartbeat(&node("a"), ttl).await.unwrap(), 1);
        assert_eq!(s.node_heartbeat(&node("b"), ttl).await.unwrap(), 2);
        assert_eq!(s.node_heartbeat(&node("a"), ttl).await.unwrap(), 2);
        // An API-only node makes no model calls: it takes no share of provider limits.
        let api = NodeRecord {
            roles: "api".into(),
            ..node("c")
        };
        assert_eq!(s.node_heartbeat(&api, ttl).await.unwrap(), 2);
        assert_eq!(s.list_nodes(ttl).await.unwrap().len(), 3);
        s.node_leave("c").await.unwrap();
        s.node_leave("b").await.unwrap();
        assert_eq!(s.node_heartbeat(&node("a"), ttl).await.unwrap(), 1);
        // A node not heard from within the TTL does not count.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            s.list_nodes(Duration::from_millis(10))
                .await
                .unwrap()
                .is_empty()
        );
    }
}
