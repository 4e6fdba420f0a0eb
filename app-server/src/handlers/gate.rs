//! Gate checks: `gate.check` (app: a gate terminal needs no login) and
//! `gate.history` (viewer).

use dsf_common::Result;
use dsf_sql::gate_checks::DEFAULT_LIMIT;
use dsf_sql::{validate, Entry, GateCheck, HistoryQuery, Role};
use serde::{Deserialize, Serialize};

use crate::controller::{json, Auth, Call, Exec, Route};

/// This group's routes.
pub const ROUTES: &[Route] = &[
    Route {
        kind: "gate.check",
        auth: Auth::App,
        exec: Exec::Pool,
        handler: check,
    },
    Route {
        kind: "gate.history",
        auth: Auth::Role(Role::Viewer),
        exec: Exec::Pool,
        handler: history,
    },
];

/// `gate.check`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub id_card: String,
    pub name: String,
    #[serde(default)]
    pub gate: Option<String>,
}

impl Check {
    /// `id_card`, `name`, and `gate` if given.
    pub fn validate(&self) -> Result<()> {
        validate::id_card(&self.id_card)?;
        validate::name("name", &self.name)?;
        if let Some(g) = &self.gate {
            validate::gate(g)?;
        }
        Ok(())
    }
}

/// `gate.check`'s reply.
#[derive(Debug, Serialize)]
pub struct Checked {
    pub hit: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<Entry>,
}

/// `gate.check`: whether the id card is listed; the check is recorded
/// before the reply is sent, so every answered check is in the audit trail.
pub fn check(call: &Call<'_>) -> Result<String> {
    let b: Check = call.body()?;
    b.validate()?;
    let (entry, _) = call.app.db.gate_checks().check_and_record(
        &b.id_card,
        &b.name,
        b.gate.as_deref(),
        call.app.node(),
    )?;
    json(&Checked {
        hit: entry.is_some(),
        entry,
    })
}

/// `gate.history`'s body; filters combine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    #[serde(default)]
    pub id_card: Option<String>,
    #[serde(default)]
    pub gate: Option<String>,
    /// 1 to 500 [default: 50].
    #[serde(default)]
    pub limit: Option<u32>,
}

impl History {
    /// Each filter given, and `limit`: 1 to 500.
    pub fn validate(&self) -> Result<()> {
        if let Some(i) = &self.id_card {
            validate::id_card(i)?;
        }
        if let Some(g) = &self.gate {
            validate::gate(g)?;
        }
        validate::limit(self.limit, DEFAULT_LIMIT)?;
        Ok(())
    }
}

/// `gate.history`'s reply.
#[derive(Debug, Serialize)]
pub struct Checks {
    pub checks: Vec<GateCheck>,
}

/// `gate.history`: checks, newest first.
pub fn history(call: &Call<'_>) -> Result<String> {
    let b: History = call.body()?;
    b.validate()?;
    let checks = call.app.db.gate_checks().history(&HistoryQuery {
        id_card: b.id_card.as_deref(),
        gate: b.gate.as_deref(),
        limit: b.limit,
    })?;
    json(&Checks { checks })
}
