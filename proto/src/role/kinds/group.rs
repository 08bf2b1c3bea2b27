//! `[[group]]`: a group account.

use serde::Deserialize;
use toml::Spanned;

use super::{Presence, ResourceKind};
use crate::role::rules::{ACCOUNT_RULE, Table, is_account_name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: Option<u32>,
    pub system: bool,
    pub state: Presence,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawGroup {
    name: Spanned<String>,
    gid: Option<u32>,
    #[serde(default)]
    system: bool,
    state: Option<Presence>,
}

impl ResourceKind for Group {
    type Raw = RawGroup;

    fn name(raw: &RawGroup) -> &Spanned<String> {
        &raw.name
    }

    fn check(r: RawGroup, t: &mut Table<'_, '_>) -> Group {
        t.check_name(&r.name, "name", is_account_name, ACCOUNT_RULE);
        Group {
            name: r.name.into_inner(),
            gid: r.gid,
            system: r.system,
            state: r.state.unwrap_or(Presence::Present),
        }
    }
}
