//! Gate checks: `gate.check` (app: a gate terminal needs no login; it
//! learns hit or miss, and the entry only with a session, whose user may
//! read entries) and `gate.history` (viewer). Bodies and replies are the catalogue's
//! (`dsf_proto::gate`).

use dsf_common::Result;
use dsf_proto::gate::{CheckBody, Checked, Checks, HistoryBody};
use dsf_sql::gate_checks::DEFAULT_LIMIT;
use dsf_sql::{validate, HistoryQuery};

use crate::node::{Call, CallExt};

/// `gate.check`: whether the id card is listed; the check is recorded
/// before the reply is sent, so every answered check is in the audit trail.
pub fn check(call: &Call, b: CheckBody) -> Result<Checked> {
    validate::id_card(&b.id_card)?;
    validate::name("name", &b.name)?;
    if let Some(g) = &b.gate {
        validate::gate(g)?;
    }
    let (entry, _) = call.db().gate_checks().check_and_record(
        &b.id_card,
        &b.name,
        b.gate.as_deref(),
        call.node_id(),
    )?;
    // The entry (its reason, who listed it) is for those who may read the
    // blacklist (`blacklist.get`: a viewer's session); a key alone learns
    // hit or miss.
    Ok(Checked {
        hit: entry.is_some(),
        entry: entry.filter(|_| call.session().is_some()),
    })
}

/// `gate.history`: checks, newest first; filters combine.
pub fn history(call: &Call, b: HistoryBody) -> Result<Checks> {
    if let Some(i) = &b.id_card {
        validate::id_card(i)?;
    }
    if let Some(g) = &b.gate {
        validate::gate(g)?;
    }
    validate::limit(b.limit, DEFAULT_LIMIT)?;
    let checks = call.db().gate_checks().history(&HistoryQuery {
        id_card: b.id_card.as_deref(),
        gate: b.gate.as_deref(),
        limit: b.limit,
    })?;
    Ok(Checks { checks })
}
