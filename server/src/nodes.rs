//! The node API (`Nodes`): what an enrolled node calls with its node
//! certificate. Each handler first identifies the node (refusals audited),
//! then checks the request is about the node itself: its own assignment, its
//! own reports.
//!
//! - `Fetch` is the hot path: one read of the channel's version, and the
//!   bundle only when the node does not hold it already.
//! - `Watch` streams come from [`ChannelMoves`]: one `tokio::sync::watch` per
//!   (role, channel) watched, which the Roles handlers feed after a promote or
//!   rollback committed. A stream holds only a receiver: no task, no buffer,
//!   no timer of its own; dead peers are dropped by HTTP/2 and TCP keepalive.
//!   A stream also holds a receiver of the revocations [`ChannelMoves`]
//!   broadcasts, and ends with `UNAUTHENTICATED` as soon as its node is
//!   revoked (see [`NodeWatch`]).
//! - Several servers on one database (PostgreSQL): each server's handlers
//!   tell its own [`ChannelMoves`] of what they did, and
//!   [`ChannelMoves::follow`] tells it of what the others did, from the
//!   store's change feed ([`Store::changes`]); after the feed was cut off it
//!   reads every watched channel again and checks every open stream's node.
//! - `Report` goes through [`Ingest`]: reports arriving together are stored in
//!   one transaction (one commit for many), each answered once it committed.
//! - `Renew` signs a new certificate for the node's request, as enrollment
//!   does, and records it as the node's one valid certificate in the same
//!   transaction as its audit entry, only if the certificate the call came
//!   with is still the current one.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_proto::pb;
use cairn_proto::report::RunReport;
use prost::Message;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, WatchStream};
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use crate::auth::{self, NodeCaller};
use crate::pki::{NodeRequest, Pki};
use crate::refusals::Refusal;
use crate::service::{Api, DEFAULT_CHANNEL, check_channel, cut, store_status};
use crate::store::{self, Actor, Change, Micros, NewReport, ReportMeta, RunStatus, Store};

/// Largest report message a node may send (the gRPC decoding limit of `Nodes`).
pub const MAX_REPORT_BYTES: usize = 4 << 20;
/// At most this many resources in one report.
pub const MAX_REPORT_RESOURCES: usize = 10_000;
/// At most this many property changes per resource.
pub const MAX_CHANGES_PER_RESOURCE: usize = 64;
/// At most this many bytes of facts JSON.
pub const MAX_FACTS_BYTES: usize = 64 << 10;
/// A run id: at most this many characters (a UUID has 36).
const MAX_RUN_ID_CHARS: usize = 64;
/// Names, digests and versions in a report: at most this many bytes.
const MAX_NAME_BYTES: usize = 256;
/// A resource id or a property name: at most this many bytes.
const MAX_ID_BYTES: usize = 4 << 10;
/// The run interval when the agent does not say (30 minutes), and the longest accepted (a week).
pub const DEFAULT_INTERVAL_SECS: u64 = 1800;
const MAX_INTERVAL_SECS: u64 = 7 * 86_400;
/// At most this many reports are stored in one transaction.
const MAX_INGEST_BATCH: usize = 256;
/// At most this many bytes of reports wait to be stored at once; more wait to be queued.
const MAX_INGEST_BYTES: usize = 64 << 20;

/// The gRPC path of `Nodes.Renew`, the one call a node's certificate from
/// before its latest renewal may make ([`auth::admit`]).
pub const RENEW_PATH: &str = "/cairn.v1.Nodes/Renew";

/// The Nodes service: the operator [`Api`] (store, metrics, refusals, channel
/// moves), the report queue, and the CA (which signs renewed certificates).
#[derive(Clone)]
pub struct NodeApi {
    api: Api,
    ingest: Ingest,
    pki: Arc<Pki>,
}

impl NodeApi {
    /// Starts the report writer; it stops once every clone of this is dropped.
    pub fn new(api: Api, pki: Arc<Pki>) -> Self {
        let ingest = Ingest::start(api.store.clone(), api.moves.clone());
        NodeApi { api, ingest, pki }
    }

    /// Identifies the calling node; a refusal is recorded.
    async fn caller<T>(&self, req: &Request<T>, action: &str) -> Result<NodeCaller, Status> {
        self.recorded(
            auth::node_caller(req, self.api.store.as_ref()).await,
            action,
        )
        .await
    }

    /// The caller identified, or its refusal recorded.
    async fn recorded(
        &self,
        known: Result<NodeCaller, Box<auth::Denied>>,
        action: &str,
    ) -> Result<NodeCaller, Status> {
        match known {
            Ok(node) => Ok(node),
            Err(denied) => Err(self.refuse(&denied.actor, action, "", denied.status).await),
        }
    }

