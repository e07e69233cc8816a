//! The names of the metrics this crate records (the binary describes and exports them).

/// `verdict_decisions_total{action,source}`: decisions recorded.
pub const DECISIONS: &str = "verdict_decisions_total";
/// `verdict_rule_errors_total{rule}`: rule evaluations that failed (counted as matching review).
pub const RULE_ERRORS: &str = "verdict_rule_errors_total";
/// `verdict_quarantined_total`: entries the projector could not use.
pub const QUARANTINED: &str = "verdict_quarantined_total";
