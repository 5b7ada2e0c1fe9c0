//! The schema, versioned by `PRAGMA user_version`, and the migrations that bring a file to it.

use rusqlite::{Connection, TransactionBehavior};

use crate::store::StoreError;

/// Schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// `MIGRATIONS[n]` upgrades a file at schema version `n` to `n + 1`. Never edit a released
/// entry; append a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: command history.
    "
    CREATE TABLE commands (
        command_id    TEXT PRIMARY KEY NOT NULL,
        agent_id      TEXT NOT NULL,
        verb          TEXT NOT NULL,
        args          TEXT NOT NULL,
        requested_by  TEXT NOT NULL,
        status        TEXT NOT NULL,
        exit_code     INTEGER,
        stdout        TEXT NOT NULL,
        stderr        TEXT NOT NULL,
        truncated     INTEGER NOT NULL,
        created_at    TEXT NOT NULL,
        started_at    TEXT,
        finished_at   TEXT,
        duration_ms   INTEGER,
        error_code    TEXT,
        error_message TEXT,
        timeout_ms    INTEGER NOT NULL,
        job_id        TEXT
    );
    CREATE INDEX commands_agent ON commands (agent_id, command_id);
    CREATE INDEX commands_status ON commands (status, command_id);
    CREATE INDEX commands_job ON commands (job_id) WHERE job_id IS NOT NULL;
    CREATE TABLE command_events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        command_id TEXT NOT NULL,
        status     TEXT NOT NULL,
        at         TEXT NOT NULL
    );
    CREATE INDEX command_events_command ON command_events (command_id, seq);
    CREATE TABLE jobs (
        job_id          TEXT PRIMARY KEY NOT NULL,
        verb            TEXT NOT NULL,
        args            TEXT NOT NULL,
        requested_by    TEXT NOT NULL,
        selector        TEXT NOT NULL,
        max_concurrency INTEGER NOT NULL,
        max_errors      INTEGER NOT NULL,
        created_at      TEXT NOT NULL,
        targets         TEXT NOT NULL
    );
    CREATE TABLE store_meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );
",
    // 2: enrolment. `pins` keeps its rowid: it is the enrolment order.
    "
    CREATE TABLE pins (
        agent_id   TEXT NOT NULL,
        pin        TEXT NOT NULL,
        state      TEXT NOT NULL,
        source     TEXT NOT NULL,
        created_at TEXT NOT NULL,
        changed_at TEXT NOT NULL,
        PRIMARY KEY (agent_id, pin)
    );
    CREATE TABLE revoked_agents (
        agent_id TEXT PRIMARY KEY NOT NULL,
        at       TEXT NOT NULL
    );
    CREATE TABLE join_tokens (
        token_sha256 TEXT PRIMARY KEY NOT NULL,
        agent_id     TEXT NOT NULL,
        created_by   TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        expires_at   TEXT NOT NULL,
        used_at      TEXT
    );
",
    // 3: the latest certificate renewal of each agent (one outstanding, rate limited).
    "
    CREATE TABLE renewals (
        agent_id        TEXT PRIMARY KEY NOT NULL,
        old_pin         TEXT NOT NULL,
        new_pin         TEXT NOT NULL,
        requested_at_ms INTEGER NOT NULL,
        completed       INTEGER NOT NULL
    );
",
    // 4: signed checkpoints of the audit chain's tail (docs/audit.md, "Anchored tail").
    "
    CREATE TABLE audit_checkpoints (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        seq        INTEGER NOT NULL,
        hash       TEXT NOT NULL,
        ts         TEXT NOT NULL,
        file       TEXT NOT NULL,
        public_key TEXT NOT NULL,
        key_pin    TEXT NOT NULL,
        signature  TEXT NOT NULL
    );
",
    // 5: checkpoints per replica (docs/cluster.md, "Audit across replicas"); "" = single node.
    "
    ALTER TABLE audit_checkpoints ADD COLUMN replica_id TEXT NOT NULL DEFAULT '';
    CREATE INDEX audit_checkpoints_by_replica ON audit_checkpoints (replica_id, id);
",
];

/// Brings the file to [`SCHEMA_VERSION`] in one transaction; refuses a newer file.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i32 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "schema version {found} is newer than this build supports ({SCHEMA_VERSION}); \
             upgrade backend-agent"
        )));
    }
    let start = usize::try_from(found)
        .map_err(|_| StoreError::Corrupt(format!("negative schema version {found}")))?;
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
    }
    tx.commit()?;
    Ok(())
}
