//! `cairn-server` and the operator CLI `cairn`.
//!
//! - [`store`]: versioned roles, channels, audit log, behind the [`store::Store`] interface;
//!   [`store::open`] picks the backend from `--database`.
//! - [`pki`]: the built-in CA, server and operator certificates.
//! - [`auth`]: client certificate → operator and role, or node → what it may do.
//! - [`enroll`]: join tokens, node enrollment (the one call without a client certificate),
//!   node revocation.
//! - [`service`]: the gRPC handlers; [`validation`]: pushed roles validated off the async
//!   workers, a few at a time; [`redact`]: sensitive content hidden from readers below
//!   publisher; [`http`]: health and metrics; [`metrics`].
//! - [`nodes`]: the node API (fetch, watch channel moves, report ingest); [`fleet`]: what
//!   operators read of the fleet (nodes, reports, status per channel).
//! - [`gate`]: refuses calls without a client certificate before their body is read;
//!   [`refusals`]: logs and audits refusals, coalesced per peer.
//! - [`transport`]: the accept loop: connection caps, TLS handshake deadline, backoff.
//! - [`serve`]: serves on listeners the caller bound, drains on shutdown; [`daemon`]: the
//!   `cairn-server` command line (opens, binds, says where it listens, serves).
//! - [`archive`]: `cairn-server export` and `import`: everything stored, in one checksummed
//!   file, restored into an empty database of either backend.
//! - [`ui`]: the web dashboard (`--ui`): server-rendered pages, sign-in links, live updates.
//! - [`cli`]: the `cairn` command line; it reaches the server through `cairn_proto::client`.

#![forbid(unsafe_code)]

pub mod archive;
pub mod auth;
pub mod cli;
pub mod daemon;
pub mod enroll;
pub mod fleet;
pub mod gate;
pub mod http;
pub mod metrics;
pub mod nodes;
pub mod paging;
pub mod pki;
pub mod redact;
pub mod refusals;
pub mod serve;
pub mod service;
pub mod store;
pub mod transport;
pub mod ui;
pub mod validation;
