use std::ops::Range;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use toml::Spanned;

/// What a policy decides.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the user through (least severe).
    Approve,
    /// Manual review.
    Review,
    /// Refuse (most severe).
    Decline,
}

impl Action {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Review => "review",
            Self::Decline => "decline",
        }
    }

    /// Parses `approve`, `decline` or `review`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Self::Approve),
            "decline" => Some(Self::Decline),
            "review" => Some(Self::Review),
            _ => None,
        }
    }
}

/// A problem in a policy file, located by a byte range of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// What is wrong.
    pub message: String,
    /// Where (bytes of the file text).
    pub span: Range<usize>,
    /// How to fix it, when there is an obvious way.
    pub hint: Option<String>,
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Unique id within the policy.
    pub id: String,
    /// What it is for.
    pub description: String,
    /// The CEL source.
    pub when: String,
    /// The action when it matches.
    pub action: Action,
    /// The reason recorded when it matches.
    pub reason: String,
    program: cel::Program,
    /// The condition for the direct evaluator, when it is in its subset.
    fast: Option<crate::fast::Fast>,
    uses_details: bool,
    uses_session: bool,
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    /// `[policy] name`.
    pub name: String,
    /// `[policy] version`.
    pub version: String,
    /// The action when no rule matches.
    pub default_action: Action,
    /// The rules, in file order.
    pub rules: Vec<Rule>,
    /// SHA-256 (hex) of the file text.
    pub sha256: String,
    binds_details: bool,
    binds_session: bool,
    /// What the rules read of `details` and of `session` (only that is bound).
    details_needs: Needs,
    session_needs: Needs,
    /// The standard library, built once (building it costs more than evaluating the rules).
    base: StdLib,
}

/// A root CEL context holding only the standard library.
struct StdLib(cel::Context<'static, 'static>);

impl std::fmt::Debug for StdLib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StdLib")
    }
}

/// A rule that failed to evaluate (it matched as `review`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The rule.
    pub rule: String,
    /// The evaluation error.
    pub error: String,
}

/// The outcome of evaluating a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The most severe matching action, or the default.
    pub action: Action,
    /// Ids of every matching rule, in file order.
    pub rules: Vec<String>,
    /// Their reasons, in the same order.
    pub reasons: Vec<String>,
    /// Rules whose evaluation failed (also listed in `rules`, as `review`).
    pub errors: Vec<RuleError>,
}

/// What rules see: `details` (the newest `idv:session_finished`'s `details`, verbatim) and
/// `session` (projected state). Converted to CEL values once per evaluation.
#[derive(Debug, Clone)]
pub struct Facts {
    details: serde_json::Value,
    session: serde_json::Value,
}

