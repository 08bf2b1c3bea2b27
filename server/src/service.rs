//! The gRPC services. Each handler first authorizes the caller (so a caller
//! who may not call learns nothing about its input), then checks its input,
//! calls the store, and converts the result; [`store_status`] is the one place
//! storage errors become statuses.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use cairn_proto::bundle::RoleBundle;
use cairn_proto::facts::Facts;
use cairn_proto::pb;
use cairn_proto::role::{self, ROLE_NAME_RULE, is_role_name};
use prost::Message;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::{Code, Request, Response, Status};
use tracing::{error, info};

use crate::auth::{self, OperatorRole, Permission};
use crate::metrics::Metrics;
use crate::nodes::ChannelMoves;
use crate::paging;
use crate::redact;
use crate::refusals::{Refusal, Refusals};
use crate::store::{self, Actor, Micros, Store, StoreError};
use crate::validation::Validator;

/// At most this many files in one role.
pub const MAX_BUNDLE_FILES: usize = 1_000;
/// At most this many bytes of file content in one role.
pub const MAX_BUNDLE_BYTES: usize = 16 << 20;
/// Larger gRPC messages are refused before they are decoded.
pub const MAX_MESSAGE_BYTES: usize = MAX_BUNDLE_BYTES + (4 << 20);
/// At most this many bytes in a push's message.
pub const MAX_MESSAGE_TEXT_BYTES: usize = 4 << 10;
/// Channel used when a request names none.
pub const DEFAULT_CHANNEL: &str = "production";
/// A "not found" answer names the object in at most this many characters.
const MAX_NOT_FOUND_CHARS: usize = 256;

/// The handlers; they see storage only as `dyn Store`.
#[derive(Clone)]
pub struct Api {
    pub(crate) store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    pub(crate) refusals: Arc<Refusals>,
    /// Validates pushed roles (and redacts fetched ones) off the async workers.
    validator: Arc<Validator>,
    /// Tells nodes watching a channel that it moved (see [`crate::nodes`]).
    pub(crate) moves: Arc<ChannelMoves>,
}

pub fn store_status(e: StoreError) -> Status {
    match e {
        // What was not found comes from the request: cut, as it goes into a header.
        StoreError::NotFound(what) => Status::not_found(format!(
            "{} not found",
            what.chars().take(MAX_NOT_FOUND_CHARS).collect::<String>()
        )),
        StoreError::Conflict(msg) => Status::failed_precondition(msg),
        // The database failed or is unreachable: nothing was done, and
        // another server (or the agent's cache) may serve the caller.
        e @ StoreError::Backend { .. } => {
            error!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "storage failure"
            );
            Status::unavailable("the server could not reach its database; see its log")
        }
        e => {
            error!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "storage failure"
            );
            Status::internal("the server's database is not fit to serve; see its log")
        }
    }
}

pub fn rfc3339(micros: Micros) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub(crate) fn version_info(v: store::VersionMeta) -> pb::VersionInfo {
    pb::VersionInfo {
        role: v.role,
        version: v.version,
        digest: v.digest,
        author: v.author,
        message: v.message,
        created_at: rfc3339(v.created_at),
    }
}

fn channel_info(c: store::Channel) -> pb::ChannelInfo {
    pb::ChannelInfo {
        role: c.role,
        channel: c.channel,
        version: c.version,
        updated_at: rfc3339(c.updated_at),
        updated_by: c.updated_by,
    }
}

pub(crate) fn check_channel(channel: &str) -> Result<String, Status> {
    let channel = if channel.is_empty() {
        DEFAULT_CHANNEL
    } else {
        channel
    };
    if !is_role_name(channel) {
        return Err(Status::invalid_argument(format!(
            "invalid channel name {:?}: {ROLE_NAME_RULE}",
            cut(channel)
        )));
    }
    Ok(channel.to_string())
}

pub(crate) fn check_role_name(role: &str) -> Result<(), Status> {
    if role.is_empty() {
        return Err(Status::invalid_argument("no role name given"));
    }
    Ok(())
}

/// A role name a request assigns (a join token's): it must follow the rule
/// of role.toml's `name`. Roles stored before that rule are still read by
/// their names as stored ([`check_role_name`]).
pub(crate) fn check_assigned_role(role: &str) -> Result<(), Status> {
    check_role_name(role)?;
    if !is_role_name(role) {
        return Err(Status::invalid_argument(format!(
            "invalid role name {:?}: {ROLE_NAME_RULE}",
            cut(role)
        )));
    }
    Ok(())
}

