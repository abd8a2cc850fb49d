//! `/v1/budgets`: a tenant's hard budgets. A rule set here is enforced by every node within a
//! few seconds (at once on the node that took the request): calls that would exceed it are
//! refused with `budget-exceeded` before any provider is asked.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sluice_store::{BudgetRecord, LedgerWindow};
use sluice_types::Micros;
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Administrator, Reader, Scope};
use super::error::{ApiError, ApiResult, Common, problems};
use super::extract::{BodyLimit, Json, Path};
use crate::node::budgets::{self, BudgetSpec};

const NAME: &str = "The budget's name: 1-64 of letters, digits, `-`, `_`, `.`";

/// A budget rule (the body of `PUT /v1/budgets/{name}`; documentation of [`BudgetSpec`]).
#[derive(ToSchema)]
#[schema(as = BudgetSpec)]
#[allow(dead_code)] // Only describes the JSON `BudgetSpec` reads.
pub(crate) struct BudgetSpecDoc {
    /// What is counted: `tenant` (all your jobs), `plugin`, `tag` or `job` (each job on its own).
    #[schema(example = "tag")]
    scope: String,
    /// The tag key, for `scope = "tag"` (e.g. `user`, `feature`).
    tag: Option<String>,
    /// Only this plugin or tag value; absent: every value gets its own budget of this size.
    value: Option<String>,
    /// When spend resets: `day`, `month` (UTC) or `total`.
    #[schema(example = "month")]
    period: String,
    /// Hard limit in US dollars.
    #[schema(example = 5.0)]
    limit_usd: f64,
    /// Fractions of the limit at which an alert fires, once per window each (default
    /// `[0.5, 0.8, 1.0]`).
    alerts: Option<Vec<f64>>,
    /// Also POST alerts here (`{"url": …}`), signed like job webhooks.
    #[schema(value_type = Option<Object>)]
    webhook: Option<Value>,
}

impl BodyLimit for BudgetSpec {}

/// One budget window's money.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WindowView {
    /// What is counted in this window (`tenant:acme`, `tag:user=alice`, `job:<id>`).
    scope: String,
    /// The period window: `2026-11-27`, `2026-11` or `total`.
    window: String,
    /// Spent, US dollars.
    spent_usd: f64,
    /// Held by model calls in flight, US dollars.
    reserved_usd: f64,
    /// Left before calls are refused, US dollars.
    remaining_usd: f64,
    /// Spent, micro-dollars.
    spent_micros: u64,
    /// Held, micro-dollars.
    reserved_micros: u64,
}

/// A budget with its recent windows.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BudgetView {
    /// The budget's name.
    name: String,
    /// The rule.
    #[schema(value_type = BudgetSpecDoc)]
    spec: Value,
    /// Windows with spend or holds, most recently used first.
    windows: Vec<WindowView>,
    /// When it was first set.
    created_at: DateTime<Utc>,
    /// When it was last changed.
    updated_at: DateTime<Utc>,
}

/// The tenant's budgets.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BudgetList {
    /// By name.
    budgets: Vec<BudgetView>,
}

fn usd(micros: u64) -> f64 {
    Micros::new(micros).to_usd()
}

fn window_view(w: &LedgerWindow, limit_micros: u64) -> WindowView {
    let used = w.level.spent_micros + w.level.reserved_micros;
    WindowView {
        scope: w.scope.clone(),
        window: w.window.clone(),
        spent_usd: usd(w.level.spent_micros),
        reserved_usd: usd(w.level.reserved_micros),
        remaining_usd: usd(limit_micros.saturating_sub(used)),
        spent_micros: w.level.spent_micros,
        reserved_micros: w.level.reserved_micros,
    }
}

async fn view(st: &AppState, rec: &BudgetRecord, windows: u32) -> ApiResult<BudgetView> {
    let limit = serde_json::from_value::<BudgetSpec>(rec.spec.clone())
        .ok()
        .and_then(|s| Micros::from_usd(s.limit_usd))
        .map_or(0, Micros::get);
    let ledger_name = sluice_gateway::budget::names::ledger_name(Some(&rec.tenant), &rec.name);
    let spend = st.node.store.ledger_windows(&ledger_name, windows).await?;
    Ok(BudgetView {
        name: rec.name.clone(),
        spec: rec.spec.clone(),
        windows: spend.iter().map(|w| window_view(w, limit)).collect(),
        created_at: rec.created_at,
        updated_at: rec.updated_at,
    })
}

