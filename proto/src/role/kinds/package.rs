//! `[[package]]`: a package installed (at a version, if given), absent, or
//! purged (absent with its configuration files).

use serde::Deserialize;
use toml::Spanned;

use super::ResourceKind;
use crate::role::diagnostic::clip;
use crate::role::rules::Table;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageState {
    Installed,
    Absent,
    Purged,
}

impl PackageState {
    /// How the role spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageState::Installed => "installed",
            PackageState::Absent => "absent",
            PackageState::Purged => "purged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: Option<String>,
    pub state: PackageState,
    /// Whether recommended packages are installed with it; `None` leaves it
    /// to the host's own apt setting. Applies only when installing.
    pub install_recommends: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawPackage {
    name: Spanned<String>,
    version: Option<Spanned<String>>,
    state: Option<PackageState>,
    install_recommends: Option<Spanned<bool>>,
}

fn is_package_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() >= 2
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

impl ResourceKind for Package {
    type Raw = RawPackage;

    fn name(raw: &RawPackage) -> &Spanned<String> {
        &raw.name
    }

    fn check(r: RawPackage, t: &mut Table<'_, '_>) -> Package {
        t.check_name(
            &r.name,
            "name",
            is_package_name,
            "package names are lowercase letters, digits and + - . (at least two characters)",
        );
        let state = r.state.unwrap_or(PackageState::Installed);
        if let Some(v) = &r.version {
            if state != PackageState::Installed {
                t.error(
                    v.span(),
                    Some("version"),
                    format!(
                        "a version makes no sense with state = \"{}\"",
                        state.as_str()
                    ),
                    None,
                );
            } else if v.get_ref().is_empty() || v.get_ref().contains(char::is_whitespace) {
                t.error(
                    v.span(),
                    Some("version"),
                    format!("invalid version {:?}", clip(v.get_ref())),
                    None,
                );
            }
        }
        if let Some(r) = &r.install_recommends
            && state != PackageState::Installed
        {
            t.error(
                r.span(),
                Some("install_recommends"),
                format!(
                    "install_recommends makes no sense with state = \"{}\": nothing is installed",
                    state.as_str()
                ),
                None,
            );
        }
        Package {
            name: r.name.into_inner(),
            version: r.version.map(Spanned::into_inner),
            state,
            install_recommends: r.install_recommends.map(Spanned::into_inner),
        }
    }
}
