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
use tracing::{error, warn};

use crate::audit::{events, Audit};
use crate::clock;
use crate::periodic::{Pass, Periodic};
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

/// This process's replica id for checkpoints: `[cluster] replica_id`, or `""` on a single node.
pub fn replica_of(config: &crate::config::BackendConfig) -> String {
    config
        .cluster
        .as_ref()
        .map(|c| c.replica_id.clone())
        .unwrap_or_default()
}

/// Compares the log with `replica`'s latest checkpoint at start (another replica's never
/// counts); a shortfall is logged and audited. Returns whether the log reaches the
/// checkpoint (true when there is none).
pub async fn check_tail(store: &Store, audit: &Audit, replica: &str) -> bool {
    let checkpoint = match store.latest_checkpoint(replica).await {
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
pub struct Checkpoints(Periodic<Writer>);

/// Signs and stores checkpoints, skipping a tail already checkpointed.
struct Writer {
    signer: CheckpointSigner,
    store: Store,
    audit: Arc<Audit>,
    replica: String,
    last_seq: Option<u64>,
}

impl Pass for Writer {
    /// Writes a checkpoint if the tail moved; failures are logged (and retried next tick).
    async fn pass(&mut self) {
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
        match self.store.put_checkpoint(&self.replica, &checkpoint).await {
            Ok(()) => self.last_seq = Some(seq),
            Err(e) => warn!(error = %e, seq, "cannot store an audit checkpoint; retrying"),
        }
    }
}

impl Checkpoints {
    /// Starts the task: a checkpoint now and then every [`CHECKPOINT_INTERVAL`] the tail moved,
    /// stored as `replica`'s.
    pub fn start(
        signer: CheckpointSigner,
        store: Store,
        audit: Arc<Audit>,
        replica: String,
    ) -> Checkpoints {
        let writer = Writer {
            signer,
            store,
            audit,
            replica,
            last_seq: None,
        };
        Checkpoints(Periodic::start(
            "audit checkpoints",
            writer,
            CHECKPOINT_INTERVAL,
        ))
    }

    /// Stops the task and writes a final checkpoint of everything flushed so far. Call after
    /// the last audit record of the process is flushed.
    pub async fn finish(self) {
        self.0.finish().await;
    }
}

/// `backend-agent audit verify --config FILE`: [`run_verify_cli_replicas`] without other
/// replicas' logs.
pub fn run_verify_cli(config: &crate::config::BackendConfig) -> i32 {
    run_verify_cli_replicas(config, &[])
}

/// `backend-agent audit verify --config FILE [--replica ID=PATH]...`: verifies every file of
/// `[audit].path` and that the chain reaches this replica's latest checkpoint in the store,
/// signed by the `[hub].key` key; then every other replica with checkpoints in the (shared)
/// store: its log when given in `others`, else its latest checkpoint's signature and key.
/// Prints `ok: ...` to stdout or `BROKEN: ...` (naming the checkpoint) to stderr; returns the
/// exit code: 0 ok, 1 broken or cut, 64 unusable configuration.
pub fn run_verify_cli_replicas(
    config: &crate::config::BackendConfig,
    others: &[(String, std::path::PathBuf)],
) -> i32 {
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
            s.latest_checkpoints()
        }),
        None => crate::store::SqliteStore::open(&config.store.path).and_then(|s| {
            use crate::store::CheckpointStore as _;
            s.latest_checkpoints()
        }),
    };
    let latest = match latest {
        Ok(l) => l,
        Err(e) => {
            eprintln!("backend-agent: {e}");
            return 64;
        }
    };
    let replica = replica_of(config);
    let find = |id: &str| latest.iter().find(|(r, _)| r == id).map(|(_, c)| c);
    let store_name = match &config.store.url {
        Some(_) => "the PostgreSQL store".to_owned(),
        None => config.store.path.display().to_string(),
    };
    let mut code = verify_chain("", &config.audit.path, find(&replica), &pin, &store_name);
    for (id, path) in others.iter().filter(|(id, _)| *id != replica) {
        let label = format!("replica {id:?}: ");
        code = code.max(verify_chain(&label, path, find(id), &pin, &store_name));
    }
    for (id, cp) in &latest {
        if *id == replica || others.iter().any(|(o, _)| o == id) {
            continue;
        }
        match cp.verify_signature() {
            Ok(()) if cp.key_pin == pin => println!(
                "ok: replica {id:?}: latest checkpoint {cp} is signed by the hub key; its log \
                 is on that replica (--replica {id}=PATH verifies it here)"
            ),
            Ok(()) => {
                eprintln!("BROKEN: replica {id:?}: checkpoint {cp} is signed by another key");
                code = 1;
            }
            Err(e) => {
                eprintln!("BROKEN: replica {id:?}: checkpoint {cp}: {e}");
                code = 1;
            }
        }
    }
    code
}

/// Verifies the log at `path` against `checkpoint` (its replica's latest); 0 ok, 1 broken.
fn verify_chain(
    label: &str,
    path: &Path,
    checkpoint: Option<&Checkpoint>,
    pin: &str,
    store_name: &str,
) -> i32 {
    let Some(checkpoint) = checkpoint else {
        if log_is_empty(path) {
            println!("ok: {label}0 records; the log is empty and no checkpoint is needed yet");
            return 0;
        }
        eprintln!(
            "BROKEN: {label}the store {store_name} holds no audit checkpoint for this replica, \
             though the backend writes one at every start: the tail of {} cannot be anchored",
            path.display()
        );
        return 1;
    };
    match agentmesh_audit::verify_anchored(path, checkpoint, Some(pin)) {
        Ok(summary) => {
            println!(
                "ok: {label}{} records, {} signatures; tail anchored: reaches {checkpoint}",
                summary.records, summary.signatures_checked
            );
            0
        }
        Err(e) => {
            eprintln!("BROKEN: {label}{e}");
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
