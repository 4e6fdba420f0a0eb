//! The `audit` table (migration 0005): role changes, users made, and
//! blacklist changes, with who, when and which node. An entry is written
//! on the connection of the change it records: inside a run-once write,
//! in its transaction, so a change that rolls back leaves no entry.

use mysql::prelude::Queryable;

use crate::db::Db;
use crate::error::Result;

pub use dsf_proto::audit::Entry;

/// What is recorded.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The acting user's name; `None` for the command line.
    pub actor: Option<&'a str>,
    pub node: &'a str,
    pub action: &'a str,
    pub subject: &'a str,
    /// JSON text, if anything more is worth keeping.
    pub detail: Option<&'a str>,
}

/// The audit repository; get one with [`Db::audit`].
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    db: &'a Db,
}

// === impl Audit ===

impl<'a> Audit<'a> {
    pub(crate) fn new(db: &'a Db) -> Audit<'a> {
        Audit { db }
    }

    /// Records `r` (in the run-once write's transaction, inside one, and
    /// staged for its commit: [`Db::exec_write`]).
    pub fn record(&self, r: &Record<'_>) -> Result<()> {
        let at = crate::time::now_ms().max(0) as u64;
        self.db.exec_write(
            "audit.record",
            "INSERT INTO audit (at, actor, node, action, subject, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (at, r.actor, r.node, r.action, r.subject, r.detail),
        )
    }

    /// Up to `limit` entries older than entry `before`, newest first; only
    /// those about `subject` when given.
    pub fn list(
        &self,
        before: Option<u64>,
        subject: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Entry>> {
        type Row = (
            u64,
            u64,
            Option<String>,
            String,
            String,
            String,
            Option<String>,
        );
        let rows: Vec<Row> = self.db.with_conn("audit.list", |c| {
            c.exec(
                "SELECT id, at, actor, node, action, subject, detail FROM audit \
                 WHERE id < ? AND (? IS NULL OR subject = ?) ORDER BY id DESC LIMIT ?",
                (before.unwrap_or(u64::MAX), subject, subject, limit),
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|(id, at, actor, node, action, subject, detail)| Entry {
                id,
                at,
                actor,
                node,
                action,
                subject,
                detail: detail.and_then(|d| serde_json::value::RawValue::from_string(d).ok()),
            })
            .collect())
    }
}
