//! [`Diagnostic`]: one config problem with its place in a file, printed
//! three ways:
//!
//! - one line (`Display`): `/etc/mcprom.toml:14:1: cluster "prod": unknown
//!   key "servce_account" (did you mean "service_account"?)`, what the
//!   daemon logs (one line per problem, no drawing: journald and syslog
//!   show each log line on its own, prefixed, and would break the caret's
//!   alignment);
//! - rendered ([`render`]), what `mcprom check` prints: the same first line
//!   without the hint, the source line with a caret under the spot, the
//!   hint as `= help:` — drawn by `annotate-snippets`, the crate rustc uses;
//! - JSON (`Serialize`), `mcprom check --format json`, for editors and CI.

use std::ops::Range;
use std::path::{Path, PathBuf};

use annotate_snippets::{AnnotationKind, Level, Renderer, Snippet};
use serde::Serialize;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file, or the host, is not usable as it is (exit 78).
    Error,
    /// Advice about a valid setting (exit status unchanged).
    Warning,
}

/// One problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file the problem is in (a drop-in fragment, or the main file).
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column in characters, with `line`.
    pub column: Option<usize>,
    /// Line of the end of the marked text (exclusive end), when known.
    pub end_line: Option<usize>,
    /// Column just after the marked text, when known.
    pub end_column: Option<usize>,
    /// The key concerned, as the message names it (`ca_file`,
    /// `credentials.kubeconfig`), when there is one.
    pub key: Option<String>,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, with its context (`cluster "prod": unknown key "x"`).
    pub message: String,
    /// What to do about it, when mcprom knows.
    pub hint: Option<String>,
    /// The source line and the marked bytes in it, for [`render`].
    #[serde(skip)]
    pub excerpt: Option<Excerpt>,
}

/// The line a diagnostic points into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt {
    /// The line's text (without its newline; lossy for a non-UTF-8 line).
    pub text: String,
    /// The marked bytes of `text`.
    pub span: Range<usize>,
}

impl std::fmt::Display for Diagnostic {
    /// The one-line form: `file:line:col: message (hint)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.title())?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl Diagnostic {
    /// An error at no particular place of `file`; `text` is split into
    /// message and hint.
    pub fn unplaced(file: &Path, severity: Severity, text: &str) -> Self {
        let (message, hint) = split_hint(text);
        Diagnostic {
            file: file.to_path_buf(),
            line: None,
            column: None,
            end_line: None,
            end_column: None,
            key: key_named(message),
            severity,
            message: message.to_string(),
            hint: hint.map(str::to_string),
            excerpt: None,
        }
    }

    /// A diagnostic at `line`:`column` of `file`, whose text is not at hand:
    /// [`render`] reads the line from the file.
    pub fn placed(
        file: &Path,
        (line, column): (usize, usize),
        severity: Severity,
        text: &str,
    ) -> Self {
        Diagnostic {
            line: Some(line),
            column: Some(column),
            ..Diagnostic::unplaced(file, severity, text)
        }
    }

    /// The excerpt of a diagnostic placed without one, read from its file.
    fn read_excerpt(&self, files: &mut Vec<(PathBuf, Option<String>)>) -> Option<Excerpt> {
        let (line, column) = (self.line?, self.column?);
        let at = match files.iter().position(|(p, _)| *p == self.file) {
            Some(at) => at,
            None => {
                files.push((self.file.clone(), std::fs::read_to_string(&self.file).ok()));
                files.len() - 1
            }
        };
        let text = files[at].1.as_deref()?;
        let line_text = text.lines().nth(line - 1)?;
        let start = line_text
            .char_indices()
            .nth(column - 1)
            .map_or(line_text.len(), |(i, _)| i);
        Some(Excerpt {
            text: line_text.to_string(),
            span: start..token_end(line_text, start),
        })
    }

    /// A diagnostic at byte `offset` of `source`, the text of `file`;
    /// `text` is the message, with an optional trailing `(hint)`.
    pub fn at(file: &Path, source: &str, offset: usize, severity: Severity, text: &str) -> Self {
        let lines = LineIndex::new(source);
        lines.diagnostic(file, offset, severity, text)
    }

    /// `file:line:col: message`, or the message alone without a place.
    fn title(&self) -> String {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                format!("{}:{line}:{column}: {}", self.file.display(), self.message)
            }
            _ => self.message.clone(),
        }
    }
}

