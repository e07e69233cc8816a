//! Property tests in place of a fuzzer for the policy parser and the evaluation: any text gives
//! a compiled policy or diagnostics with spans inside the text (never a panic), and a policy
//! evaluates any `details` to a decision (never a panic, errors count as review).
//!
//! Bounded run: `PROPTEST_CASES=20000 cargo test --release -p verdict-rules --test fuzz`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use proptest::prelude::*;
use serde_json::Value;
use verdict_rules::{Action, Facts, Policy};

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[A-Za-z0-9 _-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `when` texts: CEL-ish fragments over `details` and `session`, and arbitrary text.
fn when() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,60}",
        "(details|session)(\\.[a-zA-Z]{1,8}){0,3} (==|!=|<|>|in) (null|true|1|'x'|\\[1, 2\\]|details\\.a)",
        "has\\(details\\.[a-z]{1,5}\\) && details\\.[a-z]{1,5}\\.size\\(\\) > [0-9]",
        "size\\(details\\) [<>] [0-9] \\|\\| !\\(session\\.vendor_status == 'REVIEW'\\)",
    ]
}

fn policy_text(whens: &[String]) -> String {
    let mut t =
        String::from("[policy]\nname = \"fuzz\"\nversion = \"1\"\ndefault_action = \"approve\"\n");
    for (i, w) in whens.iter().enumerate() {
        t.push_str(&format!(
            "\n[[rules]]\nid = \"r{i}\"\ndescription = \"d\"\nwhen = {}\naction = \"decline\"\nreason = \"x\"\n",
            toml::Value::String(w.clone())
        ));
    }
    t
}

proptest! {
    #[test]
    fn any_text_compiles_or_gets_diagnostics_inside_it(text in "[ -~\\n\\[\\]=\"']{0,400}") {
        if let Err(diagnostics) = Policy::parse(&text) {
            prop_assert!(!diagnostics.is_empty());
            for d in diagnostics {
                prop_assert!(d.span.end <= text.len() && d.span.start <= d.span.end, "{d:?}");
            }
        }
    }

    #[test]
    fn any_rules_evaluate_any_details_without_panicking(
        whens in proptest::collection::vec(when(), 1..5),
        details in json(),
        session in json(),
    ) {
        let text = policy_text(&whens);
        match Policy::parse(&text) {
            Ok(p) => {
                let d = p.evaluate(&Facts::new(details, session));
                // An error never approves: it matches as review (or the decline of its rule).
                if !d.errors.is_empty() {
                    prop_assert!(d.action != Action::Approve, "{d:?}");
                }
            }
            Err(diagnostics) => {
                for d in diagnostics {
                    prop_assert!(d.span.end <= text.len(), "{d:?}");
                }
            }
        }
    }
}
