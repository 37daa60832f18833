//! leaktrace: exact eBPF memory-leak tracing of running processes or a launched command.
pub mod cli;
pub mod cost;
pub mod growth;
pub mod heap;
pub mod model;
pub mod output;
pub mod placement;
pub mod postmortem;
pub mod report;
pub mod schema;
pub mod session;
pub mod symbolize;
pub mod target;
pub mod tracer;
pub mod ui;
pub mod unwind;

pub use session::run;
