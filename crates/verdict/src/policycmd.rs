//! `verdict policy check`: compile a policy and print rustc-style diagnostics.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use verdict_rules::{Diagnostic, Policy};

use crate::config::line_col;

/// A policy file compiled, or every problem in it rendered like rustc's diagnostics.
pub type Compiled = Result<(Policy, String), Vec<String>>;

/// Reads and compiles a policy file: the policy and its text, or its diagnostics rendered (the
/// one place `serve`, `policy check|test` and `policy backtest` compile a file). A file that
/// cannot be read is a usage error (exit 2).
pub fn compile_file(path: &Path) -> anyhow::Result<Compiled> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::UsageError(crate::config::ConfigError::usage(format!(
            "cannot read policy {}: {e}",
            path.display()
        )))
    })?;
    Ok(match Policy::parse(&text) {
        Ok(p) => Ok((p, text)),
        Err(diagnostics) => Err(diagnostics.iter().map(|d| render(path, &text, d)).collect()),
    })
}

/// Prints rendered diagnostics on stderr.
pub fn print_diagnostics(rendered: &[String]) -> std::io::Result<()> {
    let mut err = std::io::stderr().lock();
    for d in rendered {
        writeln!(err, "{d}")?;
    }
    Ok(())
}

/// Renders one diagnostic: `file:line:col`, the offending line, a caret under the spot, a hint.
pub fn render(file: &Path, text: &str, d: &Diagnostic) -> String {
    let (line, col) = line_col(text, d.span.start);
    let line_text = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let width = text.get(d.span.clone()).map_or(1, |s| {
        s.lines().next().map_or(1, |l| l.chars().count().max(1))
    });
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    let mut out = format!(
        "error: {}\n{pad}--> {}:{line}:{col}\n{pad} |\n{line} | {line_text}\n{pad} | {}{}\n",
        d.message,
        file.display(),
        " ".repeat(col.saturating_sub(1)),
        "^".repeat(width)
    );
    if let Some(hint) = &d.hint {
        let _ = writeln!(out, "{pad} = hint: {hint}");
    }
    out
}

/// Exit 0 valid, 1 invalid (diagnostics on stderr), 2 unreadable.
pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
    match compile_file(path)? {
        Ok((p, _)) => {
            writeln!(
                std::io::stdout().lock(),
                "ok: policy {} version {}, {} rules, default {}, sha256 {}",
                p.name,
                p.version,
                p.rules.len(),
                p.default_action.as_str(),
                p.sha256
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(rendered) => {
            print_diagnostics(&rendered)?;
            writeln!(
                std::io::stderr().lock(),
                "{} problem(s) in {}",
                rendered.len(),
                path.display()
            )?;
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_rustc() {
        let text = "[policy]\nname = \"p\"\nbogus = 1\n";
        let d = Diagnostic {
            message: "unknown field `bogus`".into(),
            span: 20..25,
            hint: Some("remove it".into()),
        };
        let out = render(Path::new("kyc.toml"), text, &d);
        assert_eq!(
            out,
            "error: unknown field `bogus`\n --> kyc.toml:3:1\n  |\n3 | bogus = 1\n  | ^^^^^\n  = hint: remove it\n"
        );
    }
}

/// One case of a policy's tests file (`<policy>.tests.toml`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    fixture: Option<std::path::PathBuf>,
    #[serde(default)]
    details: Option<serde_json::Value>,
    #[serde(default)]
    set: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    session: serde_json::Map<String, serde_json::Value>,
    expect: verdict_rules::Action,
    #[serde(default)]
    rules: Option<Vec<String>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    cases: Vec<Case>,
}

/// The tests file of a policy: `kyc.toml` -> `kyc.tests.toml`.
pub fn tests_path(policy: &Path) -> std::path::PathBuf {
    policy.with_extension("tests.toml")
}

/// Replaces the value at a dotted path, creating objects on the way.
fn set_path(root: &mut serde_json::Value, path: &str, value: serde_json::Value) {
    let mut cur = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !cur.is_object() {
            *cur = serde_json::Value::Object(serde_json::Map::new());
        }
        let serde_json::Value::Object(map) = cur else {
            return;
        };
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        cur = map
            .entry(part.to_owned())
            .or_insert(serde_json::Value::Null);
    }
}

/// The session facts a case starts from: what the projector would have for this payload.
fn default_session(details: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "session_id": details.get("sessionId"),
        "vendor_status": details.get("status"),
        "reference_id": details.get("referenceId"),
        "user_id": details.get("userId"),
        "event_count": 1,
        "quarantined": 0,
    })
}

