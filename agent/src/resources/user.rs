//! PLACEHOLDER: being written.
use anyhow::{Result, bail};
use cairn_proto::role;

use super::{Drift, Resource};
use crate::providers::Host;

pub struct UserResource<'a>(pub &'a role::User);

impl Resource for UserResource<'_> {
    fn check(&self, _host: &Host) -> Result<Drift> {
        bail!("placeholder {}", self.0.name)
    }
    fn apply(&self, _host: &Host, _drift: &Drift) -> Result<()> {
        bail!("placeholder")
    }
}
