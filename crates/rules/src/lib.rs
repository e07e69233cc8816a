//! The rules engine: TOML policies whose conditions are CEL expressions.
//!
//! [`Policy::parse`] reads a policy file, rejects unknown keys and duplicate rule ids, and
//! compiles every `when` once; problems come back as [`Diagnostic`]s with byte spans into the
//! file (a CEL error is mapped to its place inside the `when` string). [`Policy::evaluate`] is
//! pure. Conditions in the common subset (member paths, `has()`, literals, comparisons, `&&`,
//! `||`, `!`) are read straight from the JSON facts by a direct evaluator (`fast`); any other
//! condition, or any case where CEL would raise an error, runs in `cel` with the facts bound
//! once per evaluation, so the two never disagree. The most severe
//! matching action wins (decline > review > approve); every match is listed in file order; no
//! match gives `default_action`; a rule whose evaluation fails matches as `review` with the
//! error in its reason, so a typo never approves anyone.
//!
//! ```
//! use verdict_rules::{Action, Facts, Policy};
//! let policy = Policy::parse(r#"
//! [policy]
//! name = "kyc"
//! version = "1"
//! default_action = "review"
//!
//! [[rules]]
//! id = "vendor-declined"
//! when = 'session.vendor_status == "DECLINED"'
//! action = "decline"
//! reason = "Declined by the IDV vendor"
//! "#).map_err(|d| d[0].message.clone())?;
//! let facts = Facts::new(serde_json::json!({}), serde_json::json!({"vendor_status": "DECLINED"}));
//! let decision = policy.evaluate(&facts);
//! assert_eq!(decision.action, Action::Decline);
//! assert_eq!(decision.rules, ["vendor-declined"]);
//! # Ok::<(), String>(())
//! ```

mod fast;
mod policy;

pub use policy::{Action, Decision, Diagnostic, Facts, Policy, Rule, RuleError};