    /// Records a refusal; returns its status.
    async fn refuse(&self, actor: &Actor, action: &str, target: &str, status: Status) -> Status {
        self.api
            .refusals
            .record(Refusal {
                actor,
                action,
                target,
                status: &status,
            })
            .await;
        status
    }

    /// Checks that `asked` is the caller's own assignment (a missing channel
    /// means the default one); a node asking for another is refused, audited.
    async fn own_assignment(
        &self,
        caller: &NodeCaller,
        asked: Option<pb::Assignment>,
        action: &str,
    ) -> Result<(String, String), Status> {
        let asked = asked.unwrap_or_default();
        let channel = if asked.channel.is_empty() {
            DEFAULT_CHANNEL
        } else {
            &asked.channel
        };
        let own = &caller.assignment;
        if asked.role == own.role && channel == own.channel {
            return Ok((own.role.clone(), own.channel.clone()));
        }
        // What was asked comes from the request: cut, as it goes into a header.
        let (role, channel) = (cut(&asked.role), cut(channel));
        let target = format!("{role}@{channel}");
        let status = Status::permission_denied(format!(
            "node {} is assigned role {} at channel {} and may not {action} role {role} at channel {channel}",
            caller.actor.name, own.role, own.channel
        ));
        Err(self.refuse(&caller.actor, action, &target, status).await)
    }
}

fn not_promoted(role: &str, channel: &str) -> Status {
    Status::failed_precondition(format!(
        "role {role} has no version promoted to channel {channel} yet\n  \
         help: an operator runs `cairn role promote {role} VERSION --channel {channel}`"
    ))
}

type ChannelMovedStream = Pin<Box<dyn Stream<Item = Result<pb::ChannelMoved, Status>> + Send>>;

#[tonic::async_trait]
impl pb::nodes_server::Nodes for NodeApi {
    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        self.api
            .observed("fetch", async {
                let caller = self.caller(&req, "fetch").await?;
                let pb::FetchRequest {
                    assignment,
                    known_digest,
                } = req.into_inner();
                let (role, channel) = self.own_assignment(&caller, assignment, "fetch").await?;
                let store = &self.api.store;
                let meta = store
                    .channel_version(&role, &channel)
                    .await
                    .map_err(store_status)?
                    .ok_or_else(|| not_promoted(&role, &channel))?;
                let bundle = if known_digest == meta.digest {
                    None
                } else {
                    let (_, bytes) = store
                        .get(&role, Some(meta.version))
                        .await
                        .map_err(store_status)?;
                    Some(pb::Bundle::decode(bytes.as_slice()).map_err(|e| {
                        error!(role, version = meta.version, error = %e, "stored bundle does not decode");
                        Status::data_loss(format!(
                            "version {} of role {role} is unreadable in storage",
                            meta.version
                        ))
                    })?)
                };
                Ok(pb::FetchResponse {
                    version: Some(crate::service::version_info(meta)),
                    channel,
                    bundle,
                })
            })
            .await
    }

    type WatchStream = ChannelMovedStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<ChannelMovedStream>, Status> {
        self.api
            .observed("watch", async {
                // Listening before the caller is checked: a revocation
                // committed after the check reaches this stream.
                let revocations = self.api.moves.revocations();
                let resyncs = self.api.moves.resyncs();
                let caller = self.caller(&req, "watch").await?;
                let asked = req.into_inner().assignment;
                let (role, channel) = self.own_assignment(&caller, asked, "watch").await?;
                let moves = self
                    .api
                    .moves
                    .subscribe(&role, &channel)
                    .await
                    .map_err(store_status)?;
                let open = OpenStream::new(&self.api.moves, &caller.actor.name);
                // A resync that began since the check may have missed this
                // stream, and with it a revocation told to nobody: check again.
                if self.api.moves.resyncs() != resyncs
                    && !self
                        .api
                        .store
                        .revoked_nodes(std::slice::from_ref(&caller.actor.name))
                        .await
                        .map_err(store_status)?
                        .is_empty()
                {
                    return Err(revoked_status(&caller.actor.name));
                }
                let stream = NodeWatch {
                    node: caller.actor.name,
                    moves: WatchStream::new(moves),
                    revocations: BroadcastStream::new(revocations),
                    ended: false,
                    _open: open,
                };
                Ok(Box::pin(stream) as ChannelMovedStream)
            })
            .await
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        self.api
            .observed("report", async {
                let caller = self.caller(&req, "report").await?;
                let size = req.get_ref().encoded_len();
                let pb::ReportRequest {
                    report,
                    facts_json,
                    interval_secs,
                } = req.into_inner();
                let report = report.unwrap_or_default();
                if report.node != caller.actor.name {
                    let other = cut(&report.node);
                    let status = Status::permission_denied(format!(
                        "node {} may not send a report of node {other}",
                        caller.actor.name
                    ));
                    return Err(self.refuse(&caller.actor, "report", &other, status).await);
                }
                let new = check_report(report, facts_json, interval_secs, store::now_micros())?;
                let created = self.ingest.store(new, size).await?;
                Ok(pb::ReportResponse { created })
            })
            .await
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        self.api
            .observed("renew", async {
                // A certificate from before the latest renewal may renew too.
                let known = auth::renewal_caller(&req, self.api.store.as_ref()).await;
                let caller = self.recorded(known, "renew").await?;
                let name = caller.name();
                // The message is bounded by the service's decoding limit, the
                // request in it by MAX_CSR_BYTES before it is parsed.
                let request = match NodeRequest::from_pem(&req.get_ref().csr_pem) {
                    Ok(request) => request,
                    Err(e) => {
                        let status = Status::invalid_argument(e);
                        return Err(self.refuse(&caller.actor, "renew", name, status).await);
                    }
                };
                // A node renews its own certificate only: the request names it.
                if request.common_name() != Some(name) {
                    let asked = cut(request.common_name().unwrap_or(""));
                    let status = Status::permission_denied(format!(
                        "node {name} may renew only its own certificate; the request names {asked:?}"
                    ));
                    return Err(self.refuse(&caller.actor, "renew", &asked, status).await);
                }
                let cert = self.pki.sign_node(request, name).map_err(|e| {
                    error!(
                        error = format!("{e:#}"),
                        node = name,
                        "could not sign a node certificate"
                    );
                    Status::internal("the server could not sign the certificate; see its log")
                })?;
                let valid_until = Micros::try_from(cert.not_after.unix_timestamp_nanos() / 1000)
                    .unwrap_or(Micros::MAX);
                let renewed = self
                    .api
                    .store
                    .renew_node(
                        name,
                        &caller.fingerprint,
                        &cert.fingerprint,
                        valid_until,
                        &caller.actor,
                    )
                    .await
                    .map_err(store_status)?;
                if let Err(standing) = renewed {
                    // Revoked or replaced since the call was let in.
                    let status = Status::unauthenticated(format!(
                        "credential revoked: {}",
                        auth::node_refusal(name, &standing)
                    ));
                    return Err(self.refuse(&caller.actor, "renew", name, status).await);
                }
                let until = cert.not_after.format(&Rfc3339).unwrap_or_default();
                info!(node = name, valid_until = until, peer = %caller.actor.peer, "node certificate renewed");
                Ok(pb::RenewResponse {
                    cert_pem: cert.cert_pem,
                })
            })
            .await
    }
}

