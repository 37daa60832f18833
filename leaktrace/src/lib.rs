//! leaktrace: exact eBPF memory-leak tracing of running processes or a launched command.
pub mod cli;
pub mod growth;
pub mod model;
pub mod report;
pub mod session;
pub mod symbolize;
pub mod target;
pub mod tracer;

pub use session::run;
