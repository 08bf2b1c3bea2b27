//! What the web dashboard ([`crate::ui`]) keeps and reads: one-time sign-in
//! links and the sessions they start (migration `0008`, only the SHA-256 of
//! each secret stored), and the fleet as its pages show it.

use super::Micros;

/// A sign-in link to store: [`super::Store::create_sign_in_link`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSignInLink {
    /// Hex SHA-256 of the link's secret.
    pub secret_sha256: String,
    /// The operator who asked for it, its role, and the certificate it
    /// asked with ([`crate::auth::fingerprint`]): the session is valid only
    /// while that certificate is.
    pub operator: String,
    pub role: String,
    pub fingerprint: String,
    pub expires_at: Micros,
}

/// A session to start: [`super::Store::sign_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// Hex SHA-256 of the session's secret (the cookie).
    pub secret_sha256: String,
    pub expires_at: Micros,
}

/// A signed-in browser: who, as what role, with which certificate, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub operator: String,
    pub role: String,
    pub fingerprint: String,
    pub created_at: Micros,
    pub expires_at: Micros,
}

/// Why a sign-in link starts no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// No such link (never issued, or long expired and deleted).
    Unknown,
    Used {
        at: Micros,
    },
    Expired {
        at: Micros,
    },
}

/// Where a node stands, by its newest run; each node is in exactly one,
/// tried in this order: never reported, stale (not heard from for
/// [`super::STALE_AFTER_INTERVALS`] of its intervals), failed, changed,
/// converged (its newest run changed nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Never,
    Stale,
    Failed,
    Changed,
    Converged,
}

impl NodeState {
    pub const ALL: [NodeState; 5] = [
        NodeState::Converged,
        NodeState::Changed,
        NodeState::Failed,
        NodeState::Stale,
        NodeState::Never,
    ];

    /// The name the backends' queries give it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Never => "never",
            NodeState::Stale => "stale",
            NodeState::Failed => "failed",
            NodeState::Changed => "changed",
            NodeState::Converged => "converged",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        NodeState::ALL.into_iter().find(|n| n.as_str() == s)
    }
}

/// Unrevoked nodes per [`NodeState`], in the order of [`NodeState::ALL`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts(pub [u64; 5]);

impl StateCounts {
    pub fn get(&self, state: NodeState) -> u64 {
        self.0[NodeState::ALL.iter().position(|s| *s == state).unwrap_or(0)]
    }

    pub(crate) fn add(&mut self, state: &str, n: u64) {
        if let Some(i) = NodeState::ALL.iter().position(|s| s.as_str() == state) {
            self.0[i] += n;
        }
    }
}

/// Which nodes the nodes page lists; every field set narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFilter {
    pub role: Option<String>,
    pub channel: Option<String>,
    pub state: Option<NodeState>,
    /// The role version its newest run applied.
    pub version: Option<u64>,
    /// A fact (path of object keys, e.g. `["os", "release"]`, each of
    /// letters, digits, `_` and `-`: the caller checks) and the value it
    /// must have, as typed: see [`FactValue`]. The facts of its newest run,
    /// or those it sent when it enrolled.
    pub fact: Option<(Vec<String>, String)>,
}

/// What a fact filter's value matches, the same on every backend: the text
/// always matches a JSON string equal to it; `true` and `false` also match
/// that JSON boolean, and a JSON number (`12`, `12.0`, `-1e3`) also matches
/// a JSON number equal to it as a number (`12` matches `12` and `12.0`).
/// Nothing matches a key that is missing, `null`, an object or an array.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FactValue {
    Bool(bool),
    Number(serde_json::Number),
    Text,
}

impl FactValue {
    pub(crate) fn of(text: &str) -> FactValue {
        match text {
            "true" => FactValue::Bool(true),
            "false" => FactValue::Bool(false),
            _ => match serde_json::from_str::<serde_json::Number>(text) {
                Ok(n) => FactValue::Number(n),
                Err(_) => FactValue::Text,
            },
        }
    }
}

/// Runs reported in one hour, by how they went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourOfRuns {
    /// The hour's start.
    pub hour: Micros,
    pub failed: u64,
    pub changed: u64,
    pub unchanged: u64,
}

/// One hour, in microseconds.
pub const HOUR: Micros = 3_600_000_000;

/// Rows `(hour number, status, count)` folded into one [`HourOfRuns`] per
/// hour with runs, oldest first.
pub(crate) fn fold_hours(rows: Vec<(i64, String, i64)>) -> Vec<HourOfRuns> {
    let mut hours: Vec<HourOfRuns> = Vec::new();
    for (hour, status, n) in rows {
        let start = hour * HOUR;
        if hours.last().is_none_or(|h| h.hour != start) {
            hours.push(HourOfRuns {
                hour: start,
                ..HourOfRuns::default()
            });
        }
        let h = hours.last_mut().expect("pushed above");
        let n = n.max(0) as u64;
        match status.as_str() {
            "failed" => h.failed += n,
            "changed" => h.changed += n,
            _ => h.unchanged += n,
        }
    }
    hours
}
