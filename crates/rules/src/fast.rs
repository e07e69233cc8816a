//! A direct evaluator for the subset of CEL that policies mostly use: member paths on
//! `details` and `session`, `has()`, literals, `==` `!=` `<` `<=` `>` `>=`, `&&`, `||` and `!`.
//!
//! It reads the JSON facts in place (no conversion to CEL values, no context, no name
//! resolution), which is what makes a whole policy cost a few microseconds. It never decides
//! differently from `cel`: whenever CEL would raise an error, or the semantics are subtle
//! (comparing lists or maps, a non-boolean operand of `&&`), it gives up on that rule and the
//! caller evaluates the rule with `cel`, which then produces the exact result or error. Rules
//! outside the subset are never compiled here. A property test checks the two agree on
//! generated expressions and payloads.

use std::cmp::Ordering;

use cel::common::ast::{Expr, LiteralValue, operators};
use serde_json::Value as Json;

/// Which fact a path starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Root {
    Details,
    Session,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal of the subset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
}

/// A compiled condition of the subset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fast {
    Lit(Lit),
    /// `details.a.b`: the value at a path.
    Path(Root, Vec<String>),
    /// `has(details.a.b)`: whether `b` is a key of `details.a`.
    Has(Root, Vec<String>, String),
    Not(Box<Fast>),
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Cmp(Op, Box<Fast>, Box<Fast>),
}

/// A value met while evaluating: JSON scalars as CEL sees them (`json_to_cel`'s mapping:
/// non-negative integers are `uint`, other integers `int`, the rest `double`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(&'a str),
    /// A list or a map (compared only with `null` here).
    Compound,
}

/// Compiles a CEL expression of the subset; `None` when it uses anything else.
pub(crate) fn compile(e: &cel::IdedExpr) -> Option<Fast> {
    match &e.expr {
        Expr::Literal(l) => Some(Fast::Lit(match l {
            LiteralValue::Null => Lit::Null,
            LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
            LiteralValue::Int(i) => Lit::Int(*i.inner()),
            LiteralValue::UInt(u) => Lit::UInt(*u.inner()),
            LiteralValue::Double(d) => Lit::Double(*d.inner()),
            LiteralValue::String(s) => Lit::Str(s.inner().to_owned()),
            LiteralValue::Bytes(_) => return None,
        })),
        Expr::Ident(_) | Expr::Select(_) => {
            if let Expr::Select(s) = &e.expr
                && s.test
            {
                let (root, path) = path(&s.operand)?;
                return Some(Fast::Has(root, path, s.field.clone()));
            }
            let (root, path) = path(e)?;
            Some(Fast::Path(root, path))
        }
        Expr::Call(call) if call.target.is_none() => {
            let op = match call.func_name.as_str() {
                operators::EQUALS => Op::Eq,
                operators::NOT_EQUALS => Op::Ne,
                operators::LESS => Op::Lt,
                operators::LESS_EQUALS => Op::Le,
                operators::GREATER => Op::Gt,
                operators::GREATER_EQUALS => Op::Ge,
                operators::LOGICAL_NOT => {
                    let [a] = call.args.as_slice() else {
                        return None;
                    };
                    return Some(Fast::Not(Box::new(compile(a)?)));
                }
                operators::LOGICAL_AND | operators::LOGICAL_OR => {
                    let [a, b] = call.args.as_slice() else {
                        return None;
                    };
                    let (a, b) = (Box::new(compile(a)?), Box::new(compile(b)?));
                    return Some(if call.func_name == operators::LOGICAL_AND {
                        Fast::And(a, b)
                    } else {
                        Fast::Or(a, b)
                    });
                }
                _ => return None,
            };
            let [a, b] = call.args.as_slice() else {
                return None;
            };
            Some(Fast::Cmp(op, Box::new(compile(a)?), Box::new(compile(b)?)))
        }
        _ => None,
    }
}

/// `details.a.b` as (root, [a, b]); `None` for anything but a plain member path.
fn path(e: &cel::IdedExpr) -> Option<(Root, Vec<String>)> {
    match &e.expr {
        Expr::Ident(name) => match name.as_str() {
            "details" => Some((Root::Details, Vec::new())),
            "session" => Some((Root::Session, Vec::new())),
            _ => None,
        },
        Expr::Select(s) if !s.test => {
            let (root, mut p) = path(&s.operand)?;
            p.push(s.field.clone());
            Some((root, p))
        }
        _ => None,
    }
}

/// Evaluates a compiled condition: `Some(matched)`, or `None` when `cel` must decide.
pub(crate) fn run(f: &Fast, details: &Json, session: &Json) -> Option<bool> {
    match eval(f, details, session)? {
        Val::Bool(b) => Some(b),
        _ => None,
    }
}

