//! The `gate_checks` table: the audit trail of every check at a gate.

use mysql::prelude::Queryable;

use crate::blacklist::Entry;
use crate::db::Db;
use crate::error::Result;
use crate::time::now_ms;
use crate::validate;

/// History size when the caller gives none.
pub const DEFAULT_LIMIT: u32 = 50;

/// One recorded check: the catalogue's type.
pub use dsf_proto::gate::GateCheck;

/// A check to record with [`GateChecks::record`].
#[derive(Debug, Clone, Copy)]
pub struct NewCheck<'s> {
    /// The id card presented.
    pub id_card: &'s str,
    /// The name presented.
    pub name: &'s str,
    /// The gate, if known.
    pub gate: Option<&'s str>,
    /// The node answering (its id).
    pub node: &'s str,
    /// Whether it was a hit.
    pub hit: bool,
}

/// A history request for [`GateChecks::history`]; filters combine with AND.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryQuery<'s> {
    /// Only this id card.
    pub id_card: Option<&'s str>,
    /// Only this gate.
    pub gate: Option<&'s str>,
    /// At most this many, 1 to 500 (default [`DEFAULT_LIMIT`]).
    pub limit: Option<u32>,
}

/// The `gate_checks` repository; get one with [`Db::gate_checks`].
#[derive(Debug, Clone, Copy)]
pub struct GateChecks<'a> {
    db: &'a Db,
}

type CheckRow = (u64, String, String, Option<String>, String, bool, i64);

fn check((id, id_card, name, gate, node, hit, checked_at): CheckRow) -> GateCheck {
    GateCheck {
        id,
        id_card,
        name,
        gate,
        node,
        hit,
        checked_at,
    }
}

// === impl GateChecks ===

impl<'a> GateChecks<'a> {
    pub(crate) fn new(db: &'a Db) -> GateChecks<'a> {
        GateChecks { db }
    }

    /// Records a check.
    pub fn record(&self, c: &NewCheck<'_>) -> Result<GateCheck> {
        const OP: &str = "gate_checks.record";
        validate::id_card(c.id_card)?;
        validate::name("name", c.name)?;
        if let Some(g) = c.gate {
            validate::gate(g)?;
        }
        validate::node(c.node)?;
        let now = now_ms();
        let id = self.db.with_conn(OP, |conn| {
            conn.exec_drop(
                "INSERT INTO gate_checks (id_card, name, gate, node, hit, checked_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                (c.id_card, c.name, c.gate, c.node, c.hit, now),
            )?;
            Ok(conn.last_insert_id())
        })?;
        Ok(GateCheck {
            id,
            id_card: c.id_card.to_string(),
            name: c.name.to_string(),
            gate: c.gate.map(str::to_string),
            node: c.node.to_string(),
            hit: c.hit,
            checked_at: now,
        })
    }

    /// A whole gate check: looks the id card up in the blacklist and records
    /// the check with its outcome, on one pooled connection. Taking a
    /// connection costs a health ping, so this is three round trips where a
    /// `blacklist().get` followed by `record` would be four.
    pub fn check_and_record(
        &self,
        id_card: &str,
        name: &str,
        gate: Option<&str>,
        node: &str,
    ) -> Result<(Option<Entry>, GateCheck)> {
        const OP: &str = "gate_checks.check_and_record";
        validate::id_card(id_card)?;
        validate::name("name", name)?;
        if let Some(g) = gate {
            validate::gate(g)?;
        }
        validate::node(node)?;
        let now = now_ms();
        let (entry, id) = self.db.with_conn(OP, |conn| {
            let entry = crate::blacklist::select_one(conn, id_card)?;
            conn.exec_drop(
                "INSERT INTO gate_checks (id_card, name, gate, node, hit, checked_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                (id_card, name, gate, node, entry.is_some(), now),
            )?;
            Ok((entry, conn.last_insert_id()))
        })?;
        let check = GateCheck {
            id,
            id_card: id_card.to_string(),
            name: name.to_string(),
            gate: gate.map(str::to_string),
            node: node.to_string(),
            hit: entry.is_some(),
            checked_at: now,
        };
        Ok((entry, check))
    }

    /// Checks, newest first, filtered by id card and/or gate.
    pub fn history(&self, q: &HistoryQuery<'_>) -> Result<Vec<GateCheck>> {
        const OP: &str = "gate_checks.history";
        let limit = validate::limit(q.limit, DEFAULT_LIMIT)?;
        if let Some(i) = q.id_card {
            validate::id_card(i)?;
        }
        if let Some(g) = q.gate {
            validate::gate(g)?;
        }
        // One fixed statement per filter combination, each matching an index
        // (id_card, id) or (gate, id), rather than `? IS NULL OR …`, which
        // the optimiser cannot serve from an index.
        let rows: Vec<CheckRow> = self.db.with_conn(OP, |c| match (q.id_card, q.gate) {
            (None, None) => c.exec(
                "SELECT id, id_card, name, gate, node, hit, checked_at FROM gate_checks \
                 ORDER BY id DESC LIMIT ?",
                (limit,),
            ),
            (Some(i), None) => c.exec(
                "SELECT id, id_card, name, gate, node, hit, checked_at FROM gate_checks \
                 WHERE id_card = ? ORDER BY id DESC LIMIT ?",
                (i, limit),
            ),
            (None, Some(g)) => c.exec(
                "SELECT id, id_card, name, gate, node, hit, checked_at FROM gate_checks \
                 WHERE gate = ? ORDER BY id DESC LIMIT ?",
                (g, limit),
            ),
            (Some(i), Some(g)) => c.exec(
                "SELECT id, id_card, name, gate, node, hit, checked_at FROM gate_checks \
                 WHERE id_card = ? AND gate = ? ORDER BY id DESC LIMIT ?",
                (i, g, limit),
            ),
        })?;
        Ok(rows.into_iter().map(check).collect())
    }
}
