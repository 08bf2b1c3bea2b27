//! Who is calling, and what they may do.
//!
//! Operators and nodes authenticate with a client certificate issued by the
//! server's CA (checked by the TLS handshake); its CN is the operator's or
//! node's name and its OU the operator's role, or [`NODE_UNIT`] for a node.
//! The store then says whether that certificate is still the operator's (see
//! [`Standing`]: `operator add` replaces it, `operator revoke` revokes it) or
//! the node's ([`NodeStanding`]: enrolling again or renewing replaces it,
//! `node revoke` revokes it), and the store is asked on every call, so either
//! counts at once. A node's certificate from before its latest renewal may
//! still renew, and only that, until the node calls with the new one: the
//! renewal's answer may never have reached it ([`admit`], [`renewal_caller`]).
//! The gate ([`crate::gate`]) authenticates every call before its body is
//! read; every operator handler then asks [`authorize`] whether the caller
//! may, and every node handler asks [`node_caller`].

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};
use x509_parser::prelude::*;

use crate::store::{Actor, Assignment, NodeStanding, Standing, Store};

/// The OU of a node certificate (an operator's is its role).
pub const NODE_UNIT: &str = "node";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OperatorRole {
    /// Reads roles, versions, channels and the audit log.
    Auditor,
    /// Also pushes, promotes and rolls back.
    Publisher,
    /// Everything.
    Admin,
}

impl OperatorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Auditor => "auditor",
            OperatorRole::Publisher => "publisher",
            OperatorRole::Admin => "admin",
        }
    }
}

impl fmt::Display for OperatorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OperatorRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auditor" => Ok(OperatorRole::Auditor),
            "publisher" => Ok(OperatorRole::Publisher),
            "admin" => Ok(OperatorRole::Admin),
            _ => Err(format!(
                "unknown operator role {s:?} (admin, publisher or auditor)"
            )),
        }
    }
}

/// What a call needs; each role allows its own level and those below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Publish,
    Admin,
}

impl Permission {
    fn least_role(self) -> OperatorRole {
        match self {
            Permission::Read => OperatorRole::Auditor,
            Permission::Publish => OperatorRole::Publisher,
            Permission::Admin => OperatorRole::Admin,
        }
    }
}

/// What a client certificate says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Operator(OperatorRole),
    Node,
}

/// The name and holder in a client certificate (DER): an operator and its
/// role, or a node (whose name must be one [`cairn_proto::node::check_name`]
/// accepts).
pub fn subject_of(der: &[u8]) -> Result<(String, Holder), String> {
    subject(&read(der)?)
}

fn read(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| format!("unreadable client certificate: {e}"))
}

fn subject(cert: &X509Certificate<'_>) -> Result<(String, Holder), String> {
    let subject = cert.subject();
    let first = |attrs: Option<&AttributeTypeAndValue>| {
        attrs.and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let name =
        first(subject.iter_common_name().next()).ok_or("client certificate has no common name")?;
    let unit = first(subject.iter_organizational_unit().next())
        .ok_or("client certificate names no operator role or node")?;
    if unit == NODE_UNIT {
        cairn_proto::node::check_name(&name).map_err(|e| e.to_string())?;
        return Ok((name, Holder::Node));
    }
    Ok((name, Holder::Operator(unit.parse()?)))
}

/// The SHA-256 of a certificate (DER), hex: what the store records of it.
pub fn fingerprint(der: &[u8]) -> String {
    format!("{:x}", Sha256::digest(der))
}

/// A refusal: the status to return and the actor to record it against.
pub struct Denied {
    pub actor: Actor,
    pub status: Status,
}

/// Who a checked certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Operator(OperatorRole),
    /// A node, with its assignment as the store has it now.
    Node(Assignment),
    /// A node calling with its certificate from before its latest renewal
    /// ([`NodeStanding::Previous`]): it may only renew.
    PreviousNode(Assignment),
}

/// An operator or node whose certificate was checked against the store for
/// this call; the gate puts it in the request's extensions so the handler does
/// not ask the store again. A node's actor has the role [`NODE_UNIT`].
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub actor: Actor,
    pub principal: Principal,
    /// The [`fingerprint`] of the certificate the caller presented.
    pub fingerprint: String,
}