/// The first characters of a refused value, for a message (which travels in
/// a header).
pub(crate) fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A push's message: shown in tables and stored for good, so bounded and
/// without control characters (a newline or tab is fine).
fn check_message(message: &str) -> Result<(), Status> {
    if message.len() > MAX_MESSAGE_TEXT_BYTES {
        return Err(Status::invalid_argument(format!(
            "the message is {} bytes long; at most {MAX_MESSAGE_TEXT_BYTES} are accepted",
            message.len()
        )));
    }
    if message.contains(|c: char| c.is_control() && c != '\n' && c != '\t') {
        return Err(Status::invalid_argument(
            "the message contains a control character; only newlines and tabs are accepted",
        ));
    }
    Ok(())
}

/// Turns a received bundle into a [`RoleBundle`], refusing anything that is
/// not a plain set of files inside the role, or that is too large.
pub fn bundle_from_wire(b: pb::Bundle) -> Result<RoleBundle, Status> {
    if b.files.len() > MAX_BUNDLE_FILES {
        return Err(Status::invalid_argument(format!(
            "the role has {} files; at most {MAX_BUNDLE_FILES} are accepted",
            b.files.len()
        )));
    }
    let total: usize = b.files.iter().map(|f| f.content.len()).sum();
    if total > MAX_BUNDLE_BYTES {
        return Err(Status::invalid_argument(format!(
            "the role's files hold {total} bytes; at most {MAX_BUNDLE_BYTES} are accepted"
        )));
    }
    RoleBundle::from_wire(b).map_err(|e| {
        Status::invalid_argument(format!("{e}; a role holds only files inside its directory"))
    })
}

impl Api {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, refusals: Arc<Refusals>) -> Self {
        let validator = Arc::new(Validator::new(metrics.clone()));
        let moves = Arc::new(ChannelMoves::new(store.clone()));
        Api {
            store,
            metrics,
            refusals,
            validator,
            moves,
        }
    }

    /// Runs a handler's body, counting the call and its latency by method and status.
    pub(crate) async fn observed<T>(
        &self,
        method: &'static str,
        f: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = f.await;
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics
            .observe(method, code, started.elapsed().as_secs_f64());
        result.map(Response::new)
    }

    /// Authorizes the caller; a refusal is logged and audited through
    /// [`Refusals`] (coalesced per peer, every field truncated: `target` comes
    /// from the unchecked request).
    pub(crate) async fn authorize<T>(
        &self,
        req: &Request<T>,
        need: Permission,
        action: &str,
        target: &str,
        what: &str,
    ) -> Result<Actor, Status> {
        match auth::authorize(req, need, what, self.store.as_ref()).await {
            Ok(actor) => Ok(actor),
            Err(denied) => {
                self.refusals
                    .record(Refusal {
                        actor: &denied.actor,
                        action,
                        target,
                        status: &denied.status,
                    })
                    .await;
                Err(denied.status)
            }
        }
    }
}

