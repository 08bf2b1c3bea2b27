//! Diagnostics: every problem in a role, located to a file, line and field.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use crate::bundle::MANIFEST;

/// One problem in a role, located to a file, line and (where known) field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

/// On the wire (a rejected push), absent fields are empty strings.
impl From<Diagnostic> for crate::pb::Diagnostic {
    fn from(d: Diagnostic) -> Self {
        let number = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        crate::pb::Diagnostic {
            file: d.file,
            line: number(d.line),
            column: number(d.column),
            context: d.context.unwrap_or_default(),
            field: d.field.unwrap_or_default(),
            message: d.message,
            help: d.help.unwrap_or_default(),
        }
    }
}

impl From<crate::pb::Diagnostic> for Diagnostic {
    fn from(d: crate::pb::Diagnostic) -> Self {
        let some = |s: String| Some(s).filter(|s| !s.is_empty());
        Diagnostic {
            file: d.file,
            line: d.line as usize,
            column: d.column as usize,
            context: some(d.context),
            field: some(d.field),
            message: d.message,
            help: some(d.help),
        }
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

impl Diagnostics {
    /// How many problems, for a closing line: "3 problems", or "more than 100
    /// problems" when the list was cut (its last entry then says so).
    pub fn summary(&self) -> String {
        let cut = self
            .0
            .last()
            .is_some_and(|d| d.line == 0 && d.help == Some(cut_help()));
        let n = self.0.len() - usize::from(cut);
        if cut {
            format!("more than {n} problems")
        } else {
            crate::report::count(n as u64, "problem")
        }
    }
}

/// The help of the entry that closes a cut list; [`Diagnostics::summary`] reads it.
fn cut_help() -> String {
    format!("only the first {MAX_DIAGNOSTICS} are listed")
}

/// The most diagnostics one [`load`](super::load) returns; past it, a last
/// one says how many more were found.
pub const MAX_DIAGNOSTICS: usize = 100;

/// The diagnostics of one [`load`](super::load) as they are found, with what it
/// takes to turn a byte span of `role.toml` into a line and column.
pub(super) struct Diags<'a> {
    src: &'a str,
    line_starts: Vec<usize>,
    found: Vec<Diagnostic>,
    /// Found past [`MAX_DIAGNOSTICS`]: counted, not kept.
    more: usize,
    /// A check stopped looking once the list was full: there may be more.
    gave_up: bool,
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
            more: 0,
            gave_up: false,
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
        if self.full() {
            self.more += 1;
            return;
        }
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
        if self.full() {
            self.more += 1;
        } else {
            self.found.push(diagnostic);
        }
    }

    /// Whether [`MAX_DIAGNOSTICS`] were found: checks that only look for more
    /// problems may stop, after saying so with [`Diags::give_up`].
    pub(super) fn full(&self) -> bool {
        self.found.len() >= MAX_DIAGNOSTICS
    }

    /// Notes that a check stopped looking for more problems.
    pub(super) fn give_up(&mut self) {
        self.gave_up = true;
    }

    pub(super) fn any(&self) -> bool {
        !self.found.is_empty()
    }

    /// Gives the problems reported about `from` the context `to`, once what
    /// they are in is known by a better name.
    pub(super) fn rename_context(&mut self, from: &str, to: &str) {
        for d in &mut self.found {
            if d.context.as_deref() == Some(from) {
                d.context = Some(to.to_string());
            }
        }
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
        let message = match (self.more, self.gave_up) {
            (0, false) => None,
            (0, true) => Some(format!(
                "and more problems not shown (checking stopped after {MAX_DIAGNOSTICS})"
            )),
            (n, _) => Some(format!(
                "and {n}{} more problem{} not shown",
                if self.gave_up { " or" } else { "" },
                if n == 1 { "" } else { "s" }
            )),
        };
        if let Some(message) = message {
            self.found.push(Diagnostic {
                file: MANIFEST.into(),
                line: 0,
                column: 0,
                context: None,
                field: None,
                message,
                help: Some(cut_help()),
            });
        }
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

/// At most this many characters of a string from the role are quoted in a
/// message, and only strings this short get a "did you mean".
const SHOWN_CHARS: usize = 64;

/// Suggestions compare a misspelling with at most this many candidates.
const MAX_SUGGESTION_CANDIDATES: usize = 1000;

/// `s` as a message quotes it: whole if short, else its start and `…`.
pub(super) fn clip(s: &str) -> Cow<'_, str> {
    clip_to(s, SHOWN_CHARS)
}

/// `s` cut after `chars` characters, marked with `…`.
pub(crate) fn clip_to(s: &str, chars: usize) -> Cow<'_, str> {
    match s.char_indices().nth(chars) {
        None => Cow::Borrowed(s),
        Some((end, _)) => Cow::Owned(format!("{}…", &s[..end])),
    }
}

/// The candidate closest to a misspelled `got`, if one is close enough to be
/// what was meant. The edit distance costs the product of the lengths, so
/// long strings get no suggestion and only the first candidates are tried.
pub(super) fn suggest<I, T>(got: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    let too_long = |s: &str| s.chars().nth(SHOWN_CHARS).is_some();
    if too_long(got) {
        return None;
    }
    let got_chars = got.chars().count();
    candidates
        .into_iter()
        .take(MAX_SUGGESTION_CANDIDATES)
        .filter_map(|c| {
            let c = c.as_ref();
            let close_enough = 2.max(c.len() / 4);
            // The distance is at least the difference in length.
            if too_long(c) || c.chars().count().abs_diff(got_chars) > close_enough {
                return None;
            }
            let d = strsim::damerau_levenshtein(got, c);
            (d <= close_enough && d > 0).then(|| (d, c.to_string()))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
