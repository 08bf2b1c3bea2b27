//! The change feed between servers on one database ([`Store::changes`]).
//!
//! A channel move, a node revocation and a batch of new reports each send a
//! `NOTIFY` in their own transaction ([`channel_moved`], [`node_revoked`],
//! [`reports_stored`]): PostgreSQL delivers it
//! only once that transaction committed, so a server told of a change reads
//! it. Each server holds one connection that `LISTEN`s for them ([`start`])
//! and forwards them to its receiver.
//!
//! Notifications sent while that connection is down are lost for it, so
//! every (re)connection is followed by [`Change::Resync`]: `LISTEN` is in
//! place first, so whatever committed before is read by the resync and
//! whatever commits after is told.
//!
//! A connection can also die without a word (a network cut between clouds):
//! after [`PROBE_AFTER`] without a notification, the feed notifies itself on
//! a channel of its own and expects it back within [`PROBE_TIMEOUT`], else it
//! connects again. Reconnection attempts back off, jittered, up to
//! [`RETRY_MAX`]; each loss and each return is logged.

use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::{info, warn};

use super::{CONNECT_TIMEOUT, Tx, db};
use crate::store::{CHANGE_FEED_BUFFER, Change, Result};

/// The notification channel of channel moves; payload `ROLE\nCHANNEL`.
const CHANNEL_MOVED: &str = "cairn_channel_moved";
/// The notification channel of node revocations; payload the node's name.
const NODE_REVOKED: &str = "cairn_node_revoked";
/// The notification channel of new reports; no payload (PostgreSQL sends
/// one notification for all the batches of a transaction).
const REPORTS_STORED: &str = "cairn_reports_stored";
/// Quiet this long, the listening connection is probed.
const PROBE_AFTER: Duration = Duration::from_secs(30);
/// A probe not back within this means the connection is gone.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnection attempts wait from about this long…
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// …doubling up to this.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// The feed's connection, as `pg_stat_activity` names it.
pub(crate) const APPLICATION_NAME: &str = "cairn-server changes";
/// A payload longer than this is not Cairn's (names are at most 253 bytes).
const MAX_PAYLOAD: usize = 1024;

/// Tells listening servers that the channel moved, once `tx` commits.
pub(super) async fn channel_moved(tx: &mut Tx, role: &str, channel: &str) -> Result<()> {
    notify(tx, CHANNEL_MOVED, &format!("{role}\n{channel}")).await
}

/// Tells listening servers that node `name` was revoked, once `tx` commits.
pub(super) async fn node_revoked(tx: &mut Tx, name: &str) -> Result<()> {
    notify(tx, NODE_REVOKED, name).await
}

/// Tells listening servers that reports were stored, once `tx` commits.
pub(super) async fn reports_stored(tx: &mut Tx) -> Result<()> {
    notify(tx, REPORTS_STORED, "").await
}

async fn notify(tx: &mut Tx, channel: &str, payload: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut **tx)
        .await
        .map_err(db("announce a change to other servers"))?;
    Ok(())
}

/// Starts the feed: a task listening on its own connection (made as the
/// pool's, to the primary of the moment), probing it through `pool`; it ends
/// when the receiver is dropped.
pub(super) fn start(pool: PgPool, place: String) -> mpsc::Receiver<Change> {
    let (tx, rx) = mpsc::channel(CHANGE_FEED_BUFFER);
    tokio::spawn(async move {
        let feed = Feed {
            tx: &tx,
            behind: false,
            pool,
            place,
            // Unique to this feed, so that no other server's probe answers it.
            probe: format!("cairn_probe_{:016x}", random()),
        };
        tokio::select! {
            () = tx.closed() => {}
            () = feed.run() => {}
        }
    });
    rx
}

struct Feed<'a> {
    tx: &'a mpsc::Sender<Change>,
    /// Set when a change could not be queued: a resync is owed.
    behind: bool,
    pool: PgPool,
    place: String,
    probe: String,
}

