//! `audit.list` (admins): the audit trail of role changes, users made and
//! blacklist changes, newest first, written by the handlers that make them
//! ([`super::audit`](fn@super::audit)).

use dsf_common::Result;
use dsf_proto::audit::{ListBody, Page};

use crate::node::{Call, CallExt};

/// Default page.
const DEFAULT_LIMIT: u32 = 50;

/// `audit.list {before?, subject?, limit?}`.
pub fn list(call: &Call, b: ListBody) -> Result<Page> {
    let limit = dsf_sql::validate::limit(b.limit, DEFAULT_LIMIT)?;
    let entries = call
        .db()
        .audit()
        .list(b.before, b.subject.as_deref(), limit)?;
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Page { entries, next })
}
