//! The `cairn-server` command line: `serve`, `migrate`, `operator add`,
//! `operator revoke`, `ca pin`, `export` and `import`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_proto::client::Credentials;
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use crate::auth::OperatorRole;
use crate::pki::Pki;
use crate::serve::{self, Listeners, ServeConfig};
use crate::store::{self, Actor};
use crate::transport::{self, Limits};

const DEFAULT_DATA_DIR: &str = "/var/lib/cairn-server";
const DEFAULT_PORT: u16 = 7443;
/// Descriptors wanted beside the connections: the database, the listeners, the HTTP endpoint.
const SPARE_DESCRIPTORS: u64 = 1024;

#[derive(Parser)]
#[command(
    name = "cairn-server",
    version,
    about = "Cairn's server: versioned roles over gRPC with TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (TLS) and the metrics/health listener.
    Serve {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Where roles, channels, nodes, reports and the audit log are stored:
        /// sqlite://PATH, or postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE (also
        /// postgresql://; the database must exist) [default: sqlite://DATA_DIR/cairn.db]
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// gRPC address.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// HTTP address for /metrics, /healthz and /readyz.
        #[arg(long, default_value = "127.0.0.1:9090")]
        http: SocketAddr,
        /// HTTPS address of the web dashboard (e.g. 0.0.0.0:7444); off unless
        /// given. Operators sign in with a link from `cairn ui login`, which
        /// names the server's first --name and this port.
        #[arg(long, value_name = "ADDR")]
        ui: Option<SocketAddr>,
        /// A DNS name or IP address clients use to reach this server (repeatable);
        /// the server certificate is issued for these.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Most gRPC connections at once, handshakes included; every agent holds one.
        #[arg(long, default_value_t = transport::MAX_CONNECTIONS, value_parser = at_least_one)]
        max_connections: usize,
        /// Most gRPC connections at once from one peer address (an IPv6 peer: its /64):
        /// raise it for many agents behind one NAT address.
        #[arg(long, default_value_t = transport::MAX_CONNECTIONS_PER_PEER, value_parser = at_least_one)]
        max_connections_per_peer: usize,
        /// Days to keep run reports; older ones are deleted (checked hourly).
        #[arg(long, value_name = "DAYS", default_value_t = serve::DEFAULT_REPORT_RETENTION_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        report_retention: u32,
        /// How long the node certificates this server signs are valid (at
        /// enrollment and renewal), e.g. 365d, 90d, 12h; agents renew theirs
        /// once two thirds of it have passed, at a run. From 60s to 1825d;
        /// keep it well above 1.5 × the agents' run interval.
        #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = node_cert_lifetime)]
        node_cert_lifetime: Duration,
    },
    /// Apply the database's schema migrations, and say which; needed before
    /// a new release serves a PostgreSQL database an older one migrated.
    Migrate {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The server's database (as for `serve`) [default: sqlite://DATA_DIR/cairn.db]
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
    /// Write everything the server stores (roles and all their versions,
    /// channels and their history, nodes, join tokens, operators, the CA and
    /// its private key, the audit log) into one checksummed archive; it holds
    /// secrets and is written mode 0600. A running server may go on serving.
    Export {
        /// The archive to write (replaced once the new one is complete).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Also the run reports, and each node's last run.
        #[arg(long)]
        with_reports: bool,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The server's database (as for `serve`) [default: sqlite://DATA_DIR/cairn.db]
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
    /// Restore an archive of `export` into an empty database (SQLite or
    /// PostgreSQL), before any server starts on it: every checksum is checked
    /// first, then everything is restored in one transaction.
    Import {
        /// The archive `cairn-server export` wrote.
        file: PathBuf,
        /// The data directory of the server that will serve the database.
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The database to restore into (as for `serve`; a PostgreSQL database
        /// must exist) [default: sqlite://DATA_DIR/cairn.db]
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
    /// Manage operators.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// The server's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the pin of the CA (sha256:…) that `cairn-agent enroll --ca-pin`
    /// and the agent's configuration take: nodes check the server against it
    /// before they send their join token.
    Pin {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The server's database, which holds the CA the servers on it share
        /// (as for `serve`) [default: sqlite://DATA_DIR/cairn.db]
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Issue a credential file for an operator; for a name issued before, its
    /// earlier credentials stop working at once.
    Add {
        name: String,
        #[arg(long)]
        role: OperatorRole,
        /// Where to write the credential file (mode 0600).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The server's database, where the new operator is audited (as for `serve`)
        /// [default: sqlite://DATA_DIR/cairn.db]
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// Server URL written into the credential file
        /// (default: https://<first name of the server certificate>:7443).
        #[arg(long)]
        server: Option<String>,
    },
    /// Revoke every credential of an operator, at once, also for a running server.
    Revoke {
        name: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The server's database, where operators are recorded (as for `serve`)
        /// [default: sqlite://DATA_DIR/cairn.db]
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            data_dir,
            database,
            listen,
            http,
            ui,
            mut names,
            max_connections,
            max_connections_per_peer,
            report_retention,
            node_cert_lifetime,
        } => {
            if names.is_empty() {
                names = default_names();
            }
            raise_descriptor_limit(max_connections);
            let server = serve::Server::open(&ServeConfig {
                database: database_url(database, &data_dir)?,
                data_dir,
                names,
                limits: Limits {
                    total: max_connections,
                    per_peer: max_connections_per_peer,
                    ..Limits::default()
                },
                report_retention: Duration::from_secs(u64::from(report_retention) * 86_400),
                jobs_every: serve::JOBS_EVERY,
                node_cert_lifetime,
            })
            .await?;
            let listeners = Listeners::bind(listen, http, ui).await?;
            let (grpc_addr, http_addr) =
                (listeners.grpc.local_addr()?, listeners.http.local_addr()?);
            let ui_addr = match &listeners.ui {
                Some(l) => format!(" ui={}", l.local_addr()?),
                None => String::new(),
            };
            info!(grpc = %grpc_addr, http = %http_addr, ui = %ui_addr, "listening");
            // scripts/demo.sh reads the bound ports (the flags may say port 0) from this line.
            {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "cairn-server listening grpc={grpc_addr} http={http_addr}{ui_addr}"
                )?;
                out.flush()?;
            }
            serve::run(server, listeners, serve::signal()).await
        }
        Command::Operator {
            command:
                OperatorCommand::Add {
                    name,
                    role,
                    out,
                    data_dir,
                    database,
                    server,
                },
        } => {
            check_operator_name(&name)?;
            let server = match server {
                Some(s) => s,
                None => format!("https://{}:{DEFAULT_PORT}", default_names()[0]),
            };
            crate::pki::ensure_data_dir(&data_dir)?;
            let store = store::open(&database_url(database, &data_dir)?)
                .await
                .context("could not open the database to record the new operator")?;
            let pki = Pki::open_shared(&data_dir, store.as_ref(), &local_actor()).await?;
            let id = pki.issue_operator(&name, role)?;
            let creds = Credentials {
                server,
                operator: name.clone(),
                role: role.to_string(),
                ca: pki.ca_pem.clone(),
                cert: id.cert_pem,
                key: id.key_pem,
            };
            crate::pki::write_secret(&out, &creds.to_toml())?;
            // Recorded after the file is written: a credential that was never
            // handed out does not revoke the one in use.
            let replaced = match store
                .add_operator(&name, role.as_str(), &id.fingerprint, &local_actor())
                .await
            {
                Ok(replaced) => replaced,
                Err(e) => {
                    let _ = std::fs::remove_file(&out);
                    return Err(anyhow::Error::new(e).context(format!(
                        "could not record operator {name}; nothing was issued"
                    )));
                }
            };
            println!("wrote credentials for {name} ({role}) to {}", out.display());
            if replaced {
                println!("earlier credentials of {name} no longer work");
            }
            Ok(())
        }
        Command::Ca {
            command: CaCommand::Pin { data_dir, database },
        } => {
            let no_ca = || {
                anyhow::anyhow!(
                    "there is no CA yet in data directory {} or its database\n  help: the \
                     server makes its CA when it first starts; are --data-dir and --database \
                     the server's?",
                    data_dir.display()
                )
            };
            // Without --database and without a SQLite database there (a
            // server on PostgreSQL), the copy of the CA the server keeps in
            // its data directory, checked against the database at its start.
            if database.is_none() && !data_dir.join(store::DEFAULT_DB_FILE).exists() {
                let ca = crate::pki::read_data_dir_ca(&data_dir)?.ok_or_else(no_ca)?;
                println!("{}", crate::pki::pin_of(&ca)?);
                return Ok(());
            }
            let store = store::open(&database_url(database, &data_dir)?)
                .await
                .context("could not open the database to read the CA")?;
            let ca = crate::pki::shared_ca(&data_dir, store.as_ref())
                .await?
                .ok_or_else(no_ca)?;
            println!("{}", crate::pki::pin_of(&ca)?);
            Ok(())
        }
        Command::Migrate { data_dir, database } => {
            let (_, applied) = store::migrate(&database_url(database, &data_dir)?)
                .await
                .context("could not migrate the database")?;
            if applied.is_empty() {
                println!("the database's schema is up to date; nothing applied");
            }
            for migration in applied {
                println!("applied migration {migration}");
            }
            Ok(())
        }
        Command::Export {
            out,
            with_reports,
            data_dir,
            database,
        } => {
            let store = store::open(&database_url(database, &data_dir)?)
                .await
                .context("could not open the database to export it")?;
            let summary = crate::archive::export(store.as_ref(), &out, with_reports)
                .await
                .with_context(|| format!("could not export to {}", out.display()))?;
            println!(
                "wrote {} (mode 0600: it holds the CA's private key): {summary}",
                out.display()
            );
            println!("the CA is {}", crate::pki::pin_of(&summary.ca)?);
            Ok(())
        }
        Command::Import {
            file,
            data_dir,
            database,
        } => {
            crate::pki::ensure_data_dir(&data_dir)?;
            let store = store::open(&database_url(database, &data_dir)?)
                .await
                .context("could not open the database to import into")?;
            let summary = crate::archive::import(store.as_ref(), &file, &data_dir)
                .await
                .with_context(|| format!("could not import {}", file.display()))?;
            println!("imported {}: {summary}", file.display());
            println!(
                "the CA is {}: enrolled nodes keep their certificates",
                crate::pki::pin_of(&summary.ca)?
            );
            Ok(())
        }
        Command::Operator {
            command:
                OperatorCommand::Revoke {
                    name,
                    data_dir,
                    database,
                },
        } => {
            check_operator_name(&name)?;
            crate::pki::ensure_data_dir(&data_dir)?;
            let store = store::open(&database_url(database, &data_dir)?)
                .await
                .context("could not open the database to revoke the operator")?;
            match store.revoke_operator(&name, &local_actor()).await {
                Ok(()) => {}
                Err(store::StoreError::NotFound(_)) => anyhow::bail!(
                    "no operator {name} to revoke: that name was never added on this server\n  \
                     help: the audit log (`cairn audit`) lists every `operator add`"
                ),
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("could not revoke operator {name}"))
                    );
                }
            }
            println!(
                "revoked every credential of {name}; a running server refuses them from its next call on"
            );
            Ok(())
        }
    }
}

