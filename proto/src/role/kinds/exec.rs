//! `[[exec]]`: a command, run unless a guard says it is done, or only when
//! notified. It reacts to a refresh.

use serde::Deserialize;
use toml::Spanned;

use super::ResourceKind;
use crate::role::rules::Table;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub name: String,
    pub command: String,
    pub creates: Option<String>,
    pub unless: Option<String>,
    pub onlyif: Option<String>,
    pub cwd: Option<String>,
    pub refresh_only: bool,
}

impl Exec {
    pub fn has_guard(&self) -> bool {
        self.creates.is_some() || self.unless.is_some() || self.onlyif.is_some()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawExec {
    name: Spanned<String>,
    command: Spanned<String>,
    creates: Option<Spanned<String>>,
    unless: Option<String>,
    onlyif: Option<String>,
    cwd: Option<Spanned<String>>,
    #[serde(default)]
    refresh_only: bool,
}

impl ResourceKind for Exec {
    type Raw = RawExec;
    const REFRESHABLE: bool = true;

    fn name(raw: &RawExec) -> &Spanned<String> {
        &raw.name
    }

    fn check(r: RawExec, t: &mut Table<'_, '_>) -> Exec {
        t.check_name(
            &r.name,
            "name",
            |n| !n.is_empty() && !n.contains(char::is_control),
            "an exec name is one non-empty line without control characters",
        );
        if r.command.get_ref().trim().is_empty() {
            t.error(
                r.command.span(),
                Some("command"),
                "the command is empty",
                None,
            );
        }
        if let Some(c) = &r.creates {
            t.check_abs_path(c, "creates");
        }
        if let Some(c) = &r.cwd {
            t.check_abs_path(c, "cwd");
        }
        Exec {
            name: r.name.into_inner(),
            command: r.command.into_inner(),
            creates: r.creates.map(Spanned::into_inner),
            unless: r.unless,
            onlyif: r.onlyif,
            cwd: r.cwd.map(Spanned::into_inner),
            refresh_only: r.refresh_only,
        }
    }
}
