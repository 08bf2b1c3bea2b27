use std::process::ExitCode;

fn main() -> ExitCode {
    cairn_agent::cli::main()
}
