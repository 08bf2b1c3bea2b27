//! Refused calls, logged and audited without letting a flood of them fill the
//! database or the log.
//!
//! Refusals are coalesced per peer and reason: the first one from a peer in a
//! [`WINDOW`] is logged and audited in full; the next ones in that window are
//! only counted, and recorded as one entry ("N more refusals from PEER …")
//! when the window is over: as the next refusal after it arrives, at the
//! periodic [`Refusals::flush_expired`], or at [`Refusals::flush_all`] on
//! shutdown. The counts are kept in a bounded map; beyond [`MAX_BUCKETS`]
//! the others share one overflow bucket. Every recorded field is truncated first.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::{Code, Status};
use tracing::{error, warn};

use crate::store::{Actor, Store};

/// How long refusals from one peer for one reason are counted after the first.
pub const WINDOW: Duration = Duration::from_secs(60);
/// At most this many (peer, reason) pairs are counted apart; the others share one bucket.
pub const MAX_BUCKETS: usize = 4096;

/// Longest recorded operator name, role, peer and action, in characters.
const NAME_CHARS: usize = 128;
/// Longest recorded target (it comes from the unchecked request).
const TARGET_CHARS: usize = 128;
/// Longest recorded outcome (it holds the refusal's message).
const OUTCOME_CHARS: usize = 512;

/// One refused call, as the caller and the handler saw it.
pub struct Refusal<'a> {
    pub actor: &'a Actor,
    pub action: &'a str,
    pub target: &'a str,
    pub status: &'a Status,
}

/// What refusals are counted against: a peer's address (an IPv6 peer's /64,
/// which one host usually owns whole) and the reason: a caller without a
/// usable certificate, or an operator refused one action (both known to the
/// server, not chosen by the caller, so a peer has few buckets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Bucket {
    Peer {
        network: Option<IpAddr>,
        code: Code,
        /// The operator and action, for a caller who was identified.
        operator_action: Option<(String, String)>,
    },
    /// Every peer beyond [`MAX_BUCKETS`].
    Overflow,
}

/// The refusals of one bucket since its first one.
struct Window {
    started: Instant,
    /// When the first refusal was recorded, for the summary.
    first_at: String,
    /// The peer as recorded (its address, without the port).
    peer: String,
    /// The first refusal's reason, for the summary.
    reason: String,
    /// Refusals after the first, not yet recorded.
    more: u64,
}

/// An audit entry to write once the lock is released.
struct Entry {
    actor: Actor,
    action: String,
    target: String,
    outcome: String,
}

/// The refusal recorder shared by the certificate gate and the handlers.
pub struct Refusals {
    store: Arc<dyn Store>,
    windows: Mutex<HashMap<Bucket, Window>>,
}

impl Refusals {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Refusals {
            store,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Logs and audits `refusal`, or counts it if its peer was refused for the
    /// same reason less than [`WINDOW`] ago. A storage failure is logged: the
    /// call is refused either way.
    pub async fn record(&self, refusal: Refusal<'_>) {
        let entries = self.note(refusal, Instant::now());
        self.write(entries).await;
    }

    /// Records the counts of windows that are over; run periodically so that
    /// a burst is recorded even if its peer never comes back.
    pub async fn flush_expired(&self) {
        let entries = self.take(|w| w.started.elapsed() >= WINDOW);
        self.write(entries).await;
    }

    /// Records every count not yet recorded; at shutdown.
    pub async fn flush_all(&self) {
        let entries = self.take(|_| true);
        self.write(entries).await;
    }

