//! `[[directory]]`: a directory, its owner, group and mode. It follows its
//! parent directories, owner and group.

use serde::Deserialize;
use toml::Spanned;

use super::{Presence, ResourceKind, path_requires};
use crate::role::id::ResourceId;
use crate::role::rules::Table;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub path: String,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<u32>,
    pub state: Presence,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawDirectory {
    path: Spanned<String>,
    owner: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    state: Option<Presence>,
}

impl ResourceKind for Directory {
    type Raw = RawDirectory;

    fn name(raw: &RawDirectory) -> &Spanned<String> {
        &raw.path
    }

    fn check(r: RawDirectory, t: &mut Table<'_, '_>) -> Directory {
        t.check_abs_path(&r.path, "path");
        Directory {
            path: r.path.into_inner(),
            owner: t.account(r.owner, "owner"),
            group: t.account(r.group, "group"),
            mode: t.mode(r.mode),
            state: r.state.unwrap_or(Presence::Present),
        }
    }

    fn implicit_requires(&self) -> Vec<ResourceId> {
        path_requires(&self.path, self.owner.as_deref(), self.group.as_deref())
    }
}
