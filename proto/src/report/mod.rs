//! The run report: the agent's account of one run, resource by resource.
//!
//! The JSON form (serde) is what `cairn-agent apply --format json` prints; the
//! protobuf form ([`crate::pb::RunReport`]) is what crosses the wire. The two
//! convert losslessly. [`RunReport::human`] (in `human.rs`) is the form for people.

mod human;

pub use human::count;

use serde::{Deserialize, Serialize};

use crate::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceStatus {
    Unchanged,
    Changed,
    WouldChange,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyChange {
    pub property: String,
    pub before: String,
    pub after: String,
}

impl PropertyChange {
    pub fn new(property: &str, before: impl Into<String>, after: impl Into<String>) -> Self {
        PropertyChange {
            property: property.to_string(),
            before: before.into(),
            after: after.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceReport {
    pub id: String,
    pub status: ResourceStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<PropertyChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    pub duration_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub total: u32,
    pub unchanged: u32,
    pub changed: u32,
    pub would_change: u32,
    pub failed: u32,
    pub skipped: u32,
}

impl RunSummary {
    pub fn of(resources: &[ResourceReport]) -> Self {
        let mut s = RunSummary {
            total: resources.len() as u32,
            ..Default::default()
        };
        for r in resources {
            match r.status {
                ResourceStatus::Unchanged => s.unchanged += 1,
                ResourceStatus::Changed => s.changed += 1,
                ResourceStatus::WouldChange => s.would_change += 1,
                ResourceStatus::Failed => s.failed += 1,
                ResourceStatus::Skipped => s.skipped += 1,
            }
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub node: String,
    pub role: String,
    pub role_digest: String,
    pub noop: bool,
    pub started_at: String,
    pub finished_at: String,
    pub agent_version: String,
    /// The channel and version the role was fetched at; empty and 0 for a
    /// role applied from a directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub role_version: u64,
    /// No server answered: the role is the last good one cached on the node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_cache: bool,
    pub summary: RunSummary,
    pub resources: Vec<ResourceReport>,
}

impl From<ResourceStatus> for pb::ResourceStatus {
    fn from(s: ResourceStatus) -> Self {
        match s {
            ResourceStatus::Unchanged => pb::ResourceStatus::Unchanged,
            ResourceStatus::Changed => pb::ResourceStatus::Changed,
            ResourceStatus::WouldChange => pb::ResourceStatus::WouldChange,
            ResourceStatus::Failed => pb::ResourceStatus::Failed,
            ResourceStatus::Skipped => pb::ResourceStatus::Skipped,
        }
    }
}

/// A wire report that does not map onto the domain type.
#[derive(Debug, thiserror::Error)]
#[error("invalid run report: {0}")]
pub struct InvalidReport(String);

impl TryFrom<pb::ResourceStatus> for ResourceStatus {
    type Error = InvalidReport;
    fn try_from(s: pb::ResourceStatus) -> Result<Self, InvalidReport> {
        Ok(match s {
            pb::ResourceStatus::Unchanged => ResourceStatus::Unchanged,
            pb::ResourceStatus::Changed => ResourceStatus::Changed,
            pb::ResourceStatus::WouldChange => ResourceStatus::WouldChange,
            pb::ResourceStatus::Failed => ResourceStatus::Failed,
            pb::ResourceStatus::Skipped => ResourceStatus::Skipped,
            pb::ResourceStatus::Unspecified => {
                return Err(InvalidReport("resource status is unspecified".into()));
            }
        })
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<RunReport> for pb::RunReport {
    fn from(r: RunReport) -> Self {
        pb::RunReport {
            run_id: r.run_id,
            node: r.node,
            role: r.role,
            role_digest: r.role_digest,
            noop: r.noop,
            started_at: r.started_at,
            finished_at: r.finished_at,
            agent_version: r.agent_version,
            channel: r.channel,
            role_version: r.role_version,
            from_cache: r.from_cache,
            summary: Some(pb::RunSummary {
                total: r.summary.total,
                unchanged: r.summary.unchanged,
                changed: r.summary.changed,
                would_change: r.summary.would_change,
                failed: r.summary.failed,
                skipped: r.summary.skipped,
            }),
            resources: r
                .resources
                .into_iter()
                .map(|res| pb::ResourceReport {
                    id: res.id,
                    status: pb::ResourceStatus::from(res.status) as i32,
                    changes: res
                        .changes
                        .into_iter()
                        .map(|c| pb::PropertyChange {
                            property: c.property,
                            before: c.before,
                            after: c.after,
                        })
                        .collect(),
                    diff: res.diff.unwrap_or_default(),
                    duration_us: res.duration_us,
                    error: res.error.unwrap_or_default(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::RunReport> for RunReport {
    type Error = InvalidReport;
    fn try_from(r: pb::RunReport) -> Result<Self, InvalidReport> {
        let resources = r
            .resources
            .into_iter()
            .map(|res| {
                let status = pb::ResourceStatus::try_from(res.status)
                    .map_err(|_| InvalidReport(format!("unknown status {}", res.status)))?;
                Ok(ResourceReport {
                    status: status.try_into()?,
                    id: res.id,
                    changes: res
                        .changes
                        .into_iter()
                        .map(|c| PropertyChange {
                            property: c.property,
                            before: c.before,
                            after: c.after,
                        })
                        .collect(),
                    diff: Some(res.diff).filter(|d| !d.is_empty()),
                    duration_us: res.duration_us,
                    error: Some(res.error).filter(|e| !e.is_empty()),
                })
            })
            .collect::<Result<Vec<_>, InvalidReport>>()?;
        Ok(RunReport {
            run_id: r.run_id,
            node: r.node,
            role: r.role,
            role_digest: r.role_digest,
            noop: r.noop,
            started_at: r.started_at,
            finished_at: r.finished_at,
            agent_version: r.agent_version,
            channel: r.channel,
            role_version: r.role_version,
            from_cache: r.from_cache,
            // Derived, so a sender cannot make it disagree with the resources.
            summary: RunSummary::of(&resources),
            resources,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_survives_the_wire() {
        let resources = vec![
            ResourceReport {
                id: "file:/etc/motd".into(),
                status: ResourceStatus::Changed,
                changes: vec![PropertyChange::new("mode", "0600", "0644")],
                diff: Some("--- a\n+++ b\n".into()),
                duration_us: 12,
                error: None,
            },
            ResourceReport {
                id: "service:nginx".into(),
                status: ResourceStatus::Skipped,
                changes: vec![],
                diff: None,
                duration_us: 0,
                error: Some("dependency file:/etc/motd failed".into()),
            },
        ];
        let report = RunReport {
            run_id: "r1".into(),
            node: "web-1".into(),
            role: "web".into(),
            role_digest: "sha256:00".into(),
            noop: false,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
            agent_version: "0.1.0".into(),
            channel: "stable".into(),
            role_version: 7,
            from_cache: true,
            summary: RunSummary::of(&resources),
            resources,
        };
        let wire: pb::RunReport = report.clone().into();
        assert_eq!(RunReport::try_from(wire).unwrap(), report);
    }
}
