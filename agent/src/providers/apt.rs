//! PLACEHOLDER: being written (apt/dpkg package provider).
use anyhow::{Result, bail};

pub struct Apt;
impl Apt {
    pub fn new() -> Self {
        Apt
    }
}
impl super::PackageProvider for Apt {
    fn name(&self) -> &'static str {
        "apt"
    }
    fn installed(&self, _: &str) -> Result<Option<String>> {
        bail!("placeholder")
    }
    fn install(&self, _: &str, _: Option<&str>) -> Result<()> {
        bail!("placeholder")
    }
    fn remove(&self, _: &str) -> Result<()> {
        bail!("placeholder")
    }
}
