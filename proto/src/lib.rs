//! The contract every Cairn party shares.
//!
//! - [`role`]: the role format (`role.toml`, `templates/`, `files/`), parsed and
//!   validated into a [`role::Role`] with precise diagnostics.
//! - [`bundle`]: a role as an in-memory set of files, and its content digest.
//! - [`template`]: Handlebars rendering in strict mode, shared by validation and the agent.
//! - [`facts`]: what the agent knows about its node; templates see it as `facts`.
//! - [`node`]: a node's name rule and its assignment (role and channel).
//! - [`openpgp`]: an apt repository's public key read and its fingerprint computed.
//! - [`report`]: the run report, printed by the agent and stored by the server,
//!   and its rendering for people.
//! - [`diff`]: unified diffs of file content and of two role bundles.
//! - [`terminal`]: escaping text from outside before it is printed.
//! - [`client`]: reaching a server: credential file, mutual-TLS connection (or one pinned by
//!   the CA's hash, to enroll), errors with help.
//! - [`pb`]: generated wire types; only this crate and the gRPC edges use them.

pub mod bundle;
pub mod client;
pub mod codec;
pub mod diff;
pub mod facts;
pub mod node;
pub mod openpgp;
pub mod report;
pub mod role;
pub mod template;
pub mod terminal;

/// Generated protobuf types. Convert at the edges with the `From` impls in [`report`].
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cairn.v1");
}
