//! `[[sysctl]]`: a kernel parameter's live value (under `/proc/sys`) and the
//! file in `/etc/sysctl.d/` that sets it again at boot.

use serde::Deserialize;
use toml::Spanned;

use super::{ResourceKind, path_requires};
use crate::role::diagnostic::clip;
use crate::role::id::ResourceId;
use crate::role::rules::Table;

/// The longest key taken: real keys are under 100 bytes, with an interface name.
const MAX_SYSCTL_KEY_BYTES: usize = 200;
/// The longest value taken: the kernel reads one page at most, and real
/// values (a few numbers, a path, a list of ports) are far shorter.
const MAX_SYSCTL_VALUE_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// `net.ipv4.ip_forward`: dot-separated, as `sysctl` writes it.
    pub key: String,
    /// The value as the kernel prints it, fields separated by one space.
    pub value: String,
}

impl Sysctl {
    /// Where the live value is: `/proc/sys/net/ipv4/ip_forward`.
    pub fn proc_path(&self) -> String {
        format!("/proc/sys/{}", self.key.replace('.', "/"))
    }

    /// The file that sets the value at boot, one per key, so that resources
    /// never share a file: `/etc/sysctl.d/99-cairn-net.ipv4.ip_forward.conf`.
    /// `99-` so it comes after the distribution's defaults.
    pub fn conf_path(&self) -> String {
        format!("/etc/sysctl.d/99-cairn-{}.conf", self.key)
    }

    /// The content of [`Sysctl::conf_path`].
    pub fn conf_content(&self) -> String {
        format!(
            "# Managed by Cairn ([[sysctl]] {}); changes here are replaced.\n{} = {}\n",
            self.key, self.key, self.value
        )
    }
}

/// A value in `role.toml`: `value = 1` or `value = "4096 87380 6291456"`.
#[derive(Deserialize)]
#[serde(untagged, expecting = "the value must be a string or an integer")]
pub(in crate::role) enum RawValue {
    Text(String),
    Number(i64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::role) struct RawSysctl {
    key: Spanned<String>,
    value: Spanned<RawValue>,
}

/// Dot-separated components of letters, digits, `_` and `-`: no `/`, no `..`,
/// nothing that could lead out of `/proc/sys` or into another file name.
fn is_sysctl_key(key: &str) -> bool {
    key.len() <= MAX_SYSCTL_KEY_BYTES
        && key.split('.').all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        })
}

/// The value with its fields separated by one space, as it is compared with
/// what the kernel prints (which separates them with tabs).
pub fn normalize_sysctl_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl ResourceKind for Sysctl {
    type Raw = RawSysctl;

    fn name(raw: &RawSysctl) -> &Spanned<String> {
        &raw.key
    }

    fn check(r: RawSysctl, t: &mut Table<'_, '_>) -> Sysctl {
        let key = r.key.get_ref();
        if !is_sysctl_key(key) {
            t.error(
                r.key.span(),
                Some("key"),
                format!("invalid key {:?}", clip(key)),
                Some(format!(
                    "a key is dot-separated names of letters, digits, _ and - (at most \
                     {MAX_SYSCTL_KEY_BYTES} bytes), like net.ipv4.ip_forward"
                )),
            );
        }
        let span = r.value.span();
        let value = match r.value.into_inner() {
            RawValue::Text(s) => s,
            RawValue::Number(n) => n.to_string(),
        };
        let why = if value.len() > MAX_SYSCTL_VALUE_BYTES {
            Some(format!("is longer than {MAX_SYSCTL_VALUE_BYTES} bytes"))
        } else if value.contains(|c: char| c.is_control() && c != '\t') {
            Some("contains a control character".into())
        } else if value.trim().is_empty() {
            Some("is empty".into())
        } else {
            None
        };
        if let Some(why) = why {
            t.error(
                span,
                Some("value"),
                format!("invalid value {:?}: {why}", clip(&value)),
                None,
            );
        }
        Sysctl {
            key: r.key.into_inner(),
            value: normalize_sysctl_value(&value),
        }
    }

    fn implicit_requires(&self) -> Vec<ResourceId> {
        path_requires(&self.conf_path(), None, None)
    }
}
