//! The blacklist: `blacklist.add`, `.update`, `.remove` (operator),
//! `blacklist.get`, `.list` (viewer). Bodies and replies are the
//! catalogue's (`dsf_proto::blacklist`).

use dsf_common::{Error, Result};
use dsf_proto::blacklist::{AddBody, Entry, IdCard, ListBody, Page, UpdateBody};
use dsf_proto::Empty;
use dsf_sql::blacklist::DEFAULT_LIMIT;
use dsf_sql::{validate, EntryChange, ListQuery, NewEntry};

use crate::accounts::audit;
use crate::node::{Call, CallExt};

/// `blacklist.add`: lists a person; `conflict` if the id card is listed.
pub fn add(call: &Call, b: AddBody) -> Result<Entry> {
    validate::id_card(&b.id_card)?;
    validate::name("name", &b.name)?;
    if let Some(r) = &b.reason {
        validate::reason(r)?;
    }
    let by = &call.user()?.name;
    let entry = call.db().blacklist().add(
        &NewEntry {
            id_card: &b.id_card,
            name: &b.name,
            reason: b.reason.as_deref(),
        },
        by,
    )?;
    let detail = serde_json::json!({"name": b.name, "reason": b.reason}).to_string();
    audit(call, "blacklist.add", &b.id_card, Some(&detail))?;
    Ok(entry)
}

fn not_found(id_card: &str) -> Error {
    Error::NotFound(format!("no entry for id card {id_card}"))
}

/// `blacklist.get`: the entry, or `not_found`.
pub fn get(call: &Call, b: IdCard) -> Result<Entry> {
    validate::id_card(&b.id_card)?;
    match call.db().blacklist().get(&b.id_card)? {
        Some(e) => Ok(e),
        None => Err(not_found(&b.id_card)),
    }
}

/// `blacklist.update`: the changed entry, or `not_found`.
pub fn update(call: &Call, b: UpdateBody) -> Result<Entry> {
    validate::id_card(&b.id_card)?;
    if let Some(n) = &b.name {
        validate::name("name", n)?;
    }
    if let Some(r) = &b.reason {
        validate::reason(r)?;
    }
    let by = &call.user()?.name;
    let entry = call.db().blacklist().update(
        &b.id_card,
        &EntryChange {
            name: b.name.as_deref(),
            reason: b.reason.as_deref(),
        },
        by,
    )?;
    let detail = serde_json::json!({"name": b.name, "reason": b.reason}).to_string();
    audit(call, "blacklist.update", &b.id_card, Some(&detail))?;
    Ok(entry)
}

/// `blacklist.remove`: `{}`, or `not_found`.
pub fn remove(call: &Call, b: IdCard) -> Result<Empty> {
    validate::id_card(&b.id_card)?;
    call.db().blacklist().remove(&b.id_card)?;
    audit(call, "blacklist.remove", &b.id_card, None)?;
    Ok(Empty {})
}

/// `blacklist.list`: `{"entries","next"}`, keyset-paginated.
pub fn list(call: &Call, b: ListBody) -> Result<Page> {
    validate::limit(b.limit, DEFAULT_LIMIT)?;
    if let Some(p) = &b.name_prefix {
        validate::name("name_prefix", p)?;
    }
    Ok(call.db().blacklist().list(&ListQuery {
        after: b.after.as_deref(),
        limit: b.limit,
        name_prefix: b.name_prefix.as_deref(),
    })?)
}