/// Identifies the caller and checks its certificate is still valid (already
/// done if the request carries [`Authenticated`]). A store that cannot say
/// whether the certificate is valid refuses the call too.
pub async fn authenticate<T>(
    req: &Request<T>,
    store: &dyn Store,
) -> Result<Authenticated, Box<Denied>> {
    if let Some(known) = req.extensions().get::<Authenticated>() {
        return Ok(known.clone());
    }
    let peer = req
        .remote_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.to_string());
    let anonymous = |status| {
        Box::new(Denied {
            actor: Actor {
                name: "anonymous".into(),
                role: "none".into(),
                peer: peer.clone(),
            },
            status,
        })
    };
    let Some(certs) = req.peer_certs() else {
        return Err(anonymous(Status::unauthenticated(
            "no client certificate: connect with an operator credential from `cairn-server operator add`",
        )));
    };
    let Some(cert) = certs.first() else {
        return Err(anonymous(Status::unauthenticated("no client certificate")));
    };
    let parsed = read(cert.as_ref()).map_err(|e| anonymous(Status::unauthenticated(e)))?;
    let (name, holder) = subject(&parsed).map_err(|e| anonymous(Status::unauthenticated(e)))?;
    let actor = Actor {
        name,
        role: match holder {
            Holder::Operator(role) => role.as_str().into(),
            Holder::Node => NODE_UNIT.into(),
        },
        peer,
    };
    // The handshake checked the validity when the connection opened; a
    // connection may outlive it (an agent holds one for good).
    let validity = parsed.validity();
    if !validity.is_valid() {
        let help = match holder {
            Holder::Node => {
                "a node renews its certificate before then (see its log); enroll it again"
            }
            Holder::Operator(_) => {
                "ask an admin for a new credential (`cairn-server operator add`)"
            }
        };
        let status = Status::unauthenticated(format!(
            "credential expired: the certificate of {} {} is valid from {} to {}; {help}",
            actor.role, actor.name, validity.not_before, validity.not_after
        ));
        return Err(Box::new(Denied { actor, status }));
    }
    let revoked = |why: String| {
        Err(Box::new(Denied {
            status: Status::unauthenticated(format!("credential revoked: {why}")),
            actor: actor.clone(),
        }))
    };
    let failed = |e| {
        Err(Box::new(Denied {
            status: crate::service::store_status(e),
            actor: actor.clone(),
        }))
    };
    let name = &actor.name;
    let fingerprint = fingerprint(cert.as_ref());
    let principal = match holder {
        Holder::Operator(role) => match store.standing(name, &fingerprint).await {
            Ok(Standing::Current | Standing::Unrecorded) => Principal::Operator(role),
            Ok(Standing::Revoked) => return revoked(format!("operator {name} was revoked")),
            Ok(Standing::Replaced) => {
                return revoked(format!(
                    "a newer credential was issued for operator {name}; this one no longer counts"
                ));
            }
            Ok(Standing::Unknown) => {
                return revoked(format!("no operator {name} is on record on this server"));
            }
            Err(e) => return failed(e),
        },
        Holder::Node => match store.node_standing(name, &fingerprint).await {
            Ok(NodeStanding::Current(assignment)) => Principal::Node(assignment),
            // The renewal's answer reached the node: the previous certificate
            // is done (one write, then this certificate is Current).
            Ok(NodeStanding::Renewed(assignment)) => {
                if let Err(e) = store.forget_previous_certificate(name, &fingerprint).await {
                    return failed(e);
                }
                Principal::Node(assignment)
            }
            Ok(NodeStanding::Previous(assignment)) => Principal::PreviousNode(assignment),
            Ok(standing) => return revoked(node_refusal(name, &standing)),
            Err(e) => return failed(e),
        },
    };
    Ok(Authenticated {
        actor,
        principal,
        fingerprint,
    })
}

/// Why a node certificate of this standing no longer counts (after
/// "credential revoked: "); empty for a current one.
pub fn node_refusal(name: &str, standing: &NodeStanding) -> String {
    match standing {
        NodeStanding::Current(_) | NodeStanding::Renewed(_) => String::new(),
        NodeStanding::Previous(_) => previous_refusal(name),
        NodeStanding::Revoked => {
            format!("node {name} was revoked; enroll it again with a new join token")
        }
        NodeStanding::Replaced => format!(
            "node {name} enrolled again since, or renewed its certificate; \
             this certificate no longer counts"
        ),
        NodeStanding::Unknown => format!("no node {name} is enrolled on this server"),
    }
}

