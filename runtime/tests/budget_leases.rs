//! Budget leases on one Postgres shared by several nodes: however many nodes spend from their
//! slices at once, a window never goes past its limit, every settled micro-dollar is in the
//! ledger once the nodes give their rest back, and a node that dies leaves its unspent slice
//! counted as spent (under-use, never overshoot).

mod pg_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pg_support::PgDb;
use sluice::node::{StoreLedger, StoreSlices};
use sluice_gateway::budget::lease::{LeaseConfig, LeasedLedger};
use sluice_gateway::budget::{BudgetKey, BudgetLine, Ledger, LedgerError};
use sluice_store::{JobStore, StoreConfig};

fn line(budget: &str, scope: &str, limit: u64) -> BudgetLine {
    BudgetLine {
        key: BudgetKey {
            budget: budget.into(),
            scope: scope.into(),
            window: "2026-12".into(),
        },
        limit_micros: limit,
    }
}

const TENANT_LIMIT: u64 = 2_000_000;
const USER_LIMIT: u64 = 500_000;
const USERS: u64 = 6;

fn lines_for(call: u64) -> [BudgetLine; 2] {
    [
        line("acme/monthly", "tenant:acme", TENANT_LIMIT),
        line(
            "acme/per-user",
            &format!("tag:user=u{}", call % USERS),
            USER_LIMIT,
        ),
    ]
}

fn small_slices() -> LeaseConfig {
    LeaseConfig {
        calls_per_slice: 16,
        share: 4,
        idle: Duration::from_millis(30),
        sweep: Duration::from_millis(10),
    }
}

async fn open(url: &str) -> Arc<dyn JobStore> {
    let config = StoreConfig {
        max_connections: 6,
        ..StoreConfig::default()
    };
    sluice_store::open(url, config).await.unwrap()
}

/// What the callers of one ledger settled, per window.
#[derive(Default)]
struct Settled {
    tenant: AtomicU64,
    users: [AtomicU64; USERS as usize],
    refused: AtomicU64,
}

