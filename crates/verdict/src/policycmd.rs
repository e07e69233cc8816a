//! `verdict policy check`: compile a policy and print rustc-style diagnostics.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use verdict_rules::{Diagnostic, Policy};

use crate::config::line_col;

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
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::UsageError(crate::config::ConfigError::usage(format!(
            "cannot read policy {}: {e}",
            path.display()
        )))
    })?;
    match Policy::parse(&text) {
        Ok(p) => {
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
        Err(diagnostics) => {
            let mut err = std::io::stderr().lock();
            for d in &diagnostics {
                writeln!(err, "{}", render(path, &text, d))?;
            }
            writeln!(
                err,
                "{} problem(s) in {}",
                diagnostics.len(),
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
