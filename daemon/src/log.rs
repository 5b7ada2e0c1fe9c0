//! The tracing subscriber both daemons install: text or JSON lines on stdout, filtered by
//! `RUST_LOG` (default `info`), with a hook that swaps the filter later (a config reload).

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; colours only on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Replaces the log filter (`info`, `warn,backend_agent::hub=debug`); `Err` names what is
/// wrong with it.
pub type LogHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Installs the global subscriber and returns the hook that changes its filter.
pub fn init_tracing(format: LogFormat) -> LogHook {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colours only for a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let json = (format == LogFormat::Json).then(|| tracing_subscriber::fmt::layer().json());
    let text =
        (format == LogFormat::Text).then(|| tracing_subscriber::fmt::layer().with_ansi(ansi));
    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .init();
    Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// Checks that `level` parses as a log filter.
pub fn check_filter(level: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("{level:?} is not a log filter: {e}"))
}
