//! Helpers for this crate's unit tests.

pub use verdict_log::testing::query_plan;
