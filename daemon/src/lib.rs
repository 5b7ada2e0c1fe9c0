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
pub use signal::{hangups, shutdown_signal, stopped};
