//! leaktrace: exact eBPF memory-leak tracing of running processes or a launched command.
//!
//! The binary calls [`run`] and [`postmortem::run`]. Everything else is crate-private, so that
//! the compiler reports dead code; the few items the integration tests, benches and examples
//! need are re-exported below, each for a named reader.
pub mod cli;
mod cost;
mod format;
mod frames;
mod golang;
mod growth;
mod heap;
mod model;
mod output;
mod placement;
pub mod postmortem;
mod procfs;
mod report;
/// Every serialized type: the `leaktrace/1` snapshot (docs/json-schema.md).
pub mod schema;
mod session;
mod symbolize;
#[doc(hidden)]
pub mod synthetic;
mod table;
mod target;
mod target_files;
mod tracer;
mod ui;
mod unwind;

pub use session::run;

/// For the `dashboard` example and the `ui_draw` bench: the dashboard on synthetic snapshots.
#[doc(hidden)]
pub mod dashboard {
    pub use crate::ui::{run_terminal, Action, App, Event, Key, Live, Update};
}

/// For the `unwind` bench: the userspace unwinder on a copy of the bench's own stack.
#[doc(hidden)]
pub mod bench {
    pub use crate::{
        tracer::StackCopy,
        unwind::{own_stack_copy, StackUnwinder},
    };
}
