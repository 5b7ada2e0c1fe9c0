//! `backend-agent`: parse arguments, load config, set up logging, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use agentmesh_daemon::LogFormat;
use backend_agent::auth::{new_token, token_config_snippet, Role};
use backend_agent::config::BackendConfig;
use backend_agent::{Listeners, ReloadSource};
use clap::{Parser, Subcommand, ValueEnum};

/// agentmesh control plane: operator API and agent hub.
#[derive(Parser, Debug)]
#[command(name = "backend-agent", version, about)]
struct Cli {
    /// Config file (TOML); production: /etc/agentmesh/backend.toml.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The quick start: runs the `agentmesh-dev` binary installed next to this one (the
    /// control plane does not link the agent, so the quick start lives in its own crate).
    #[command(disable_help_flag = true)]
    Dev {
        /// Passed on to `agentmesh-dev` (e.g. `--dir`, `--http`, `--hub`, `--help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Revoke an agent offline (backend stopped): every pin refused from the next start on.
    /// With the backend running, use `DELETE /api/v1/agents/{id}` instead.
    Revoke {
        /// Agent id.
        #[arg(long)]
        id: String,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Operator API tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Copy the store (SQLite online backup), the audit log and the config into a new
    /// directory; safe while the backend runs.
    Backup {
        /// Directory to create (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a backup back on a stopped node (the paths come from `--config`, which is written
    /// from the backup if absent). Refuses while the node runs, and when its files exist
    /// unless `--force`.
    Restore {
        /// Backup directory.
        #[arg(long)]
        from: PathBuf,
        /// Replace an existing store and audit log.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Print a fresh token and the config lines that enable it.
    New {
        /// Token name (shows up as `requested_by` and in the audit log).
        #[arg(long)]
        name: String,
        /// Role of the token.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
}

#[derive(Subcommand, Debug)]
enum AuditAction {
    /// Verify the hash chain and result signatures; prints the first broken record. With
    /// `--config`, verifies the configured log (all rotated files) and that it reaches the
    /// latest signed checkpoint in the store, so records cut off the end are detected; with
    /// FILE... the tail is unanchored. Exit 0 ok, 1 broken or cut, 64 usage/config error.
    Verify {
        /// Log files (current and rotated, any order); instead of `--config`.
        files: Vec<PathBuf>,
        /// With `--config` in a cluster: another replica's log (ID=PATH), verified against
        /// that replica's checkpoints in the shared store; repeatable.
        #[arg(long = "replica", value_name = "ID=PATH")]
        replicas: Vec<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

use agentmesh_daemon::EXIT_USAGE;

fn main() -> ExitCode {
    let cli = match agentmesh_daemon::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Some(Command::Dev { args }) = &cli.command {
        return run_dev(cli.log_format, args);
    }
    let log_hook = agentmesh_daemon::init_tracing(cli.log_format);
    match cli.command {
        Some(Command::Dev { .. }) => ExitCode::from(EXIT_USAGE),
        Some(Command::Token {
            action: TokenAction::New { name, role },
        }) => {
            let role = match role {
                RoleArg::Viewer => Role::Viewer,
                RoleArg::Operator => Role::Operator,
                RoleArg::Admin => Role::Admin,
            };
            let token = new_token();
            println!("token: {token}");
            println!("\n# add to backend.toml (only the hash is stored):");
            print!("{}", token_config_snippet(&name, role, &token));
            ExitCode::SUCCESS
        }
        Some(Command::Audit {
            action: AuditAction::Verify { files, replicas },
        }) => {
            let mut others = Vec::new();
            for r in &replicas {
                match r.split_once('=') {
                    Some((id, path)) if !id.is_empty() && !path.is_empty() => {
                        others.push((id.to_owned(), PathBuf::from(path)));
                    }
                    _ => {
                        eprintln!("usage: --replica ID=PATH (another replica's audit log)");
                        return ExitCode::from(EXIT_USAGE);
                    }
                }
            }
            if !others.is_empty() && cli.config.is_none() {
                eprintln!("usage: --replica needs --config (the shared store's checkpoints)");
                return ExitCode::from(EXIT_USAGE);
            }
            let code = match (&cli.config, files.is_empty()) {
                (Some(_), false) => {
                    eprintln!(
                        "usage: audit verify --config FILE  or  audit verify FILE..., not both"
                    );
                    i32::from(EXIT_USAGE)
                }
                (Some(path), true) => match load_config(Some(path)) {
                    Ok(config) => {
                        backend_agent::checkpoint::run_verify_cli_replicas(&config, &others)
                    }
                    Err(code) => return code,
                },
                (None, _) => agentmesh_audit::run_verify_cli(&files),
            };
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Some(Command::Revoke { id }) => {
            let config = match load_config(cli.config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime_main(async move {
                let store = backend_agent::store::Store::open(&config.store)
                    .await
                    .map_err(|e| (1, e.to_string()))?;
                let n = backend_agent::enrol::revoke_offline(&store, &id)
                    .await
                    .map_err(|e| (1, e.to_string()))?;
                println!("revoked {n} pin(s) of {id}; restart the backend if it is running");
                Ok(())
            })
        }
        Some(Command::Backup { out }) => {
            let Some(path) = cli.config.clone() else {
                eprintln!("backend-agent: backup needs --config FILE");
                return ExitCode::from(EXIT_USAGE);
            };
            let config = match load_config(Some(&path)) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match backend_agent::backup::backup(&config, &path, &out) {
                Ok(report) => {
                    let m = &report.manifest;
                    println!(
                        "backup in {}: schema {}, {} files, audit checkpoint {:?}",
                        report.dir.display(),
                        m.schema_version,
                        m.files.len(),
                        m.checkpoint_seq
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("backend-agent: backup failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Restore { from, force }) => {
            let Some(path) = cli.config.clone() else {
                eprintln!("backend-agent: restore needs --config FILE");
                return ExitCode::from(EXIT_USAGE);
            };
            match backend_agent::backup::restore(&path, &from, force) {
                Ok(r) => {
                    println!(
                        "restored store {} (schema {}) and {} audit file(s){}; start the backend",
                        r.store.display(),
                        r.schema_version,
                        r.audit_files.len(),
                        if r.config_written {
                            ", config written from the backup"
                        } else {
                            ""
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("backend-agent: restore refused: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            let config = match load_config(cli.config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // RUST_LOG wins at start; `[log] level` otherwise, and on every reload.
            if let (Some(level), Err(_)) = (&config.log.level, std::env::var("RUST_LOG")) {
                if let Err(e) = log_hook(level) {
                    eprintln!("backend-agent: log.level: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            }
            let source = ReloadSource {
                path: cli.config.clone(),
                log: Some(log_hook),
            };
            runtime_main(async move {
                let shutdown = agentmesh_daemon::shutdown_signal();
                let reloads = agentmesh_daemon::hangups();
                let listeners = Listeners::bind(&config)
                    .await
                    .map_err(|e| (1, e.to_string()))?;
                backend_agent::run_reloadable(listeners, config, source, reloads, shutdown)
                    .await
                    .map_err(|e| (1, e.to_string()))
            })
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<BackendConfig, ExitCode> {
    let Some(path) = path else {
        eprintln!("backend-agent: --config FILE is required (or try `cargo run -p agentmesh-dev`)");
        return Err(ExitCode::from(EXIT_USAGE));
    };
    BackendConfig::load(path).map_err(|e| {
        eprintln!("backend-agent: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn runtime_main(fut: impl std::future::Future<Output = Result<(), (u8, String)>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("backend-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            tracing::error!(error = %message, "backend-agent stopped");
            eprintln!("backend-agent: {message}");
            ExitCode::from(code)
        }
    }
}

/// `backend-agent dev`: hands over to `agentmesh-dev` from the same directory, so the
/// contract's quick-start command keeps working where both binaries are built or installed.
fn run_dev(log_format: LogFormat, args: &[std::ffi::OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let dev = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("agentmesh-dev")));
    let Some(dev) = dev.filter(|p| p.is_file()) else {
        eprintln!(
            "backend-agent dev runs the agentmesh-dev binary, which is not next to this one; \
             run `cargo run --release -p agentmesh-dev` (or `cargo build --release --workspace`)"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let mut command = std::process::Command::new(&dev);
    if matches!(log_format, LogFormat::Json) {
        command.args(["--log-format", "json"]);
    }
    let error = command.args(args).exec();
    eprintln!("cannot run {}: {error}", dev.display());
    ExitCode::from(EXIT_USAGE)
}
