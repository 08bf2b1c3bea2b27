//! `cairn-agent daemon`: one process that keeps its node converged. It holds
//! a `Nodes.Watch` stream, so that a promote or rollback starts a run within
//! seconds, and runs every interval (plus a random splay) to correct drift.
//! When the stream breaks it reconnects with jittered exponential backoff,
//! failing over between servers; it delivers the report spool whenever a
//! server answers; SIGTERM stops it after the run in progress, if any.
//!
//! Idle, it holds little: a current-thread runtime, the connection, and the
//! role last loaded ([`Memo`]), kept so that a drift-correction run with
//! the same bundle and facts costs only the checks. Runs never overlap: the
//! loop awaits each one, and the run lock keeps out a `cairn-agent run`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_proto::bundle::short_digest;
use cairn_proto::client::Connection;
use cairn_proto::facts::Facts;
use cairn_proto::pb;
use cairn_proto::role::Role;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until};
use tonic::Streaming;

use crate::cache::{self, Fetched};
use crate::facts;
use crate::progress::Silent;
use crate::providers::Providers;
use crate::remote::{self, Node, Renewal};
use crate::run::{self, RunInput};
use crate::state::StateDir;

/// Runs the daemon until SIGTERM or SIGINT; returns once it stopped cleanly.
/// A drift-correction run comes every `node.interval` plus up to `splay`
/// more, at random, so that a fleet started at once does not run at once.
pub fn serve(node: Node, splay: Duration) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the daemon's runtime")?;
    runtime.block_on(
        Daemon {
            node,
            splay,
            conn: None,
            memo: Memo::default(),
        }
        .serve(),
    )
}

/// The role of the last run, validated for the facts of that run, and the
/// version it is.
#[derive(Default)]
struct Memo {
    loaded: Option<Loaded>,
}

struct Loaded {
    digest: String,
    channel: String,
    version: u64,
    facts: Facts,
    role: Arc<Role>,
}

struct Daemon {
    node: Node,
    splay: Duration,
    /// The server that last answered; dropped when a call on it finds it gone.
    conn: Option<Connection>,
    memo: Memo,
}