fn walk<'a>(root: Root, path: &[String], details: &'a Json, session: &'a Json) -> Option<&'a Json> {
    let mut at = match root {
        Root::Details => details,
        Root::Session => session,
    };
    for field in path {
        // A missing key or a member of a non-map is an error in CEL: let cel report it.
        at = at.as_object()?.get(field)?;
    }
    Some(at)
}

fn of_json(v: &Json) -> Val<'_> {
    match v {
        Json::Null => Val::Null,
        Json::Bool(b) => Val::Bool(*b),
        Json::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Val::UInt(u),
            (None, Some(i)) => Val::Int(i),
            (None, None) => Val::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Val::Str(s),
        Json::Array(_) | Json::Object(_) => Val::Compound,
    }
}

fn eval<'a>(f: &'a Fast, details: &'a Json, session: &'a Json) -> Option<Val<'a>> {
    Some(match f {
        Fast::Lit(l) => match l {
            Lit::Null => Val::Null,
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Int(i) => Val::Int(*i),
            Lit::UInt(u) => Val::UInt(*u),
            Lit::Double(d) => Val::Double(*d),
            Lit::Str(s) => Val::Str(s),
        },
        Fast::Path(root, path) => of_json(walk(*root, path, details, session)?),
        Fast::Has(root, path, field) => Val::Bool(
            walk(*root, path, details, session)?
                .as_object()?
                .contains_key(field),
        ),
        Fast::Not(a) => match eval(a, details, session)? {
            Val::Bool(b) => Val::Bool(!b),
            _ => return None,
        },
        // Left to right, short-circuiting as cel does; any doubt (an error or a non-boolean on
        // either side) goes to cel, which also applies CEL's error absorption.
        Fast::And(a, b) | Fast::Or(a, b) => {
            // `&&` stops at false, `||` at true.
            let stop = matches!(f, Fast::Or(..));
            match eval(a, details, session)? {
                Val::Bool(x) if x == stop => Val::Bool(stop),
                Val::Bool(_) => match eval(b, details, session)? {
                    Val::Bool(r) => Val::Bool(r),
                    _ => return None,
                },
                _ => return None,
            }
        }
        Fast::Cmp(op, a, b) => {
            let (x, y) = (eval(a, details, session)?, eval(b, details, session)?);
            Val::Bool(match op {
                Op::Eq => equal(x, y)?,
                Op::Ne => !equal(x, y)?,
                Op::Lt => order(x, y)? == Ordering::Less,
                Op::Le => order(x, y)? != Ordering::Greater,
                Op::Gt => order(x, y)? == Ordering::Greater,
                Op::Ge => order(x, y)? != Ordering::Less,
            })
        }
    })
}

/// CEL's numeric ordering across `int`, `uint` and `double`.
fn numeric(x: Val<'_>, y: Val<'_>) -> Option<Ordering> {
    match (x, y) {
        (Val::Int(a), Val::Int(b)) => Some(a.cmp(&b)),
        (Val::UInt(a), Val::UInt(b)) => Some(a.cmp(&b)),
        (Val::Double(a), Val::Double(b)) => a.partial_cmp(&b),
        (Val::Int(a), Val::UInt(b)) => Some(u64::try_from(a).map_or(Ordering::Less, |a| a.cmp(&b))),
        (Val::UInt(a), Val::Int(b)) => {
            Some(i64::try_from(a).map_or(Ordering::Greater, |a| a.cmp(&b)))
        }
        #[allow(clippy::cast_precision_loss)] // CEL compares int with double this way
        (Val::Int(a), Val::Double(b)) => (a as f64).partial_cmp(&b),
        #[allow(clippy::cast_precision_loss)]
        (Val::UInt(a), Val::Double(b)) => (a as f64).partial_cmp(&b),
        #[allow(clippy::cast_precision_loss)]
        (Val::Double(a), Val::Int(b)) => a.partial_cmp(&(b as f64)),
        #[allow(clippy::cast_precision_loss)]
        (Val::Double(a), Val::UInt(b)) => a.partial_cmp(&(b as f64)),
        _ => None,
    }
}

fn is_number(v: Val<'_>) -> bool {
    matches!(v, Val::Int(_) | Val::UInt(_) | Val::Double(_))
}

/// `==`; `None` where cel must decide (two lists or maps, a NaN).
fn equal(x: Val<'_>, y: Val<'_>) -> Option<bool> {
    match (x, y) {
        (Val::Compound, Val::Compound) => None,
        (Val::Null, Val::Null) => Some(true),
        (Val::Bool(a), Val::Bool(b)) => Some(a == b),
        (Val::Str(a), Val::Str(b)) => Some(a == b),
        _ if is_number(x) && is_number(y) => numeric(x, y).map(|o| o == Ordering::Equal),
        // Values of different kinds are never equal in CEL (no error).
        _ => Some(false),
    }
}

