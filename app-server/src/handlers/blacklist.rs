//! The blacklist: `blacklist.add`, `.update`, `.remove` (operator),
//! `blacklist.get`, `.list` (viewer).

use dsf_common::{Error, Result};
use dsf_sql::blacklist::DEFAULT_LIMIT;
use dsf_sql::{validate, EntryChange, ListQuery, NewEntry, Role};
use serde::Deserialize;

use crate::controller::{json, Auth, Call, Exec, Route};

/// This group's routes.
pub const ROUTES: &[Route] = &[
    Route {
        kind: "blacklist.add",
        auth: Auth::Role(Role::Operator),
        exec: Exec::Pool,
        handler: add,
    },
    Route {
        kind: "blacklist.get",
        auth: Auth::Role(Role::Viewer),
        exec: Exec::Pool,
        handler: get,
    },
    Route {
        kind: "blacklist.update",
        auth: Auth::Role(Role::Operator),
        exec: Exec::Pool,
        handler: update,
    },
    Route {
        kind: "blacklist.remove",
        auth: Auth::Role(Role::Operator),
        exec: Exec::Pool,
        handler: remove,
    },
    Route {
        kind: "blacklist.list",
        auth: Auth::Role(Role::Viewer),
        exec: Exec::Pool,
        handler: list,
    },
];

/// `blacklist.add`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Add {
    pub id_card: String,
    pub name: String,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Add {
    /// `id_card`, `name`, and `reason` if given.
    pub fn validate(&self) -> Result<()> {
        validate::id_card(&self.id_card)?;
        validate::name("name", &self.name)?;
        if let Some(r) = &self.reason {
            validate::reason(r)?;
        }
        Ok(())
    }
}

/// `blacklist.add`: lists a person; `conflict` if the id card is listed.
pub fn add(call: &Call<'_>) -> Result<String> {
    let b: Add = call.body()?;
    b.validate()?;
    let by = &call.session()?.user.name;
    let entry = call.app.db.blacklist().add(
        &NewEntry {
            id_card: &b.id_card,
            name: &b.name,
            reason: b.reason.as_deref(),
        },
        by,
    )?;
    json(&entry)
}

/// `blacklist.get` and `blacklist.remove`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdCard {
    pub id_card: String,
}

impl IdCard {
    /// `id_card`: 1 to 32 ASCII letters, digits or `-`.
    pub fn validate(&self) -> Result<()> {
        Ok(validate::id_card(&self.id_card)?)
    }
}

fn not_found(id_card: &str) -> Error {
    Error::NotFound(format!("no entry for id card {id_card}"))
}

/// `blacklist.get`: the entry, or `not_found`.
pub fn get(call: &Call<'_>) -> Result<String> {
    let b: IdCard = call.body()?;
    b.validate()?;
    match call.app.db.blacklist().get(&b.id_card)? {
        Some(e) => json(&e),
        None => Err(not_found(&b.id_card)),
    }
}

/// `blacklist.update`'s body: fields left out stay as they are; `reason: ""`
/// clears the reason.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    pub id_card: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Update {
    /// `id_card`, and `name` / `reason` if given.
    pub fn validate(&self) -> Result<()> {
        validate::id_card(&self.id_card)?;
        if let Some(n) = &self.name {
            validate::name("name", n)?;
        }
        if let Some(r) = &self.reason {
            validate::reason(r)?;
        }
        Ok(())
    }
}

/// `blacklist.update`: the changed entry, or `not_found`.
pub fn update(call: &Call<'_>) -> Result<String> {
    let b: Update = call.body()?;
    b.validate()?;
    let by = &call.session()?.user.name;
    let entry = call.app.db.blacklist().update(
        &b.id_card,
        &EntryChange {
            name: b.name.as_deref(),
            reason: b.reason.as_deref(),
        },
        by,
    )?;
    json(&entry)
}

/// `blacklist.remove`: `{}`, or `not_found`.
pub fn remove(call: &Call<'_>) -> Result<String> {
    let b: IdCard = call.body()?;
    b.validate()?;
    call.app.db.blacklist().remove(&b.id_card)?;
    Ok("{}".into())
}

/// `blacklist.list`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct List {
    /// The `next` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
    /// 1 to 500 [default: 100].
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub name_prefix: Option<String>,
}

impl List {
    /// `limit`: 1 to 500; `name_prefix` as a name.
    pub fn validate(&self) -> Result<()> {
        validate::limit(self.limit, DEFAULT_LIMIT)?;
        if let Some(p) = &self.name_prefix {
            validate::name("name_prefix", p)?;
        }
        Ok(())
    }
}

/// `blacklist.list`: `{"entries","next"}`, keyset-paginated.
pub fn list(call: &Call<'_>) -> Result<String> {
    let b: List = call.body()?;
    b.validate()?;
    let page = call.app.db.blacklist().list(&ListQuery {
        after: b.after.as_deref(),
        limit: b.limit,
        name_prefix: b.name_prefix.as_deref(),
    })?;
    json(&page)
}
