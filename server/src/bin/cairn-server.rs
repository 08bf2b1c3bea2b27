use std::process::ExitCode;

fn main() -> ExitCode {
    cairn_server::daemon::main()
}
