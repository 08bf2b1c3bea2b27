//! `[[link]]`: a symbolic link at `path` pointing to `target`, its owner and
//! group, or its absence. It replaces a file at `path` only when `force` says
//! so, and never a directory. It follows its parent directories, owner and
//! group.

use serde::Deserialize;
use toml::Spanned;

use super::{Presence, ResourceKind, path_requires};
use crate::role::diagnostic::clip;
use crate::role::id::ResourceId;
use crate::role::rules::{Table, check_path_text};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub path: String,
    /// What the link points to, as written (absolute or relative to the
    /// link's directory); `None` when the link must be absent.
    pub target: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// A regular file at `path` is replaced by the link.
    pub force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawLink {
    path: Spanned<String>,
    target: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    force: Option<Spanned<bool>>,
    state: Option<Spanned<Presence>>,
}

impl ResourceKind for Link {
    type Raw = RawLink;

    fn name(raw: &RawLink) -> &Spanned<String> {
        &raw.path
    }

    fn check(r: RawLink, t: &mut Table<'_, '_>) -> Link {
        t.check_abs_path(&r.path, "path");
        let absent = r.state.as_ref().map(|s| *s.get_ref()) == Some(Presence::Absent);
        if absent {
            t.set_when_absent(
                ("a link", "path"),
                &[
                    ("target", r.target.as_ref().map(Spanned::span)),
                    ("owner", r.owner.as_ref().map(Spanned::span)),
                    ("group", r.group.as_ref().map(Spanned::span)),
                    ("force", r.force.as_ref().map(Spanned::span)),
                ],
            );
        } else {
            match &r.target {
                None if !t.dropped.iter().any(|f| f == "target") => t.error(
                    t.span.start..t.span.start,
                    None,
                    "a link needs a `target`, or state = \"absent\"",
                    None,
                ),
                None => {}
                Some(target) => {
                    let why = if target.get_ref().is_empty() {
                        Err("is empty")
                    } else {
                        check_path_text(target.get_ref())
                    };
                    if let Err(why) = why {
                        t.error(
                            target.span(),
                            Some("target"),
                            format!("invalid target {:?}: {why}", clip(target.get_ref())),
                            None,
                        );
                    }
                }
            }
        }
        Link {
            path: r.path.into_inner(),
            target: if absent {
                None
            } else {
                r.target.map(Spanned::into_inner)
            },
            owner: t.account(r.owner, "owner"),
            group: t.account(r.group, "group"),
            force: r.force.is_some_and(Spanned::into_inner),
        }
    }

    fn implicit_requires(&self) -> Vec<ResourceId> {
        path_requires(&self.path, self.owner.as_deref(), self.group.as_deref())
    }
}
