//! `[[user]]`: a user account. It follows its primary group and the groups it
//! must be in.

use serde::Deserialize;
use toml::Spanned;

use super::{Kind, Presence, ResourceKind};
use crate::role::id::ResourceId;
use crate::role::rules::{ACCOUNT_RULE, Table, is_account_name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: Option<u32>,
    /// The primary group, by name. Left out, a new user's primary group is
    /// the group named as the user: the existing one, else a new one.
    pub group: Option<String>,
    /// Supplementary groups the user must belong to (others are left alone).
    pub groups: Vec<String>,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub comment: Option<String>,
    pub system: bool,
    pub state: Presence,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawUser {
    name: Spanned<String>,
    uid: Option<u32>,
    group: Option<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    shell: Option<Spanned<String>>,
    home: Option<Spanned<String>>,
    comment: Option<String>,
    #[serde(default)]
    system: bool,
    state: Option<Presence>,
}

impl ResourceKind for User {
    type Raw = RawUser;

    fn name(raw: &RawUser) -> &Spanned<String> {
        &raw.name
    }

    fn check(r: RawUser, t: &mut Table<'_, '_>) -> User {
        t.check_name(&r.name, "name", is_account_name, ACCOUNT_RULE);
        for g in &r.groups {
            t.check_name(g, "groups", is_account_name, ACCOUNT_RULE);
        }
        if let Some(shell) = &r.shell {
            t.check_abs_path(shell, "shell");
        }
        if let Some(home) = &r.home {
            t.check_abs_path(home, "home");
        }
        User {
            name: r.name.into_inner(),
            uid: r.uid,
            group: t.account(r.group, "group"),
            groups: r.groups.into_iter().map(Spanned::into_inner).collect(),
            shell: r.shell.map(Spanned::into_inner),
            home: r.home.map(Spanned::into_inner),
            comment: r.comment,
            system: r.system,
            state: r.state.unwrap_or(Presence::Present),
        }
    }

    fn implicit_requires(&self) -> Vec<ResourceId> {
        self.group
            .iter()
            .chain(&self.groups)
            .map(|g| ResourceId::new(Kind::Group, g))
            .collect()
    }
}
