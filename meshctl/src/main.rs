//! `meshctl`: parses the command line, runs it, prints an error once and exits with the
//! documented code (docs/meshctl.md).
#![forbid(unsafe_code)]

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = meshctl::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshctl: cannot start: {e}");
            return std::process::ExitCode::from(meshctl::ExitCode::FAILED);
        }
    };
    match runtime.block_on(meshctl::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("meshctl: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
