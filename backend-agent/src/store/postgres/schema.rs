//! The PostgreSQL schema, versioned by the one row of `schema_version`, and the migrations
//! that bring a database to it.
//!
//! The tables mirror the SQLite ones (`store/sqlite/schema.rs`) with three differences: ids
//! and times are `TEXT COLLATE "C"`, so ordering and `<` compare bytes as SQLite does
//! whatever the database's locale; command output and error messages are `BYTEA`, because a
//! PostgreSQL `TEXT` cannot hold a NUL byte and an agent's output may; and enrolment order is
//! an identity column (SQLite uses its rowid).

use postgres::Client;

use crate::store::StoreError;

/// Schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Advisory lock key held (per transaction) while migrating, so replicas starting at once
/// migrate one after the other. ASCII "agentmsh".
const MIGRATION_LOCK: i64 = 0x6167_656e_746d_7368;

/// `MIGRATIONS[n]` upgrades a database at schema version `n` to `n + 1`. Never edit a
/// released entry; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite store held at its version 4.
    r#"
    CREATE TABLE commands (
        command_id    TEXT COLLATE "C" PRIMARY KEY,
        agent_id      TEXT COLLATE "C" NOT NULL,
        verb          TEXT NOT NULL,
        args          TEXT NOT NULL,
        requested_by  TEXT NOT NULL,
        status        TEXT NOT NULL,
        exit_code     INTEGER,
        stdout        BYTEA NOT NULL,
        stderr        BYTEA NOT NULL,
        truncated     BOOLEAN NOT NULL,
        created_at    TEXT COLLATE "C" NOT NULL,
        started_at    TEXT COLLATE "C",
        finished_at   TEXT COLLATE "C",
        duration_ms   BIGINT,
        error_code    TEXT,
        error_message BYTEA,
        timeout_ms    BIGINT NOT NULL,
        job_id        TEXT COLLATE "C"
    );
    CREATE INDEX commands_agent ON commands (agent_id, command_id);
    CREATE INDEX commands_status ON commands (status, command_id);
    CREATE INDEX commands_job ON commands (job_id) WHERE job_id IS NOT NULL;
    CREATE TABLE command_events (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        command_id TEXT COLLATE "C" NOT NULL,
        status     TEXT NOT NULL,
        at         TEXT NOT NULL
    );
    CREATE INDEX command_events_command ON command_events (command_id, seq);
    CREATE TABLE jobs (
        job_id          TEXT COLLATE "C" PRIMARY KEY,
        verb            TEXT NOT NULL,
        args            TEXT NOT NULL,
        requested_by    TEXT NOT NULL,
        selector        TEXT NOT NULL,
        max_concurrency BIGINT NOT NULL,
        max_errors      BIGINT NOT NULL,
        created_at      TEXT NOT NULL,
        targets         TEXT NOT NULL
    );
    CREATE TABLE store_meta (
        key   TEXT COLLATE "C" PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE pins (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        agent_id   TEXT COLLATE "C" NOT NULL,
        pin        TEXT COLLATE "C" NOT NULL,
        state      TEXT NOT NULL,
        source     TEXT NOT NULL,
        created_at TEXT NOT NULL,
        changed_at TEXT NOT NULL,
        PRIMARY KEY (agent_id, pin)
    );
    CREATE TABLE revoked_agents (
        agent_id TEXT COLLATE "C" PRIMARY KEY,
        at       TEXT NOT NULL
    );
    CREATE TABLE join_tokens (
        token_sha256 TEXT COLLATE "C" PRIMARY KEY,
        agent_id     TEXT COLLATE "C" NOT NULL,
        created_by   TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        expires_at   TEXT NOT NULL,
        used_at      TEXT
    );
    CREATE TABLE renewals (
        agent_id        TEXT COLLATE "C" PRIMARY KEY,
        old_pin         TEXT NOT NULL,
        new_pin         TEXT NOT NULL,
        requested_at_ms BIGINT NOT NULL,
        completed       BOOLEAN NOT NULL
    );
    CREATE TABLE audit_checkpoints (
        id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        seq        BIGINT NOT NULL,
        hash       TEXT NOT NULL,
        ts         TEXT NOT NULL,
        file       TEXT NOT NULL,
        public_key TEXT NOT NULL,
        key_pin    TEXT NOT NULL,
        signature  TEXT NOT NULL
    );
"#,
    // 2: checkpoints per replica (docs/cluster.md, "Audit across replicas"); "" = single node.
    r#"
    ALTER TABLE audit_checkpoints ADD COLUMN replica_id TEXT NOT NULL DEFAULT '';
    CREATE INDEX audit_checkpoints_by_replica ON audit_checkpoints (replica_id, id);
    CREATE TABLE audit_records (
        id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        replica_id TEXT COLLATE "C" NOT NULL,
        seq        BIGINT NOT NULL,
        at         TEXT NOT NULL,
        kind       TEXT NOT NULL,
        agent      TEXT COLLATE "C",
        actor      TEXT,
        record     JSONB NOT NULL,
        UNIQUE (replica_id, seq)
    );
    CREATE INDEX audit_records_by_agent ON audit_records (agent, id);
"#,
];

/// Brings the database to [`SCHEMA_VERSION`] in one transaction under an advisory lock;
/// refuses a database from a newer build.
pub(super) fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
             version INTEGER NOT NULL
         );
         INSERT INTO schema_version (version) VALUES (0) ON CONFLICT (one) DO NOTHING;",
    )?;
    let found: i32 = tx
        .query_one("SELECT version FROM schema_version", &[])?
        .try_get(0)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "schema version {found} is newer than this build supports ({SCHEMA_VERSION}); \
             upgrade backend-agent"
        )));
    }
    let start = usize::try_from(found)
        .map_err(|_| StoreError::Corrupt(format!("negative schema version {found}")))?;
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.batch_execute(sql)?;
        let version = i32::try_from(version + 1).unwrap_or(i32::MAX);
        tx.execute("UPDATE schema_version SET version = $1", &[&version])?;
    }
    tx.commit()?;
    Ok(())
}
