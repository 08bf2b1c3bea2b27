//! `cairn`, the operator CLI: pushes roles to cairn-server, inspects and
//! compares their versions, moves channels, reads the audit log, and makes
//! join tokens and revokes nodes ([`access`]).
//!
//! - [`connect`]: which server and credential (the connection is `cairn_proto::client`'s).
//! - [`output`]: what each command prints, as a table for people or one JSON
//!   document for scripts.
//! - [`error`]: turns a refusal from the server into a message that says what to do.
//!
//! The command line is a contract scripts rely on: rename nothing.

pub mod access;
pub mod audit;
pub mod connect;
pub mod error;
pub mod fleet;
pub mod output;
pub mod ui;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_proto::bundle::RoleBundle;
use cairn_proto::client::Connection;
use cairn_proto::facts::Facts;
use cairn_proto::pb;
use cairn_proto::role;
use clap::{Args, Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use self::connect::Server;
use self::error::RpcResult;
use self::output::Render;

/// Channel used by `promote` and `rollback` when none is given.
pub const DEFAULT_CHANNEL: &str = "production";

/// Exit code when the input was refused as invalid: the role (its
/// diagnostics, a path that cannot be written to disk, its limits) or the
/// message (`EX_DATAERR` of sysexits.h). Any other error exits 1.
pub const INVALID_INPUT: u8 = 65;

/// Most audit entries `cairn audit` lists unless told otherwise.
pub const AUDIT_LIMIT: u32 = 1000;

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Operate a Cairn server: push, inspect and promote roles"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Operator credential file written by `cairn-server operator add`
    /// [default: $HOME/.config/cairn/credentials.toml]
    #[arg(long, env = "CAIRN_CREDENTIALS", global = true, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Server URL, https://HOST:PORT; overrides the credential file's `server`.
    #[arg(long, env = "CAIRN_SERVER", global = true, value_name = "URL")]
    pub server: Option<String>,
    /// `table` for people, `json` for scripts (one document per command).
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Roles and their versions and channels.
    #[command(subcommand)]
    Role(RoleCommand),
    /// The audit log: who did what, and whether it was allowed.
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
        /// Only entries younger than this (e.g. 1h, 2days) or after this RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        since: Option<Since>,
        /// The newest this many entries, listed oldest first.
        #[arg(long, default_value_t = AUDIT_LIMIT, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Join tokens, for enrolling nodes.
    #[command(subcommand)]
    Token(TokenCommand),
    #[command(flatten)]
    Fleet(FleetCommand),
    /// The web dashboard.
    #[command(subcommand)]
    Ui(UiCommand),
}

#[derive(Debug, Subcommand)]
pub enum UiCommand {
    /// Print a one-time link that signs you in to the dashboard (valid 2 minutes).
    Login,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Enrolled nodes and their last runs.
    #[command(subcommand)]
    Node(fleet::NodeCommand),
    /// The run reports nodes sent.
    #[command(subcommand)]
    Report(fleet::ReportCommand),
    /// Per role and channel: nodes on the promoted version, on an older one, failing, stale.
    Status,
}

/// Join tokens: what lets a new node enroll (admins only).
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token that enrolls nodes into a role at a channel; prints it once.
    Create {
        /// The role enrolled nodes converge to; it must have a pushed version.
        #[arg(long)]
        role: String,
        /// The channel they follow.
        #[arg(long, default_value = DEFAULT_CHANNEL)]
        channel: String,
        /// How long the token admits enrollments (e.g. 30m, 1h, 2days; at most 30days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many nodes it may enroll.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::enroll::MAX_TOKEN_USES)))]
        uses: u32,
    },
    /// The newest join tokens (up to 1,000; never a secret), newest first.
    List,
    /// Make a token admit no more enrollments.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the whole log; fails naming the first entry that breaks it.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Upload the role in DIR as a new version (nothing is stored when it is unchanged).
    Push {
        dir: PathBuf,
        /// Why this version exists; shown by `cairn role versions`.
        #[arg(short, long, default_value = "")]
        message: String,
        /// Also point this channel at the pushed version.
        #[arg(long, value_name = "CHANNEL")]
        promote: Option<String>,
    },
    /// Every role with its latest version and channels.
    List,
    /// Every version of a role, oldest first.
    Versions { name: String },
    /// One version's metadata, files and resources (NAME or NAME@VERSION; latest by default).
    Show {
        #[arg(value_parser = parse_role_ref, value_name = "NAME[@VERSION]")]
        role: RoleRef,
    },
    /// Unified diff of the files that differ between versions A and B.
    Diff { name: String, a: u64, b: u64 },
    /// Point a channel at a version.
    Promote {
        name: String,
        version: u64,
        #[arg(long, default_value = DEFAULT_CHANNEL)]
        channel: String,
    },
    /// Undo the channel's newest promotion.
    Rollback {
        name: String,
        #[arg(long, default_value = DEFAULT_CHANNEL)]
        channel: String,
    },
    /// Where each channel of a role points, and how it got there.
    Channels { name: String },
}