impl Daemon {
    async fn serve(mut self) -> Result<()> {
        let mut terminate = signal(SignalKind::terminate()).context("could not catch SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("could not catch SIGINT")?;
        println!(
            "cairn-agent: daemon started for node {} (servers: {}; a run every {}s, splay {}s)",
            self.node.identity.name,
            self.node.servers.join(", "),
            self.node.interval.as_secs(),
            self.splay.as_secs()
        );
        let mut watch: Option<Streaming<pb::ChannelMoved>> = None;
        let mut backoff = Backoff::default();
        let mut reconnect_at = Instant::now();
        // A first run at once: the node may have drifted while no daemon ran.
        let mut run_at = Instant::now();
        loop {
            tokio::select! {
                // Checked first: a stop wins over a run that is due.
                biased;
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = sleep_until(reconnect_at), if watch.is_none() => {
                    self.renew(&mut watch).await;
                    match self.watch().await {
                        Ok(stream) => {
                            watch = Some(stream);
                            backoff.reset();
                            self.deliver().await;
                        }
                        Err(e) => {
                            let wait = backoff.next_delay();
                            println!("cairn-agent: {e:#}; trying again in {:.1}s", wait.as_secs_f64());
                            reconnect_at = Instant::now() + wait;
                        }
                    }
                }
                event = next_event(&mut watch) => match event {
                    Ok(moved) => {
                        let known = self.memo.digest();
                        if known != Some(moved.digest.as_str()) {
                            println!(
                                "cairn-agent: role {} at channel {} moved to version {}",
                                moved.role, moved.channel, moved.version
                            );
                            self.renew(&mut watch).await;
                            self.run().await;
                            run_at = self.next_interval_run();
                        }
                    }
                    Err(why) => {
                        watch = None;
                        self.conn = None;
                        let wait = backoff.next_delay();
                        println!("cairn-agent: {why}; reconnecting in {:.1}s", wait.as_secs_f64());
                        reconnect_at = Instant::now() + wait;
                    }
                },
                _ = sleep_until(run_at) => {
                    self.renew(&mut watch).await;
                    self.run().await;
                    run_at = self.next_interval_run();
                }
            }
        }
        println!("cairn-agent: stopped");
        Ok(())
    }

    /// When the next drift-correction run is due: one interval and a random
    /// part of the splay from now.
    fn next_interval_run(&self) -> Instant {
        let splay = self.splay.as_millis() as u64;
        let jitter = Duration::from_millis(if splay == 0 {
            0
        } else {
            fastrand::u64(0..splay)
        });
        Instant::now() + self.node.interval + jitter
    }

    /// Opens the watch stream on the server that answered last, else on the
    /// first that answers.
    async fn watch(&mut self) -> Result<Streaming<pb::ChannelMoved>> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.node.connect().await?,
        };
        let request = pb::WatchRequest {
            assignment: Some(self.node.identity.assignment.clone().into()),
        };
        let stream = conn
            .nodes()
            .watch(request)
            .await
            .with_context(|| format!("could not watch the node's channel at {}", conn.url()))?
            .into_inner();
        println!("cairn-agent: watching for new versions at {}", conn.url());
        self.conn = Some(conn);
        Ok(stream)
    }

    /// Renews the node's certificate when due ([`Node::renew_if_due`]); once
    /// renewed, the connection and the watch stream opened with the old
    /// certificate are dropped, and the next ones present the new one (the
    /// loop reconnects when it finds no stream).
    async fn renew(&mut self, watch: &mut Option<Streaming<pb::ChannelMoved>>) {
        let Some(renewal) = self.node.renew_if_due().await else {
            return;
        };
        println!("cairn-agent: {renewal}");
        if matches!(renewal, Renewal::Renewed { .. }) {
            self.conn = None;
            *watch = None;
        }
    }

    /// One run; its failure is logged, and the daemon goes on.
    async fn run(&mut self) {
        if let Err(e) = self.try_run().await {
            println!("cairn-agent: the run failed: {e:#}");
        }
    }

    async fn try_run(&mut self) -> Result<()> {
        let state = StateDir::new(&self.node.state_dir);
        let facts = facts::gather()?;
        let known = self.memo.digest().unwrap_or_default();
        let answered = self
            .node
            .fetch_role(&state, self.conn.take(), known)
            .await?;
        let (bundle, answered) = match answered {
            Ok((conn, answer)) => {
                self.conn = Some(conn);
                let named = (answer.channel, answer.version, answer.digest);
                (answer.bundle, Some(named))
            }
            Err(none) => {
                println!("cairn-agent: {none}: converging to the cached role");
                (None, None)
            }
        };
        let want = answered.as_ref().map(|(_, _, digest)| digest.as_str());
        let role = self.memo.role(&state, bundle, want, &facts)?;
        let loaded = self.memo.loaded.as_mut().context("no role was loaded")?;
        if let Some((channel, version, _)) = answered.as_ref() {
            // The server's word on where this bundle now stands (a rollback
            // may name the same bundle under another version).
            loaded.channel.clone_from(channel);
            loaded.version = *version;
        }
        let (channel, version) = (loaded.channel.clone(), loaded.version);
        let options = run::Options {
            noop: false,
            state_dir: self.node.state_dir.clone(),
        };
        let run_facts = facts.clone();
        let mut report = tokio::task::spawn_blocking(move || {
            // The journal gets the summary, not a line per unchanged resource.
            run::run_role(
                &role,
                run_facts,
                Providers::default(),
                &options,
                &mut Silent,
            )
        })
        .await
        .context("the run panicked")??;
        let spooled = self.node.spool_report(
            &state,
            &mut report,
            &facts,
            (&channel, version),
            answered.is_none(),
        );
        print!("{}", report.human());
        spooled?;
        self.deliver().await;
        Ok(())
    }

    /// Delivers the spool to the server that answered last, if any.
    async fn deliver(&mut self) {
        let Some(conn) = &self.conn else { return };
        let state = StateDir::new(&self.node.state_dir);
        match remote::deliver(conn, &state, &self.node.identity.name).await {
            Ok(0) => {}
            Ok(n) => println!("cairn-agent: delivered {n} report(s) to {}", conn.url()),
            Err(e) => println!("cairn-agent: {e:#}; the reports stay spooled"),
        }
    }
}

impl Memo {
    /// The digest of the bundle in memory.
    fn digest(&self) -> Option<&str> {
        self.loaded.as_ref().map(|l| l.digest.as_str())
    }

    /// The validated role for `facts` and the bundle `want` (`None`: the one
    /// cached): the one in memory when that bundle and the facts are
    /// unchanged; else loaded from `bundle` when one just arrived, or from
    /// the cache on disk.
    fn role(
        &mut self,
        state: &StateDir,
        bundle: Option<Fetched>,
        want: Option<&str>,
        facts: &Facts,
    ) -> Result<Arc<Role>> {
        if bundle.is_none()
            && let Some(l) = &self.loaded
            && want.is_none_or(|w| w == l.digest)
            && l.facts == *facts
        {
            return Ok(Arc::clone(&l.role));
        }
        let fetched = match bundle {
            Some(b) => b,
            None => cache::load(state)?.context("no role is cached on this node yet")?,
        };
        if let Some(w) = want
            && w != fetched.digest
        {
            anyhow::bail!(
                "the cached role bundle is {}, not the {} the server named",
                short_digest(&fetched.digest),
                short_digest(w)
            );
        }
        let role = Arc::new(RunInput::new(fetched.bundle).load(facts)?);
        self.loaded = Some(Loaded {
            digest: fetched.digest,
            channel: fetched.channel,
            version: fetched.version,
            facts: facts.clone(),
            role: Arc::clone(&role),
        });
        Ok(role)
    }
}