/// A node certificate lifetime: a duration (`365d`, `12h`) within the
/// bounds [`crate::pki`] accepts.
fn node_cert_lifetime(s: &str) -> Result<Duration, String> {
    let lifetime = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    crate::pki::check_node_cert_lifetime(lifetime)?;
    Ok(lifetime)
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of at least 1")),
    }
}

/// Raises the soft limit on open files toward what `max_connections` needs
/// (up to the hard limit), and warns when even that is short: past it,
/// `accept` fails and the accept loop backs off instead of serving.
fn raise_descriptor_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let want = max_connections as u64 + SPARE_DESCRIPTORS;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    let raised = want.min(hard);
    let soft = match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
        Ok(()) => raised,
        Err(_) => soft,
    };
    if soft < want {
        warn!(
            open_files = soft,
            wanted = want,
            "the open-file limit is below --max-connections plus room for the rest; \
             raise LimitNOFILE (systemd) or lower --max-connections"
        );
    }
}

/// `--database`, or SQLite in the data directory.
fn database_url(given: Option<String>, data_dir: &std::path::Path) -> Result<String> {
    match given {
        Some(url) => Ok(url),
        None => Ok(store::default_url(data_dir)?),
    }
}

/// Who acts when `cairn-server operator …` runs on the server machine.
fn local_actor() -> Actor {
    Actor {
        name: whoami(),
        role: "local".into(),
        peer: "local".into(),
    }
}

