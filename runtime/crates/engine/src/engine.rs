//! The node-wide engine: one wasmtime `Engine`, one `Linker`, one epoch ticker, and the
//! components loaded so far, cached by digest.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::Plugin as PluginWorld;
use crate::component::Plugin;
use crate::config::EngineConfig;
use crate::error::LoadError;
use crate::host::HostState;

/// Loads plugin components and runs jobs on them. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) wasmtime: wasmtime::Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: EngineConfig,
    pub(crate) pooling: bool,
    pub(crate) loaded: RwLock<HashMap<String, Arc<Plugin>>>,
    /// A short hash of everything that makes a compiled artifact usable by this engine
    /// (wasmtime version, target, settings); names the artifact cache's subdirectory.
    pub(crate) compat: String,
}

impl Engine {
    /// Build an engine and start its epoch ticker.
    pub fn new(config: EngineConfig) -> Result<Engine, LoadError> {
        let (wasmtime, pooling) = match build(&config, config.pooling) {
            Ok(engine) => (engine, config.pooling),
            Err(e) if config.pooling => {
                // The pool reserves address space up front; in a constrained sandbox
                // (ulimit -v, small vm.max_map_count) that can fail. Run slower, not never.
                tracing::warn!(error = %e, "pooling allocator unavailable; using on-demand allocation");
                (
                    build(&config, false).map_err(|e| LoadError::Internal(e.to_string()))?,
                    false,
                )
            }
            Err(e) => return Err(LoadError::Internal(e.to_string())),
        };

        let mut linker = Linker::new(&wasmtime);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| LoadError::Internal(format!("linking WASI: {e}")))?;
        PluginWorld::add_to_linker::<_, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| LoadError::Internal(format!("linking sluice imports: {e}")))?;

        let compat = {
            use std::hash::{Hash, Hasher};
            // DefaultHasher::new() has fixed keys, so this is stable across runs.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            wasmtime.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };

        spawn_epoch_ticker(&wasmtime, config.epoch_tick);

        Ok(Engine {
            inner: Arc::new(Inner {
                wasmtime,
                linker,
                config,
                pooling,
                loaded: RwLock::default(),
                compat,
            }),
        })
    }

    /// Whether the pooling allocator is in use (false after a fallback).
    pub fn is_pooling(&self) -> bool {
        self.inner.pooling
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }
}

/// Table bytes kept resident per pool slot between jobs.
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

fn build(config: &EngineConfig, pooling: bool) -> wasmtime::Result<wasmtime::Engine> {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    // Copy-on-write images make a fresh instance's memory a cheap mapping of the
    // component's data segments.
    c.memory_init_cow(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances);
        // A Rust component has a few core instances, one memory, a couple of tables.
        pool.total_core_instances(config.max_instances * 4);
        pool.total_memories(config.max_instances);
        pool.total_tables(config.max_instances * 4);
        pool.total_stacks(config.max_instances);
        pool.max_memory_size(config.max_memory_bytes);
        // Resetting a slot for the next job: by default wasmtime `madvise`s every memory and
        // table back to zero, and the next instance page-faults the pages in again (kernel
        // work and TLB shootdowns that showed in the burn-down's profile). Keeping the first
        // pages resident and resetting them with memset — only the pages actually dirtied,
        // found with the PAGEMAP_SCAN ioctl where the kernel has it (Linux ≥ 6.7) — makes a
        // small handler's slot reuse free of syscalls.
        if config.keep_resident_bytes > 0 {
            pool.linear_memory_keep_resident(config.keep_resident_bytes);
            pool.table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
            pool.pagemap_scan(wasmtime::Enabled::Auto);
        }
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // Reserve only what a plugin may use (plus guard pages) so a thousand slots fit
        // comfortably in the address space.
        c.memory_reservation(config.max_memory_bytes as u64);
        c.memory_guard_size(32 << 20);
    }
    wasmtime::Engine::new(&c)
}

/// One thread per engine increments the epoch. It holds only a weak reference, so it stops
/// when the engine is dropped.
fn spawn_epoch_ticker(engine: &wasmtime::Engine, tick: Duration) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .expect("spawning the epoch ticker thread");
}
