//! The rules engine: TOML policies whose conditions are CEL expressions.
//!
//! Evaluation will be pure (no I/O): a compiled policy and a session's facts in, a decision
//! out. This crate is a placeholder until the rules issue lands.