fn previous_refusal(name: &str) -> String {
    format!(
        "node {name} renewed its certificate since; this one may only renew again \
         (in case the node never received the new one), nothing else"
    )
}

/// Checks that a caller of `path` (`/package.Service/Method`) may call it at
/// all: a node's certificate from before its latest renewal may only renew
/// ([`crate::nodes::RENEW_PATH`]).
pub fn admit(known: Authenticated, path: &str) -> Result<Authenticated, Box<Denied>> {
    if matches!(known.principal, Principal::PreviousNode(_)) && path != crate::nodes::RENEW_PATH {
        let status = Status::unauthenticated(format!(
            "credential revoked: {}",
            previous_refusal(&known.actor.name)
        ));
        return Err(Box::new(Denied {
            actor: known.actor,
            status,
        }));
    }
    Ok(known)
}

/// Checks an authenticated operator may do `what` (for messages, e.g. "push
/// roles"), which needs `need`.
pub fn permit(who: Authenticated, need: Permission, what: &str) -> Result<Actor, Box<Denied>> {
    let Authenticated {
        actor, principal, ..
    } = who;
    let role = match principal {
        Principal::Operator(role) => role,
        Principal::Node(_) | Principal::PreviousNode(_) => {
            let status = Status::permission_denied(format!(
                "a node certificate may not {what}; that needs an operator credential \
                 (node {} may only use the node API)",
                actor.name
            ));
            return Err(Box::new(Denied { actor, status }));
        }
    };
    if role < need.least_role() {
        let status = Status::permission_denied(format!(
            "operator {} is {} {role} and may not {what}; that needs the {} role or above",
            actor.name,
            if role == OperatorRole::Admin || role == OperatorRole::Auditor {
                "an"
            } else {
                "a"
            },
            need.least_role()
        ));
        return Err(Box::new(Denied { actor, status }));
    }
    Ok(actor)
}

/// [`authenticate`], then [`permit`].
pub async fn authorize<T>(
    req: &Request<T>,
    need: Permission,
    what: &str,
    store: &dyn Store,
) -> Result<Actor, Box<Denied>> {
    permit(authenticate(req, store).await?, need, what)
}

/// A node calling the node API, checked for this call.
#[derive(Debug, Clone)]
pub struct NodeCaller {
    /// The node's name (its certificate's CN), its role ([`NODE_UNIT`]) and peer.
    pub actor: Actor,
    /// Its assignment as the store has it now.
    pub assignment: Assignment,
    /// The [`fingerprint`] of the certificate it called with.
    pub fingerprint: String,
}

impl NodeCaller {
    pub fn name(&self) -> &str {
        &self.actor.name
    }
}

/// [`authenticate`], then checks the caller is a node with its current
/// certificate: an operator's certificate is refused (`PERMISSION_DENIED`),
/// since operators do not run roles, and a node's previous one
/// (`UNAUTHENTICATED`).
pub async fn node_caller<T>(
    req: &Request<T>,
    store: &dyn Store,
) -> Result<NodeCaller, Box<Denied>> {
    caller(req, store, false).await
}

/// [`node_caller`] for `Nodes.Renew`, which a node's certificate from before
/// its latest renewal may call too.
pub async fn renewal_caller<T>(
    req: &Request<T>,
    store: &dyn Store,
) -> Result<NodeCaller, Box<Denied>> {
    caller(req, store, true).await
}

async fn caller<T>(
    req: &Request<T>,
    store: &dyn Store,
    renewing: bool,
) -> Result<NodeCaller, Box<Denied>> {
    let Authenticated {
        actor,
        principal,
        fingerprint,
    } = authenticate(req, store).await?;
    match principal {
        Principal::Node(assignment) => Ok(NodeCaller {
            actor,
            assignment,
            fingerprint,
        }),
        Principal::PreviousNode(assignment) if renewing => Ok(NodeCaller {
            actor,
            assignment,
            fingerprint,
        }),
        Principal::PreviousNode(_) => {
            let status = Status::unauthenticated(format!(
                "credential revoked: {}",
                previous_refusal(&actor.name)
            ));
            Err(Box::new(Denied { actor, status }))
        }
        Principal::Operator(role) => {
            let status = Status::permission_denied(format!(
                "operator {} ({role}) may not use the node API; only an enrolled node's certificate may",
                actor.name
            ));
            Err(Box::new(Denied { actor, status }))
        }
    }
}
