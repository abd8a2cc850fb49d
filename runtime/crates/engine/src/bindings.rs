//! The one place that generates host bindings for the `sluice:plugin` world; everything else
//! imports from here.

wasmtime::component::bindgen!({
    path: "../../../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use sluice::plugin::{effects, events, models, state, types, usage};