impl Feed<'_> {
    /// Listens, forwards, and connects again whenever the connection is lost; never returns.
    async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut listened_before = false;
        loop {
            match self.listen().await {
                Ok(listener) => {
                    if listened_before {
                        info!(place = %self.place, "listening for other servers' changes again");
                    } else {
                        info!(place = %self.place, "listening for other servers' changes");
                    }
                    listened_before = true;
                    // Anything that committed before LISTEN is read again now.
                    self.send(Change::Resync);
                    let since = Instant::now();
                    let why = self.forward(listener).await;
                    warn!(
                        place = %self.place,
                        error = %why,
                        "lost the connection listening for other servers' changes; connecting again \
                         (until then, watchers here are not told of moves and revocations made elsewhere)"
                    );
                    // A connection that lasted is replaced at once; one lost
                    // as soon as made, again and again, no faster than
                    // failed attempts are.
                    if since.elapsed() > RETRY_MAX {
                        failures = 0;
                    } else {
                        tokio::time::sleep(retry_delay(failures)).await;
                        failures = failures.saturating_add(1);
                    }
                }
                Err(e) => {
                    let wait = retry_delay(failures);
                    failures = failures.saturating_add(1);
                    warn!(
                        place = %self.place,
                        error = format!("{:#}", anyhow::Error::from(e)),
                        "could not listen for other servers' changes; trying again in {:.1}s",
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// A new connection listening on every channel of the feed.
    async fn listen(&self) -> Result<PgListener> {
        let op = || format!("listen for changes on the {}", self.place);
        // A pool of its own, of one connection, dropped with the listener:
        // nothing of a lost connection is kept. Made with the main pool's
        // options of this moment: after the primary moved, to the new one
        // (see `primary.rs`); a standby refuses `LISTEN`.
        let options = (*self.pool.connect_options())
            .clone()
            .application_name(APPLICATION_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&pool).await.map_err(db(op()))?;
        // A lost connection is this feed's to handle (with a resync), not
        // the listener's to mend quietly.
        listener.eager_reconnect(false);
        listener
            .listen_all([
                CHANNEL_MOVED,
                NODE_REVOKED,
                REPORTS_STORED,
                self.probe.as_str(),
            ])
            .await
            .map_err(db(op()))?;
        Ok(listener)
    }

    /// Forwards notifications until the connection is lost; returns why.
    async fn forward(&mut self, mut listener: PgListener) -> String {
        loop {
            let next = match tokio::time::timeout(PROBE_AFTER, listener.try_recv()).await {
                Ok(next) => next,
                // Quiet: the listener (with what it was reading) is dropped
                // if the probe does not come back.
                Err(_) => match self.probe(&mut listener).await {
                    Ok(()) => continue,
                    Err(why) => return why,
                },
            };
            match next {
                Ok(Some(n)) => self.told(n.channel(), n.payload()),
                Ok(None) => return "the connection closed".into(),
                Err(e) => return e.to_string(),
            }
        }
    }

    /// Notifies the feed's own channel through the pool and waits for it on
    /// the listener, forwarding what arrives meanwhile.
    async fn probe(&mut self, listener: &mut PgListener) -> std::result::Result<(), String> {
        let token = format!("{:016x}", random());
        // Both halves under one deadline: the pool's connection may be cut
        // without a word too.
        let sent_and_back = async {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.probe)
                .bind(&token)
                .execute(&self.pool)
                .await
                .map_err(|e| format!("could not send a probe: {e}"))?;
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) if n.channel() == self.probe && n.payload() == token => {
                        return Ok(());
                    }
                    Ok(Some(n)) => self.told(n.channel(), n.payload()),
                    Ok(None) => return Err("the connection closed".to_string()),
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        match tokio::time::timeout(PROBE_TIMEOUT, sent_and_back).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "a probe did not come back within {}s",
                PROBE_TIMEOUT.as_secs()
            )),
        }
    }

    /// Forwards one notification; what is not Cairn's is ignored.
    fn told(&mut self, channel: &str, payload: &str) {
        if payload.len() > MAX_PAYLOAD {
            warn!(
                channel,
                "ignored a notification longer than any Cairn sends"
            );
            return;
        }
        let change = match channel {
            CHANNEL_MOVED => match payload.split_once('\n') {
                Some((role, channel)) => Change::ChannelMoved {
                    role: role.into(),
                    channel: channel.into(),
                },
                None => return,
            },
            NODE_REVOKED => Change::NodeRevoked {
                name: payload.into(),
            },
            REPORTS_STORED => Change::ReportsStored,
            // An old probe, come back late.
            _ => return,
        };
        self.send(change);
    }

    /// Queues `change` without waiting: a receiver that is behind gets a
    /// resync in place of what did not fit.
    fn send(&mut self, change: Change) {
        if self.behind {
            match self.tx.try_send(Change::Resync) {
                Ok(()) => self.behind = false,
                Err(TrySendError::Full(_)) => return,
                Err(TrySendError::Closed(_)) => return,
            }
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(change) {
            self.behind = true;
        }
    }
}

/// The wait before reconnection attempt `failures + 1`: doubling from
/// [`RETRY_FIRST`] up to [`RETRY_MAX`].
fn retry_delay(failures: u32) -> Duration {
    backoff(failures, RETRY_FIRST, RETRY_MAX)
}

/// The wait before attempt `failures + 1`: doubling from `first` up to
/// `max`, drawn from the upper half, so that servers cut off together do
/// not all come back at one instant.
pub(super) fn backoff(failures: u32, first: Duration, max: Duration) -> Duration {
    let ceiling = first.saturating_mul(1 << failures.min(16)).min(max);
    let half = ceiling / 2;
    half + Duration::from_millis(random() % (half.as_millis() as u64 + 1))
}

fn random() -> u64 {
    let mut bytes = [0; 8];
    // Only for jitter and names: the clock will do if the system has no randomness.
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_within_bounds() {
        let mut ceiling = RETRY_FIRST;
        for failures in 0..20 {
            let d = retry_delay(failures);
            assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
            ceiling = (ceiling * 2).min(RETRY_MAX);
        }
    }
}
