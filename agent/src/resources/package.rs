//! PLACEHOLDER: being written.
use anyhow::{Result, bail};
use cairn_proto::role;

use super::{Drift, Resource};
use crate::providers::Host;

pub struct PackageResource<'a>(pub &'a role::Package);

impl Resource for PackageResource<'_> {
    fn check(&self, _host: &Host) -> Result<Drift> {
        bail!("placeholder {}", self.0.name)
    }
    fn apply(&self, _host: &Host, _drift: &Drift) -> Result<()> {
        bail!("placeholder")
    }
}
