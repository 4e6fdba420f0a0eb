//! `audit.list` (admins): the audit trail of role changes, users made and
//! blacklist changes, newest first, written by the handlers that make them
//! ([`crate::controller::Call::audit`]).

use dsf_common::Result;
use dsf_proto::audit::{self as msg, ListBody, Page};

use crate::controller::{json, route, Call, Exec, Route};

/// This group's routes.
pub const ROUTES: &[Route] = &[route::<msg::List>(Exec::Pool, list)];

/// Default page.
const DEFAULT_LIMIT: u32 = 50;

/// `audit.list {before?, subject?, limit?}`.
pub fn list(call: &Call<'_>) -> Result<String> {
    let b: ListBody = call.body()?;
    let limit = dsf_sql::validate::limit(b.limit, DEFAULT_LIMIT)?;
    let entries = call
        .app
        .db
        .audit()
        .list(b.before, b.subject.as_deref(), limit)?;
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    json(&Page { entries, next })
}
