//! `cairn audit` and `cairn audit verify`: read the audit log page by page (a
//! response holds at most 1,000 entries and about 1 MiB, so a log of any size
//! can be read), and check its hash chain with the same code the server
//! writes it with ([`crate::store::audit`]).

use anyhow::{Result, bail};
use cairn_proto::client::Connection;
use cairn_proto::pb;
use serde::Serialize;

use super::error::RpcResult;
use super::output::Render;
use crate::store::{AuditRecord, audit};

/// Most entries asked for in one request: the server's page limit.
const PAGE: u32 = 1000;

/// The newest `limit` entries at or after `since` (RFC 3339, or empty), oldest first.
pub async fn newest(conn: &Connection, since: &str, limit: u32) -> Result<Vec<pb::AuditEntry>> {
    let mut entries: Vec<pb::AuditEntry> = Vec::new();
    let mut before_id = 0;
    // Each round adds at least one entry, or stops.
    while entries.len() < limit as usize {
        let want = (limit - entries.len() as u32).min(PAGE);
        let page = conn
            .audit()
            .list(pb::AuditRequest {
                since: since.to_string(),
                limit: want,
                newest_first: true,
                before_id,
                ..Default::default()
            })
            .await
            .rpc(conn, || "could not read the audit log".to_string())?;
        let Some(oldest) = page.entries.last() else {
            break;
        };
        before_id = oldest.id;
        entries.extend(page.entries);
        if !page.more {
            break;
        }
    }
    entries.reverse();
    Ok(entries)
}

/// The outcome of `cairn audit verify`.
#[derive(Debug, Serialize)]
pub struct VerifyOut {
    /// Whether every entry's hash follows from its content and the entry before it.
    pub ok: bool,
    /// Entries checked (up to and including the broken one).
    pub entries: u64,
    /// The hash of the last entry that checked out: record it elsewhere to
    /// notice later that the log was cut back or rewritten from an earlier point.
    pub head: String,
    /// The first entry that breaks the chain.
    pub broken: Option<Broken>,
}

#[derive(Debug, Serialize)]
pub struct Broken {
    pub id: u64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// Why it does not check out.
    pub reason: String,
}

impl Render for VerifyOut {
    fn human(&self) -> String {
        match &self.broken {
            None if self.entries == 0 => "audit log OK: no entries\n".into(),
            None => format!(
                "audit log OK: {} entries, head hash {}\n",
                self.entries, self.head
            ),
            Some(b) => format!(
                "audit log BROKEN at entry {} ({} {} {} by {}): {}\n\
                 {} entries before it check out, up to head hash {}\n",
                b.id,
                b.at,
                b.action,
                b.target,
                b.actor,
                b.reason,
                self.entries - 1,
                if self.head.is_empty() {
                    "(none)"
                } else {
                    &self.head
                }
            ),
        }
    }
}

/// Checks the chain as entries arrive, oldest first.
#[derive(Debug, Default)]
pub struct Chain {
    entries: u64,
    last_id: u64,
    head: String,
    broken: Option<Broken>,
}

