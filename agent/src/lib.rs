//! `cairn-agent`: converges the machine it runs on to a role.
//!
//! - [`run`]: one run as a library call (facts → load → lock → prepare the
//!   host → engine → report), for `cairn-agent apply` and the daemon.
//! - [`facts`]: what the node is (OS, addresses, cloud), gathered once per run.
//! - [`engine`]: decides: order, skip, check → apply → verify, refresh, report.
//! - [`progress`]: what the engine tells as each resource starts and finishes;
//!   the lines `apply` prints as a run goes.
//! - [`resources`]: one type per resource kind; each owns its properties.
//! - [`providers`]: the only code that touches the host (apt, systemd, shadow, files, processes).
//! - [`state`]: the run lock and refreshes owed, under `/var/lib/cairn/`.
//! - [`config`]: `/etc/cairn/agent.toml`: servers, CA pin, state directory, interval.
//! - [`identity`]: the node's name, assignment, certificate and key from enrollment.
//! - [`enroll`]: `cairn-agent enroll`: key made here, certificate from a server pinned by its CA.
//! - [`remote`]: against servers: failover, the role fetched and verified,
//!   reports delivered (`cairn-agent run`); [`cache`]: the last good bundle;
//!   [`spool`]: reports waiting for a server; [`daemon`]: the watch stream and
//!   the interval runs (`cairn-agent daemon`).
//! - [`cli`]: the command line; `main` only calls it.

#![forbid(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod enroll;
pub mod facts;
pub mod identity;
pub mod progress;
pub mod providers;
pub mod remote;
pub mod resources;
pub mod run;
pub mod spool;
pub mod state;