    fn note(&self, refusal: Refusal<'_>, now: Instant) -> Vec<Entry> {
        let Refusal {
            actor,
            action,
            target,
            status,
        } = refusal;
        let (ip, peer) = match actor.peer.parse::<SocketAddr>() {
            Ok(addr) => (Some(addr.ip()), addr.ip().to_string()),
            Err(_) => (None, truncate(&actor.peer, NAME_CHARS)),
        };
        let mut windows = self.windows.lock().expect("refusal windows lock poisoned");
        let mut entries = Vec::new();
        let mut bucket = Bucket::Peer {
            network: ip.map(network),
            code: status.code(),
            operator_action: (status.code() != Code::Unauthenticated).then(|| {
                (
                    truncate(&actor.name, NAME_CHARS),
                    truncate(action, NAME_CHARS),
                )
            }),
        };
        if !windows.contains_key(&bucket) && windows.len() >= MAX_BUCKETS {
            sweep(&mut windows, &mut entries, |w| {
                now.duration_since(w.started) >= WINDOW
            });
            if windows.len() >= MAX_BUCKETS {
                bucket = Bucket::Overflow;
            }
        }
        if let Some(w) = windows.get_mut(&bucket) {
            if now.duration_since(w.started) < WINDOW {
                w.more += 1;
                return entries;
            }
            entries.extend(summary(w));
        }
        let reason = truncate(status.message(), OUTCOME_CHARS);
        let actor = Actor {
            name: truncate(&actor.name, NAME_CHARS),
            role: truncate(&actor.role, NAME_CHARS),
            peer: truncate(&actor.peer, NAME_CHARS),
        };
        let (action, target) = (truncate(action, NAME_CHARS), truncate(target, TARGET_CHARS));
        warn!(actor = %actor.name, role = %actor.role, peer = %actor.peer, action, target, reason, "request refused");
        entries.push(Entry {
            outcome: truncate(&format!("denied: {reason}"), OUTCOME_CHARS),
            actor,
            action,
            target,
        });
        let peer = if bucket == Bucket::Overflow {
            format!("any of the peers beyond the first {MAX_BUCKETS}")
        } else {
            peer
        };
        windows.insert(
            bucket,
            Window {
                started: now,
                first_at: OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default(),
                peer,
                reason,
                more: 0,
            },
        );
        entries
    }

    /// Removes the windows `done` picks; returns the summaries of those with counts.
    fn take(&self, done: impl Fn(&Window) -> bool) -> Vec<Entry> {
        let mut windows = self.windows.lock().expect("refusal windows lock poisoned");
        let mut entries = Vec::new();
        sweep(&mut windows, &mut entries, done);
        entries
    }