/// `NAME` or `NAME@VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRef {
    pub name: String,
    /// `None`: the latest.
    pub version: Option<u64>,
}

fn parse_role_ref(s: &str) -> Result<RoleRef, String> {
    let (name, version) = match s.split_once('@') {
        None => (s, None),
        Some((name, v)) => {
            let v: u64 = v.parse().map_err(|_| {
                format!("version {v:?} in {s:?} is not a number (NAME@VERSION, e.g. web@3)")
            })?;
            if v == 0 {
                return Err(format!("versions count from 1; {s:?} names version 0"));
            }
            (name, Some(v))
        }
    };
    if name.is_empty() {
        return Err(format!("{s:?} names no role (NAME or NAME@VERSION)"));
    }
    Ok(RoleRef {
        name: name.to_string(),
        version,
    })
}

/// The `--since` of `cairn audit`: an age or a point in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(OffsetDateTime),
}

impl Since {
    /// The RFC 3339 time sent as `AuditRequest.since`.
    pub fn to_rfc3339(&self, now: OffsetDateTime) -> Result<String> {
        let at = match self {
            Since::At(t) => *t,
            Since::Ago(d) => {
                let d = time::Duration::try_from(*d).context("--since duration is too long")?;
                now.checked_sub(d)
                    .context("--since reaches before the year -9999")?
            }
        };
        at.format(&Rfc3339)
            .context("could not format the --since time")
    }
}

fn parse_since(s: &str) -> Result<Since, String> {
    match humantime::parse_duration(s) {
        Ok(d) => Ok(Since::Ago(d)),
        Err(dur_err) => OffsetDateTime::parse(s, &Rfc3339).map(Since::At).map_err(|_| {
            format!("{s:?} is neither a duration ({dur_err}; e.g. 90m, 1h, 2days) nor an RFC 3339 time")
        }),
    }
}

