//! What `backend-agent` and `gateway-agent` do alike as daemons, in one place so they behave
//! alike: the shutdown and reload signals, the tracing subscriber, systemd notification and
//! the `AGENTMESH_<SECTION>_<KEY>` environment overrides (each daemon keeps its own key set).
//!
//! # Layout
//! - [`signal`]: SIGINT/SIGTERM as a future, SIGHUP as a channel (handlers installed at once),
//!   and [`stopped`] for tasks watching the in-process stop flag.
//! - [`log`]: `--log-format text|json`, `RUST_LOG`, and a hook that changes the filter later.
//! - [`notify`]: `READY=1`, `STOPPING=1`, `STATUS=` and the watchdog keep-alive task.
//! - [`env`]: environment overrides applied to a parsed TOML table.
#![forbid(unsafe_code)]

pub mod env;
pub mod log;
pub mod notify;
pub mod signal;

pub use log::{init_tracing, LogFormat, LogHook};

/// Exit code for bad usage or configuration (EX_USAGE), the same for every binary.
pub const EXIT_USAGE: u8 = 64;

/// Parses the command line; `Err` is the exit code after clap printed its message: 64 for a
/// usage error, success for `--help`/`--version`.
pub fn parse_args<C: clap::Parser>() -> Result<C, std::process::ExitCode> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            std::process::ExitCode::from(EXIT_USAGE)
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}
pub use signal::{hangups, shutdown_signal, stopped};
