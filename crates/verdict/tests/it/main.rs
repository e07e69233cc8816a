//! End-to-end tests: the real `verdict` binary on a free port, a temp directory, a real SQLite
//! file and real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod browser;
mod commands;
mod decisions;
mod delivery;
mod faults;
mod hardening;
mod ingress;
mod ops;
mod sessions;
mod support;
mod tls;
mod ui;
