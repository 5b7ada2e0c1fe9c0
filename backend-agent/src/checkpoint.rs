//! The anchored audit tail: signed checkpoints of the audit chain, written to the store.
//!
//! A background task signs `(seq, hash)` of the last record on disk with the hub's TLS key and
//! stores it at most every [`CHECKPOINT_INTERVAL`] while records flow (nothing is written while
//! the log is idle), and once more at shutdown. At start, [`check_tail`] compares the log with
//! the latest checkpoint: a log that ends before it, or has another record at its seq, lost
//! records the checkpoint vouched for — that is logged as an error and recorded
//! (`audit_tail_missing`), and the backend keeps running. `backend-agent audit verify --config`
//! checks the same offline (`docs/audit.md`, "Anchored tail").

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_audit::{find_record, Checkpoint, CheckpointSigner};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::audit::{events, Audit};
use crate::clock;
use crate::store::Store;

/// Longest time between a record reaching the disk and a checkpoint vouching for it (plus the
/// audit writer's idle fsync delay).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Why checkpoints cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The hub key could not be read or is not a P-256 PKCS#8 key.
    #[error("audit checkpoints are signed with [hub] key {path}: {message}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Loads the signer from the hub's TLS key file (PEM, PKCS#8 P-256).
pub fn load_signer(key_path: &Path) -> Result<CheckpointSigner, CheckpointError> {
    let err = |message: String| CheckpointError::Key {
        path: key_path.display().to_string(),
        message,
    };
    let pem = std::fs::read_to_string(key_path).map_err(|e| err(e.to_string()))?;
    let der = mesh_certs::p256_pkcs8_der_from_pem(&pem).map_err(|e| err(e.to_string()))?;
    CheckpointSigner::from_pkcs8_der(&der).map_err(|e| err(e.to_string()))
}

/// Compares the log with the latest checkpoint at start; a shortfall is logged and audited.
/// Returns whether the log reaches the checkpoint (true when there is none).
pub async fn check_tail(store: &Store, audit: &Audit) -> bool {
    let checkpoint = match store.latest_checkpoint().await {
        Ok(Some(c)) => c,
        Ok(None) => return true,
        Err(e) => {
            error!(error = %e, "cannot read the latest audit checkpoint; the tail is not checked");
            return true;
        }
    };
    let path = audit.path().to_path_buf();
    let seq = checkpoint.seq;
    let found = tokio::task::spawn_blocking(move || find_record(&path, seq))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let (last_seq, _) = audit.log().durable_tail();
    let problem = match found {
        Ok(Some(hash)) if hash == checkpoint.hash => return true,
        Ok(Some(hash)) => format!("record seq {seq} has hash {hash}, not the checkpoint's"),
        Ok(None) => format!("the log ends at seq {last_seq}, before the checkpoint"),
        Err(e) => format!("the log cannot be read: {e}"),
    };
    error!(
        checkpoint.seq = seq,
        checkpoint.hash = %checkpoint.hash,
        checkpoint.ts = %checkpoint.ts,
        problem = %problem,
        "AUDIT LOG TAIL MISSING: records a signed checkpoint vouches for are gone"
    );
    audit.record(events::audit_tail_missing(&checkpoint, last_seq, &problem));
    false
}

/// The running checkpoint task; [`Checkpoints::finish`] writes the last one at shutdown.
pub struct Checkpoints {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Writer>>,
}

/// Signs and stores checkpoints, skipping a tail already checkpointed.
struct Writer {
    signer: CheckpointSigner,
    store: Store,
    audit: Arc<Audit>,
    last_seq: Option<u64>,
}

