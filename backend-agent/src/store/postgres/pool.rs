//! A small bounded pool of synchronous PostgreSQL connections.
//!
//! At most `max` connections exist at once. A caller takes an idle one, or opens a new one
//! while under the bound, or waits up to `wait` for one to come back; past that it gets
//! [`StoreError::Unavailable`] rather than queueing without end. A connection that broke is
//! dropped on return, with every idle one (they talked to the same server), and re-made on
//! demand; one idle for longer than [`RECHECK_IDLE`] is checked with a round trip before
//! use, so a restarted server costs at most one failed call.
//!
//! `postgres::Client` drives its socket on a private single-thread tokio runtime, which must
//! not be dropped on an async worker; the store is only used from the blocking pool, and
//! [`Pool`]'s own `Drop` closes idle connections on a plain thread for the same reason.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::{Client, Config, NoTls};

use crate::store::StoreError;

/// Idle connections older than this are checked with a round trip before they are lent out.
pub(super) const RECHECK_IDLE: Duration = Duration::from_secs(5);

/// Bound of that check.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(2);

struct Idle {
    client: Client,
    since: Instant,
}

struct State {
    idle: Vec<Idle>,
    /// Connections that exist: idle, lent out, or being opened.
    open: usize,
}

/// Bounded connection pool; see the module docs.
pub(super) struct Pool {
    config: Config,
    max: usize,
    wait: Duration,
    state: Mutex<State>,
    returned: Condvar,
}

impl Pool {
    /// A pool of at most `max` (≥ 1) connections made from `config`; callers wait at most
    /// `wait` for a free one. Errors do not name the server: they reach `/ready`, which
    /// anyone may call (the URL is logged once, at open).
    pub(super) fn new(config: Config, max: usize, wait: Duration) -> Self {
        Pool {
            config,
            max: max.max(1),
            wait,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// A connection, lent until the guard drops.
    pub(super) fn get(&self) -> Result<Pooled<'_>, StoreError> {
        let deadline = Instant::now() + self.wait;
        let mut state = self.lock();
        loop {
            if let Some(idle) = state.idle.pop() {
                drop(state);
                if let Some(client) = self.revalidate(idle) {
                    return Ok(self.lend(client));
                }
                state = self.lock();
                continue;
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.config.connect(NoTls) {
                    Ok(client) => Ok(self.lend(client)),
                    Err(e) => {
                        self.forget();
                        Err(StoreError::Unavailable(format!(
                            "cannot connect to PostgreSQL: {e}"
                        )))
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "all {} connections to PostgreSQL stayed busy for {:?} ([store] pool_size)",
                    self.max, self.wait
                )));
            }
            state = self
                .returned
                .wait_timeout(state, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// `idle`'s client if it still works; a broken one is closed and forgotten.
    fn revalidate(&self, idle: Idle) -> Option<Client> {
        let mut client = idle.client;
        let fresh = idle.since.elapsed() < RECHECK_IDLE;
        if !client.is_closed() && (fresh || client.is_valid(RECHECK_TIMEOUT).is_ok()) {
            return Some(client);
        }
        drop(client);
        self.forget();
        None
    }

    fn lend(&self, client: Client) -> Pooled<'_> {
        Pooled {
            pool: self,
            client: Some(client),
        }
    }

    /// One connection less exists; a waiter may open a new one.
    fn forget(&self) {
        let mut state = self.lock();
        state.open = state.open.saturating_sub(1);
        drop(state);
        self.returned.notify_one();
    }

    fn give_back(&self, client: Client) {
        if client.is_closed() {
            // The server went away or restarted: the idle ones are as dead, so they go too
            // and the next calls connect afresh instead of each failing once.
            let stale = std::mem::take(&mut self.lock().idle);
            let gone = stale.len() + 1;
            drop((client, stale));
            let mut state = self.lock();
            state.open = state.open.saturating_sub(gone);
            drop(state);
            self.returned.notify_all();
            return;
        }
        let mut state = self.lock();
        state.idle.push(Idle {
            client,
            since: Instant::now(),
        });
        drop(state);
        self.returned.notify_one();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.lock().idle);
        if idle.is_empty() {
            return;
        }
        // Each client owns a tokio runtime, which panics if dropped on an async worker.
        let closer = std::thread::Builder::new()
            .name("postgres-pool-close".into())
            .spawn(move || drop(idle));
        if let Err(e) = closer {
            tracing::warn!(error = %e, "cannot close PostgreSQL connections on a thread");
        }
    }
}

/// A lent connection; returned to the pool (or dropped if broken) when this drops.
pub(super) struct Pooled<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl Deref for Pooled<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.pool.give_back(client);
        }
    }
}