impl Chain {
    /// Checks the next entry; false once the chain is broken.
    pub fn push(&mut self, e: &pb::AuditEntry) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.entries += 1;
        let reason = if e.id <= self.last_id {
            Some(format!("its id does not follow entry {}", self.last_id))
        } else if audit::expected_hash(&self.head, &record_of(e)) != e.hash {
            Some(format!(
                "its stored hash {} does not follow from its content and the hash of the entry \
                 before it: this entry was changed, or one before it was removed or inserted, \
                 outside cairn-server",
                if e.hash.is_empty() { "(none)" } else { &e.hash }
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            self.broken = Some(Broken {
                id: e.id,
                at: e.at.clone(),
                actor: e.actor.clone(),
                action: e.action.clone(),
                target: e.target.clone(),
                reason,
            });
            return false;
        }
        self.last_id = e.id;
        self.head = e.hash.clone();
        true
    }

    pub fn finish(self) -> VerifyOut {
        VerifyOut {
            ok: self.broken.is_none(),
            entries: self.entries,
            head: self.head,
            broken: self.broken,
        }
    }
}

/// The entry as stored, as far as the hash covers it.
fn record_of(e: &pb::AuditEntry) -> AuditRecord {
    AuditRecord {
        id: e.id,
        at: e.at_micros,
        actor: e.actor.clone(),
        actor_role: e.actor_role.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        detail: e.detail.clone(),
        peer: e.peer.clone(),
        outcome: e.outcome.clone(),
        hash: e.hash.clone(),
        full_digest: Some(e.full_digest.clone()).filter(|d| !d.is_empty()),
    }
}

/// Reads the whole log, oldest first, and checks its chain.
pub async fn verify(conn: &Connection) -> Result<VerifyOut> {
    let mut chain = Chain::default();
    let mut after_id = 0;
    loop {
        let page = conn
            .audit()
            .list(pb::AuditRequest {
                limit: PAGE,
                after_id,
                ..Default::default()
            })
            .await
            .rpc(conn, || {
                format!("could not read the audit log after entry {after_id}")
            })?;
        let Some(last) = page.entries.last() else {
            break;
        };
        if last.id <= after_id {
            bail!(
                "the server sent audit entries out of order (entry {} after {after_id})",
                last.id
            );
        }
        after_id = last.id;
        if !page.entries.iter().all(|e| chain.push(e)) || !page.more {
            break;
        }
    }
    Ok(chain.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64) -> Vec<pb::AuditEntry> {
        let mut previous = String::new();
        (1..=n)
            .map(|id| {
                let mut e = pb::AuditEntry {
                    id,
                    at: "2026-01-01T00:00:00Z".into(),
                    at_micros: 1_767_225_600_000_000 + id as i64,
                    actor: "ada".into(),
                    actor_role: "admin".into(),
                    action: "push".into(),
                    target: "web".into(),
                    detail: format!("version {id}"),
                    peer: "127.0.0.1:9".into(),
                    outcome: "ok".into(),
                    ..Default::default()
                };
                e.hash = audit::entry_hash(&previous, &record_of(&e));
                previous = e.hash.clone();
                e
            })
            .collect()
    }

    fn check(entries: &[pb::AuditEntry]) -> VerifyOut {
        let mut chain = Chain::default();
        entries.iter().all(|e| chain.push(e));
        chain.finish()
    }

    #[test]
    fn an_intact_chain_checks_out_with_its_head() {
        let log = entries(5);
        let out = check(&log);
        assert!(out.ok && out.broken.is_none());
        assert_eq!((out.entries, out.head.as_str()), (5, log[4].hash.as_str()));
        assert!(
            out.human().starts_with("audit log OK: 5 entries"),
            "{}",
            out.human()
        );
    }

    #[test]
    fn an_edit_a_removal_or_a_swap_names_the_first_broken_entry() {
        let mut edited = entries(5);
        edited[2].detail = "version 99".into();
        let mut removed = entries(5);
        removed.remove(1);
        let mut swapped = entries(5);
        swapped.swap(1, 2);
        let mut rehashed = entries(5);
        // Rewriting one entry's hash to match its new content breaks the next one.
        rehashed[2].detail = "version 99".into();
        rehashed[2].hash = audit::entry_hash(&rehashed[1].hash, &record_of(&rehashed[2]));
        for (log, id) in [(edited, 3), (removed, 3), (swapped, 3), (rehashed, 4)] {
            let out = check(&log);
            assert!(!out.ok);
            assert_eq!(out.broken.as_ref().unwrap().id, id, "{out:?}");
            assert!(
                out.human().contains(&format!("BROKEN at entry {id}")),
                "{}",
                out.human()
            );
        }
    }

    #[test]
    fn a_cut_entry_is_checked_by_its_full_digest() {
        let mut log = entries(3);
        let digest = audit::content_digest(&record_of(&log[1]));
        log[1].detail = "vers…[cut]".into();
        assert!(!check(&log).ok, "cut text alone does not check out");
        log[1].full_digest = digest;
        assert!(check(&log).ok);
    }
}