#[tonic::async_trait]
impl pb::roles_server::Roles for Api {
    async fn push(
        &self,
        req: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        self.observed("push", async {
            let actor = self.authorize(&req, Permission::Publish, "push", "", "push roles").await?;
            let pb::PushRequest { bundle, message, promote_to } = req.into_inner();
            // Every refusal of what was sent is audited. The role's name is
            // not known until it is read: these entries have no target.
            let checked = check_message(&message)
                .and_then(|()| match promote_to.as_str() {
                    "" => Ok(None),
                    ch => check_channel(ch).map(Some),
                })
                .and_then(|ch| Ok((bundle_from_wire(bundle.unwrap_or_default())?, ch)));
            let (bundle, promote_to) = match checked {
                Ok(checked) => checked,
                Err(status) => {
                    let outcome = format!("rejected: {}", status.message());
                    self.store.audit(&actor, "push", "", "", &outcome).await.map_err(store_status)?;
                    return Err(status);
                }
            };
            let (bundle, loaded) = self
                .validator
                .run("validating a pushed role", move || {
                    let loaded = role::load(&bundle, &Facts::placeholder())
                        .map_err(|diags| (diags_role_name(&bundle), diags));
                    (bundle, loaded)
                })
                .await?;
            let role = match loaded {
                Ok(r) => r,
                Err((target, diags)) => {
                    let outcome = format!("rejected: {} in the role", diags.summary());
                    self.store
                        .audit(&actor, "push", &target, "", &outcome)
                        .await
                        .map_err(store_status)?;
                    // In the body: a header carrying hundreds of diagnostics
                    // would break the HTTP/2 stream instead.
                    return Ok(pb::PushResponse {
                        rejected: true,
                        diagnostics: diags.0.into_iter().map(pb::Diagnostic::from).collect(),
                        ..Default::default()
                    });
                }
            };
            let outcome = self
                .store
                .push(
                    store::NewVersion {
                        role: role.name.clone(),
                        digest: role.digest.clone(),
                        message,
                        bundle: bundle.to_wire().encode_to_vec(),
                    },
                    &actor,
                )
                .await
                .map_err(store_status)?;
            if outcome.created {
                self.metrics.versions_created.inc();
                info!(role = %role.name, version = outcome.version.version, digest = %role.digest, actor = %actor.name, "version stored");
            }
            let channel = match promote_to {
                Some(ch) => Some(
                    self.store
                        .promote(&role.name, &ch, outcome.version.version, &actor)
                        .await
                        .map_err(store_status)?,
                ),
                None => None,
            };
            if let Some(moved) = &channel {
                self.moves.moved(&moved.channel.role, &moved.channel.channel).await;
            }
            Ok(pb::PushResponse {
                version: Some(version_info(outcome.version)),
                created: outcome.created,
                channel: channel.map(|m| channel_info(m.channel)),
                ..Default::default()
            })
        })
        .await
    }

