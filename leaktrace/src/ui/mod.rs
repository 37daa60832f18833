//! The live terminal dashboard: a ratatui view of the snapshots the session builds.
//!
//! State, events and drawing are kept apart: [`App`] is the state and does no I/O; drawing is
//! `impl Widget for &App` (one file per panel under `draw/`); one event enum feeds one loop
//! that owns the state: the session's `select!` loop owns the App and feeds it [`Event`]s
//! (keys, mouse wheel, resizes, and an [`Update`] per sampling interval), acting on the
//! [`Action`]s `App::handle` returns. [`Dashboard`] / [`run_terminal`] own the real terminal
//! and restore it on every exit path, panics included. docs/dashboard.md shows the loop.
mod app;
mod call_trees;
mod cursor;
mod draw;
mod history;
mod layout;
mod live;
mod terminal;
#[cfg(test)]
mod tests;

pub use app::{Action, App, Event, Key, Update};
pub use live::Live;
pub use terminal::{run_terminal, Dashboard};
