//! Diagnostics: every problem in a role, located to a file, line and field.

use std::fmt;
use std::ops::Range;

use crate::bundle::MANIFEST;

/// One problem in a role, located to a file, line and (where known) field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Path inside the role: `role.toml`, `templates/site.conf.hbs`, …
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole (e.g. it is missing).
    pub line: usize,
    pub column: usize,
    /// What the problem is in: `[[file]] "/etc/motd"`, `[role]`, …
    pub context: Option<String>,
    pub field: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        match (&self.context, &self.field) {
            (Some(c), Some(field)) => write!(f, "{c}, field `{field}`: ")?,
            (Some(c), None) => write!(f, "{c}: ")?,
            (None, Some(field)) => write!(f, "field `{field}`: ")?,
            (None, None) => {}
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in a role; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The diagnostics of one [`load`](super::load) as they are found, with what it
/// takes to turn a byte span of `role.toml` into a line and column.
pub(super) struct Diags<'a> {
    src: &'a str,
    line_starts: Vec<usize>,
    found: Vec<Diagnostic>,
}

impl<'a> Diags<'a> {
    pub(super) fn new(src: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Diags {
            src,
            line_starts,
            found: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset in `role.toml`.
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self.src[start..offset.min(self.src.len())].chars().count() + 1;
        (line, col)
    }

    /// Reports a problem at `span` of `role.toml`.
    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        context: Option<&str>,
        field: Option<&str>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let (line, column) = self.line_col(span.start);
        self.found.push(Diagnostic {
            file: MANIFEST.into(),
            line,
            column,
            context: context.map(str::to_string),
            field: field.map(str::to_string),
            message: message.into(),
            help,
        });
    }

    /// Reports a problem located some other way (in a template, say).
    pub(super) fn push(&mut self, diagnostic: Diagnostic) {
        self.found.push(diagnostic);
    }

    pub(super) fn any(&self) -> bool {
        !self.found.is_empty()
    }

    /// Whether a problem was already reported about `context`.
    pub(super) fn any_in(&self, context: &str) -> bool {
        self.found
            .iter()
            .any(|d| d.context.as_deref() == Some(context))
    }

    /// Everything found, in reading order whatever order the checks ran in.
    pub(super) fn finish(mut self) -> Diagnostics {
        self.found
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        Diagnostics(self.found)
    }
}

/// 1-based line and column (in bytes) of `offset` in text that is not UTF-8.
pub(super) fn line_col_bytes(raw: &[u8], offset: usize) -> (usize, usize) {
    let before = &raw[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, col)
}

/// The candidate closest to a misspelled `got`, if one is close enough to be
/// what was meant.
pub(super) fn suggest<I, T>(got: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(got, c.as_ref()),
                c.as_ref().to_string(),
            )
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d > 0)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
