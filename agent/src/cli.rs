//! The command line: `apply`, `validate`, `facts`, `enroll`, `run`, `daemon`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use cairn_proto::facts::Facts;
use cairn_proto::report::{RunReport, count};
use cairn_proto::role::Diagnostics;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config};
use crate::identity::NodeIdentity;
use crate::progress::{Observer, Printer, Silent};
use crate::remote::{self, Node};
use crate::run::{self, RunInput};
use crate::{daemon, enroll, facts, state};

/// What `--version` prints: a debug build says so, so that a benchmark can
/// refuse to measure it.
const VERSION: &str = if cfg!(debug_assertions) {
    concat!(env!("CARGO_PKG_VERSION"), " (debug build)")
} else {
    env!("CARGO_PKG_VERSION")
};

#[derive(Parser)]
#[command(
    name = "cairn-agent",
    version = VERSION,
    about = "Converge this machine to a Cairn role"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Converge this machine to the role in ROLE_DIR.
    Apply {
        role_dir: PathBuf,
        /// Check and report what would change; change nothing.
        #[arg(long)]
        noop: bool,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Exit 0 when nothing changed, 2 on changes, 4 on failures, 6 on both.
        #[arg(long)]
        detailed_exitcodes: bool,
        /// Where the agent keeps its lock and pending refreshes.
        #[arg(long, env = "CAIRN_STATE_DIR", default_value = state::DEFAULT_DIR)]
        state_dir: PathBuf,
    },
    /// Check a role for errors without touching this machine; lists every error.
    Validate { role_dir: PathBuf },
    /// Print the facts this machine presents to templates, as JSON.
    Facts,
    /// Get this node's certificate from a server, with a join token; the key
    /// is made here and never leaves this machine.
    Enroll {
        /// A server to enroll with, https://HOST:PORT (repeatable; tried in
        /// order) [default: `servers` of the configuration file].
        #[arg(long = "server", value_name = "URL")]
        servers: Vec<String>,
        /// The pin of the servers' CA, as `cairn-server ca pin` prints it
        /// (sha256:…) [default: `ca_pin` of the configuration file].
        #[arg(long, value_name = "PIN")]
        ca_pin: Option<cairn_proto::client::CaPin>,
        /// A file holding the join token from `cairn token create`; deleted
        /// once the node is enrolled.
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// The node's name [default: `name` of the configuration file, else
        /// the machine id's first 12 digits and the hostname].
        #[arg(long)]
        name: Option<String>,
        /// The agent's configuration file [default: /etc/cairn/agent.toml, if
        /// it exists].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where the node's identity is stored [default: `state_dir` of the
        /// configuration file, else /var/lib/cairn].
        #[arg(long, env = "CAIRN_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Fetch this node's role from its server, converge to it, and report.
    /// When no server answers, converge to the role cached by the last run.
    Run {
        /// The agent's configuration file [default: /etc/cairn/agent.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Check and report what would change; change nothing.
        #[arg(long)]
        noop: bool,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Exit 0 when nothing changed, 2 on changes, 4 on failures, 6 on both.
        #[arg(long)]
        detailed_exitcodes: bool,
    },
    /// Keep this node converged: run when its role's channel moves, and
    /// every interval; until SIGTERM.
    Daemon {
        /// The agent's configuration file [default: /etc/cairn/agent.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

/// Exit code when the run could not happen at all.
const COULD_NOT_RUN: u8 = 1;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            print_error(&e);
            ExitCode::from(COULD_NOT_RUN)
        }
    }
}

