//! `[[exec]]`: a command, run unless a guard says it is done, or only when
//! notified. It reacts to a refresh. `command`, `unless`, `onlyif` and `cwd`
//! may insert `vars` and `facts` (see `content`): a command only through
//! `{{sh …}}` or as a number.

use serde::Deserialize;
use toml::Spanned;

use super::ResourceKind;
use crate::role::content::{PendingText, TextField};
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
    unless: Option<Spanned<String>>,
    onlyif: Option<Spanned<String>>,
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
        t.check_command(&r.command, "command");
        for (field, guard) in [("unless", &r.unless), ("onlyif", &r.onlyif)] {
            if let Some(guard) = guard {
                t.check_command(guard, field);
            }
        }
        if let Some(c) = &r.creates {
            t.check_abs_path(c, "creates");
        }
        // A templated cwd is checked once rendered.
        if let Some(c) = r.cwd.as_ref().filter(|c| !PendingText::is_template(c)) {
            t.check_abs_path(c, "cwd");
        }
        let fields = [
            (TextField::Command, Some(&r.command)),
            (TextField::Unless, r.unless.as_ref()),
            (TextField::Onlyif, r.onlyif.as_ref()),
            (TextField::Cwd, r.cwd.as_ref()),
        ];
        for (field, text) in fields {
            if let Some(text) = text.filter(|t| PendingText::is_template(t)) {
                t.pending_texts.push(PendingText::new(field, text.clone()));
            }
        }
        Exec {
            name: r.name.into_inner(),
            command: r.command.into_inner(),
            creates: r.creates.map(Spanned::into_inner),
            unless: r.unless.map(Spanned::into_inner),
            onlyif: r.onlyif.map(Spanned::into_inner),
            cwd: r.cwd.map(Spanned::into_inner),
            refresh_only: r.refresh_only,
        }
    }
}
