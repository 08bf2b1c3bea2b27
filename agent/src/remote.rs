//! The agent against its servers: the first of the configured servers that
//! answers, in order; the node's role fetched from it and verified by digest
//! (or, when none answers, the last good bundle cached on disk); its reports
//! spooled and delivered; its certificate renewed before a run when due
//! ([`Node::renew_if_due`]). `cairn-agent run` is [`run`]; the daemon makes
//! its runs with the same steps ([`Node::renew_if_due`], [`Node::fetch_role`],
//! [`Node::spool_report`], [`deliver`]), keeping its connection and the role
//! in memory between them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_proto::bundle::short_digest;
use cairn_proto::client::{self, Connection, Refusal};
use cairn_proto::facts::Facts;
use cairn_proto::pb;
use cairn_proto::report::RunReport;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::Code;

use crate::cache::{self, Fetched};
use crate::identity::NodeIdentity;
use crate::progress::Observer;
use crate::run::{self, RunInput};
use crate::spool::{Bounds, Spool};
use crate::state::StateDir;

/// How long one server may take to accept a connection before the next is
/// tried: a server that is down must not hold the node for long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The facts sent with a report are at most this large (the server's bound);
/// larger ones are left out rather than making the report undeliverable.
const MAX_FACTS_JSON: usize = 64 << 10;

/// A node and the servers it may use, in order of preference.
pub struct Node {
    pub identity: NodeIdentity,
    pub servers: Vec<String>,
    pub state_dir: PathBuf,
    /// The daemon's run interval, told to the server with each report.
    pub interval: Duration,
}

/// No configured server answered: each one and why.
#[derive(Debug)]
pub struct NoServer {
    pub tried: Vec<(String, String)>,
}

impl fmt::Display for NoServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no server answered (tried ")?;
        for (i, (url, why)) in self.tried.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{url}: {why}")?;
        }
        write!(f, ")")
    }
}

impl std::error::Error for NoServer {}