    async fn write(&self, entries: Vec<Entry>) {
        for e in entries {
            if let Err(err) = self
                .store
                .audit(&e.actor, &e.action, &e.target, "", &e.outcome)
                .await
            {
                error!(error = format!("{:#}", anyhow::Error::from(err)), action = %e.action, peer = %e.actor.peer, "could not audit a refusal");
            }
        }
    }
}

/// Removes the windows `done` picks, adding the summaries of those with counts to `entries`.
fn sweep(
    windows: &mut HashMap<Bucket, Window>,
    entries: &mut Vec<Entry>,
    done: impl Fn(&Window) -> bool,
) {
    windows.retain(|_, w| {
        if !done(w) {
            return true;
        }
        entries.extend(summary(w));
        false
    });
}

/// The entry counting `w`'s refusals after its first, if there were any; resets the count.
fn summary(w: &mut Window) -> Option<Entry> {
    let more = std::mem::take(&mut w.more);
    if more == 0 {
        return None;
    }
    let outcome = truncate(
        &format!(
            "denied: {more} more refusals from {} in the {} s after the one at {} (reason: {})",
            w.peer,
            WINDOW.as_secs(),
            w.first_at,
            w.reason
        ),
        OUTCOME_CHARS,
    );
    warn!(peer = %w.peer, count = more, "further requests refused");
    Some(Entry {
        actor: Actor {
            name: "anonymous".into(),
            role: "none".into(),
            peer: w.peer.clone(),
        },
        action: "refusals".into(),
        target: String::new(),
        outcome,
    })
}

/// The part of an address one party usually holds: the address itself for
/// IPv4, the /64 network for IPv6.
pub fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// The first `max` characters of `s`, with "…" if anything was cut.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn refusals() -> (Refusals, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
        (Refusals::new(crate::store::open(&url).await.unwrap()), dir)
    }

    fn actor(name: &str, peer: &str) -> Actor {
        Actor {
            name: name.into(),
            role: "none".into(),
            peer: peer.into(),
        }
    }

    fn refuse<'a>(actor: &'a Actor, action: &'a str, status: &'a Status) -> Refusal<'a> {
        Refusal {
            actor,
            action,
            target: "",
            status,
        }
    }

    #[tokio::test]
    async fn one_entry_per_window_then_the_count() {
        let (r, _dir) = refusals().await;
        let anon = actor("anonymous", "192.0.2.1:4000");
        let other_port = actor("anonymous", "192.0.2.1:4001");
        let no_cert = Status::unauthenticated("no client certificate");
        let t0 = Instant::now();
        assert_eq!(r.note(refuse(&anon, "a", &no_cert), t0).len(), 1);
        for i in 1..=5 {
            let at = t0 + Duration::from_secs(i);
            assert!(r.note(refuse(&other_port, "b", &no_cert), at).is_empty());
        }
        // Another reason, another peer: counted apart.
        let denied = Status::permission_denied("operator o may not push");
        let otto = actor("otto", "192.0.2.1:4002");
        assert_eq!(r.note(refuse(&otto, "push", &denied), t0).len(), 1);
        assert_eq!(r.note(refuse(&otto, "promote", &denied), t0).len(), 1);
        let elsewhere = actor("anonymous", "192.0.2.2:4000");
        assert_eq!(r.note(refuse(&elsewhere, "a", &no_cert), t0).len(), 1);

        // After the window: the count, then the new refusal in full.
        let entries = r.note(refuse(&anon, "a", &no_cert), t0 + WINDOW);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].action, "refusals");
        assert!(
            entries[0]
                .outcome
                .starts_with("denied: 5 more refusals from 192.0.2.1 in the 60 s after"),
            "{}",
            entries[0].outcome
        );
        assert_eq!(entries[1].action, "a");
        // Nothing left to count for that peer; shutdown writes no empty summary.
        assert!(r.take(|_| true).is_empty());
    }

    #[tokio::test]
    async fn the_map_is_bounded_and_the_rest_share_one_count() {
        let (r, _dir) = refusals().await;
        let no_cert = Status::unauthenticated("no client certificate");
        let t0 = Instant::now();
        let peers: Vec<Actor> = (0..MAX_BUCKETS + 10)
            .map(|i| actor("anonymous", &format!("10.{}.{}.1:1", i / 256, i % 256)))
            .collect();
        let mut full = 0;
        for p in &peers {
            full += r.note(refuse(p, "a", &no_cert), t0).len();
            full += r.note(refuse(p, "a", &no_cert), t0).len();
        }
        // One full entry for each of the first MAX_BUCKETS peers, one for the overflow.
        assert_eq!(full, MAX_BUCKETS + 1);
        assert_eq!(r.windows.lock().unwrap().len(), MAX_BUCKETS + 1);
        let summaries = r.take(|_| true);
        assert_eq!(summaries.len(), MAX_BUCKETS + 1);
        let overflow = summaries
            .iter()
            .find(|e| e.outcome.contains("beyond the first"))
            .unwrap();
        assert!(
            overflow.outcome.starts_with("denied: 19 more"),
            "{}",
            overflow.outcome
        );
    }

    #[tokio::test]
    async fn recorded_fields_are_truncated() {
        let (r, _dir) = refusals().await;
        let long = "x".repeat(100_000);
        let who = actor(&long, "192.0.2.9:1");
        let status = Status::permission_denied(long.clone());
        let entries = r.note(
            Refusal {
                actor: &who,
                action: &long,
                target: &long,
                status: &status,
            },
            Instant::now(),
        );
        let e = &entries[0];
        assert_eq!(e.actor.name.chars().count(), NAME_CHARS + 1);
        assert_eq!(e.action.chars().count(), NAME_CHARS + 1);
        assert_eq!(e.target.chars().count(), TARGET_CHARS + 1);
        assert_eq!(e.outcome.chars().count(), OUTCOME_CHARS + 1);
    }

    #[test]
    fn truncate_cuts_on_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("ééé", 2), "éé…");
    }

    #[test]
    fn ipv6_peers_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(network(a), network(b));
        assert_ne!(network(a), network(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(network(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