async fn find(st: &AppState, tenant: &str, name: &str) -> ApiResult<BudgetRecord> {
    st.node
        .store
        .list_budgets(Some(tenant))
        .await?
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| ApiError::not_found("budget", name))
}

/// Apply the change on this node now instead of at the next reload.
async fn reload(st: &AppState) {
    if let Err(e) = budgets::refresh(&st.node).await {
        tracing::warn!(error = %e, "reloading budgets after a change failed; the next reload retries");
    }
}

problems!(ListErrors, Common::key(Scope::Read));

/// The tenant's budgets with their current spend.
#[utoipa::path(
    get,
    path = "/v1/budgets",
    operation_id = "list_budgets",
    tag = "budgets",
    responses(
        (status = 200, description = "Budgets", body = BudgetList),
        ListErrors,
    )
)]
pub(crate) async fn list(
    State(st): State<AppState>,
    principal: Reader,
) -> ApiResult<axum::Json<BudgetList>> {
    let mut budgets = Vec::new();
    for rec in st.node.store.list_budgets(Some(&principal.tenant)).await? {
        budgets.push(view(&st, &rec, 10).await?);
    }
    Ok(axum::Json(BudgetList { budgets }))
}

problems!(GetErrors, Common::key(Scope::Read), {
    404 => "No such budget for this tenant",
});

/// One budget and its spend per window.
#[utoipa::path(
    get,
    path = "/v1/budgets/{name}",
    operation_id = "get_budget",
    tag = "budgets",
    params(("name" = String, Path, description = NAME)),
    responses(
        (status = 200, description = "The budget", body = BudgetView),
        GetErrors,
    )
)]
pub(crate) async fn get(
    State(st): State<AppState>,
    principal: Reader,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<BudgetView>> {
    let rec = find(&st, &principal.tenant, &name).await?;
    Ok(axum::Json(view(&st, &rec, 100).await?))
}

problems!(PutErrors, Common::key(Scope::Admin).writes(), {
    400 => "Malformed JSON",
    422 => "Unknown fields, a bad rule or a refused webhook URL",
});

/// Create or replace a budget. Enforced at once on this node, within seconds on the others.
#[utoipa::path(
    put,
    path = "/v1/budgets/{name}",
    operation_id = "put_budget",
    tag = "budgets",
    params(("name" = String, Path, description = NAME)),
    request_body(content = BudgetSpecDoc, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = BudgetView),
        (status = 200, description = "Replaced", body = BudgetView),
        PutErrors,
    )
)]
pub(crate) async fn put(
    State(st): State<AppState>,
    principal: Administrator,
    Path(name): Path<String>,
    Json(spec): Json<BudgetSpec>,
) -> ApiResult<(StatusCode, axum::Json<BudgetView>)> {
    spec.validate(&principal.tenant, &name).map_err(|reason| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-budget",
            "Invalid budget",
            reason,
        )
    })?;
    if let Some(w) = &spec.webhook {
        crate::webhooks::check_target(&st.node.config, &w.url).map_err(|reason| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-webhook",
                "Invalid webhook URL",
                reason,
            )
        })?;
    }
    let existed = find(&st, &principal.tenant, &name).await.is_ok();
    let spec_json = serde_json::to_value(&spec).map_err(ApiError::internal)?;
    let rec = st
        .node
        .store
        .put_budget(&principal.tenant, &name, &spec_json)
        .await?;
    reload(&st).await;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(view(&st, &rec, 10).await?)))
}

problems!(DeleteErrors, Common::key(Scope::Admin).writes(), {
    404 => "No such budget for this tenant",
});

/// Stop enforcing a budget (its spend history stays in the ledger).
#[utoipa::path(
    delete,
    path = "/v1/budgets/{name}",
    operation_id = "delete_budget",
    tag = "budgets",
    params(("name" = String, Path, description = NAME)),
    responses(
        (status = 204, description = "Deleted"),
        DeleteErrors,
    )
)]
pub(crate) async fn delete(
    State(st): State<AppState>,
    principal: Administrator,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if st
        .node
        .store
        .delete_budget(&principal.tenant, &name)
        .await?
    {
        reload(&st).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("budget", name))
    }
}
