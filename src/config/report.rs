//! Collects positioned problems while a file is checked, and formats them as
//! `/etc/mcprom.toml:14:1: cluster "prod": message (hint)`.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::diagnostic::{Diagnostic, LineIndex, Severity};
use super::error::ConfigError;

/// Problems found so far in one file.
pub(crate) struct Report<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<(usize, Diagnostic)>,
    /// Keys offered as "did you mean" for an unknown key, by context, so
    /// the validator need not also report that key as missing.
    suggestions: HashMap<String, HashSet<String>>,
    /// Byte offset of the start of every line, built on first use: each
    /// position is then a binary search, not a scan from the file's start.
    lines: OnceCell<LineIndex<'a>>,
}

impl<'a> Report<'a> {
    /// A report about `text`, read from the absolute `path`.
    pub(crate) fn new(path: &'a Path, text: &'a str) -> Self {
        Report {
            path,
            text,
            problems: Vec::new(),
            suggestions: HashMap::new(),
            lines: OnceCell::new(),
        }
    }

    /// Records a problem at byte `offset`; `context` is the section or
    /// cluster (`[prometheus]`, `cluster "prod"`), empty at the top level.
    pub(crate) fn add(&mut self, offset: usize, context: &str, message: impl AsRef<str>) {
        let text = if context.is_empty() {
            message.as_ref().to_string()
        } else {
            format!("{context}: {}", message.as_ref())
        };
        let diagnostic = self
            .lines()
            .diagnostic(self.path, offset, Severity::Error, &text);
        self.problems.push((offset, diagnostic));
    }

    /// Remembers that `key` was suggested in `context` for a misspelled key.
    pub(crate) fn suggested(&mut self, context: &str, key: String) {
        self.suggestions
            .entry(context.to_string())
            .or_default()
            .insert(key);
    }

    /// Whether a key in `context` matching `is_key` was suggested for a
    /// misspelling (its absence is then already explained).
    pub(crate) fn was_suggested(&self, context: &str, is_key: impl Fn(&str) -> bool) -> bool {
        self.suggestions
            .get(context)
            .is_some_and(|keys| keys.iter().any(|k| is_key(k)))
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let (line, column, _) = self.lines().locate(offset);
        (line, column)
    }

    /// The line index, built on first use.
    fn lines(&self) -> &LineIndex<'a> {
        self.lines.get_or_init(|| LineIndex::new(self.text))
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.position(offset).0
    }

    /// The problems in file order, as an error; `None` if there are none.
    pub(crate) fn into_error(self) -> Option<ConfigError> {
        if self.problems.is_empty() {
            return None;
        }
        let mut problems = self.problems;
        problems.sort_by_key(|(offset, _)| *offset);
        problems.dedup_by(|a, b| a.1 == b.1);
        Some(ConfigError::Invalid {
            path: PathBuf::from(self.path),
            problems: problems.into_iter().map(|(_, d)| d).collect(),
        })
    }
}

/// One problem at a place of a file whose text is not at hand (`mcprom
/// check` reads the line to show it): `/etc/mcprom.toml:14:1: cluster
/// "prod": message`. `context` is the section or cluster, empty at the top
/// level.
pub(crate) fn problem_at(
    path: &Path,
    (line, column): (u32, u32),
    context: &str,
    message: &str,
) -> Diagnostic {
    let text = if context.is_empty() {
        message.to_string()
    } else {
        format!("{context}: {message}")
    };
    Diagnostic::placed(
        path,
        (line as usize, column as usize),
        Severity::Error,
        &text,
    )
}

/// The closest candidate to a misspelled `word`, if one is close enough to
/// be what was meant.
pub(crate) fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, counting an adjacent transposition as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let path = Path::new("/x.toml");
        let report = Report::new(path, "a = 1\nbé = 2\n");
        assert_eq!(report.position(0), (1, 1));
        assert_eq!(report.position(6), (2, 1));
        // "bé" is three bytes; the '=' after it is the 4th character.
        assert_eq!(report.position(10), (2, 4));
    }

    #[test]
    fn did_you_mean_finds_typos_but_not_unrelated_words() {
        let keys = ["service_account", "token_file", "name"];
        assert_eq!(
            did_you_mean("servce_account", &keys),
            Some("service_account")
        );
        assert_eq!(did_you_mean("token_flie", &keys), Some("token_file"));
        assert_eq!(did_you_mean("colour", &keys), None);
    }
}