impl Writer {
    /// Writes a checkpoint if the tail moved; failures are logged (and retried next tick).
    async fn write(&mut self) {
        let (seq, hash) = self.audit.log().durable_tail();
        if seq == 0 || self.last_seq == Some(seq) {
            return;
        }
        let file = self
            .audit
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let checkpoint: Checkpoint =
            match self.signer.sign(seq, &hash, &clock::now_rfc3339(), &file) {
                Ok(c) => c,
                Err(e) => {
                    error!(error = %e, "cannot sign an audit checkpoint");
                    return;
                }
            };
        match self.store.put_checkpoint(&checkpoint).await {
            Ok(()) => self.last_seq = Some(seq),
            Err(e) => warn!(error = %e, seq, "cannot store an audit checkpoint; retrying"),
        }
    }
}

impl Checkpoints {
    /// Starts the task: a checkpoint now and then every [`CHECKPOINT_INTERVAL`] the tail moved.
    pub fn start(signer: CheckpointSigner, store: Store, audit: Arc<Audit>) -> Checkpoints {
        let (stop, mut stopped) = oneshot::channel();
        let mut writer = Writer {
            signer,
            store,
            audit,
            last_seq: None,
        };
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(CHECKPOINT_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = every.tick() => writer.write().await,
                }
            }
            writer
        });
        Checkpoints {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the task and writes a final checkpoint of everything flushed so far. Call after
    /// the last audit record of the process is flushed.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(mut writer) => writer.write().await,
                Err(e) => error!(error = %e, "audit checkpoint task failed"),
            }
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        // Without `finish` (an abort): stop at once, as a crash would.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `backend-agent audit verify --config FILE`: verifies every file of `[audit].path` and that
/// the chain reaches the latest checkpoint in `[store].path`, signed by the `[hub].key` key.
/// Prints `ok: ...` to stdout or `BROKEN: ...` (naming the checkpoint) to stderr; returns the
/// exit code: 0 ok, 1 broken or cut, 64 unusable configuration.
pub fn run_verify_cli(config: &crate::config::BackendConfig) -> i32 {
    let pin = match load_signer(&config.hub.key) {
        Ok(signer) => signer.key_pin(),
        Err(e) => {
            eprintln!("backend-agent: {e}");
            return 64;
        }
    };
    if config.store.url.is_none() && !config.store.path.exists() {
        eprintln!(
            "backend-agent: no store at {} ([store] path): nothing anchors the audit log",
            config.store.path.display()
        );
        return 64;
    }
    let latest = match &config.store.url {
        Some(url) => crate::store::PostgresStore::open(url, 1).and_then(|s| {
            use crate::store::CheckpointStore as _;
            s.latest_checkpoint()
        }),
        None => crate::store::SqliteStore::open(&config.store.path).and_then(|s| {
            use crate::store::CheckpointStore as _;
            s.latest_checkpoint()
        }),
    };
    let checkpoint = match latest {
        Ok(Some(c)) => c,
        Ok(None) if log_is_empty(&config.audit.path) => {
            println!("ok: 0 records; the log is empty and no checkpoint is needed yet");
            return 0;
        }
        Ok(None) => {
            eprintln!(
                "BROKEN: the store {} holds no audit checkpoint, though the backend writes one \
                 at every start: the tail of {} cannot be anchored",
                config.store.path.display(),
                config.audit.path.display()
            );
            return 1;
        }
        Err(e) => {
            eprintln!("backend-agent: {e}");
            return 64;
        }
    };
    match agentmesh_audit::verify_anchored(&config.audit.path, &checkpoint, Some(&pin)) {
        Ok(summary) => {
            println!(
                "ok: {} records, {} signatures; tail anchored: reaches {checkpoint}",
                summary.records, summary.signatures_checked
            );
            0
        }
        Err(e) => {
            eprintln!("BROKEN: {e}");
            1
        }
    }
}

/// Whether the log at `path` has no records at all (no files, or only empty ones).
fn log_is_empty(path: &Path) -> bool {
    agentmesh_audit::log_files(path).is_ok_and(|files| {
        files
            .iter()
            .all(|f| std::fs::metadata(f).is_ok_and(|m| m.len() == 0))
    })
}