/// `<` and friends: numbers and strings only; anything else is an error in CEL (cel decides).
fn order(x: Val<'_>, y: Val<'_>) -> Option<Ordering> {
    match (x, y) {
        (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
        _ => numeric(x, y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(src: &str) -> Option<Fast> {
        compile(cel::Program::compile(src).ok()?.expression())
    }

    #[test]
    fn the_subset_compiles_and_the_rest_does_not() {
        for src in [
            "details.a == 'x'",
            "has(details.a.b) && details.a.b != null",
            "!(session.vendor_status == 'REVIEW') || details.age < 18",
            "details.x >= 1.5 && details.y <= 2u",
        ] {
            assert!(fast(src).is_some(), "{src}");
        }
        for src in [
            "size(details) > 1",
            "details.a.size() > 1",
            "details.a in [1, 2]",
            "other.a == 1",
            "details['a'] == 1",
            "details.a + 1 == 2",
            "details.a == b'x'",
        ] {
            assert!(fast(src).is_none(), "{src}");
        }
    }

    #[test]
    fn doubtful_cases_are_left_to_cel() {
        let d = serde_json::json!({"a": null, "l": [1], "m": {"k": 1}, "s": "x", "n": 3});
        let s = serde_json::json!({});
        let run_src = |src: &str| fast(src).and_then(|f| run(&f, &d, &s));
        assert_eq!(run_src("details.missing == 1"), None);
        assert_eq!(run_src("details.a.b == 1"), None);
        assert_eq!(run_src("details.l == details.l"), None);
        assert_eq!(run_src("details.s < 1"), None);
        assert_eq!(run_src("details.n && true"), None);
        assert_eq!(run_src("details.a == null"), Some(true));
        assert_eq!(run_src("details.m != null"), Some(true));
        assert_eq!(run_src("details.s == 1"), Some(false));
        assert_eq!(run_src("details.n == 3.0 && details.n > -1"), Some(true));
        assert_eq!(run_src("has(details.m.k) && !has(details.m.j)"), Some(true));
        assert_eq!(run_src("false && details.missing"), Some(false));
    }

    mod agreement {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::super::{compile, run};
        use crate::policy::json_to_cel;

        const KEYS: &str = "(a|b|c|age|s)";

        /// JSON whose leaves are mostly the literals the conditions use (so comparisons hit
        /// equal and ordered pairs) and whose objects mostly have the keys they name.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                prop_oneof![Just(-1i64), Just(0), Just(3), Just(18), Just(17)]
                    .prop_map(Value::from),
                prop_oneof![Just(1.5f64), Just(-0.5), Just(18.0), Just(3.0)].prop_map(Value::from),
                prop_oneof![Just("x"), Just("FAIL"), Just(""), Just("2026-01-01")]
                    .prop_map(|s| Value::String(s.to_owned())),
            ];
            leaf.prop_recursive(3, 32, 5, |inner| {
                prop_oneof![
                    1 => proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    4 => proptest::collection::btree_map(KEYS, inner, 2..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn atom() -> impl Strategy<Value = String> {
            prop_oneof![
                "(details|session)(\\.(a|b|c|age|s)){0,3}",
                "has\\((details|session)(\\.(a|b|c|age|s)){1,3}\\)",
                "(null|true|false|-1|0|3|18|3u|18u|1\\.5|18\\.0|'x'|'FAIL'|''|'2026-01-01')",
            ]
        }

        fn condition() -> impl Strategy<Value = String> {
            let cmp = (atom(), "(==|!=|<|<=|>|>=)", atom())
                .prop_map(|(a, op, b)| format!("{a} {op} {b}"));
            let base = prop_oneof![cmp, atom()];
            base.prop_recursive(3, 12, 2, |inner| {
                prop_oneof![
                    inner.clone().prop_map(|a| format!("!({a})")),
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
                    (inner.clone(), inner).prop_map(|(a, b)| format!("({a}) || ({b})")),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            /// Whenever the direct evaluator answers, cel answers the same boolean.
            #[test]
            fn the_direct_evaluator_agrees_with_cel(
                src in condition(),
                details in json(),
                session in json(),
            ) {
                let Ok(program) = cel::Program::compile(&src) else { return Ok(()) };
                let Some(f) = compile(program.expression()) else {
                    return Err(TestCaseError::fail(format!("not in the subset: {src}")));
                };
                if let Some(b) = run(&f, &details, &session) {
                    let mut ctx = cel::Context::default();
                    ctx.add_variable("details", json_to_cel(&details)).ok();
                    ctx.add_variable("session", json_to_cel(&session)).ok();
                    let by_cel = program.execute(&ctx);
                    prop_assert!(
                        matches!(by_cel, Ok(cel::Value::Bool(c)) if c == b),
                        "{src}\ndetails {details}\nsession {session}\ndirect {b}, cel {by_cel:?}"
                    );
                }
            }
        }
    }
}