/// Line starts of a text, for turning byte offsets into places.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0).chain(line_breaks(text)).collect();
        LineIndex { text, starts }
    }

    /// 1-based line and column (in characters) of a byte offset, and the
    /// line's byte range.
    pub(crate) fn locate(&self, offset: usize) -> (usize, usize, Range<usize>) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // The last line start at or before `offset`.
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        let end = self
            .starts
            .get(line)
            .map_or(self.text.len(), |next| next - 1);
        let column = self.text[start..offset].chars().count() + 1;
        (line, column, start..end)
    }

    /// A diagnostic at `offset`, marking the TOML token that starts there.
    pub(crate) fn diagnostic(
        &self,
        file: &Path,
        offset: usize,
        severity: Severity,
        text: &str,
    ) -> Diagnostic {
        self.diagnostic_span(file, offset, None, severity, text)
    }

    /// A diagnostic marking `offset..end` (cut at the end of its line), or
    /// the TOML token at `offset` without an `end`.
    pub(crate) fn diagnostic_span(
        &self,
        file: &Path,
        offset: usize,
        end: Option<usize>,
        severity: Severity,
        text: &str,
    ) -> Diagnostic {
        let (line, column, range) = self.locate(offset);
        let line_text = self.text[range.clone()].trim_end_matches('\r');
        let at = offset.clamp(range.start, range.start + line_text.len()) - range.start;
        let end = match end {
            Some(end) if end > offset => {
                let mut end = end.min(range.start + line_text.len()) - range.start;
                while !line_text.is_char_boundary(end) {
                    end -= 1;
                }
                end.max(at)
            }
            _ => token_end(line_text, at),
        };
        let (message, hint) = split_hint(text);
        let key = key_named(message).or_else(|| key_at(line_text, at));
        Diagnostic {
            file: file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            end_line: Some(line),
            end_column: Some(column + line_text[at..end].chars().count()),
            key,
            severity,
            message: message.to_string(),
            hint: hint.map(str::to_string),
            excerpt: Some(Excerpt {
                text: line_text.to_string(),
                span: at..end,
            }),
        }
    }
}

fn line_breaks(text: &str) -> impl Iterator<Item = usize> + '_ {
    text.match_indices('\n').map(|(i, _)| i + 1)
}

/// Splits `message (hint)` at its last top-level parenthesis.
pub(crate) fn split_hint(text: &str) -> (&str, Option<&str>) {
    let Some(inner) = text.strip_suffix(')') else {
        return (text, None);
    };
    let mut depth = 0usize;
    for (i, c) in inner.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' if depth > 0 => depth -= 1,
            '(' => {
                let message = inner[..i].trim_end();
                if message.is_empty() || !inner[..i].ends_with(' ') {
                    return (text, None);
                }
                return (message, Some(&inner[i + 1..]));
            }
            _ => {}
        }
    }
    (text, None)
}

/// The key a message names: `key "x": …` or `unknown key "x"`.
fn key_named(message: &str) -> Option<String> {
    let start = message.find("key \"")? + "key \"".len();
    let end = message[start..].find('"')?;
    Some(message[start..start + end].to_string())
}

/// The key of the `key = value` the byte `at` of `line` falls in, or the
/// table a `[header]` names.
fn key_at(line: &str, at: usize) -> Option<String> {
    let trimmed = line.trim_start();
    if let Some(header) = trimmed.strip_prefix('[') {
        let name = header.trim_start_matches('[');
        let end = name.find(']')?;
        return Some(name[..end].trim().to_string());
    }
    // On the key or in the value: the key before the `=`.
    let _ = at;
    let eq = line.find('=')?;
    let key = line[..eq].trim().trim_matches('"');
    (!key.is_empty()).then(|| key.to_string())
}

/// End (exclusive) of the TOML token starting at byte `at` of `line`: a
/// string, a bracketed array or header, an inline table, or a bare word
/// (key, number, boolean, date). At least one character when there is one.
fn token_end(line: &str, at: usize) -> usize {
    let rest = &line[at..];
    let Some(first) = rest.chars().next() else {
        return at;
    };
    let closing = |open: char, close: char| {
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match quote {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' && q == '"' {
                        escaped = true;
                    } else if c == q {
                        quote = None;
                    }
                }
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == open => depth += 1,
                None if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        // `]]` of an array-of-tables header.
                        let after = &rest[i + 1..];
                        let extra = usize::from(open == '[' && after.starts_with(']'));
                        return at + i + 1 + extra.min(after.len());
                    }
                }
                None => {}
            }
        }
        line.len()
    };
    match first {
        '"' | '\'' => {
            let mut escaped = false;
            for (i, c) in rest.char_indices().skip(1) {
                if escaped {
                    escaped = false;
                } else if c == '\\' && first == '"' {
                    escaped = true;
                } else if c == first {
                    return at + i + 1;
                }
            }
            line.len()
        }
        '[' => {
            if rest.starts_with("[[") {
                // `[[cluster]]`, or an array of arrays: to the matching bracket.
                closing('[', ']').min(line.len())
            } else {
                closing('[', ']')
            }
        }
        '{' => closing('{', '}'),
        c if is_bare(c) => {
            at + rest
                .char_indices()
                .find(|(_, c)| !is_bare(*c))
                .map_or(rest.len(), |(i, _)| i)
        }
        c => at + c.len_utf8(),
    }
}