fn check_operator_name(name: &str) -> Result<()> {
    if !is_operator_name(name) {
        anyhow::bail!("invalid operator name {name:?}: use letters, digits, '.', '_', '@' and '-'");
    }
    Ok(())
}

fn is_operator_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

/// Names for the server certificate when none are given: how a client on this
/// machine, or on the network by host name, reaches it.
fn default_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    names
}

fn whoami() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(["cairn-server", "serve"].iter().chain(args)).map(|c| c.command)
    }

    #[test]
    fn connection_caps_and_retention_are_flags_with_fleet_defaults() {
        let Command::Serve {
            max_connections,
            max_connections_per_peer,
            report_retention,
            node_cert_lifetime,
            ..
        } = serve(&[]).unwrap()
        else {
            panic!("not serve");
        };
        assert_eq!(
            (max_connections, max_connections_per_peer, report_retention),
            (65_536, 1024, 30)
        );
        assert_eq!(node_cert_lifetime, crate::pki::DEFAULT_NODE_CERT_LIFETIME);
        for (flag, secs) in [("90s", 90), ("12h", 12 * 3600), ("90d", 90 * 86_400)] {
            let Command::Serve {
                node_cert_lifetime, ..
            } = serve(&["--node-cert-lifetime", flag]).unwrap()
            else {
                panic!("not serve");
            };
            assert_eq!(node_cert_lifetime, Duration::from_secs(secs), "{flag}");
        }
        let Command::Serve {
            max_connections,
            max_connections_per_peer,
            report_retention,
            ..
        } = serve(&[
            "--max-connections",
            "30000",
            "--max-connections-per-peer",
            "5000",
            "--report-retention",
            "7",
        ])
        .unwrap()
        else {
            panic!("not serve");
        };
        assert_eq!(
            (max_connections, max_connections_per_peer, report_retention),
            (30_000, 5000, 7)
        );
        for bad in [
            ["--max-connections", "0"],
            ["--max-connections-per-peer", "-1"],
            ["--report-retention", "0"],
            ["--node-cert-lifetime", "59s"],
            ["--node-cert-lifetime", "1826d"],
            ["--node-cert-lifetime", "a year"],
        ] {
            assert!(serve(&bad).is_err(), "{bad:?}");
        }
    }
}
