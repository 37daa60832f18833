//! The privileged integration tests, in one binary with one module per area: they load the real
//! eBPF object and trace real processes (C fixtures compiled by the tests), so they need root and
//! a kernel with uprobes. Not being root is a failure that says how to run them; a kernel without
//! a feature they need is a loud skip naming it (see `common::privileged`).

#[path = "../common/mod.rs"]
mod common;

mod allocators;
mod bursts;
mod churn;
mod cli;
mod cost;
mod exec;
mod faults;
mod files;
mod fleet;
mod golang;
mod growth;
mod growth_mode;
mod heap;
mod hostile;
mod labels;
mod postmortem;
mod privileges;
mod trace;
mod ui_tmux;
mod unwind;
