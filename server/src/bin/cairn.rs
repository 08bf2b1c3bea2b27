//! `cairn`, the operator CLI. Everything lives in [`cairn_server::cli`].

fn main() -> std::process::ExitCode {
    cairn_server::cli::main()
}
