//! PLACEHOLDER: being written (shadow-utils account provider).
use anyhow::{Result, bail};
use cairn_proto::role;

use super::{GroupEntry, UserChanges, UserEntry};

pub struct Shadow;
impl Shadow {
    pub fn new() -> Self {
        Shadow
    }
}
impl super::AccountProvider for Shadow {
    fn name(&self) -> &'static str {
        "shadow"
    }
    fn group(&self, _: &str) -> Result<Option<GroupEntry>> {
        bail!("placeholder")
    }
    fn user(&self, _: &str) -> Result<Option<UserEntry>> {
        bail!("placeholder")
    }
    fn create_group(&self, _: &role::Group) -> Result<()> {
        bail!("placeholder")
    }
    fn set_gid(&self, _: &str, _: u32) -> Result<()> {
        bail!("placeholder")
    }
    fn delete_group(&self, _: &str) -> Result<()> {
        bail!("placeholder")
    }
    fn create_user(&self, _: &role::User) -> Result<()> {
        bail!("placeholder")
    }
    fn modify_user(&self, _: &str, _: &UserChanges) -> Result<()> {
        bail!("placeholder")
    }
    fn delete_user(&self, _: &str) -> Result<()> {
        bail!("placeholder")
    }
}
