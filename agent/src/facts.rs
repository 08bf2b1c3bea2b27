//! PLACEHOLDER: being written (fact gathering).
use anyhow::Result;
use cairn_proto::facts::Facts;

pub fn gather() -> Result<Facts> {
    Ok(Facts::placeholder())
}