/// The next event of the watch stream; never ready without a stream.
async fn next_event(
    watch: &mut Option<Streaming<pb::ChannelMoved>>,
) -> Result<pb::ChannelMoved, String> {
    let Some(stream) = watch else {
        return std::future::pending().await;
    };
    match stream.message().await {
        Ok(Some(moved)) => Ok(moved),
        Ok(None) => Err("the server ended the watch stream".into()),
        Err(status) => Err(format!(
            "the watch stream broke: {}",
            cairn_proto::terminal::escape(status.message())
        )),
    }
}

/// Delays between reconnection attempts: doubling from [`Backoff::FIRST`]
/// up to [`Backoff::MAX`], each drawn at random from its upper half, so that
/// a fleet cut off at once does not come back at once.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(60);

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = Self::FIRST
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::bundle::RoleBundle;

    use super::*;

    fn fetched(dir: &std::path::Path, content: &str, version: u64) -> Fetched {
        let mut bundle = RoleBundle::default();
        let toml = format!(
            "[role]\nname = \"t\"\n\n[[file]]\npath = \"{}/f\"\ntemplate = \"f.hbs\"\n",
            dir.display()
        );
        bundle
            .insert("role.toml".into(), toml.into_bytes())
            .unwrap();
        let template = format!("{content} {{{{facts.hostname}}}}");
        bundle
            .insert("templates/f.hbs".into(), template.into_bytes())
            .unwrap();
        Fetched {
            digest: bundle.digest(),
            bundle,
            role: "t".into(),
            channel: "stable".into(),
            version,
        }
    }

    /// The content the role's one file is rendered to.
    fn rendered(role: &Role) -> String {
        match &role.resources[0].spec {
            cairn_proto::role::Spec::File(f) => {
                String::from_utf8(f.content.clone().unwrap()).unwrap()
            }
            other => panic!("not a file: {other:?}"),
        }
    }

    #[test]
    fn the_role_is_loaded_again_only_when_its_bundle_or_the_facts_change() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let mut memo = Memo::default();
        let facts = Facts::placeholder();
        let v1 = fetched(dir.path(), "one", 1);
        cache::save(&state, &v1).unwrap();

        // Nothing in memory: from the cache.
        let first = memo.role(&state, None, None, &facts).unwrap();
        assert_eq!(memo.digest(), Some(v1.digest.as_str()));
        // Same bundle, same facts: the same role, not read again (the cache
        // could be gone).
        std::fs::remove_file(state.path().join(cache::CACHE_FILE)).unwrap();
        let again = memo.role(&state, None, Some(&v1.digest), &facts).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let again = memo.role(&state, None, None, &facts).unwrap();
        assert!(Arc::ptr_eq(&first, &again));

        // Other facts: loaded again, from the cache, rendered for them.
        cache::save(&state, &v1).unwrap();
        let mut moved = facts.clone();
        moved.hostname = "elsewhere".into();
        let other = memo.role(&state, None, Some(&v1.digest), &moved).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(rendered(&first), "one node");
        assert_eq!(rendered(&other), "one elsewhere");

        // A new bundle: loaded from it.
        let v2 = fetched(dir.path(), "two", 2);
        let digest = v2.digest.clone();
        let new = memo.role(&state, Some(v2), Some(&digest), &moved).unwrap();
        assert_eq!(rendered(&new), "two elsewhere");
        assert_eq!(memo.digest(), Some(digest.as_str()));

        // The server names a bundle that neither memory nor the cache holds.
        let mut memo = Memo::default();
        let err = memo
            .role(&state, None, Some("sha256:0000"), &facts)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not the sha256:0000 the server named"),
            "{err}"
        );
    }

    #[test]
    fn backoff_doubles_within_its_bounds_with_jitter_and_resets() {
        for _ in 0..200 {
            let mut b = Backoff::default();
            let mut ceiling = Backoff::FIRST;
            for _ in 0..40 {
                let d = b.next_delay();
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{d:?} outside {ceiling:?}"
                );
                ceiling = (ceiling * 2).min(Backoff::MAX);
            }
            b.reset();
            assert!(b.next_delay() <= Backoff::FIRST);
        }
        // Jittered: a fleet does not draw one delay.
        let delays: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| {
                let mut b = Backoff::default();
                b.next_delay();
                b.next_delay()
            })
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
