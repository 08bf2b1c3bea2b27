//! Resource ids: `TYPE:NAME`, as `requires`, `notify` and reports write them.

use std::fmt;
use std::str::FromStr;

use super::Kind;
use super::diagnostic::clip;

/// `TYPE:NAME`, e.g. `service:nginx` or `file:/etc/motd`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    pub kind: Kind,
    pub name: String,
}

impl ResourceId {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ResourceId {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.name)
    }
}

impl FromStr for ResourceId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            format!(
                "{:?} is not a resource id (expected TYPE:NAME, like service:nginx)",
                clip(s)
            )
        })?;
        let kind = kind.parse::<Kind>().map_err(|()| {
            let kinds: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            format!(
                "{:?} has unknown resource type {:?} (one of {})",
                clip(s),
                clip(kind),
                kinds.join(", ")
            )
        })?;
        if name.is_empty() {
            return Err(format!("{:?} has an empty name", clip(s)));
        }
        Ok(ResourceId::new(kind, name))
    }
}
