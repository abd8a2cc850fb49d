//! A simulator's shared state, its control handle and the running server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::routing::{get, post};

use super::handlers::{
    admin_get_faults, admin_put_faults, admin_reset, admin_stats, anthropic_messages, openai_chat,
    openai_embed,
};
use super::{Faults, SimConfig, SimStats};
use crate::limiter::Bucket;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) chat: AtomicU64,
    pub(super) embed: AtomicU64,
    pub(super) ok: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    pub(super) server_errors: AtomicU64,
    pub(super) client_errors: AtomicU64,
    pub(super) broken: AtomicU64,
    pub(super) input_tokens: AtomicU64,
    pub(super) output_tokens: AtomicU64,
}

pub(super) struct SimState {
    pub(super) cfg: SimConfig,
    pub(super) faults: RwLock<Faults>,
    pub(super) started: Instant,
    pub(super) rpm: Option<Bucket>,
    pub(super) tpm: Option<Bucket>,
    pub(super) counters: Counters,
    pub(super) seq: AtomicU64,
}

/// A handle to a simulator's state: switch faults, read counters. Cheap to clone.
#[derive(Clone)]
pub struct SimControl {
    pub(super) state: Arc<SimState>,
}

impl SimControl {
    /// A simulator's state, not yet serving; see [`SimControl::router`].
    pub fn new(cfg: SimConfig) -> Self {
        let faults = RwLock::new(cfg.faults.clone());
        let rpm = cfg.rpm.map(|r| Bucket::new(r, cfg.burst_secs));
        let tpm = cfg.tpm.map(|t| Bucket::new(t, cfg.burst_secs));
        SimControl {
            state: Arc::new(SimState {
                cfg,
                faults,
                started: Instant::now(),
                rpm,
                tpm,
                counters: Counters::default(),
                seq: AtomicU64::new(0),
            }),
        }
    }

    /// The simulator's routes, to serve or to drive without a socket.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(openai_embed))
            .route("/v1/messages", post(anthropic_messages))
            .route("/health", get(|| async { "ok" }))
            .route("/admin/stats", get(admin_stats))
            .route("/admin/faults", get(admin_get_faults).put(admin_put_faults))
            .route("/admin/reset", post(admin_reset))
            .with_state(self.state.clone())
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.state
            .faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.write().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// Change the faults in place.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.faults.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Zero the counters.
    pub fn reset_stats(&self) {
        self.state.reset();
    }
}

impl SimState {
    pub(super) fn stats(&self) -> SimStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            requests: l(&c.requests),
            chat_requests: l(&c.chat),
            embed_requests: l(&c.embed),
            ok: l(&c.ok),
            rate_limited: l(&c.rate_limited),
            server_errors: l(&c.server_errors),
            client_errors: l(&c.client_errors),
            broken: l(&c.broken),
            input_tokens: l(&c.input_tokens),
            output_tokens: l(&c.output_tokens),
        }
    }

    pub(super) fn reset(&self) {
        let c = &self.counters;
        for a in [
            &c.requests,
            &c.chat,
            &c.embed,
            &c.ok,
            &c.rate_limited,
            &c.server_errors,
            &c.client_errors,
            &c.broken,
            &c.input_tokens,
            &c.output_tokens,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn bump(&self, a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// A running simulator. Stops when dropped or on [`SimHandle::shutdown`].
pub struct SimHandle {
    addr: SocketAddr,
    control: SimControl,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, the base URL for either client.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Its control handle.
    pub fn control(&self) -> &SimControl {
        &self.control
    }

    /// Stop serving and wait until the listener is closed.
    pub async fn shutdown(mut self) {
        self.stop_now();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    fn stop_now(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl std::ops::Deref for SimHandle {
    type Target = SimControl;
    fn deref(&self) -> &SimControl {
        &self.control
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Start a simulator in-process on `127.0.0.1` at a free port.
pub async fn start(cfg: SimConfig) -> std::io::Result<SimHandle> {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), cfg).await
}

/// Start a simulator in-process on `addr`.
pub async fn start_on(addr: SocketAddr, cfg: SimConfig) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let control = SimControl::new(cfg);
    let app = control.router();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle {
        addr,
        control,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Serve a simulator on `addr` until the returned future is dropped (for `sluice sim-provider`).
pub async fn run(addr: SocketAddr, cfg: SimConfig) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "simulated provider listening");
    axum::serve(listener, SimControl::new(cfg).router()).await
}
