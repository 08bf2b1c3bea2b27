//! `[[file]]`: a file's content (given, from a template or from a source),
//! owner, group and mode, or its absence, and a command that must accept new
//! content before it goes live. It follows its parent directories, owner and
//! group.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{Presence, ResourceKind, path_requires};
use crate::role::content::{ContentFrom, MAX_COMMAND_BYTES, PendingContent};
use crate::role::id::ResourceId;
use crate::role::rules::Table;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    /// The exact bytes the file must hold (templates already rendered), or
    /// `None` when the file must be absent.
    pub content: Option<Vec<u8>>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<u32>,
    /// The content is secret: reports show that it changed, never what it is.
    pub sensitive: bool,
    /// A shell command that must succeed on the new content before it
    /// replaces the file; each `%` in it stands for the path of the new
    /// content (see [`File::validate_command`]).
    pub validate: Option<String>,
}

/// How many bytes longer than the file's path the path of its new content
/// is at most: the agent writes it next to the file as
/// `.NAME.cairn-tmp.` and 16 hex digits.
const NEW_CONTENT_EXTRA_BYTES: usize = ".".len() + ".cairn-tmp.".len() + 16;

impl File {
    /// The `validate` command for new content at `path`: each `%` replaced
    /// by `path`, quoted as one shell word.
    pub fn validate_command(&self, path: &str) -> Option<String> {
        let quoted = crate::template::sh_quote(path);
        self.validate.as_ref().map(|v| v.replace('%', &quoted))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawFile {
    path: Spanned<String>,
    content: Option<Spanned<String>>,
    template: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    state: Option<Spanned<Presence>>,
    owner: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    #[serde(default)]
    sensitive: bool,
    validate: Option<Spanned<String>>,
}

const CONTENT_FIELDS: [&str; 3] = ["content", "template", "source"];

impl ResourceKind for File {
    type Raw = RawFile;

    fn name(raw: &RawFile) -> &Spanned<String> {
        &raw.path
    }

    fn check(r: RawFile, t: &mut Table<'_, '_>) -> File {
        t.check_abs_path(&r.path, "path");
        let absent = r.state.as_ref().map(|s| *s.get_ref()) == Some(Presence::Absent);
        let given: Vec<(&str, Range<usize>)> = CONTENT_FIELDS
            .into_iter()
            .zip([&r.content, &r.template, &r.source])
            .filter_map(|(n, s)| s.as_ref().map(|s| (n, s.span())))
            .collect();
        if absent {
            t.set_when_absent(
                ("a file", "path"),
                &[
                    ("content", r.content.as_ref().map(Spanned::span)),
                    ("template", r.template.as_ref().map(Spanned::span)),
                    ("source", r.source.as_ref().map(Spanned::span)),
                    ("validate", r.validate.as_ref().map(Spanned::span)),
                ],
            );
        } else if given.is_empty()
            && !t
                .dropped
                .iter()
                .any(|f| CONTENT_FIELDS.contains(&f.as_str()))
        {
            t.error(
                t.span.start..t.span.start,
                None,
                "a file needs exactly one of `content`, `template` or `source`, or state = \"absent\"",
                None,
            );
        } else if given.len() > 1 {
            let names: Vec<_> = given.iter().map(|(n, _)| format!("`{n}`")).collect();
            t.error(
                given[1].1.clone(),
                Some(given[1].0),
                format!(
                    "{} are both set; a file takes exactly one",
                    names.join(" and ")
                ),
                Some("keep one of them".into()),
            );
        }
        if let Some(v) = &r.validate
            && !absent
            && t.check_command(v, "validate")
        {
            let places = v.get_ref().matches('%').count();
            if places == 0 {
                t.error(
                    v.span(),
                    Some("validate"),
                    "the `validate` command does not name the new content: `%` is missing",
                    Some(
                        "write `%` where the path of the new content goes, as in \"visudo -cf %\""
                            .into(),
                    ),
                );
            } else {
                // Each `%` becomes the quoted path of the new content: the
                // command run must still fit the rule.
                let quoted = crate::template::sh_quote(r.path.get_ref()).len();
                let run = v.get_ref().len() - places + places * (quoted + NEW_CONTENT_EXTRA_BYTES);
                if run > MAX_COMMAND_BYTES {
                    t.error(
                        v.span(),
                        Some("validate"),
                        format!(
                            "the `validate` command with each `%` replaced by the quoted path \
                             of the new content is longer than {MAX_COMMAND_BYTES} bytes"
                        ),
                        None,
                    );
                }
            }
        }
        let content = if absent {
            None
        } else {
            t.pending_content = match (r.template, r.source) {
                (Some(name), _) => Some(PendingContent::new(ContentFrom::Template, name)),
                (None, Some(name)) => Some(PendingContent::new(ContentFrom::Source, name)),
                _ => None,
            };
            Some(
                r.content
                    .map(|c| c.into_inner().into_bytes())
                    .unwrap_or_default(),
            )
        };
        File {
            path: r.path.into_inner(),
            content,
            owner: t.account(r.owner, "owner"),
            group: t.account(r.group, "group"),
            mode: t.mode(r.mode),
            sensitive: r.sensitive,
            validate: r.validate.map(Spanned::into_inner),
        }
    }

    fn implicit_requires(&self) -> Vec<ResourceId> {
        path_requires(&self.path, self.owner.as_deref(), self.group.as_deref())
    }
}