impl Facts {
    /// Facts from JSON values.
    pub fn new(details: serde_json::Value, session: serde_json::Value) -> Self {
        Self { details, session }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    policy: Spanned<RawHeader>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    version: String,
    default_action: Action,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    when: Spanned<String>,
    action: Action,
    reason: String,
}

impl Policy {
    /// Parses and compiles a policy; every problem found is returned (not only the first).
    pub fn parse(text: &str) -> Result<Self, Vec<Diagnostic>> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            vec![Diagnostic {
                message: e.message().to_owned(),
                span: e.span().unwrap_or(0..0),
                hint: e.message().contains("unknown field").then(|| {
                    "a [[rules]] entry takes id, description, when, action and reason".to_owned()
                }),
            }]
        })?;
        let mut problems = Vec::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut seen = std::collections::HashSet::new();
        for r in raw.rules {
            let r = r.into_inner();
            if r.id.get_ref().is_empty() || !seen.insert(r.id.get_ref().clone()) {
                problems.push(Diagnostic {
                    message: format!("rule id {:?} is empty or used twice", r.id.get_ref()),
                    span: r.id.span(),
                    hint: Some("every rule needs a unique id".into()),
                });
                continue;
            }
            match cel::Program::compile(r.when.get_ref()) {
                Ok(program) => {
                    let refs = program.references();
                    let uses_details = refs.has_variable("details");
                    let uses_session = refs.has_variable("session");
                    let fast = crate::fast::compile(program.expression());
                    rules.push(Rule {
                        id: r.id.into_inner(),
                        description: r.description,
                        when: r.when.get_ref().clone(),
                        action: r.action,
                        reason: r.reason,
                        program,
                        fast,
                        uses_details,
                        uses_session,
                    });
                }
                Err(errors) => {
                    for e in errors.errors {
                        problems.push(Diagnostic {
                            message: format!("in `when` of rule {:?}: {}", r.id.get_ref(), e.msg),
                            span: cel_span(text, r.when.span(), e.pos),
                            hint: Some(
                                "`when` is a CEL expression over `details` and `session`".into(),
                            ),
                        });
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let header = raw.policy.into_inner();
        let binds_details = rules.iter().any(|r| r.uses_details);
        let binds_session = rules.iter().any(|r| r.uses_session);
        let details_needs = needs(rules.iter().map(|r| r.when.as_str()), "details");
        let session_needs = needs(rules.iter().map(|r| r.when.as_str()), "session");
        Ok(Self {
            name: header.name,
            version: header.version,
            default_action: header.default_action,
            rules,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            binds_details,
            binds_session,
            details_needs,
            session_needs,
            base: StdLib(cel::Context::default()),
        })
    }

    /// Evaluates every rule against `facts`. Pure: no I/O, no clock.
    pub fn evaluate(&self, facts: &Facts) -> Decision {
        self.evaluate_bound(facts, true)
    }

    /// `prune`: bind only what the rules name (see [`Needs`]); otherwise bind everything (the
    /// reference the pruned evaluation is tested against).
    fn evaluate_bound(&self, facts: &Facts, prune: bool) -> Decision {
        let mut decision = Decision {
            action: self.default_action,
            rules: Vec::new(),
            reasons: Vec::new(),
            errors: Vec::new(),
        };
        let mut strongest: Option<Action> = None;
        // Bound only when a rule needs cel (most policies never do: see `fast`).
        let mut bound: Option<(cel::Context<'_, '_>, Option<String>)> = None;
        for rule in &self.rules {
            let direct = match (&rule.fast, prune) {
                (Some(f), true) => crate::fast::run(f, &facts.details, &facts.session),
                _ => None,
            };
            let outcome = match direct {
                Some(b) => Ok(b),
                None => {
                    let (context, bind_error) =
                        bound.get_or_insert_with(|| self.bind(facts, prune));
                    match bind_error {
                        Some(e) => Err(e.clone()),
                        None => match rule.program.execute(context) {
                            Ok(cel::Value::Bool(b)) => Ok(b),
                            Ok(other) => Err(format!(
                                "`when` gave a value of type {}, not a boolean",
                                other.type_of()
                            )),
                            Err(e) => Err(describe(&e)),
                        },
                    }
                }
            };
            let action = match outcome {
                Ok(true) => {
                    decision.reasons.push(rule.reason.clone());
                    rule.action
                }
                Ok(false) => continue,
                Err(error) => {
                    decision
                        .reasons
                        .push(format!("rule {} could not be evaluated: {error}", rule.id));
                    decision.errors.push(RuleError {
                        rule: rule.id.clone(),
                        error,
                    });
                    Action::Review
                }
            };
            decision.rules.push(rule.id.clone());
            strongest = Some(strongest.map_or(action, |s| s.max(action)));
        }
        if let Some(a) = strongest {
            decision.action = a;
        }
        decision
    }

    /// The evaluation context: `details` and `session` bound (or why they could not be).
    fn bind(&self, facts: &Facts, prune: bool) -> (cel::Context<'_, '_>, Option<String>) {
        let mut context = self.base.0.new_inner_scope();
        let mut bind_error = None;
        for (name, value, wanted, needs) in [
            (
                "details",
                &facts.details,
                self.binds_details,
                &self.details_needs,
            ),
            (
                "session",
                &facts.session,
                self.binds_session,
                &self.session_needs,
            ),
        ] {
            if !wanted {
                continue;
            }
            let bound = if prune {
                pruned_cel(value, needs)
            } else {
                json_to_cel(value)
            };
            if let Err(e) = context.add_variable(name, bound) {
                bind_error = Some(format!("binding {name}: {e:?}"));
            }
        }
        (context, bind_error)
    }
}

/// A CEL evaluation error as text that names types, never values: payload values are personal
/// data, and this text goes into decision reasons (stored, delivered to sinks) and logs.
#[allow(deprecated)] // the deprecated variants can still be raised
fn describe(e: &cel::ExecutionError) -> String {
    use cel::ExecutionError as E;
    let t = |v: &cel::Value| v.type_of().to_string();
    match e {
        E::UnsupportedTargetType { target } => format!("invalid argument type: {}", t(target)),
        E::NotSupportedAsMethod { method, target } => {
            format!("method '{method}' not supported on type {}", t(target))
        }
        E::UnsupportedKeyType(v) => format!("a {} cannot be used as a key", t(v)),
        E::ValuesNotComparable(a, b) => format!("a {} cannot be compared to a {}", t(a), t(b)),
        E::UnsupportedUnaryOperator(op, v) => {
            format!("unsupported unary operator '{op}' on a {}", t(v))
        }
        E::UnsupportedBinaryOperator(op, a, b) => {
            format!(
                "unsupported binary operator '{op}' on a {} and a {}",
                t(a),
                t(b)
            )
        }
        E::UnsupportedMapIndex(v) | E::UnsupportedListIndex(v) => {
            format!("a {} cannot be used as an index", t(v))
        }
        E::UnsupportedIndex(a, b) => format!("a {} cannot index a {}", t(a), t(b)),
        E::FunctionError { function, .. } => format!("function '{function}' failed"),
        E::DivisionByZero(_) => "division by zero".to_owned(),
        E::RemainderByZero(_) => "remainder by zero".to_owned(),
        E::Overflow(op, a, b) => format!("overflow in '{op}' on a {} and a {}", t(a), t(b)),
        E::IndexOutOfBounds(_) => "index out of bounds".to_owned(),
        E::DuplicateKey(_) => "repeated key".to_owned(),
        // The rest name keys, functions, types or counts, not values.
        other => other.to_string(),
    }
}

/// What rules read of a variable: the member paths they name (`details.a.b`), as a tree. A
/// node is `whole` when a rule uses its value as a whole (compares it, passes it to a function,
/// calls a method on it, indexes it); a node named only to be compared with `null` or to go
/// deeper needs just its presence and the named children. Binding only this is what makes an
/// evaluation cheap (CEL converts maps as it reads them); the scan is conservative (anything it
/// does not recognise needs the whole value), and a test checks that pruned and full bindings
/// decide the same.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Needs {
    whole: bool,
    fields: std::collections::BTreeMap<String, Needs>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The needs of variable `var` over CEL sources.
fn needs<'a>(sources: impl Iterator<Item = &'a str>, var: &str) -> Needs {
    let mut root = Needs::default();
    for src in sources {
        let mut from = 0;
        while let Some(at) = src.get(from..).and_then(|s| s.find(var)).map(|i| i + from) {
            from = at + var.len();
            let before = src[..at].chars().next_back();
            if before.is_some_and(|c| is_ident(c) || c == '.') {
                continue; // part of a longer name, or a field called like the variable
            }
            let mut rest = &src[from..];
            if rest.starts_with(is_ident) {
                continue; // a longer identifier, e.g. `details2`
            }
            let mut node = &mut root;
            loop {
                if let Some(after_dot) = rest.strip_prefix('.') {
                    let ident: String = after_dot.chars().take_while(|c| is_ident(*c)).collect();
                    let after = &after_dot[ident.len()..];
                    if ident.is_empty() || after.trim_start().starts_with('(') {
                        node.whole = true; // a method call on this value, or odd syntax
                        break;
                    }
                    node = node.fields.entry(ident).or_default();
                    rest = after;
                    continue;
                }
                let next = rest.trim_start();
                let nullness = ["!= null", "== null", "!=null", "==null"]
                    .iter()
                    .any(|p| next.starts_with(p) && !next[p.len()..].starts_with(is_ident));
                if !nullness {
                    node.whole = true;
                }
                break;
            }
        }
    }
    root
}

/// `value` as a CEL value, keeping only what `needs` names.
fn pruned_cel(value: &serde_json::Value, needs: &Needs) -> cel::Value {
    use std::sync::Arc;
    match value {
        serde_json::Value::Object(map) if !needs.whole => {
            let kept: std::collections::HashMap<cel::objects::Key, cel::Value> = needs
                .fields
                .iter()
                .filter_map(|(k, n)| {
                    map.get(k).map(|v| {
                        (
                            cel::objects::Key::String(Arc::new(k.clone())),
                            pruned_cel(v, n),
                        )
                    })
                })
                .collect();
            cel::Value::Map(cel::objects::Map {
                map: Arc::new(kept),
            })
        }
        other => json_to_cel(other),
    }
}

/// Maps a CEL error position (line 1-based, column 0-based, within the `when` text) to bytes
/// of the file, given the span of the TOML string (quotes included). Literal strings (`'...'`,
/// `'''...'''`) map exactly; for basic strings the position is approximate.
fn cel_span(text: &str, value: Range<usize>, pos: (isize, isize)) -> Range<usize> {
    let quote = match text.get(value.clone()) {
        Some(s) if s.starts_with("'''") || s.starts_with("\"\"\"") => 3,
        Some(_) => 1,
        None => return value,
    };
    let mut inner_start = value.start + quote;
    // TOML drops a newline right after an opening triple quote; so does the `when` text.
    if quote == 3 {
        if text
            .get(inner_start..)
            .is_some_and(|t| t.starts_with("\r\n"))
        {
            inner_start += 2;
        } else if text.get(inner_start..).is_some_and(|t| t.starts_with('\n')) {
            inner_start += 1;
        }
    }
    let inner = text
        .get(inner_start..value.end.saturating_sub(quote))
        .unwrap_or("");
    let (line, col) = (
        usize::try_from(pos.0).unwrap_or(1).max(1),
        usize::try_from(pos.1).unwrap_or(0),
    );
    let mut offset = 0;
    for (i, l) in inner.split('\n').enumerate() {
        if i + 1 == line {
            let col = l.char_indices().nth(col).map_or(l.len(), |(b, _)| b);
            let start = inner_start + offset + col;
            return start..(start + 1).min(value.end);
        }
        offset += l.len() + 1;
    }
    value
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HEAD: &str = "[policy]\nname = \"p\"\nversion = \"1\"\ndefault_action = \"approve\"\n";

    fn policy(rules: &str) -> Policy {
        match Policy::parse(&format!("{HEAD}{rules}")) {
            Ok(p) => p,
            Err(d) => panic!("{d:?}"),
        }
    }

    fn rule(id: &str, when: &str, action: &str) -> String {
        format!(
            "[[rules]]\nid = \"{id}\"\nwhen = '{when}'\naction = \"{action}\"\nreason = \"because {id}\"\n"
        )
    }

    /// given rules and facts, expect (action, matched rule ids).
    fn check(rules: &[String], details: serde_json::Value, expected: (Action, &[&str])) {
        let p = policy(&rules.concat());
        let d = p.evaluate(&Facts::new(
            details,
            json!({"vendor_status": "APPROVED", "event_count": 1}),
        ));
        assert_eq!(
            (
                d.action,
                d.rules.iter().map(String::as_str).collect::<Vec<_>>()
            ),
            (expected.0, expected.1.to_vec())
        );
    }

    #[test]
    fn severity_order_and_defaults() {
        let clean = rule(
            "clean",
            "details.documentCheckResult.overallResult == \"APPROVED\"",
            "approve",
        );
        let dup = rule("dup", "details.duplicatesFound", "decline");
        let face = rule(
            "face",
            "details.selfieVerificationResult.faceMatchingResult == \"FAIL\"",
            "review",
        );
        let ok = json!({"documentCheckResult": {"overallResult": "APPROVED"}, "duplicatesFound": false, "selfieVerificationResult": {"faceMatchingResult": "PASS"}});
        check(
            &[clean.clone(), dup.clone(), face.clone()],
            ok,
            (Action::Approve, &["clean"]),
        );
        let bad = json!({"documentCheckResult": {"overallResult": "APPROVED"}, "duplicatesFound": true, "selfieVerificationResult": {"faceMatchingResult": "FAIL"}});
        check(
            &[clean.clone(), dup.clone(), face.clone()],
            bad,
            (Action::Decline, &["clean", "dup", "face"]),
        );
        let review = json!({"documentCheckResult": {"overallResult": "DECLINED"}, "duplicatesFound": false, "selfieVerificationResult": {"faceMatchingResult": "FAIL"}});
        check(&[clean, dup, face], review, (Action::Review, &["face"]));
        check(
            &[rule("never", "false", "decline")],
            json!({}),
            (Action::Approve, &[]),
        );
    }

    #[test]
    fn an_evaluation_error_matches_as_review_never_approve() {
        let typo = rule("typo", "details.duplicatesFoud == false", "approve");
        let p = policy(&typo);
        let d = p.evaluate(&Facts::new(json!({"duplicatesFound": false}), json!({})));
        assert_eq!(d.action, Action::Review);
        assert_eq!(d.rules, ["typo"]);
        assert_eq!(d.errors.len(), 1);
        assert!(
            d.reasons[0].contains("could not be evaluated"),
            "{:?}",
            d.reasons
        );
        let not_bool = policy(&rule("num", "1 + 1", "approve"));
        assert_eq!(
            not_bool.evaluate(&Facts::new(json!({}), json!({}))).action,
            Action::Review
        );
    }

    #[test]
    fn diagnostics_point_into_the_file() {
        let text = format!("{HEAD}{}", rule("bad", "details.x ==", "decline"));
        let d = Policy::parse(&text).unwrap_err();
        assert_eq!(d.len(), 1);
        let when_at = text.find("details.x").unwrap();
        assert!(
            d[0].span.start >= when_at && d[0].span.start <= when_at + 12,
            "{d:?}"
        );

        let text = format!(
            "{HEAD}[[rules]]\nid = \"a\"\nwhen = 'true'\naction = \"decline\"\nreason = \"r\"\ncolour = 1\n"
        );
        let d = Policy::parse(&text).unwrap_err();
        assert!(d[0].message.contains("unknown field `colour`"), "{d:?}");
        assert_eq!(&text[d[0].span.clone()], "colour");

        let twice = format!(
            "{HEAD}{}{}",
            rule("same", "true", "approve"),
            rule("same", "false", "approve")
        );
        let d = Policy::parse(&twice).unwrap_err();
        assert!(d[0].message.contains("used twice"));
        assert_eq!(&twice[d[0].span.clone()], "\"same\"");

        let bad_action = format!("{HEAD}{}", rule("x", "true", "allow"));
        assert!(Policy::parse(&bad_action).is_err());
    }

    fn tree(whole: bool, fields: &[(&str, Needs)]) -> Needs {
        Needs {
            whole,
            fields: fields
                .iter()
                .map(|(k, n)| ((*k).to_owned(), n.clone()))
                .collect(),
        }
    }

    #[test]
    fn only_what_rules_name_is_bound() {
        let n = |srcs: &[&str]| needs(srcs.iter().copied(), "details");
        let leaf = tree(true, &[]);
        assert_eq!(
            n(&["details.a.b == 1 && details.c", "session.x"]),
            tree(
                false,
                &[
                    ("a", tree(false, &[("b", leaf.clone())])),
                    ("c", leaf.clone())
                ]
            )
        );
        // Compared with null only: presence, not content.
        assert_eq!(
            n(&["details.a != null && details.a.b == 'x'"]),
            tree(false, &[("a", tree(false, &[("b", leaf.clone())]))])
        );
        // Used whole: indexing, functions, methods, the variable itself.
        assert!(n(&["details[\"a\"] == 1"]).whole);
        assert!(n(&["size(details) > 0"]).whole);
        assert_eq!(
            n(&["details.a.exists(x, x > 1)"]),
            tree(false, &[("a", leaf)])
        );
        assert_eq!(n(&["mydetails.a == 1 || x.details == 2"]), Needs::default());
    }

    #[test]
    fn pruned_and_full_bindings_decide_the_same() {
        let kyc = include_str!("../../../config/policies/kyc.toml");
        let p = Policy::parse(kyc).unwrap();
        let fixtures = [
            include_str!("../../../fixtures/seon/session_finished_approved.json"),
            include_str!("../../../fixtures/seon/session_finished_declined_forgery.json"),
            include_str!("../../../fixtures/seon/session_finished_review_face_mismatch.json"),
            include_str!("../../../fixtures/seon/session_finished_abandoned.json"),
            include_str!("../../../fixtures/seon/session_finished_duplicate.json"),
        ];
        let mut cases = Vec::new();
        for f in fixtures {
            let v: serde_json::Value = serde_json::from_str(f).unwrap();
            let details = v["details"].clone();
            // The fixture, then variants: each top-level key removed, nulled, made a string.
            cases.push(details.clone());
            if let serde_json::Value::Object(m) = &details {
                for k in m.keys() {
                    let mut without = m.clone();
                    without.remove(k);
                    cases.push(serde_json::Value::Object(without.clone()));
                    let mut nulled = m.clone();
                    nulled.insert(k.clone(), serde_json::Value::Null);
                    cases.push(serde_json::Value::Object(nulled));
                    let mut stringy = m.clone();
                    stringy.insert(k.clone(), json!("FAIL"));
                    cases.push(serde_json::Value::Object(stringy));
                }
            }
        }
        cases.push(json!(null));
        cases.push(json!([]));
        assert!(cases.len() > 100);
        for (i, details) in cases.into_iter().enumerate() {
            for status in ["APPROVED", "DECLINED", "REVIEW"] {
                let facts = Facts::new(
                    details.clone(),
                    json!({"vendor_status": status, "event_count": 1, "decision": {"action": "approve"}}),
                );
                let (pruned, full) = (
                    p.evaluate_bound(&facts, true),
                    p.evaluate_bound(&facts, false),
                );
                assert_eq!(pruned.action, full.action, "case {i} {status}");
                assert_eq!(pruned.rules, full.rules, "case {i} {status}");
                assert_eq!(pruned.errors.len(), full.errors.len(), "case {i} {status}");
            }
        }
    }

    #[test]
    fn rule_errors_name_types_not_payload_values() {
        let text = r#"
[policy]
name = "p"
version = "1"
default_action = "approve"

[[rules]]
id = "not-bool"
when = 'details.name'
action = "decline"
reason = "x"

[[rules]]
id = "compare"
when = 'details.name < details.age'
action = "decline"
reason = "y"
"#;
        let p = Policy::parse(text).unwrap();
        let d = p.evaluate(&Facts::new(
            json!({"name": "Ana Secreta", "age": 41}),
            json!({}),
        ));
        assert_eq!(d.errors.len(), 2, "{d:?}");
        for e in &d.errors {
            assert!(
                !e.error.contains("Secreta") && !e.error.contains("41"),
                "{e:?}"
            );
        }
        assert!(d.errors[0].error.contains("string"), "{:?}", d.errors[0]);
        assert!(
            d.reasons.iter().all(|r| !r.contains("Secreta")),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn policies_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Policy>();
    }

    #[test]
    fn the_hash_is_of_the_text() {
        let a = policy(&rule("a", "true", "approve"));
        assert_eq!(a.sha256.len(), 64);
        assert_ne!(a.sha256, policy(&rule("a", "true ", "approve")).sha256);
    }
}

/// A JSON value as a CEL value, built directly (no serializer in between): the same values
/// `cel::to_value` gives (a non-negative integer is a `uint`, a negative one an `int`, any
/// other number a `double`), several times faster.
pub fn json_to_cel(v: &serde_json::Value) -> cel::Value {
    use std::sync::Arc;
    match v {
        serde_json::Value::Null => cel::Value::Null,
        serde_json::Value::Bool(b) => cel::Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => cel::Value::UInt(u),
            (None, Some(i)) => cel::Value::Int(i),
            (None, None) => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            cel::Value::List(Arc::new(items.iter().map(json_to_cel).collect()))
        }
        serde_json::Value::Object(map) => {
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> = map
                .iter()
                .map(|(k, v)| {
                    (
                        cel::objects::Key::String(Arc::new(k.clone())),
                        json_to_cel(v),
                    )
                })
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod conversion_tests {
    use super::*;

    #[test]
    fn direct_conversion_equals_the_serializer() {
        let samples = [
            serde_json::json!(null),
            serde_json::json!({"a": 1, "b": -2, "c": 1.5, "d": "x", "e": [true, null, {"f": []}],
                              "g": u64::MAX, "h": i64::MIN, "i": 0, "j": -0.0, "k": {}}),
            serde_json::from_str(include_str!(
                "../../../fixtures/seon/session_finished_approved.json"
            ))
            .unwrap(),
            serde_json::from_str(include_str!(
                "../../../fixtures/seon/session_finished_declined_forgery.json"
            ))
            .unwrap(),
        ];
        for v in &samples {
            assert_eq!(json_to_cel(v), cel::to_value(v).unwrap(), "{v}");
        }
    }
}