/// `tasks` callers on `ledger`, each making `calls` reserve → settle pairs of varying size,
/// settling between half and all of what they reserved.
async fn spend(ledger: Arc<dyn Ledger>, settled: Arc<Settled>, seed: u64, tasks: u64, calls: u64) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (ledger, settled) = (ledger.clone(), settled.clone());
        handles.push(tokio::spawn(async move {
            for c in 0..calls {
                let n = seed * 1_000_003 + t * 10_007 + c;
                let amount = 1_000 + (n * 7919) % 3_000;
                let lines = lines_for(n);
                match ledger.reserve(&lines, amount).await {
                    Ok(id) => {
                        if n.is_multiple_of(3) {
                            tokio::task::yield_now().await;
                        }
                        let actual = amount / 2 + (n * 104_729) % (amount / 2 + 1);
                        ledger.settle(id, &lines, amount, actual).await.unwrap();
                        settled.tenant.fetch_add(actual, Ordering::Relaxed);
                        settled.users[(n % USERS) as usize].fetch_add(actual, Ordering::Relaxed);
                    }
                    Err(LedgerError::Refused(r)) => {
                        assert_eq!(r.requested_micros, amount);
                        settled.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("ledger failed: {e}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_nodes_and_a_per_call_node_never_overshoot_and_lose_nothing() {
    let db = PgDb::create().await;
    let stores = [
        open(&db.url).await,
        open(&db.url).await,
        open(&db.url).await,
        open(&db.url).await,
    ];
    // Three nodes lease slices; a fourth reserves per call, as a node with leases off does.
    let mut ledgers: Vec<Arc<dyn Ledger>> = stores[..3]
        .iter()
        .map(|s| {
            Arc::new(LeasedLedger::new(
                StoreSlices::new(s.clone()),
                small_slices(),
            )) as Arc<dyn Ledger>
        })
        .collect();
    ledgers.push(Arc::new(StoreLedger::new(
        stores[3].clone(),
        Duration::from_secs(60),
    )));
    let settled = Arc::new(Settled::default());

    // Far more is asked for (4 nodes × 6 callers × 150 calls × ~2,500 µ$ ≈ 9 $) than the
    // 2 $ tenant budget and the 0.5 $ per-user budgets allow.
    let runs: Vec<_> = ledgers
        .iter()
        .enumerate()
        .map(|(i, l)| tokio::spawn(spend(l.clone(), settled.clone(), i as u64, 6, 150)))
        .collect();
    for r in runs {
        r.await.unwrap();
    }
    for l in &ledgers {
        l.release().await;
    }

    let level = |scope: String, budget: &'static str| {
        let store = stores[0].clone();
        async move { store.ledger_level(budget, &scope, "2026-12").await.unwrap() }
    };
    let tenant = level("tenant:acme".into(), "acme/monthly").await;
    let tenant_settled = settled.tenant.load(Ordering::Relaxed);
    assert!(
        tenant.spent_micros <= TENANT_LIMIT,
        "overshoot: spent {} of {TENANT_LIMIT}",
        tenant.spent_micros
    );
    assert_eq!(
        tenant.spent_micros, tenant_settled,
        "every settled micro-dollar is in the ledger once, and every unspent slice came back"
    );
    assert_eq!(tenant.reserved_micros, 0, "no hold left");
    let mut users_total = 0;
    for u in 0..USERS {
        let user = level(format!("tag:user=u{u}"), "acme/per-user").await;
        let s = settled.users[u as usize].load(Ordering::Relaxed);
        assert!(
            user.spent_micros <= USER_LIMIT,
            "user {u} overshot: {user:?}"
        );
        assert_eq!(user.spent_micros, s, "user {u}");
        users_total += s;
    }
    assert_eq!(users_total, tenant_settled);
    assert!(
        settled.refused.load(Ordering::Relaxed) > 0,
        "the budgets ran out during the test"
    );
    // Slices do not starve the budget: at most a few slices' worth (16 calls × ≤ 4,000 µ$ per
    // leased node, and reservations settled below their amount) is left unused at the end.
    assert!(
        tenant_settled >= TENANT_LIMIT - 400_000,
        "only {tenant_settled} µ$ of {TENANT_LIMIT} spent"
    );

    drop(ledgers);
    for s in stores {
        s.close().await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_leaves_its_unspent_slice_counted_as_spent() {
    let db = PgDb::create().await;
    let (a, b) = (open(&db.url).await, open(&db.url).await);
    let config = LeaseConfig {
        calls_per_slice: 100,
        share: 1,
        ..small_slices()
    };
    let lines = [line("acme/monthly", "tenant:acme", 1_000_000)];

    // Node A takes a slice of 100 calls' worth (100,000 µ$) for one call of 1,000, spends
    // 600 and dies without giving the rest back.
    let dying = LeasedLedger::new(StoreSlices::new(a.clone()), config);
    let id = dying.reserve(&lines, 1_000).await.unwrap();
    dying.settle(id, &lines, 1_000, 600).await.unwrap();
    drop(dying);
    let level = b
        .ledger_level("acme/monthly", "tenant:acme", "2026-12")
        .await
        .unwrap();
    assert_eq!(level.spent_micros, 100_000, "the whole slice stays spent");

    // Node B can take what is left, and no more.
    let live = LeasedLedger::new(StoreSlices::new(b.clone()), config);
    let id = live.reserve(&lines, 900_000).await.unwrap();
    live.settle(id, &lines, 900_000, 900_000).await.unwrap();
    match live.reserve(&lines, 1).await {
        Err(LedgerError::Refused(r)) => {
            assert_eq!(r.limit_micros, 1_000_000);
            assert_eq!(r.requested_micros, 1);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    live.release().await;
    let level = b
        .ledger_level("acme/monthly", "tenant:acme", "2026-12")
        .await
        .unwrap();
    assert_eq!(level.spent_micros, 1_000_000, "never past the limit");

    drop(live);
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_leases_give_their_rest_back_and_levels_count_only_what_was_spent() {
    let db = PgDb::create().await;
    let store = open(&db.url).await;
    let ledger = LeasedLedger::new(StoreSlices::new(store.clone()), small_slices());
    let lines = [line("acme/monthly", "tenant:acme", 10_000_000)];
    let id = ledger.reserve(&lines, 2_000).await.unwrap();
    let levels = ledger.settle(id, &lines, 2_000, 1_500).await.unwrap();
    assert_eq!(
        levels[0].spent_micros, 1_500,
        "the caller sees what it spent"
    );
    assert_eq!(levels[0].reserved_micros, 0);
    assert_eq!(
        ledger.level(&lines[0].key).await.unwrap().spent_micros,
        1_500
    );
    let in_db = || async {
        store
            .ledger_level("acme/monthly", "tenant:acme", "2026-12")
            .await
            .unwrap()
            .spent_micros
    };
    assert!(in_db().await > 1_500, "the slice is counted while leased");
    // After the idle period the sweeper gives the rest back without a release.
    let mut back = false;
    for _ in 0..200 {
        if in_db().await == 1_500 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(back, "the idle lease was not given back: {}", in_db().await);
    drop(ledger);
    store.close().await;
    db.drop_db().await;
}
