//! `GET /api/v1/audit` in a cluster on PostgreSQL: the fleet's records, as mirrored into the
//! shared store by every replica ([`crate::audit_mirror`]), with the same scope rules as a
//! single node's read and a `replica` field naming the chain each record belongs to.

use std::collections::HashMap;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::read::{Page, ReadError, MAX_SCAN_PAGES};
use super::CommandService;
use crate::audit::events::verb_of;
use crate::auth::Principal;
use crate::store::audit_mirror::{FleetAuditFilter, MIRROR_BATCH};

impl CommandService {
    /// Whether audit reads answer the fleet's records (`[cluster]` on a store that mirrors
    /// them) rather than this replica's log.
    pub fn reads_fleet_audit(&self) -> bool {
        self.cluster.get().is_some() && self.store.mirrors_audit()
    }

    /// The fleet's mirrored records matching `filter`, oldest first after the cursor, only
    /// those `caller` may read; each a record object plus `replica`. `next` is the cursor.
    pub async fn read_fleet_audit(
        &self,
        caller: &Principal,
        mut filter: FleetAuditFilter,
    ) -> Result<Page<Value>, ReadError> {
        let _permit = self.heavy_read()?;
        if let Some(ts) = &filter.since_ts {
            OffsetDateTime::parse(ts, &Rfc3339)
                .map_err(|e| ReadError::BadFilter(format!("since_ts {ts:?}: {e}")))?;
        }
        let want = filter.limit.clamp(1, MIRROR_BATCH);
        filter.limit = want;
        let mut items = Vec::new();
        let mut allowed: HashMap<String, bool> = HashMap::new();
        for _ in 0..MAX_SCAN_PAGES {
            let page = self.store.fleet_audit(filter.clone()).await?;
            let full = page.len() == want;
            for row in page {
                filter.after_id = row.id;
                let rec = row.record;
                let verb = verb_of(&rec.details).map(str::to_owned);
                let key = format!("{:?}\u{0}{:?}", rec.agent_id, verb);
                let ok = *allowed.entry(key).or_insert_with(|| {
                    self.may_read(caller, verb.as_deref(), rec.agent_id.as_deref())
                });
                if !ok {
                    continue;
                }
                let mut value = serde_json::to_value(&rec).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut value {
                    map.insert("replica".into(), Value::String(row.replica));
                }
                items.push(value);
                if items.len() == want {
                    return Ok(Page {
                        items,
                        next: Some(filter.after_id.to_string()),
                    });
                }
            }
            if !full {
                return Ok(Page { items, next: None });
            }
        }
        Ok(Page {
            items,
            next: Some(filter.after_id.to_string()),
        })
    }
}
