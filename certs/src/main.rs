#![forbid(unsafe_code)]
//! `mesh-certs`: the agentmesh certificate tool. All logic lives in `cli` and the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