/// Whether a failed call means the server did not answer (try another, or
/// the cache), rather than that it answered with a refusal.
pub fn unanswered(err: &client::Error) -> bool {
    match err {
        client::Error::Unreachable { .. } => true,
        client::Error::Refused(r) => matches!(
            r.status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
        _ => false,
    }
}

/// Where a run's role came from.
pub enum Source {
    /// A server answered, on this connection.
    Server(Connection),
    /// None answered: the cached bundle.
    Cache(NoServer),
}

/// What a server says the node's role is.
pub struct Answer {
    pub channel: String,
    pub version: u64,
    pub digest: String,
    /// The bundle, verified; `None` when the node said it holds that digest.
    pub bundle: Option<Fetched>,
}

impl Answer {
    /// The bundle sent, or `held` (the bundle the node said it holds) at the
    /// version and channel the server named.
    pub fn into_fetched(self, held: Option<&Fetched>) -> Result<Fetched> {
        match (self.bundle, held) {
            (Some(sent), _) => Ok(sent),
            (None, Some(held)) if held.digest == self.digest => Ok(Fetched {
                channel: self.channel,
                version: self.version,
                ..held.clone()
            }),
            (None, _) => bail!(
                "the server sent no bundle for version {} ({}), which this node does not hold",
                self.version,
                short_digest(&self.digest)
            ),
        }
    }
}

impl Node {
    /// Connects to `url`, waiting at most [`ATTEMPT_TIMEOUT`].
    async fn connect_to(&self, url: &str) -> Result<Connection, Attempt> {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.identity.connect(url)).await {
            Ok(result) => result.map_err(Attempt::from),
            Err(_) => Err(Attempt::Unanswered(format!(
                "no connection within {}s",
                ATTEMPT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Fetches the node's role from the first server that answers: `open`
    /// first when given (the daemon's connection), then the configured
    /// servers in order. `known` is the digest of the bundle the node holds;
    /// a new bundle the server sends is cached in `state` (a failure to cache
    /// it is logged: the run goes on with it, the connection kept).
    /// `Ok(Err(_))` when none answered; `Err(_)` when one refused, as every
    /// server would.
    pub async fn fetch_role(
        &self,
        state: &StateDir,
        open: Option<Connection>,
        known: &str,
    ) -> Result<Result<(Connection, Answer), NoServer>> {
        let answered = self.ask(open, known).await?;
        if let Ok((_, answer)) = &answered
            && let Some(new) = &answer.bundle
            && let Err(e) = cache::save(state, new)
        {
            // The bundle is in memory and verified: losing the cache costs
            // only the fallback when no server answers later.
            eprintln!("cairn-agent: warning: {e:#}; this run goes on with the fetched role");
        }
        Ok(answered)
    }

    /// [`Node::fetch_role`] without caching what arrives.
    async fn ask(
        &self,
        open: Option<Connection>,
        known: &str,
    ) -> Result<Result<(Connection, Answer), NoServer>> {
        let mut tried = Vec::new();
        if let Some(conn) = open {
            match fetch(&conn, self.identity.assignment.clone().into(), known).await {
                Ok(answer) => return Ok(Ok((conn, answer))),
                Err(e) => match Attempt::from(e) {
                    Attempt::Unanswered(why) => tried.push((conn.url().to_string(), why)),
                    Attempt::Failed(e) => return Err(e),
                },
            }
        }
        for url in &self.servers {
            let attempt = async {
                let conn = self.connect_to(url).await?;
                let answer = fetch(&conn, self.identity.assignment.clone().into(), known).await?;
                Ok::<_, Attempt>((conn, answer))
            };
            match attempt.await {
                Ok(answered) => return Ok(Ok(answered)),
                Err(Attempt::Unanswered(why)) => tried.push((url.clone(), why)),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Ok(Err(NoServer { tried }))
    }

    /// The role for one run: fetched from the first server that answers and
    /// cached, else the cached bundle. With neither, an error naming the
    /// servers tried. A cache that does not verify is an error when it is
    /// needed, and replaced when a server answers.
    pub async fn role(&self, state: &StateDir) -> Result<(Fetched, Source)> {
        let cached = cache::load(state);
        let held = cached.as_ref().ok().and_then(Option::as_ref);
        let known = held.map_or("", |h| h.digest.as_str());
        match self.fetch_role(state, None, known).await? {
            Ok((conn, answer)) => {
                if let Err(e) = &cached {
                    eprintln!("cairn-agent: warning: {e:#}; the fetched role replaces it");
                }
                Ok((answer.into_fetched(held)?, Source::Server(conn)))
            }
            Err(none) => match cached {
                Ok(Some(fetched)) => Ok((fetched, Source::Cache(none))),
                Ok(None) => bail!("{none}, and no role is cached on this node yet"),
                Err(e) => Err(e.context(none.to_string())),
            },
        }
    }

    /// Spools the report of a run of version `version` of the role at
    /// `channel` (`from_cache`: the cached role, no server answered), once
    /// [`place`] filled in what the engine leaves empty, with the node's
    /// `facts` at the run and its interval. [`deliver`] sends it.
    pub fn spool_report(
        &self,
        state: &StateDir,
        report: &mut RunReport,
        facts: &Facts,
        (channel, version): (&str, u64),
        from_cache: bool,
    ) -> Result<()> {
        place(report, &self.identity.name, channel, version, from_cache);
        let request = report_request(report.clone(), facts, self.interval);
        Spool::new(state, Bounds::default()).push(&request)
    }

    /// Connects to the first server that answers, in order.
    pub async fn connect(&self) -> Result<Connection, NoServer> {
        let mut tried = Vec::new();
        for url in &self.servers {
            match self.connect_to(url).await {
                Ok(conn) => return Ok(conn),
                Err(Attempt::Unanswered(why)) => tried.push((url.clone(), why)),
                Err(Attempt::Failed(e)) => tried.push((url.clone(), format!("{e:#}"))),
            }
        }
        Err(NoServer { tried })
    }
}

/// What a renewal of the node's certificate before a run did.
pub enum Renewal {
    /// The server at `url` issued a new certificate, valid until `until`,
    /// for a new key; both are stored.
    Renewed { url: String, until: OffsetDateTime },
    /// It was due and failed: the certificate held stays in use while it is
    /// valid, and renewal is tried again at the next run.
    Failed(anyhow::Error),
}

impl fmt::Display for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Renewal::Renewed { url, until } => write!(
                f,
                "renewed the node's certificate at {url}: a new key, and a certificate valid until {}",
                until.format(&Rfc3339).unwrap_or_default()
            ),
            Renewal::Failed(e) => write!(
                f,
                "{e:#}; the node keeps using its certificate and tries again at the next run"
            ),
        }
    }
}

impl Node {
    /// Renews the node's certificate when two thirds of its validity have
    /// passed ([`NodeIdentity::renewal_due`]): with a new key made here, from
    /// the first server that answers; the new key and certificate are stored
    /// together, atomically, and used from then on. `None` when not due.
    pub async fn renew_if_due(&mut self) -> Option<Renewal> {
        match self.identity.renewal_due(OffsetDateTime::now_utc()) {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => return Some(Renewal::Failed(e)),
        }
        let until = match self.identity.valid_until() {
            Ok(t) => t.format(&Rfc3339).unwrap_or_default(),
            Err(e) => return Some(Renewal::Failed(e)),
        };
        let failed = |e: anyhow::Error| {
            Some(Renewal::Failed(e.context(format!(
                "could not renew the node's certificate (valid until {until})"
            ))))
        };
        let conn = match self.connect().await {
            Ok(conn) => conn,
            Err(none) => return failed(none.into()),
        };
        let renewed = match self.identity.renewed(&conn).await {
            Ok(renewed) => renewed,
            Err(e) => return failed(e),
        };
        // From here on the server counts only the new certificate: it is
        // used even if it cannot be stored.
        let stored = renewed.save(&self.state_dir);
        let until = renewed.valid_until();
        self.identity = renewed;
        match (stored, until) {
            (Ok(()), Ok(until)) => Some(Renewal::Renewed {
                url: conn.url().to_string(),
                until,
            }),
            (Err(e), _) | (_, Err(e)) => Some(Renewal::Failed(e.context(
                "the server renewed the node's certificate, but it could not be stored; \
                 if the node is refused after this process ends, enroll it again",
            ))),
        }
    }
}

/// One server's attempt: it did not answer (try the next), or it answered
/// with an error that another server would answer alike.
enum Attempt {
    Unanswered(String),
    Failed(anyhow::Error),
}

impl From<client::Error> for Attempt {
    fn from(e: client::Error) -> Self {
        anyhow::Error::new(e).into()
    }
}

impl From<anyhow::Error> for Attempt {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast_ref::<client::Error>() {
            // The error and its causes on one line, for the list of servers tried.
            Some(c) if unanswered(c) => Attempt::Unanswered(format!("{e:#}").replace('\n', " ")),
            _ => Attempt::Failed(e),
        }
    }
}

/// `Nodes.Fetch` of the node's assignment, sending `known`, the digest of the
/// bundle the node holds, so that an unchanged role does not travel again. A
/// bundle received is verified against its digest.
pub async fn fetch(conn: &Connection, assignment: pb::Assignment, known: &str) -> Result<Answer> {
    let request = pb::FetchRequest {
        assignment: Some(assignment.clone()),
        known_digest: known.to_string(),
    };
    let response = conn
        .nodes()
        .fetch(request)
        .await
        .refused_by(conn)
        .with_context(|| {
            format!(
                "could not fetch role {} at channel {} from {}",
                assignment.role,
                assignment.channel,
                conn.url()
            )
        })?;
    let version = response.version.clone().with_context(|| {
        format!(
            "{} named no version of role {}",
            conn.url(),
            assignment.role
        )
    })?;
    let channel = response.channel.clone();
    let bundle = match response.bundle {
        None => None,
        Some(_) => Some(Fetched::verify(response).with_context(|| {
            format!(
                "refused role {} at channel {} from {}",
                assignment.role,
                assignment.channel,
                conn.url()
            )
        })?),
    };
    Ok(Answer {
        channel,
        version: version.version,
        digest: version.digest,
        bundle,
    })
}

/// Fills in what the engine leaves empty: the node's name as the server
/// knows it, the channel and version of its role, and whether that came from
/// the cache.
fn place(report: &mut RunReport, node: &str, channel: &str, version: u64, from_cache: bool) {
    report.node = node.to_string();
    report.channel = channel.to_string();
    report.role_version = version;
    report.from_cache = from_cache;
}

/// A report to spool, with the node's facts at the run and its run
/// interval (the server shows a node stale after two).
fn report_request(report: RunReport, facts: &Facts, interval: Duration) -> pb::ReportRequest {
    let mut facts_json = serde_json::to_string(facts).unwrap_or_default();
    if facts_json.len() > MAX_FACTS_JSON {
        eprintln!(
            "cairn-agent: the node's facts ({} bytes) are larger than a report may carry \
             ({MAX_FACTS_JSON}): sent without them",
            facts_json.len()
        );
        facts_json.clear();
    }
    pb::ReportRequest {
        report: Some(report.into()),
        facts_json,
        interval_secs: u32::try_from(interval.as_secs()).unwrap_or(u32::MAX),
    }
}

/// Delivers every spooled report of node `node` to `conn`, oldest first,
/// removing each only once the server acknowledged it. Stops at the first
/// that the server did not take; returns how many were delivered. Reports
/// that would be refused forever are dropped, each with a log line: one the
/// server refuses as invalid, one that does not decode, and one made under
/// another node name (before the machine enrolled again).
pub async fn deliver(conn: &Connection, state: &StateDir, node: &str) -> Result<usize> {
    let spool = Spool::new(state, Bounds::default());
    let mut delivered = 0;
    for entry in spool.pending()? {
        let request = match spool.read(&entry) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cairn-agent: dropped an unreadable spooled report: {e:#}");
                spool.remove(&entry)?;
                continue;
            }
        };
        let of = request.report.as_ref().map_or("", |r| r.node.as_str());
        if of != node {
            eprintln!(
                "cairn-agent: dropped the spooled report of run {}: it was made by node {}, \
                 and this node is now {node}",
                entry.run_id,
                cairn_proto::terminal::escape(of)
            );
            spool.remove(&entry)?;
            continue;
        }
        match conn.nodes().report(request).await {
            Ok(_) => {
                spool.remove(&entry)?;
                delivered += 1;
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                eprintln!(
                    "cairn-agent: {} refused the report of run {} as invalid; dropped it: {}",
                    conn.url(),
                    entry.run_id,
                    cairn_proto::terminal::escape(status.message())
                );
                spool.remove(&entry)?;
            }
            Err(status) => {
                return Err(client::Error::Refused(client::Refused {
                    status,
                    url: conn.url().to_string(),
                }))
                .with_context(|| format!("could not deliver the report of run {}", entry.run_id));
            }
        }
    }
    Ok(delivered)
}

/// What one `cairn-agent run` did.
pub struct Ran {
    /// The renewal of the node's certificate before the run, when it was due.
    pub renewal: Option<Renewal>,
    /// The report as sent: node, channel, version and `from_cache` filled.
    pub report: RunReport,
    /// Why the cached role was used: no server answered.
    pub from_cache: Option<NoServer>,
    /// Reports delivered after the run (this one included), or why not.
    pub delivered: Result<usize>,
    /// Reports still spooled, waiting for a server.
    pub waiting: usize,
}

/// `cairn-agent run`: the node's certificate renewed when due, the role from
/// the first server that answers (else the cache), converged with
/// [`run::run_once_observed`] as `apply` does, its report spooled, then the
/// spool delivered to that server.
pub fn run(node: &mut Node, noop: bool, observer: &mut dyn Observer) -> Result<Ran> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the agent's runtime")?;
    let renewal = runtime.block_on(node.renew_if_due());
    let state = StateDir::new(&node.state_dir);
    let (fetched, source) = runtime.block_on(node.role(&state))?;
    let facts = crate::facts::gather()?;
    let (channel, version) = (fetched.channel, fetched.version);
    let input = RunInput {
        facts: Some(facts.clone()),
        ..RunInput::new(fetched.bundle)
    };
    let options = run::Options {
        noop,
        state_dir: node.state_dir.clone(),
    };
    let mut report = run::run_once_observed(input, &options, observer)?;
    let (conn, from_cache) = match source {
        Source::Server(conn) => (Some(conn), None),
        Source::Cache(none) => (None, Some(none)),
    };
    let cached = from_cache.is_some();
    node.spool_report(&state, &mut report, &facts, (&channel, version), cached)?;
    let delivered = match &conn {
        Some(conn) => runtime.block_on(deliver(conn, &state, &node.identity.name)),
        None => Ok(0),
    };
    let waiting = Spool::new(&state, Bounds::default()).pending()?.len();
    Ok(Ran {
        renewal,
        report,
        from_cache,
        delivered,
        waiting,
    })
}