/// One node's `Watch` stream: the channel's current position first (if
/// any), then each move; it ends with `UNAUTHENTICATED` once the node is
/// revoked, and when the server shuts down.
struct NodeWatch {
    node: String,
    moves: WatchStream<Position>,
    revocations: BroadcastStream<Arc<str>>,
    /// Set once the revocation was sent: nothing follows it.
    ended: bool,
    /// Counts the stream among its node's open ones while it lives.
    _open: OpenStream,
}

fn revoked_status(node: &str) -> Status {
    Status::unauthenticated(format!(
        "credential revoked: node {node} was revoked; enroll it again with a new join token"
    ))
}

impl Stream for NodeWatch {
    type Item = Result<pb::ChannelMoved, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        // Revocations first: a revoked node is told nothing more.
        while let Poll::Ready(Some(revoked)) = Pin::new(&mut this.revocations).poll_next(cx) {
            let status = match revoked {
                Ok(name) if *name == *this.node => revoked_status(&this.node),
                Ok(_) => continue,
                // Revocations were missed: whether this node's was among
                // them is unknown, so it reconnects and is checked again.
                Err(BroadcastStreamRecvError::Lagged(_)) => Status::unavailable(
                    "the server fell behind on revocations; reconnect to watch again",
                ),
            };
            this.ended = true;
            return Poll::Ready(Some(Err(status)));
        }
        loop {
            match Pin::new(&mut this.moves).poll_next(cx) {
                // Nothing promoted yet: wait for the first move.
                Poll::Ready(Some(None)) => continue,
                Poll::Ready(Some(Some(moved))) => return Poll::Ready(Some(Ok(moved))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Checks a report's bounds and turns it into what the store keeps.
pub fn check_report(
    wire: pb::RunReport,
    facts_json: String,
    interval_secs: u32,
    now: Micros,
) -> Result<NewReport, Status> {
    let invalid = |msg: String| Err(Status::invalid_argument(format!("invalid report: {msg}")));
    let run_id_ok = !wire.run_id.is_empty()
        && wire.run_id.chars().count() <= MAX_RUN_ID_CHARS
        && wire
            .run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !run_id_ok {
        return invalid(format!(
            "run id {:?} is not 1 to {MAX_RUN_ID_CHARS} letters, digits, '-', '_' or '.'",
            cut(&wire.run_id)
        ));
    }
    // A node runs the role its token assigned, whose name follows the rule.
    crate::service::check_assigned_role(&wire.role)
        .map_err(|s| Status::invalid_argument(format!("invalid report: {}", s.message())))?;
    for (field, value) in [
        ("role_digest", &wire.role_digest),
        ("agent_version", &wire.agent_version),
        ("started_at", &wire.started_at),
        ("finished_at", &wire.finished_at),
    ] {
        if value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
            return invalid(format!(
                "{field} is longer than {MAX_NAME_BYTES} bytes or holds a control character"
            ));
        }
    }
    if !wire.channel.is_empty() {
        check_channel(&wire.channel)
            .map_err(|s| Status::invalid_argument(format!("invalid report: {}", s.message())))?;
    }
    let finished_at = match OffsetDateTime::parse(&wire.finished_at, &Rfc3339) {
        Ok(t) => (t.unix_timestamp_nanos() / 1000) as Micros,
        Err(e) => return invalid(format!("finished_at is not an RFC 3339 time: {e}")),
    };
    if wire.resources.len() > MAX_REPORT_RESOURCES {
        return invalid(format!(
            "it lists {} resources; at most {MAX_REPORT_RESOURCES} are accepted",
            wire.resources.len()
        ));
    }
    for r in &wire.resources {
        if r.id.len() > MAX_ID_BYTES || r.changes.len() > MAX_CHANGES_PER_RESOURCE {
            return invalid(format!(
                "resource {:?} has an id longer than {MAX_ID_BYTES} bytes or more than \
                 {MAX_CHANGES_PER_RESOURCE} changes",
                cut(&r.id)
            ));
        }
        if r.changes.iter().any(|c| c.property.len() > MAX_ID_BYTES) {
            return invalid(format!(
                "resource {:?} names a property longer than {MAX_ID_BYTES} bytes",
                cut(&r.id)
            ));
        }
    }
    if facts_json.len() > MAX_FACTS_BYTES {
        return invalid(format!(
            "its facts are {} bytes of JSON; at most {MAX_FACTS_BYTES} are accepted",
            facts_json.len()
        ));
    }
    if !facts_json.is_empty()
        && let Err(e) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&facts_json)
    {
        return invalid(format!("its facts are not a JSON object: {e}"));
    }
    let interval_secs = match u64::from(interval_secs) {
        0 => DEFAULT_INTERVAL_SECS,
        n => n.min(MAX_INTERVAL_SECS),
    };
    // The summary is derived from the resources, so it cannot disagree with them.
    let checked = RunReport::try_from(wire).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let s = &checked.summary;
    let status = if s.failed > 0 {
        RunStatus::Failed
    } else if s.changed > 0 {
        RunStatus::Changed
    } else {
        RunStatus::Unchanged
    };
    let meta = ReportMeta {
        id: 0,
        node: checked.node.clone(),
        run_id: checked.run_id.clone(),
        role: checked.role.clone(),
        channel: checked.channel.clone(),
        role_version: checked.role_version,
        role_digest: checked.role_digest.clone(),
        status,
        noop: checked.noop,
        from_cache: checked.from_cache,
        resources: u64::from(s.total),
        changed: u64::from(s.changed),
        failed: u64::from(s.failed),
        finished_at,
        received_at: now,
    };
    Ok(NewReport {
        meta,
        interval_secs,
        facts_json,
        report: pb::RunReport::from(checked).encode_to_vec(),
    })
}

/// Reports waiting to be stored, and the one task that stores them: what
/// arrives while a transaction commits goes into the next one together.
#[derive(Clone)]
struct Ingest {
    queue: mpsc::Sender<Pending>,
    /// Bytes of reports queued or being stored: bounds the memory they hold.
    room: Arc<Semaphore>,
}

/// A report waiting in the queue, and who waits for it.
struct Pending {
    report: NewReport,
    waiting: Waiting,
}

struct Waiting {
    done: oneshot::Sender<Result<bool, Status>>,
    /// Its bytes' share of [`Ingest::room`], given back once it is answered.
    _room: OwnedSemaphorePermit,
}

impl Ingest {
    fn start(store: Arc<dyn Store>, moves: Arc<ChannelMoves>) -> Ingest {
        let (queue, mut rx) = mpsc::channel::<Pending>(MAX_INGEST_BATCH * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_INGEST_BATCH);
            while rx.recv_many(&mut batch, MAX_INGEST_BATCH).await > 0 {
                let (reports, waiting): (Vec<NewReport>, Vec<Waiting>) =
                    batch.drain(..).map(|p| (p.report, p.waiting)).unzip();
                let answers = match store.store_reports(&reports).await {
                    Ok(created) => {
                        moves.fleet_changed();
                        created.into_iter().map(Ok).collect()
                    }
                    Err(e) => vec![Err(store_status(e)); waiting.len()],
                };
                for (w, answer) in waiting.into_iter().zip(answers) {
                    let _ = w.done.send(answer);
                }
            }
        });
        Ingest {
            queue,
            room: Arc::new(Semaphore::new(MAX_INGEST_BYTES)),
        }
    }