fn case_facts(case: &Case, dir: &Path) -> anyhow::Result<verdict_rules::Facts> {
    let mut details = match (&case.fixture, &case.details) {
        (Some(f), None) => {
            let path = dir.join(f);
            let body: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&path)
                    .map_err(|e| anyhow::anyhow!("fixture {}: {e}", path.display()))?,
            )?;
            body.get("details")
                .cloned()
                .unwrap_or(serde_json::Value::Null)
        }
        (None, Some(d)) => d.clone(),
        _ => anyhow::bail!("give exactly one of `fixture` and `details`"),
    };
    for (path, value) in &case.set {
        set_path(&mut details, path, value.clone());
    }
    let mut session = default_session(&details);
    if let serde_json::Value::Object(map) = &mut session {
        map.extend(case.session.clone());
    }
    Ok(verdict_rules::Facts::new(details, session))
}

/// Runs the cases beside a policy. Exit 0 all pass, 1 any fails, 2 unreadable files.
pub fn test(path: &Path) -> anyhow::Result<ExitCode> {
    let usage = |m: String| crate::UsageError(crate::config::ConfigError::usage(m));
    let policy = match compile_file(path)? {
        Ok((p, _)) => p,
        Err(rendered) => {
            print_diagnostics(&rendered)?;
            return Ok(ExitCode::from(1));
        }
    };
    let tests = tests_path(path);
    let cases_text = std::fs::read_to_string(&tests)
        .map_err(|e| usage(format!("cannot read test cases {}: {e}", tests.display())))?;
    let cases: Cases = toml::from_str(&cases_text).map_err(|e| {
        let at = e
            .span()
            .map(|s| line_col(&cases_text, s.start))
            .unwrap_or((0, 0));
        usage(format!(
            "{}:{}:{}: {}",
            tests.display(),
            at.0,
            at.1,
            e.message()
        ))
    })?;
    let dir = tests.parent().unwrap_or(Path::new("."));
    let mut out = std::io::stdout().lock();
    let (mut passed, mut failed) = (0, 0);
    let mut covered = std::collections::BTreeSet::new();
    for case in &cases.cases {
        let facts = match case_facts(case, dir) {
            Ok(f) => f,
            Err(e) => {
                failed += 1;
                writeln!(out, "FAIL {}: {e:#}", case.name)?;
                continue;
            }
        };
        let d = policy.evaluate(&facts);
        covered.extend(d.rules.iter().cloned());
        let rules_ok = case.rules.as_ref().is_none_or(|want| *want == d.rules);
        if d.action == case.expect && rules_ok {
            passed += 1;
            writeln!(out, "ok   {}", case.name)?;
        } else {
            failed += 1;
            writeln!(out, "FAIL {}", case.name)?;
            writeln!(
                out,
                "     expected {} {:?}",
                case.expect.as_str(),
                case.rules.as_deref().unwrap_or(&[])
            )?;
            writeln!(out, "     actual   {} {:?}", d.action.as_str(), d.rules)?;
            for (rule, reason) in d.rules.iter().zip(&d.reasons) {
                writeln!(out, "       {rule}: {reason}")?;
            }
        }
    }
    let uncovered: Vec<&str> = policy
        .rules
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| !covered.contains(*id))
        .collect();
    if !uncovered.is_empty() {
        writeln!(out, "rules no case matched: {}", uncovered.join(", "))?;
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