fn print_error(e: &anyhow::Error) {
    // Role diagnostics are already one per line and complete.
    if let Some(d) = e.downcast_ref::<Diagnostics>() {
        eprintln!("{d}");
        eprintln!("error: the role has {}", d.summary());
        return;
    }
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Facts => {
            let facts = facts::gather()?;
            println!("{}", serde_json::to_string_pretty(&facts)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { role_dir } => {
            let role = RunInput::from_dir(&role_dir)?.load(&Facts::placeholder())?;
            println!(
                "role {} is valid: {}, digest {}",
                role.name,
                count(role.resources.len() as u64, "resource"),
                role.digest
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll {
            servers,
            ca_pin,
            token_file,
            name,
            config,
            state_dir,
        } => {
            let file = load_config(config.as_deref())?;
            let facts = facts::gather()?;
            let name = match name.or(file.name) {
                Some(name) => {
                    cairn_proto::node::check_name(&name)?;
                    name
                }
                None => enroll::default_name(&facts)?,
            };
            let request = enroll::Request {
                servers: if servers.is_empty() { file.servers } else { servers },
                ca_pin: ca_pin.or(file.ca_pin).ok_or_else(|| {
                    anyhow::anyhow!(
                        "no CA pin: give --ca-pin sha256:… (or `ca_pin` in the configuration file)\n  \
                         help: `cairn-server ca pin` on the server prints it"
                    )
                })?,
                token_file,
                name,
                state_dir: state_dir.unwrap_or(file.state_dir),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let identity = runtime.block_on(enroll::enroll(&request, &facts))?;
            println!(
                "enrolled node {} ({}); identity stored in {}",
                identity.name,
                identity.assignment,
                request.state_dir.join(crate::identity::FILE).display()
            );
            if let Some(warning) = enroll::delete_token_file(&request.token_file) {
                eprintln!("{warning}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            role_dir,
            noop,
            format,
            detailed_exitcodes,
            state_dir,
        } => {
            let input = RunInput::from_dir(&role_dir)?;
            let options = run::Options { noop, state_dir };
            let report = run::run_once_observed(input, &options, &mut *observer(format))?;
            print_report(&report, format, &[])?;
            Ok(exit_code(&report, detailed_exitcodes))
        }
        Command::Run {
            config,
            noop,
            format,
            detailed_exitcodes,
        } => {
            let mut node = node(load_config(config.as_deref())?)?;
            let ran = remote::run(&mut node, noop, &mut *observer(format))?;
            let mut notes = Vec::new();
            if let Some(renewal) = &ran.renewal {
                notes.push(format!("Certificate renewal: {renewal}."));
            }
            if let Some(none) = &ran.from_cache {
                notes.push(format!(
                    "Used the cached role (version {} at channel {}): {none}",
                    ran.report.role_version, ran.report.channel
                ));
            }
            match &ran.delivered {
                Ok(n) if ran.from_cache.is_none() => {
                    notes.push(format!("Delivered {n} report(s)."));
                }
                Ok(_) => {}
                Err(e) => notes.push(format!("Could not deliver the report: {e:#}")),
            }
            if ran.waiting > 0 {
                notes.push(format!(
                    "{} report(s) spooled, to be delivered when a server answers.",
                    ran.waiting
                ));
            }
            print_report(&ran.report, format, &notes)?;
            Ok(exit_code(&ran.report, detailed_exitcodes))
        }
        Command::Daemon { config } => {
            let config = load_config(config.as_deref())?;
            let splay = config.splay;
            daemon::serve(node(config)?, splay)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints a run's report in `format`, then `notes` (on stderr with JSON, so
/// that stdout stays one document).
/// In human form each resource is printed as it finishes; JSON is the report alone.
fn observer(format: Format) -> Box<dyn Observer> {
    match format {
        Format::Human => Box::new(Printer::stdout()),
        Format::Json => Box::new(Silent),
    }
}

/// What follows a run: in human form the summary (the [`observer`] printed
/// each resource), in JSON the whole report; then `notes`.
fn print_report(report: &RunReport, format: Format, notes: &[String]) -> Result<()> {
    // One write for the rest of the report, not one per line.
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        Format::Human => {
            stdout.write_all(report.human_summary().as_bytes())?;
            for note in notes {
                writeln!(stdout, "{note}")?;
            }
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut stdout, report)?;
            writeln!(stdout)?;
            for note in notes {
                eprintln!("{note}");
            }
        }
    }
    stdout.flush()?;
    Ok(())
}

/// The configuration file at `path`, which must exist; else the default
/// one, or the defaults when there is none.
fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(path) => Config::load(path, true),
        None => Config::load(config::DEFAULT_PATH.as_ref(), false),
    }
}

/// The node enrolled in the configuration's state directory, using the
/// configuration's servers, else the ones it enrolled with.
fn node(config: Config) -> Result<Node> {
    let identity = NodeIdentity::load(&config.state_dir)?;
    let servers = if config.servers.is_empty() {
        identity.servers.clone()
    } else {
        config.servers
    };
    Ok(Node {
        identity,
        servers,
        state_dir: config.state_dir,
        interval: config.interval,
    })
}

/// Puppet's convention: plain mode says only success (0) or not (1); detailed
/// mode adds 2 for changes (or pending changes in noop) and 4 for failures.
pub fn exit_code(report: &RunReport, detailed: bool) -> ExitCode {
    let s = &report.summary;
    let failed = s.failed + s.skipped > 0;
    if !detailed {
        return ExitCode::from(if failed { 1 } else { 0 });
    }
    let changed = s.changed + s.would_change > 0;
    ExitCode::from(if changed { 2 } else { 0 } | if failed { 4 } else { 0 })
}
