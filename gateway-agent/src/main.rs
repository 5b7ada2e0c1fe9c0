//! `gateway-agent`: parses arguments, loads the config, wires signals and calls the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use agentmesh_daemon::LogFormat;
use clap::{Args, Parser, Subcommand};
use gateway_agent::enroll::{EnrollError, EnrollOptions};
use gateway_agent::enroll_cli::{self, EnrollCommand};
use gateway_agent::{check_config, config_warnings, GatewayConfig, RunError};

use agentmesh_daemon::EXIT_USAGE;

/// Threads for blocking work (file I/O, fsyncs, user lookups); more wait their turn.
const BLOCKING_THREADS: usize = 8;

#[derive(Parser)]
#[command(name = "gateway-agent", version, about = "agentmesh gateway agent")]
struct Cli {
    /// The config file.
    #[arg(
        long,
        global = true,
        env = "AGENTMESH_CONFIG",
        default_value = "/etc/agentmesh/gateway.toml"
    )]
    config: PathBuf,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validates the config and the files it names, without connecting.
    CheckConfig,
    /// The agent's local audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Joins the mesh with a one-time join token: generates the key here, has the backend
    /// sign its CSR, writes key, certificate and CA (0600) and prints the config lines.
    Enroll(EnrollArgs),
}

#[derive(Args)]
struct EnrollArgs {
    /// Base URL of the operator API: the https front door (or http://127.0.0.1:8080 locally).
    #[arg(long)]
    api: String,
    /// The one-time join token (better passed in the environment than on the command line).
    #[arg(long, env = "AGENTMESH_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The agent id the token was issued for.
    #[arg(long)]
    id: String,
    /// The mesh CA certificate the API's certificate must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// Pin the API's certificate must also have.
    #[arg(long)]
    server_pin: Option<String>,
    /// Where to write key.pem, cert.pem and ca.pem.
    #[arg(long, default_value = "/etc/agentmesh/tls")]
    out: PathBuf,
    /// Hub URL for the printed config snippet (default: derived from --api).
    #[arg(long)]
    hub_url: Option<String>,
    /// Audit log to record the enrolment in (default: `[audit] path` of --config, if that
    /// file exists); only an existing log is written to.
    #[arg(long)]
    audit: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verifies the hash chain of audit log files.
    Verify {
        /// Audit log files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match agentmesh_daemon::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // The filter is fixed for the agent's lifetime: its config has no `[log]` to reload.
    let _ = agentmesh_daemon::init_tracing(cli.log_format);
    match cli.command {
        None => run(&cli.config),
        Some(Command::CheckConfig) => check(&cli.config),
        Some(Command::Audit {
            command: AuditCommand::Verify { files },
        }) => exit_code(agentmesh_audit::run_verify_cli(&files)),
        Some(Command::Enroll(args)) => enroll(args, &cli.config),
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn enroll(args: EnrollArgs, config: &std::path::Path) -> ExitCode {
    // Without --audit, the log of an existing config (enrolment often comes before one).
    let audit = args.audit.or_else(|| {
        config
            .is_file()
            .then(|| GatewayConfig::load(config).ok())
            .flatten()
            .map(|c| c.audit_path())
    });
    let command = EnrollCommand {
        options: EnrollOptions {
            api: args.api,
            token: args.token,
            id: args.id,
            ca: args.ca,
            server_pin: args.server_pin,
            out: args.out,
        },
        hub_url: args.hub_url,
        audit,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway-agent enroll: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(enroll_cli::run(&command)) {
        Ok(report) => {
            println!(
                "enrolled {} with pin {}",
                report.enrolled.agent_id, report.enrolled.pin
            );
            println!(
                "wrote {}/key.pem, cert.pem and ca.pem",
                command.options.out.display()
            );
            match &report.audit {
                Ok(path) => println!("recorded in the audit log {}", path.display()),
                Err(why) => println!("not recorded in an audit log: {why}"),
            }
            println!("\nconfig for gateway.toml:\n\n{}", report.snippet);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway-agent enroll: {e}");
            match e {
                EnrollError::Usage(_) => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn load(path: &std::path::Path) -> Result<GatewayConfig, ExitCode> {
    GatewayConfig::load(path).map_err(|e| {
        eprintln!("gateway-agent: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Warnings go to stderr and do not change the exit status.
    for w in config_warnings(&config) {
        eprintln!("warning: {w}");
    }
    match check_config(&config) {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The same advice `check-config` prints, once per start, where operators read the logs.
    for w in config_warnings(&config) {
        tracing::warn!("{w}");
    }
    // One thread runs everything: an agent holds one session and a few commands, and every
    // worker thread (with its malloc arena) is resident memory on each host. Blocking work
    // (journal fsyncs, user lookups) goes to a small pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reload_path = path.to_path_buf();
    match runtime.block_on(async move {
        let shutdown = agentmesh_daemon::shutdown_signal();
        let reloads = reloads_on_sighup(reload_path);
        gateway_agent::run_reloadable(config, gateway_agent::AgentState::new(), shutdown, reloads)
            .await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-agent: {e}");
            match e {
                RunError::Url(_) | RunError::Tls(_) => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Loads and validates the config file on each SIGHUP and hands a good one to the agent; a
/// bad one is logged and the running config kept. The handler is installed now, so a
/// SIGHUP never takes the default action (exit). Must be called inside the runtime.
fn reloads_on_sighup(path: PathBuf) -> tokio::sync::mpsc::Receiver<GatewayConfig> {
    let mut hangups = agentmesh_daemon::hangups();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match GatewayConfig::load(&path) {
                Ok(config) => {
                    if tx.send(config).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "config reload refused; keeping the running config"
                ),
            }
        }
    });
    rx
}