/// Entry point of the `cairn` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error::print(&anyhow::Error::new(e).context("could not start the async runtime"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error::print(&e);
            if error::is_invalid_input(&e) {
                ExitCode::from(INVALID_INPUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs one command, printing its result to stdout.
pub async fn run(cli: Cli) -> Result<()> {
    let server = Server::resolve(
        cli.global.credentials.as_deref(),
        cli.global.server.as_deref(),
    )?;
    let fmt = cli.global.output;
    match cli.command {
        Command::Role(cmd) => role(&server, cmd, fmt).await,
        Command::Audit {
            command: Some(AuditCommand::Verify),
            ..
        } => {
            let conn = server.connect().await?;
            let out = audit::verify(&conn).await?;
            emit(&out, fmt)?;
            match out.broken {
                Some(b) => bail!("the audit log's hash chain breaks at entry {}", b.id),
                None => Ok(()),
            }
        }
        Command::Audit {
            command: None,
            since,
            limit,
        } => {
            let since = match &since {
                Some(s) => s.to_rfc3339(OffsetDateTime::now_utc())?,
                None => String::new(),
            };
            let conn = server.connect().await?;
            let entries = audit::newest(&conn, &since, limit).await?;
            emit(&output::AuditOut::new(entries), fmt)
        }
        Command::Token(TokenCommand::Create {
            role,
            channel,
            ttl,
            uses,
        }) => access::create_token(&server, role, channel, ttl, uses, fmt).await,
        Command::Token(TokenCommand::List) => access::list_tokens(&server, fmt).await,
        Command::Token(TokenCommand::Revoke { id }) => access::revoke_token(&server, id, fmt).await,
        Command::Fleet(cmd) => fleet_command(&server, cmd, fmt).await,
        Command::Ui(UiCommand::Login) => ui::login(&server, fmt).await,
    }
}

async fn fleet_command(server: &Server, cmd: FleetCommand, fmt: Output) -> Result<()> {
    use fleet::{NodeCommand, ReportCommand};
    let conn = server.connect().await?;
    match cmd {
        FleetCommand::Node(NodeCommand::Revoke { name }) => {
            access::revoke_node(&conn, name, fmt).await
        }
        FleetCommand::Node(NodeCommand::List { limit }) => {
            emit(&fleet::node_list(&conn, limit).await?, fmt)
        }
        FleetCommand::Node(NodeCommand::Show { name, history }) => {
            emit(&fleet::node_show(&conn, &name, history).await?, fmt)
        }
        FleetCommand::Report(ReportCommand::List {
            node,
            role,
            status,
            since,
            limit,
        }) => {
            let filter = pb::ListReportsRequest {
                node: node.unwrap_or_default(),
                role: role.unwrap_or_default(),
                status: fleet::status_filter(status),
                since: match &since {
                    Some(s) => s.to_rfc3339(OffsetDateTime::now_utc())?,
                    None => String::new(),
                },
                ..Default::default()
            };
            emit(&fleet::report_list(&conn, filter, limit).await?, fmt)
        }
        FleetCommand::Report(ReportCommand::Show { id }) => {
            emit(&fleet::report_show(&conn, id).await?, fmt)
        }
        FleetCommand::Status => emit(&fleet::status(&conn).await?, fmt),
    }
}

async fn role(server: &Server, cmd: RoleCommand, fmt: Output) -> Result<()> {
    match cmd {
        RoleCommand::Push {
            dir,
            message,
            promote,
        } => {
            let bundle = RoleBundle::from_dir(&dir)
                .with_context(|| format!("could not read role {}", dir.display()))?;
            if bundle.is_empty() {
                bail!("role directory {} has no files", dir.display());
            }
            let conn = server.connect().await?;
            let resp = conn
                .roles()
                .push(pb::PushRequest {
                    bundle: Some(bundle.to_wire()),
                    message,
                    promote_to: promote.unwrap_or_default(),
                })
                .await
                .rpc(&conn, || format!("could not push role {}", dir.display()))?;
            if resp.rejected {
                let rejected = output::RejectedOut::new(resp);
                if fmt == Output::Json {
                    emit(&rejected, fmt)?;
                }
                let e = anyhow::Error::new(error::RoleRejected(rejected.human()));
                return Err(e.context(format!("could not push role {}", dir.display())));
            }
            emit(&output::PushOut::new(resp)?, fmt)
        }
        RoleCommand::List => {
            let conn = server.connect().await?;
            let resp = conn
                .roles()
                .list(pb::ListRolesRequest {})
                .await
                .rpc(&conn, || "could not list roles".to_string())?;
            emit(&output::ListOut::new(resp), fmt)
        }
        RoleCommand::Versions { name } => {
            let conn = server.connect().await?;
            let resp = conn
                .roles()
                .versions(pb::VersionsRequest { role: name.clone() })
                .await
                .rpc(&conn, || {
                    format!("could not list the versions of role {name}")
                })?;
            emit(&output::VersionsOut::new(name, resp), fmt)
        }
        RoleCommand::Show { role } => {
            let conn = server.connect().await?;
            let (info, bundle, redacted) = fetch(&conn, &role.name, role.version).await?;
            let resources = role::load(&bundle, &Facts::placeholder());
            emit(
                &output::ShowOut::new(info, &bundle, &redacted, resources),
                fmt,
            )
        }
        RoleCommand::Diff { name, a, b } => {
            for v in [a, b] {
                if v == 0 {
                    bail!("versions count from 1; cannot diff version 0 of role {name}");
                }
            }
            let conn = server.connect().await?;
            let (_, old, mut redacted) = fetch(&conn, &name, Some(a)).await?;
            let (_, new, redacted_b) = fetch(&conn, &name, Some(b)).await?;
            redacted.extend(redacted_b);
            redacted.sort();
            redacted.dedup();
            let files = cairn_proto::diff::bundles(&old, &new);
            emit(&output::DiffOut::new(name, (a, b), files, redacted), fmt)
        }
        RoleCommand::Promote {
            name,
            version,
            channel,
        } => {
            if version == 0 {
                bail!("versions count from 1; cannot promote version 0 of role {name}");
            }
            let conn = server.connect().await?;
            let resp = conn
                .roles()
                .promote(pb::PromoteRequest {
                    role: name.clone(),
                    version,
                    channel: channel.clone(),
                })
                .await
                .rpc(&conn, || {
                    format!("could not promote role {name} version {version} to {channel}")
                })?;
            emit(&output::ChannelMoveOut::new("promote", resp)?, fmt)
        }
        RoleCommand::Rollback { name, channel } => {
            let conn = server.connect().await?;
            let resp = conn
                .roles()
                .rollback(pb::RollbackRequest {
                    role: name.clone(),
                    channel: channel.clone(),
                })
                .await
                .rpc(&conn, || {
                    format!("could not roll back channel {channel} of role {name}")
                })?;
            emit(&output::ChannelMoveOut::new("rollback", resp)?, fmt)
        }
        RoleCommand::Channels { name } => {
            let conn = server.connect().await?;
            let resp = conn
                .roles()
                .channels(pb::ChannelsRequest { role: name.clone() })
                .await
                .rpc(&conn, || {
                    format!("could not read the channels of role {name}")
                })?;
            emit(&output::ChannelsOut::new(name, resp), fmt)
        }
    }
}

/// One version of a role (the latest for `None`), its files, and the paths
/// whose content the server redacted for this caller.
async fn fetch(
    conn: &Connection,
    name: &str,
    version: Option<u64>,
) -> Result<(pb::VersionInfo, RoleBundle, Vec<String>)> {
    let what = || match version {
        Some(v) => format!("version {v} of role {name}"),
        None => format!("the latest version of role {name}"),
    };
    let resp = conn
        .roles()
        .get(pb::GetRoleRequest {
            role: name.to_string(),
            version: version.unwrap_or(0),
        })
        .await
        .rpc(conn, || format!("could not fetch {}", what()))?;
    let info = resp
        .version
        .with_context(|| format!("the server sent {} without its version information", what()))?;
    let bundle = RoleBundle::from_wire(resp.bundle.unwrap_or_default())
        .with_context(|| format!("the server sent an unusable bundle for {}", what()))?;
    Ok((info, bundle, resp.redacted))
}

fn emit<T: Render>(out: &T, fmt: Output) -> Result<()> {
    use std::io::Write;
    let text = output::render(out, fmt)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("could not write to standard output")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_are_accepted_after_the_subcommand() {
        let cli = parse(&[
            "role",
            "list",
            "--output",
            "json",
            "--server",
            "https://h:1",
            "--credentials",
            "c.toml",
        ])
        .unwrap();
        assert_eq!(cli.global.output, Output::Json);
        assert_eq!(cli.global.server.as_deref(), Some("https://h:1"));
        assert_eq!(cli.global.credentials, Some(PathBuf::from("c.toml")));
        assert!(matches!(cli.command, Command::Role(RoleCommand::List)));
        let cli = parse(&["--output", "json", "audit"]).unwrap();
        assert_eq!(cli.global.output, Output::Json);
        assert!(parse(&["role", "list", "--output", "yaml"]).is_err());
    }

    #[test]
    fn push_takes_message_and_promotion() {
        let cli = parse(&[
            "role",
            "push",
            "recipes/web",
            "-m",
            "bump port",
            "--promote",
            "staging",
        ])
        .unwrap();
        let Command::Role(RoleCommand::Push {
            dir,
            message,
            promote,
        }) = cli.command
        else {
            panic!("not push: {cli:?}");
        };
        assert_eq!(dir, PathBuf::from("recipes/web"));
        assert_eq!(message, "bump port");
        assert_eq!(promote.as_deref(), Some("staging"));
        let cli = parse(&["role", "push", "d"]).unwrap();
        let Command::Role(RoleCommand::Push {
            message, promote, ..
        }) = cli.command
        else {
            panic!("not push");
        };
        assert_eq!((message.as_str(), promote), ("", None));
        assert!(parse(&["role", "push"]).is_err(), "DIR is required");
    }

    #[test]
    fn channel_defaults_to_production() {
        let cli = parse(&["role", "promote", "web", "3"]).unwrap();
        let Command::Role(RoleCommand::Promote {
            name,
            version,
            channel,
        }) = cli.command
        else {
            panic!("not promote");
        };
        assert_eq!(
            (name.as_str(), version, channel.as_str()),
            ("web", 3, "production")
        );
        let cli = parse(&["role", "rollback", "web", "--channel", "staging"]).unwrap();
        let Command::Role(RoleCommand::Rollback { channel, .. }) = cli.command else {
            panic!("not rollback");
        };
        assert_eq!(channel, "staging");
        assert!(parse(&["role", "promote", "web", "three"]).is_err());
    }

    #[test]
    fn role_refs() {
        assert_eq!(
            parse_role_ref("web").unwrap(),
            RoleRef {
                name: "web".into(),
                version: None
            }
        );
        assert_eq!(parse_role_ref("web@12").unwrap().version, Some(12));
        for bad in ["web@", "web@x", "@3", "web@0", "web@-1"] {
            let err = parse_role_ref(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn since_accepts_durations_and_times() {
        let now = OffsetDateTime::parse("2025-03-01T12:00:00Z", &Rfc3339).unwrap();
        let since = parse_since("90m").unwrap();
        assert_eq!(since.to_rfc3339(now).unwrap(), "2025-03-01T10:30:00Z");
        let since = parse_since("2025-02-01T00:00:00+01:00").unwrap();
        assert_eq!(since.to_rfc3339(now).unwrap(), "2025-02-01T00:00:00+01:00");
        let err = parse_since("yesterday").unwrap_err();
        assert!(err.contains("\"yesterday\""), "{err}");
        assert!(parse(&["audit", "--since", "1h"]).is_ok());
        assert!(parse(&["audit", "--since", "soon"]).is_err());
    }

    #[test]
    fn token_create_defaults_to_one_use_for_an_hour_on_the_default_channel() {
        let cli = parse(&["token", "create", "--role", "web"]).unwrap();
        let Command::Token(TokenCommand::Create {
            role,
            channel,
            ttl,
            uses,
        }) = cli.command
        else {
            panic!("not token create: {cli:?}");
        };
        assert_eq!(
            (role.as_str(), channel.as_str(), ttl, uses),
            ("web", DEFAULT_CHANNEL, Duration::from_secs(3600), 1)
        );
        assert!(parse(&["token", "create", "--role", "web", "--ttl", "soon"]).is_err());
        assert!(parse(&["token", "create", "--role", "web", "--uses", "0"]).is_err());
        assert!(parse(&["token", "create"]).is_err(), "--role is required");
        assert!(matches!(
            parse(&["node", "revoke", "web-1"]).unwrap().command,
            Command::Fleet(FleetCommand::Node(fleet::NodeCommand::Revoke { .. }))
        ));
    }

    #[test]

    fn fleet_commands_and_their_filters() {
        use fleet::{NodeCommand, ReportCommand, RunStatusArg};
        let cli = parse(&["node", "show", "web-1", "--history", "5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Fleet(FleetCommand::Node(NodeCommand::Show { history: 5, .. }))
        ));
        assert!(parse(&["node", "show", "web-1", "--history", "101"]).is_err());
        let cli = parse(&[
            "report", "list", "--node", "n", "--status", "failed", "--since", "1h",
        ])
        .unwrap();
        let Command::Fleet(FleetCommand::Report(ReportCommand::List {
            node,
            status,
            since,
            limit,
            ..
        })) = cli.command
        else {
            panic!("not report list: {cli:?}");
        };
        assert_eq!(node.as_deref(), Some("n"));
        assert_eq!(status, Some(RunStatusArg::Failed));
        assert_eq!(since, Some(Since::Ago(Duration::from_secs(3600))));
        assert_eq!(limit, fleet::REPORT_LIMIT);
        assert!(parse(&["report", "list", "--status", "broken"]).is_err());
        assert!(parse(&["report", "show", "x"]).is_err());
        assert!(matches!(
            parse(&["status"]).unwrap().command,
            Command::Fleet(FleetCommand::Status)
        ));
    }

    #[test]
    fn audit_lists_or_verifies() {
        let cli = parse(&["audit", "verify", "--output", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Audit {
                command: Some(AuditCommand::Verify),
                ..
            }
        ));
        assert!(parse(&["audit", "--limit", "5", "verify"]).is_err());
        assert!(parse(&["audit", "--limit", "0"]).is_err());
    }
}
