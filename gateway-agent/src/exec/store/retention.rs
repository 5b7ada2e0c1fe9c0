//! Reading the index and stored results, retention, and when to compact.

use tracing::warn;

use std::io;

use super::journal::{decode, Op};
use super::{lock, Entry, Outgoing, Stage, Store, COMPACT_MIN_BYTES, PRUNE_EVERY};

impl Store {
    /// What is known about `id`.
    pub fn stage(&self, id: &str) -> Option<Stage> {
        lock(&self.inner).entries.get(id).map(|e| e.stage)
    }

    /// Whether `id`'s result has been written to a session.
    pub fn is_delivered(&self, id: &str) -> bool {
        lock(&self.inner)
            .entries
            .get(id)
            .is_some_and(|e| e.delivered_ms.is_some())
    }

    /// The stored result of `id`, read back from the journal. Blocking.
    pub fn result(&self, id: &str) -> io::Result<Option<Outgoing>> {
        let inner = lock(&self.inner);
        let Some(span) = inner.entries.get(id).and_then(|e| e.finish) else {
            return Ok(None);
        };
        let line = inner.journal.read(span)?;
        drop(inner);
        match decode(&line) {
            Some(Op::Finish {
                id: found,
                pin,
                limit,
                result,
                ..
            }) if found == id => Ok(Some(Outgoing {
                frame: result,
                sealed: pin.zip(limit),
            })),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the journal line of this result does not check out",
            )),
        }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in the journal file.
    pub fn journal_bytes(&self) -> u64 {
        lock(&self.inner).journal.len()
    }

    /// Ids of stored results never written to a session, oldest first.
    pub fn undelivered(&self) -> Vec<String> {
        self.ids_by(|e| {
            (e.stage == Stage::Finished && e.delivered_ms.is_none()).then(|| e.age_from())
        })
    }

    /// Ids of results last written to a session at or after `since_ms`, oldest first.
    pub fn delivered_since(&self, since_ms: u64) -> Vec<String> {
        self.ids_by(|e| e.delivered_ms.filter(|t| *t >= since_ms))
    }

    fn ids_by(&self, key: impl Fn(&Entry) -> Option<u64>) -> Vec<String> {
        let inner = lock(&self.inner);
        let mut ids: Vec<(u64, &String)> = inner
            .entries
            .iter()
            .filter_map(|(id, e)| key(e).map(|k| (k, id)))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// When a result was last written to a session.
    pub fn last_delivery_ms(&self) -> Option<u64> {
        lock(&self.inner)
            .entries
            .values()
            .filter_map(|e| e.delivered_ms)
            .max()
    }

    /// Applies retention as of `now_ms`; returns how many records were removed. Records still
    /// `started` (running) are never removed.
    pub fn prune_at(&self, now_ms: u64) -> usize {
        let mut inner = lock(&self.inner);
        inner.last_prune_ms = now_ms;
        let mut finished: Vec<(u64, String, bool)> = inner
            .entries
            .iter()
            .filter(|(_, e)| e.stage == Stage::Finished)
            .map(|(id, e)| (e.age_from(), id.clone(), e.delivered_ms.is_some()))
            .collect();
        finished.sort();
        let expired = finished
            .iter()
            .take_while(|(t, _, _)| now_ms.saturating_sub(*t) > self.retention_ms)
            .count();
        // Leave room for the record about to be added.
        let over = inner.entries.len().saturating_sub(self.max_entries - 1);
        let n = expired.max(over).min(finished.len());
        finished.truncate(n);
        for (_, id, _) in &finished {
            inner.entries.remove(id);
        }
        let undelivered = finished.iter().filter(|(_, _, d)| !d).count();
        if undelivered > 0 {
            warn!(
                count = undelivered,
                "dropping command results that were never delivered (retention)"
            );
        }
        finished.len()
    }

    pub(super) fn prune_if_due(&self, now: u64) {
        let due = {
            let inner = lock(&self.inner);
            inner.entries.len() >= self.max_entries
                || now.saturating_sub(inner.last_prune_ms)
                    >= u64::try_from(PRUNE_EVERY.as_millis()).unwrap_or(u64::MAX)
        };
        if due {
            self.prune_at(now);
        }
    }

    /// Rewrites the journal without dropped records once it is mostly garbage.
    pub(super) fn compact_if_due(&self) {
        let mut inner = lock(&self.inner);
        let len = inner.journal.len();
        if len < COMPACT_MIN_BYTES {
            return;
        }
        let live: u64 = inner.entries.values().map(Entry::bytes).sum();
        if len <= live.saturating_mul(2) {
            return;
        }
        if let Err(e) = self.compact(&mut inner) {
            warn!(error = %e, "cannot compact the command journal; trying again later");
        }
    }
}
