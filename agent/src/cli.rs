//! The command line: `apply`, `validate`, `facts`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use cairn_proto::facts::Facts;
use cairn_proto::report::RunReport;
use cairn_proto::role::Diagnostics;
use clap::{Parser, Subcommand, ValueEnum};

use crate::progress::Printer;
use crate::run::{self, RunInput};
use crate::{facts, state};

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
                "role {} is valid: {} resources, digest {}",
                role.name,
                role.resources.len(),
                role.digest
            );
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
            let report = match format {
                // Each resource is printed as it finishes; the summary closes.
                Format::Human => run::run_once_observed(input, &options, &mut Printer::stdout())?,
                Format::Json => run::run_once(input, &options)?,
            };
            // One write for the rest of the report, not one per line.
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            match format {
                Format::Human => stdout.write_all(report.human_summary().as_bytes())?,
                Format::Json => {
                    serde_json::to_writer_pretty(&mut stdout, &report)?;
                    writeln!(stdout)?;
                }
            }
            stdout.flush()?;
            Ok(exit_code(&report, detailed_exitcodes))
        }
    }
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