    /// Stores `report` (`size` bytes on the wire); answers once it committed.
    async fn store(&self, report: NewReport, size: usize) -> Result<bool, Status> {
        let stopped = || Status::unavailable("the server is shutting down");
        let room = self
            .room
            .clone()
            .acquire_many_owned(size.clamp(1, MAX_INGEST_BYTES) as u32)
            .await
            .map_err(|_| stopped())?;
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                report,
                waiting: Waiting { done, _room: room },
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Where a watched channel points now; `None` before its first promote.
type Position = Option<pb::ChannelMoved>;

/// How many revocations an open `Watch` stream may fall behind before it is
/// ended (to be checked again on reconnecting).
const MAX_UNSEEN_REVOCATIONS: usize = 1024;

/// How many node names one resync asks the store about at once.
const RESYNC_NAMES_PER_READ: usize = 1000;
/// A resync that failed (the database answered an error) is tried again after this.
const RESYNC_RETRY: Duration = Duration::from_secs(5);

/// The in-process fan-out of channel moves to `Watch` streams: one
/// `tokio::sync::watch` per (role, channel) someone watches, created on demand;
/// and of node revocations, to every stream. Told by this server's handlers,
/// and by the store's change feed of what other servers did ([`Self::follow`]).
pub struct ChannelMoves {
    store: Arc<dyn Store>,
    senders: Mutex<HashMap<(String, String), watch::Sender<Position>>>,
    /// Held while a position is read from the store and published, so that the
    /// last one published is the newest (two moves' reads cannot cross).
    publishing: tokio::sync::Mutex<()>,
    /// The names of nodes revoked; each stream compares them with its own.
    /// Revocations are rare: waking every stream for one costs less than a
    /// sender per node would.
    revoked: broadcast::Sender<Arc<str>>,
    /// The nodes with open streams, and how many each: what a resync checks.
    /// An entry per node at most, removed with its last stream.
    open: Mutex<HashMap<String, usize>>,
    /// Resyncs begun: a stream opened across one checks its node itself.
    resyncs: AtomicU64,
    /// Counts what changed in the fleet as this server sees it (a channel
    /// moved, reports stored): what the dashboard's live pages follow.
    fleet: watch::Sender<u64>,
}

impl ChannelMoves {
    pub fn new(store: Arc<dyn Store>) -> Self {
        ChannelMoves {
            store,
            senders: Mutex::new(HashMap::new()),
            publishing: tokio::sync::Mutex::new(()),
            revoked: broadcast::channel(MAX_UNSEEN_REVOCATIONS).0,
            open: Mutex::new(HashMap::new()),
            resyncs: AtomicU64::new(0),
            fleet: watch::channel(0).0,
        }
    }

    /// A receiver told each time the fleet changed (see [`Self::fleet_changed`]).
    pub fn fleet_changes(&self) -> watch::Receiver<u64> {
        self.fleet.subscribe()
    }

    /// Tells the dashboard's live pages that the fleet changed.
    pub fn fleet_changed(&self) {
        self.fleet.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Tells the streams of the changes in `feed` (the store's change feed:
    /// what every server, this one too, committed) until it ends. A resync
    /// reads every watched channel again and ends the streams of nodes
    /// revoked meanwhile; one that fails is tried again.
    pub async fn follow(&self, mut feed: tokio::sync::mpsc::Receiver<Change>) {
        let mut resync_owed = false;
        loop {
            let change = if resync_owed {
                match tokio::time::timeout(RESYNC_RETRY, feed.recv()).await {
                    Ok(change) => change,
                    Err(_) => Some(Change::Resync),
                }
            } else {
                feed.recv().await
            };
            match change {
                None => return,
                Some(Change::ChannelMoved { role, channel }) => self.moved(&role, &channel).await,
                Some(Change::NodeRevoked { name }) => self.revoked(&name),
                Some(Change::ReportsStored) => self.fleet_changed(),
                Some(Change::Resync) => match self.resync().await {
                    Ok(()) => {
                        resync_owed = false;
                        // Reports stored meanwhile were not told either.
                        self.fleet_changed();
                    }
                    Err(e) => {
                        resync_owed = true;
                        warn!(
                            error = format!("{:#}", anyhow::Error::from(e)),
                            "could not read the watched channels and nodes again; trying again in {}s",
                            RESYNC_RETRY.as_secs()
                        );
                    }
                },
            }
        }
    }

    /// Ends the streams of every node revoked, and reads every watched
    /// channel again: what changes this server may not have been told of.
    async fn resync(&self) -> store::Result<()> {
        self.resyncs.fetch_add(1, Ordering::SeqCst);
        // Revocations first: a revoked node is told nothing more.
        let nodes: Vec<String> = {
            let open = self.open.lock().expect("open streams lock poisoned");
            open.keys().cloned().collect()
        };
        let mut revoked = 0;
        for names in nodes.chunks(RESYNC_NAMES_PER_READ) {
            for name in self.store.revoked_nodes(names).await? {
                self.revoked(&name);
                revoked += 1;
            }
        }
        let watched: Vec<(String, String)> = {
            let senders = self.senders.lock().expect("channel moves lock poisoned");
            senders
                .iter()
                .filter(|(_, tx)| tx.receiver_count() > 0)
                .map(|(key, _)| key.clone())
                .collect()
        };
        for (role, channel) in &watched {
            self.publish(role, channel).await?;
        }
        info!(
            channels = watched.len(),
            nodes = nodes.len(),
            revoked,
            "read the watched channels and nodes again"
        );
        Ok(())
    }

    /// Resyncs begun so far.
    fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::SeqCst)
    }

    /// A receiver of the names of nodes revoked from now on.
    pub fn revocations(&self) -> broadcast::Receiver<Arc<str>> {
        self.revoked.subscribe()
    }

    /// Ends the open `Watch` streams of node `name`; called after its
    /// revocation committed.
    pub fn revoked(&self, name: &str) {
        // An error only says that no stream is open.
        let _ = self.revoked.send(Arc::from(name));
    }

    fn sender(&self, role: &str, channel: &str) -> Option<watch::Sender<Position>> {
        let senders = self.senders.lock().expect("channel moves lock poisoned");
        senders
            .get(&(role.to_string(), channel.to_string()))
            .cloned()
    }

    /// A receiver of the channel's position, holding its current one.
    pub async fn subscribe(
        &self,
        role: &str,
        channel: &str,
    ) -> store::Result<watch::Receiver<Position>> {
        if let Some(tx) = self.sender(role, channel) {
            return Ok(tx.subscribe());
        }
        let _publishing = self.publishing.lock().await;
        if let Some(tx) = self.sender(role, channel) {
            return Ok(tx.subscribe());
        }
        let current = self.position(role, channel).await?;
        let (tx, rx) = watch::channel(current);
        let mut senders = self.senders.lock().expect("channel moves lock poisoned");
        senders.retain(|_, tx| tx.receiver_count() > 0);
        senders.insert((role.to_string(), channel.to_string()), tx);
        Ok(rx)
    }

    /// Tells the channel's watchers where it points now; called after a move
    /// committed. A failure to read it is logged: the move itself stands, and
    /// nodes still correct drift at their interval.
    pub async fn moved(&self, role: &str, channel: &str) {
        self.fleet_changed();
        if let Err(e) = self.publish(role, channel).await {
            error!(
                role,
                channel,
                error = format!("{:#}", anyhow::Error::from(e)),
                "could not read a channel after it moved; its watchers were not told"
            );
        }
    }

    /// Reads where the channel points and tells its watchers, if any, when
    /// that differs from what they were told (a move is told once, whether
    /// this server's handler or the change feed tells it first).
    async fn publish(&self, role: &str, channel: &str) -> store::Result<()> {
        let _publishing = self.publishing.lock().await;
        let Some(tx) = self.sender(role, channel) else {
            return Ok(());
        };
        let position = self.position(role, channel).await?;
        let told = tx.send_if_modified(|current| {
            let moved = *current != position;
            if moved {
                *current = position;
            }
            moved
        });
        if told {
            let watchers = tx.receiver_count();
            info!(
                role,
                channel, watchers, "channel move sent to watching nodes"
            );
        }
        Ok(())
    }

    /// Ends every watch stream (at shutdown): their senders are dropped.
    pub fn close(&self) {
        self.senders
            .lock()
            .expect("channel moves lock poisoned")
            .clear();
    }

    async fn position(&self, role: &str, channel: &str) -> store::Result<Position> {
        Ok(self
            .store
            .channel_version(role, channel)
            .await?
            .map(|v| pb::ChannelMoved {
                role: role.to_string(),
                channel: channel.to_string(),
                version: v.version,
                digest: v.digest,
            }))
    }
}

/// Counts a stream among its node's open ones (see [`ChannelMoves::resync`])
/// until dropped.
struct OpenStream {
    moves: Arc<ChannelMoves>,
    node: String,
}

impl OpenStream {
    fn new(moves: &Arc<ChannelMoves>, node: &str) -> OpenStream {
        let mut open = moves.open.lock().expect("open streams lock poisoned");
        *open.entry(node.to_string()).or_default() += 1;
        OpenStream {
            moves: moves.clone(),
            node: node.to_string(),
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut open = self.moves.open.lock().expect("open streams lock poisoned");
        if let Some(count) = open.get_mut(&self.node) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::report::{ResourceReport, ResourceStatus, RunSummary};

    fn wire(resources: Vec<ResourceReport>) -> pb::RunReport {
        RunReport {
            run_id: "0b0e2c4e-6c4c-4d7e-9a53-3b8f0e8f7d21".into(),
            node: "web-1".into(),
            role: "web".into(),
            role_digest: "sha256:00".into(),
            noop: false,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:02Z".into(),
            agent_version: "0.1.0".into(),
            channel: "production".into(),
            role_version: 3,
            from_cache: false,
            summary: RunSummary::of(&resources),
            resources,
        }
        .into()
    }

    fn resource(id: &str, status: ResourceStatus) -> ResourceReport {
        ResourceReport {
            id: id.into(),
            status,
            changes: vec![],
            diff: None,
            duration_us: 1,
            error: None,
        }
    }

    #[test]
    fn a_report_is_checked_and_summed_up_from_its_resources() {
        let mut report = wire(vec![
            resource("file:/a", ResourceStatus::Changed),
            resource("file:/b", ResourceStatus::Unchanged),
        ]);
        // A summary that disagrees with the resources is not believed.
        report.summary = Some(pb::RunSummary::default());
        let new = check_report(report, "{\"os\":{}}".into(), 0, 42).unwrap();
        let m = &new.meta;
        assert_eq!(
            (m.status, m.resources, m.changed, m.failed),
            (RunStatus::Changed, 2, 1, 0)
        );
        assert_eq!((m.role_version, m.received_at), (3, 42));
        assert_eq!(m.finished_at, 1_767_225_602_000_000);
        assert_eq!(new.interval_secs, DEFAULT_INTERVAL_SECS);
        let failed = wire(vec![
            resource("exec:x", ResourceStatus::Failed),
            resource("file:/a", ResourceStatus::Changed),
        ]);
        assert_eq!(
            check_report(failed, String::new(), 60, 0)
                .unwrap()
                .meta
                .status,
            RunStatus::Failed
        );
        let unchanged = check_report(wire(vec![]), String::new(), u32::MAX, 0).unwrap();
        assert_eq!(unchanged.meta.status, RunStatus::Unchanged);
        assert_eq!(unchanged.interval_secs, MAX_INTERVAL_SECS);
    }

    #[test]
    fn what_a_node_sends_is_bounded() {
        let refused = |report: pb::RunReport, facts: &str, expect: &str| {
            let status = check_report(report, facts.into(), 0, 0).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains(expect),
                "{expect}: {}",
                status.message()
            );
        };
        let with = |f: fn(&mut pb::RunReport)| {
            let mut r = wire(vec![resource("file:/a", ResourceStatus::Unchanged)]);
            f(&mut r);
            r
        };
        refused(with(|r| r.run_id = String::new()), "", "run id");
        refused(with(|r| r.run_id = "a/b".into()), "", "run id");
        refused(with(|r| r.run_id = "x".repeat(65)), "", "run id");
        refused(with(|r| r.role = String::new()), "", "no role name given");
        refused(
            with(|r| r.role = "w\u{1b}[2J".into()),
            "",
            "invalid role name",
        );
        refused(with(|r| r.role = "Web App".into()), "", "invalid role name");
        refused(
            with(|r| r.role_digest = "d\u{1b}[2J".into()),
            "",
            "control character",
        );
        refused(
            with(|r| r.agent_version = "v".repeat(300)),
            "",
            "agent_version",
        );
        refused(
            with(|r| r.channel = "Prod".into()),
            "",
            "invalid channel name",
        );
        refused(with(|r| r.finished_at = "yesterday".into()), "", "RFC 3339");
        refused(
            with(|r| r.resources[0].id = "i".repeat(5000)),
            "",
            "longer than",
        );
        refused(with(|r| r.resources[0].status = 0), "", "unspecified");
        refused(
            with(|r| r.resources = vec![pb::ResourceReport::default(); MAX_REPORT_RESOURCES + 1]),
            "",
            "10001 resources",
        );
        refused(with(|_| {}), "[1, 2]", "not a JSON object");
        let facts = format!("{{\"x\":\"{}\"}}", "f".repeat(MAX_FACTS_BYTES));
        refused(with(|_| {}), &facts, "bytes of JSON");
    }

    #[tokio::test]
    async fn watchers_get_the_position_then_each_move() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
        let store = crate::store::open(&url).await.unwrap();
        let moves = ChannelMoves::new(store.clone());
        let ann = Actor {
            name: "ann".into(),
            role: "publisher".into(),
            peer: "local".into(),
        };
        // Nothing promoted yet: no position, and the stream waits.
        let mut early = moves.subscribe("web", "production").await.unwrap();
        assert_eq!(*early.borrow_and_update(), None);
        for digest in ["d1", "d2"] {
            store
                .push(
                    store::NewVersion {
                        role: "web".into(),
                        digest: digest.into(),
                        message: String::new(),
                        bundle: vec![],
                    },
                    &ann,
                )
                .await
                .unwrap();
        }
        store.promote("web", "production", 1, &ann).await.unwrap();
        moves.moved("web", "production").await;
        early.changed().await.unwrap();
        let at = |rx: &mut watch::Receiver<Position>| {
            rx.borrow_and_update()
                .as_ref()
                .map(|m| (m.version, m.digest.clone()))
        };
        assert_eq!(at(&mut early), Some((1, "d1".into())));
        // A later watcher starts where the channel is.
        let mut late = moves.subscribe("web", "production").await.unwrap();
        assert_eq!(at(&mut late), Some((1, "d1".into())));
        store.promote("web", "production", 2, &ann).await.unwrap();
        moves.moved("web", "production").await;
        for rx in [&mut early, &mut late] {
            rx.changed().await.unwrap();
            assert_eq!(at(rx), Some((2, "d2".into())));
        }
        // A move of another channel wakes nobody here.
        store.promote("web", "staging", 2, &ann).await.unwrap();
        moves.moved("web", "staging").await;
        assert!(!early.has_changed().unwrap());
        // Closing (at shutdown) ends every stream.
        moves.close();
        assert!(early.changed().await.is_err());
    }

    #[tokio::test]
    async fn the_change_feed_tells_watchers_once_and_a_resync_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
        let store = crate::store::open(&url).await.unwrap();
        let moves = Arc::new(ChannelMoves::new(store.clone()));
        let (feed, changes) = mpsc::channel(8);
        let following = tokio::spawn({
            let moves = moves.clone();
            async move { moves.follow(changes).await }
        });
        let ann = Actor {
            name: "ann".into(),
            role: "admin".into(),
            peer: "local".into(),
        };
        for digest in ["d1", "d2", "d3"] {
            let new = store::NewVersion {
                role: "web".into(),
                digest: digest.into(),
                message: String::new(),
                bundle: vec![],
            };
            store.push(new, &ann).await.unwrap();
        }
        let mut rx = moves.subscribe("web", "production").await.unwrap();
        let version =
            |rx: &mut watch::Receiver<Position>| rx.borrow_and_update().as_ref().map(|m| m.version);
        assert_eq!(version(&mut rx), None);

        // Another server moved the channel: told by the feed.
        store.promote("web", "production", 1, &ann).await.unwrap();
        let moved = Change::ChannelMoved {
            role: "web".into(),
            channel: "production".into(),
        };
        feed.send(moved.clone()).await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(version(&mut rx), Some(1));
        // Told again (this server's handler and the feed both tell a move it
        // made): the watchers are not woken twice.
        let mut revocations = moves.revocations();
        feed.send(moved).await.unwrap();
        moves.moved("web", "production").await;
        // The feed is read in order: once this is told, the move was too.
        let done = Change::NodeRevoked {
            name: "sentinel".into(),
        };
        feed.send(done).await.unwrap();
        assert_eq!(&*revocations.recv().await.unwrap(), "sentinel");
        assert!(!rx.has_changed().unwrap());

        // Missed while the feed was cut off: a move and a revocation; the
        // resync reads both.
        let token = store::NewToken {
            id: "t1".into(),
            secret_sha256: "h".into(),
            assignment: store::Assignment {
                role: "web".into(),
                channel: "production".into(),
            },
            expires_at: store::now_micros() + 3_600_000_000,
            uses_allowed: 2,
        };
        store.create_token(token, &ann).await.unwrap();
        for name in ["web-1", "web-2"] {
            let enrollment = store::Enrollment {
                token_id: "t1".into(),
                secret_sha256: "h".into(),
                name: name.into(),
                fingerprint: format!("fp-{name}"),
                facts_json: None,
            };
            store.enroll(enrollment, &ann).await.unwrap().unwrap();
        }
        let _web_1 = OpenStream::new(&moves, "web-1");
        let _web_2 = OpenStream::new(&moves, "web-2");
        store.revoke_node("web-2", &ann).await.unwrap();
        store.promote("web", "production", 3, &ann).await.unwrap();
        let before = moves.resyncs();
        feed.send(Change::Resync).await.unwrap();
        assert_eq!(&*revocations.recv().await.unwrap(), "web-2");
        rx.changed().await.unwrap();
        assert_eq!(version(&mut rx), Some(3));
        assert_eq!(moves.resyncs(), before + 1);
        assert!(revocations.try_recv().is_err(), "web-1 stands");

        // Reports stored by any server: the dashboards' live pages are told.
        let mut fleet = moves.fleet_changes();
        fleet.mark_unchanged();
        feed.send(Change::ReportsStored).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), fleet.changed())
            .await
            .expect("told within 10 s")
            .unwrap();

        // A stream's node is counted while it is open.
        drop(_web_2);
        assert_eq!(
            moves.open.lock().unwrap().keys().collect::<Vec<_>>(),
            ["web-1"]
        );
        // The feed ends (the server stops): so does following it.
        drop(feed);
        following.await.unwrap();
    }
}
