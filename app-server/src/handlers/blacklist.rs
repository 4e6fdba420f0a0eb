//! The blacklist: `blacklist.add`, `.update`, `.remove` (operator),
//! `blacklist.get`, `.list` (viewer). Bodies and replies are the
//! catalogue's (`dsf_proto::blacklist`).

use dsf_common::{Error, Result};
use dsf_proto::blacklist::{self as msg, AddBody, IdCard, ListBody, UpdateBody};
use dsf_proto::Empty;
use dsf_sql::blacklist::DEFAULT_LIMIT;
use dsf_sql::{validate, EntryChange, ListQuery, NewEntry};

use crate::controller::{json, route, Call, Exec, Route};

/// This group's routes.
pub const ROUTES: &[Route] = &[
    route::<msg::Add>(Exec::Pool, add),
    route::<msg::Get>(Exec::Pool, get),
    route::<msg::Update>(Exec::Pool, update),
    route::<msg::Remove>(Exec::Pool, remove),
    route::<msg::List>(Exec::Pool, list),
];

/// `blacklist.add`: lists a person; `conflict` if the id card is listed.
pub fn add(call: &Call<'_>) -> Result<String> {
    let b: AddBody = call.body()?;
    validate::id_card(&b.id_card)?;
    validate::name("name", &b.name)?;
    if let Some(r) = &b.reason {
        validate::reason(r)?;
    }
    let by = &call.session()?.user.name;
    let entry = call.app.db.blacklist().add(
        &NewEntry {
            id_card: &b.id_card,
            name: &b.name,
            reason: b.reason.as_deref(),
        },
        by,
    )?;
    let detail = serde_json::json!({"name": b.name, "reason": b.reason}).to_string();
    call.audit("blacklist.add", &b.id_card, Some(&detail))?;
    json(&entry)
}

fn not_found(id_card: &str) -> Error {
    Error::NotFound(format!("no entry for id card {id_card}"))
}

/// `blacklist.get`: the entry, or `not_found`.
pub fn get(call: &Call<'_>) -> Result<String> {
    let b: IdCard = call.body()?;
    validate::id_card(&b.id_card)?;
    match call.app.db.blacklist().get(&b.id_card)? {
        Some(e) => json(&e),
        None => Err(not_found(&b.id_card)),
    }
}

/// `blacklist.update`: the changed entry, or `not_found`.
pub fn update(call: &Call<'_>) -> Result<String> {
    let b: UpdateBody = call.body()?;
    validate::id_card(&b.id_card)?;
    if let Some(n) = &b.name {
        validate::name("name", n)?;
    }
    if let Some(r) = &b.reason {
        validate::reason(r)?;
    }
    let by = &call.session()?.user.name;
    let entry = call.app.db.blacklist().update(
        &b.id_card,
        &EntryChange {
            name: b.name.as_deref(),
            reason: b.reason.as_deref(),
        },
        by,
    )?;
    let detail = serde_json::json!({"name": b.name, "reason": b.reason}).to_string();
    call.audit("blacklist.update", &b.id_card, Some(&detail))?;
    json(&entry)
}

/// `blacklist.remove`: `{}`, or `not_found`.
pub fn remove(call: &Call<'_>) -> Result<String> {
    let b: IdCard = call.body()?;
    validate::id_card(&b.id_card)?;
    call.app.db.blacklist().remove(&b.id_card)?;
    call.audit("blacklist.remove", &b.id_card, None)?;
    json(&Empty {})
}

/// `blacklist.list`: `{"entries","next"}`, keyset-paginated.
pub fn list(call: &Call<'_>) -> Result<String> {
    let b: ListBody = call.body()?;
    validate::limit(b.limit, DEFAULT_LIMIT)?;
    if let Some(p) = &b.name_prefix {
        validate::name("name_prefix", p)?;
    }
    let page = call.app.db.blacklist().list(&ListQuery {
        after: b.after.as_deref(),
        limit: b.limit,
        name_prefix: b.name_prefix.as_deref(),
    })?;
    json(&page)
}
