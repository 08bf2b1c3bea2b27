//! `[[service]]`: a systemd unit, running and enabled or not. It reacts to a
//! refresh.

use serde::Deserialize;
use toml::Spanned;

use super::ResourceKind;
use crate::role::rules::Table;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub running: Option<bool>,
    pub enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawService {
    name: Spanned<String>,
    running: Option<bool>,
    enabled: Option<bool>,
}

fn is_unit_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c))
}

impl ResourceKind for Service {
    type Raw = RawService;
    const REFRESHABLE: bool = true;

    fn name(raw: &RawService) -> &Spanned<String> {
        &raw.name
    }

    fn check(r: RawService, t: &mut Table<'_, '_>) -> Service {
        t.check_name(
            &r.name,
            "name",
            is_unit_name,
            "a systemd unit name: letters, digits and : _ . @ - \\",
        );
        Service {
            name: r.name.into_inner(),
            running: r.running,
            enabled: r.enabled,
        }
    }
}