    async fn list(
        &self,
        req: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        self.observed("list", async {
            self.authorize(&req, Permission::Read, "list", "", "list roles")
                .await?;
            let roles = self.store.roles().await.map_err(store_status)?;
            Ok(pb::ListRolesResponse {
                roles: roles
                    .into_iter()
                    .map(|r| pb::RoleSummary {
                        name: r.latest.role.clone(),
                        latest: Some(version_info(r.latest)),
                        channels: r.channels.into_iter().map(channel_info).collect(),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn versions(
        &self,
        req: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::VersionsResponse>, Status> {
        self.observed("versions", async {
            let role = req.get_ref().role.clone();
            self.authorize(&req, Permission::Read, "versions", &role, "read roles")
                .await?;
            check_role_name(&role)?;
            let versions = self.store.versions(&role).await.map_err(store_status)?;
            Ok(pb::VersionsResponse {
                versions: versions.into_iter().map(version_info).collect(),
            })
        })
        .await
    }

    async fn get(
        &self,
        req: Request<pb::GetRoleRequest>,
    ) -> Result<Response<pb::GetRoleResponse>, Status> {
        self.observed("get", async {
            let pb::GetRoleRequest { role, version } = req.get_ref().clone();
            let actor = self
                .authorize(&req, Permission::Read, "get", &role, "read roles")
                .await?;
            check_role_name(&role)?;
            let (meta, bytes) = self
                .store
                .get(&role, (version > 0).then_some(version))
                .await
                .map_err(store_status)?;
            let bundle = pb::Bundle::decode(bytes.as_slice()).map_err(|e| {
                error!(role, version = meta.version, error = %e, "stored bundle does not decode");
                Status::data_loss(format!(
                    "version {} of role {role} is unreadable in storage",
                    meta.version
                ))
            })?;
            let may_read_secrets = actor
                .role
                .parse::<OperatorRole>()
                .is_ok_and(|r| r >= OperatorRole::Publisher);
            let (bundle, redacted) = if may_read_secrets {
                (bundle, vec![])
            } else {
                self.validator
                    .run("redacting a role", move || redact::sensitive(bundle))
                    .await?
            };
            Ok(pb::GetRoleResponse {
                version: Some(version_info(meta)),
                bundle: Some(bundle),
                redacted,
            })
        })
        .await
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::ChannelResponse>, Status> {
        self.observed("promote", async {
            let pb::PromoteRequest {
                role,
                version,
                channel,
            } = req.get_ref().clone();
            let actor = self
                .authorize(&req, Permission::Publish, "promote", &role, "promote roles")
                .await?;
            check_role_name(&role)?;
            let channel = check_channel(&channel)?;
            if version == 0 {
                return Err(Status::invalid_argument(
                    "no version given (versions start at 1)",
                ));
            }
            let moved = self
                .store
                .promote(&role, &channel, version, &actor)
                .await
                .map_err(store_status)?;
            info!(role, channel, version, actor = %actor.name, "promoted");
            self.moves.moved(&role, &channel).await;
            Ok(pb::ChannelResponse {
                previous_version: moved.previous.unwrap_or(0),
                channel: Some(channel_info(moved.channel)),
            })
        })
        .await
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ChannelResponse>, Status> {
        self.observed("rollback", async {
            let pb::RollbackRequest { role, channel } = req.get_ref().clone();
            let actor = self
                .authorize(&req, Permission::Publish, "rollback", &role, "roll back roles")
                .await?;
            check_role_name(&role)?;
            let channel = check_channel(&channel)?;
            let moved = self.store.rollback(&role, &channel, &actor).await.map_err(store_status)?;
            info!(role, channel, version = moved.channel.version, actor = %actor.name, "rolled back");
            self.moves.moved(&role, &channel).await;
            Ok(pb::ChannelResponse {
                previous_version: moved.previous.unwrap_or(0),
                channel: Some(channel_info(moved.channel)),
            })
        })
        .await
    }

    async fn channels(
        &self,
        req: Request<pb::ChannelsRequest>,
    ) -> Result<Response<pb::ChannelsResponse>, Status> {
        self.observed("channels", async {
            let role = req.get_ref().role.clone();
            self.authorize(&req, Permission::Read, "channels", &role, "read channels")
                .await?;
            check_role_name(&role)?;
            let (channels, history) = self.store.channels(&role).await.map_err(store_status)?;
            Ok(pb::ChannelsResponse {
                channels: channels.into_iter().map(channel_info).collect(),
                history: history
                    .into_iter()
                    .map(|e| pb::ChannelEvent {
                        channel: e.channel,
                        action: e.action,
                        from_version: e.from_version.unwrap_or(0),
                        to_version: e.to_version,
                        actor: e.actor,
                        at: rfc3339(e.at),
                    })
                    .collect(),
            })
        })
        .await
    }
}

/// The role name a rejected push claimed, for the audit entry; may be empty.
fn diags_role_name(bundle: &RoleBundle) -> String {
    let text = bundle
        .get(cairn_proto::bundle::MANIFEST)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("");
    #[derive(serde::Deserialize)]
    struct Head {
        role: Option<Name>,
    }
    #[derive(serde::Deserialize)]
    struct Name {
        name: Option<String>,
    }
    toml::from_str::<Head>(text)
        .ok()
        .and_then(|h| h.role)
        .and_then(|r| r.name)
        .unwrap_or_default()
}

#[tonic::async_trait]
impl pb::audit_server::Audit for Api {
    async fn list(
        &self,
        req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        self.observed("audit", async {
            self.authorize(&req, Permission::Read, "audit", "", "read the audit log")
                .await?;
            let pb::AuditRequest {
                since,
                limit,
                after_id,
                newest_first,
                before_id,
            } = req.get_ref().clone();
            let limit = paging::limit(limit);
            let from = if newest_first {
                store::AuditCursor::Before((before_id > 0).then_some(before_id))
            } else {
                store::AuditCursor::After(after_id)
            };
            let records = self
                .store
                .audit_log(store::AuditQuery {
                    since: paging::since(&since)?,
                    from,
                    limit: limit + 1,
                })
                .await
                .map_err(store_status)?;
            let (entries, more) = paging::fill(records, limit, audit_entry);
            Ok(pb::AuditResponse { entries, more })
        })
        .await
    }
}

fn audit_entry(r: store::AuditRecord) -> pb::AuditEntry {
    pb::AuditEntry {
        id: r.id,
        at: rfc3339(r.at),
        actor: r.actor,
        actor_role: r.actor_role,
        action: r.action,
        target: r.target,
        detail: r.detail,
        peer: r.peer,
        outcome: r.outcome,
        hash: r.hash,
        at_micros: r.at,
        full_digest: r.full_digest.unwrap_or_default(),
    }
}
