//! leaktrace: exact eBPF memory-leak tracing of running processes or a launched command.
pub mod cli;
pub mod cost;
pub mod format;
pub mod frames;
pub mod growth;
pub mod heap;
pub mod model;
pub mod output;
pub mod placement;
pub mod postmortem;
pub mod procfs;
pub mod report;
pub mod schema;
pub mod session;
pub mod symbolize;
#[doc(hidden)]
pub mod synthetic;
pub mod table;
pub mod target;
pub mod target_files;
pub mod tracer;
pub mod ui;
pub mod unwind;

pub use session::run;
