//! Engine-wide settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::limits::JobLimits;

/// How the engine is set up. One engine serves a whole node.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Use the pooling instance allocator (fast instantiation, copy-on-write memory). Falls
    /// back to on-demand allocation when the pool cannot reserve its address space.
    pub pooling: bool,
    /// Instances that may be alive at once (the pool's size): the node's job concurrency
    /// cannot exceed it.
    pub max_instances: u32,
    /// The largest memory any plugin may be configured with; the pool reserves this much
    /// address space per slot.
    pub max_memory_bytes: usize,
    /// Limits for jobs whose plugin sets none.
    pub default_limits: JobLimits,
    /// How often the epoch ticks; a spinning guest is stopped within about one tick of its
    /// deadline and yields to other tasks every tick.
    pub epoch_tick: Duration,
    /// Where compiled artifacts are cached by digest (none: compile on every load).
    pub cache_dir: Option<PathBuf>,
    /// Bytes of each pooled memory slot kept resident between jobs and reset with memset
    /// instead of `madvise` (pooling only). Larger: fewer page faults for handlers that touch
    /// more memory, more resident memory per idle slot.
    pub keep_resident_bytes: usize,
}

/// Default [`EngineConfig::keep_resident_bytes`], chosen by measurement (BENCHMARKS.md,
/// "Instantiate + call").
pub const DEFAULT_KEEP_RESIDENT_BYTES: usize = 2 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pooling: true,
            max_instances: 1000,
            max_memory_bytes: 256 << 20,
            default_limits: JobLimits::default(),
            epoch_tick: Duration::from_millis(10),
            cache_dir: None,
            keep_resident_bytes: DEFAULT_KEEP_RESIDENT_BYTES,
        }
    }
}
