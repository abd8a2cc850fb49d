//! The one place that generates guest bindings for the `sluice:plugin` world. Everything else in
//! the SDK imports from here; handler authors never need to.
//!
//! The module is public (but hidden) because the `handler!` macro expands, in the handler's
//! crate, to code that names these types and the generated `export!` macro. It is also the escape
//! hatch for the rare handler that must talk to the host without the SDK's typed layer.

wit_bindgen::generate!({
    path: "../wit",
    world: "plugin",
    pub_export_macro: true,
    default_bindings_module: "sluice_sdk::bindings",
});

#[cfg(not(all(feature = "testing", not(target_arch = "wasm32"))))]
pub use sluice::plugin::{effects, events, models, state, types, usage};

// With the `testing` feature on the build machine, the host's functions are the test double's
// (same names and signatures, same types), so the SDK above them is unchanged.
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub use crate::testing::host::{effects, events, models, state, usage};
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub use sluice::plugin::types;
