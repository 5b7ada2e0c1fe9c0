//! `agentmesh-dev`: parse arguments, set up logging, run the quick start.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use agentmesh_daemon::LogFormat;
use clap::Parser;

/// agentmesh quick start: CA, certificates, configs and a token under ./dev-state, then a
/// backend and one local gateway agent in this process.
#[derive(Parser, Debug)]
#[command(name = "agentmesh-dev", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    options: agentmesh_dev::DevOptions,
}

fn main() -> ExitCode {
    let cli = match agentmesh_daemon::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // The quick start has no `[log]` reload: the hook is not needed.
    let _ = agentmesh_daemon::init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentmesh-dev: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agentmesh_dev::run(cli.options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "agentmesh-dev stopped");
            eprintln!("agentmesh-dev: {e:#}");
            ExitCode::FAILURE
        }
    }
}
