//! Gate checks: `gate.check` (app: a gate terminal needs no login; it
//! learns hit or miss, and the entry only with a session, whose user may
//! read entries) and `gate.history` (viewer). Bodies and replies are the catalogue's
//! (`dsf_proto::gate`).

use dsf_common::Result;
use dsf_proto::gate::{self as msg, CheckBody, Checked, Checks, HistoryBody};
use dsf_sql::gate_checks::DEFAULT_LIMIT;
use dsf_sql::{validate, HistoryQuery};

use crate::controller::{json, route, route_maybe_user, Call, Exec, Route};

/// This group's routes.
pub const ROUTES: &[Route] = &[
    route_maybe_user::<msg::Check>(Exec::Pool, check),
    route::<msg::History>(Exec::Pool, history),
];

/// `gate.check`: whether the id card is listed; the check is recorded
/// before the reply is sent, so every answered check is in the audit trail.
pub fn check(call: &Call<'_>) -> Result<String> {
    let b: CheckBody = call.body()?;
    validate::id_card(&b.id_card)?;
    validate::name("name", &b.name)?;
    if let Some(g) = &b.gate {
        validate::gate(g)?;
    }
    let (entry, _) = call.app.db.gate_checks().check_and_record(
        &b.id_card,
        &b.name,
        b.gate.as_deref(),
        call.app.node(),
    )?;
    // The entry (its reason, who listed it) is for those who may read the
    // blacklist (`blacklist.get`: a viewer's session); a key alone learns
    // hit or miss.
    json(&Checked {
        hit: entry.is_some(),
        entry: entry.filter(|_| call.session.is_some()),
    })
}

/// `gate.history`: checks, newest first; filters combine.
pub fn history(call: &Call<'_>) -> Result<String> {
    let b: HistoryBody = call.body()?;
    if let Some(i) = &b.id_card {
        validate::id_card(i)?;
    }
    if let Some(g) = &b.gate {
        validate::gate(g)?;
    }
    validate::limit(b.limit, DEFAULT_LIMIT)?;
    let checks = call.app.db.gate_checks().history(&HistoryQuery {
        id_card: b.id_card.as_deref(),
        gate: b.gate.as_deref(),
        limit: b.limit,
    })?;
    json(&Checks { checks })
}