fn is_bare(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | ':')
}

/// Whether rendered diagnostics on stderr get colours: a terminal (so never
/// under journald, a pipe or a file), no `NO_COLOR`, not `TERM=dumb`.
pub fn stderr_wants_color() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// `diagnostics` drawn the way rustc draws its errors: per problem, the
/// `file:line:col: message` line, the source line with a caret under the
/// spot, and the hint. Problems without a place are their one line.
pub fn render(diagnostics: &[Diagnostic], color: bool) -> String {
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = String::new();
    let mut files = Vec::new();
    for d in diagnostics {
        let read;
        let excerpt = match &d.excerpt {
            Some(excerpt) => Some(excerpt),
            None => {
                read = d.read_excerpt(&mut files);
                read.as_ref()
            }
        };
        let level = match d.severity {
            Severity::Error => Level::ERROR.no_name(),
            Severity::Warning => Level::WARNING,
        };
        let (Some(excerpt), Some(line)) = (excerpt, d.line) else {
            // No source to show: the one-line form, with its hint.
            if d.severity == Severity::Warning {
                out.push_str("warning: ");
            }
            out.push_str(&d.to_string());
            out.push('\n');
            continue;
        };
        let title = d.title();
        let mut group = level.primary_title(title.as_str()).element(
            Snippet::source(excerpt.text.as_str())
                .line_start(line)
                .annotation(AnnotationKind::Primary.span(excerpt.span.clone())),
        );
        if let Some(hint) = &d.hint {
            group = group.element(Level::HELP.message(hint.as_str()));
        }
        out.push_str(&renderer.render(&[group]));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_parenthesis_is_the_hint() {
        assert_eq!(
            split_hint("unknown key \"x\" (did you mean \"y\"?)"),
            ("unknown key \"x\"", Some("did you mean \"y\"?"))
        );
        assert_eq!(
            split_hint("cannot read /x: gone (os error 2) (put it (back) there)"),
            (
                "cannot read /x: gone (os error 2)",
                Some("put it (back) there")
            )
        );
        assert_eq!(split_hint("f(x)"), ("f(x)", None));
        assert_eq!(split_hint("no hint"), ("no hint", None));
    }

    #[test]
    fn the_token_at_the_spot_is_marked() {
        fn marked(line: &str, at: usize) -> &str {
            &line[at..token_end(line, at)]
        }
        assert_eq!(marked("servce_account = \"x/y\"", 0), "servce_account");
        assert_eq!(marked("a = \"x \\\" y\" # c", 4), "\"x \\\" y\"");
        assert_eq!(marked("a = 'x\\' # c", 4), "'x\\'");
        assert_eq!(marked("[[cluster]] # c", 0), "[[cluster]]");
        assert_eq!(marked("a = [1, [2], \"]\"] # c", 4), "[1, [2], \"]\"]");
        assert_eq!(marked("a = { b = 1 }", 4), "{ b = 1 }");
        assert_eq!(
            marked("a = 1979-05-27T07:32:00Z", 4),
            "1979-05-27T07:32:00Z"
        );
        assert_eq!(marked("a = \"open", 4), "\"open");
        assert_eq!(marked("a = ", 4), "");
        assert_eq!(marked("a = é", 4), "é");
    }

    #[test]
    fn a_place_without_its_text_is_read_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[[cluster]]\nname = \"prod\"\n").unwrap();
        let d = Diagnostic::placed(&file, (2, 8), Severity::Error, "duplicate (rename it)");
        let shown = file.display();
        assert_eq!(
            render(&[d], false),
            format!(
                "{shown}:2:8: duplicate\n  |\n2 | name = \"prod\"\n  |        ^^^^^^\n  |\n  = help: rename it\n"
            )
        );
    }

    #[test]
    fn columns_count_characters_and_the_excerpt_is_the_line() {
        let d = Diagnostic::at(
            Path::new("/c.toml"),
            "x = 1\nbé = \"v\" # n\n",
            12,
            Severity::Error,
            "key \"bé\": bad (fix it)",
        );
        assert_eq!((d.line, d.column), (Some(2), Some(6)));
        assert_eq!(d.end_column, Some(9));
        assert_eq!(d.key.as_deref(), Some("bé"));
        assert_eq!(d.hint.as_deref(), Some("fix it"));
        assert_eq!(d.to_string(), "/c.toml:2:6: key \"bé\": bad (fix it)");
        assert_eq!(
            render(&[d], false),
            "/c.toml:2:6: key \"bé\": bad\n  |\n2 | bé = \"v\" # n\n  |      ^^^\n  |\n  = help: fix it\n"
        );
    }
}
