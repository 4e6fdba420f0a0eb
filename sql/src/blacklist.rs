//! The `blacklist` table: people refused at the gates, one row per id card.
//!
//! Listing is by keyset pagination, never `OFFSET`: each page starts right
//! after the previous page's last key, so a page costs the same however deep
//! it is, and rows added meanwhile do not shift later pages.

use mysql::prelude::Queryable;
use mysql::PooledConn;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::time::now_ms;
use crate::validate;

/// Page size when the caller gives none.
pub const DEFAULT_LIMIT: u32 = 100;

/// A blacklisted person, as rows and replies show it: the catalogue's type.
pub use dsf_proto::blacklist::Entry;
/// What [`Blacklist::list`] returns: the catalogue's type.
pub use dsf_proto::blacklist::Page;

/// A new entry for [`Blacklist::add`].
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'s> {
    /// The id card (1 to 32 ASCII letters, digits or `-`).
    pub id_card: &'s str,
    /// The person's name (1 to 64 characters).
    pub name: &'s str,
    /// Why (at most 512 characters; empty means none).
    pub reason: Option<&'s str>,
}

/// Changes for [`Blacklist::update`]; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryChange<'s> {
    /// A new name.
    pub name: Option<&'s str>,
    /// A new reason; `Some("")` clears it.
    pub reason: Option<&'s str>,
}

/// A listing request for [`Blacklist::list`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery<'s> {
    /// The `next` of the previous page. Without a prefix this is simply the
    /// last id card seen, so any id card works as a starting point.
    pub after: Option<&'s str>,
    /// Page size, 1 to 500 (default [`DEFAULT_LIMIT`]).
    pub limit: Option<u32>,
    /// Only names starting with this (case-insensitive), in name order.
    pub name_prefix: Option<&'s str>,
}

/// The `blacklist` repository; get one with [`Db::blacklist`].
#[derive(Debug, Clone, Copy)]
pub struct Blacklist<'a> {
    db: &'a Db,
}

type EntryRow = (String, String, Option<String>, String, i64, String, i64);

const COLUMNS: &str = "id_card, name, reason, created_by, created_at, updated_by, updated_at";

fn entry(
    (id_card, name, reason, created_by, created_at, updated_by, updated_at): EntryRow,
) -> Entry {
    Entry {
        id_card,
        name,
        reason,
        created_by,
        created_at,
        updated_by,
        updated_at,
    }
}

fn non_empty(reason: Option<&str>) -> Option<&str> {
    reason.filter(|r| !r.is_empty())
}

/// Escapes `%`, `_` and the escape character itself so a prefix matches
/// literally under `LIKE ? ESCAPE '!'` (`!` rather than `\`, whose meaning
/// changes with the NO_BACKSLASH_ESCAPES mode).
fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The cursor of a name-ordered page: `ID_CARD.HEX(NAME)`; id cards never
/// contain `.`, and hex keeps any name intact.
fn name_cursor(e: &Entry) -> String {
    format!("{}.{}", e.id_card, hex::encode(e.name.as_bytes()))
}

fn parse_name_cursor(s: &str) -> Result<(String, String)> {
    let bad = || Error::Invalid {
        field: "after",
        rule: "the next value of the previous page of the same name_prefix listing",
    };
    let (id_card, name_hex) = s.split_once('.').ok_or_else(bad)?;
    validate::id_card(id_card).map_err(|_| bad())?;
    let name = hex::decode(name_hex)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    Ok((id_card.to_string(), name))
}

pub(crate) fn select_one(c: &mut PooledConn, id_card: &str) -> mysql::Result<Option<Entry>> {
    let row: Option<EntryRow> = c.exec_first(
        "SELECT id_card, name, reason, created_by, created_at, updated_by, updated_at \
         FROM blacklist WHERE id_card = ?",
        (id_card,),
    )?;
    Ok(row.map(entry))
}

fn not_found(id_card: &str) -> Error {
    Error::NotFound(format!("no entry for id card {id_card}"))
}

// === impl Blacklist ===

impl<'a> Blacklist<'a> {
    pub(crate) fn new(db: &'a Db) -> Blacklist<'a> {
        Blacklist { db }
    }

    /// Lists a person; `conflict` if the id card is already listed. `by` is
    /// the acting user's name.
    pub fn add(&self, new: &NewEntry<'_>, by: &str) -> Result<Entry> {
        const OP: &str = "blacklist.add";
        validate::id_card(new.id_card)?;
        validate::name("name", new.name)?;
        let reason = non_empty(new.reason);
        if let Some(r) = reason {
            validate::reason(r)?;
        }
        validate::name("by", by)?;
        let now = now_ms();
        self.db
            .exec_write(
                OP,
                "INSERT INTO blacklist (id_card, name, reason, created_by, created_at, updated_by, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new.id_card, new.name, reason, by, now, by, now),
            )
            .map_err(|e| e.on_conflict(|| format!("id card {} is already listed", new.id_card)))?;
        Ok(Entry {
            id_card: new.id_card.to_string(),
            name: new.name.to_string(),
            reason: reason.map(str::to_string),
            created_by: by.to_string(),
            created_at: now,
            updated_by: by.to_string(),
            updated_at: now,
        })
    }

    /// The entry for `id_card`, if listed. The point lookup of the gate check.
    pub fn get(&self, id_card: &str) -> Result<Option<Entry>> {
        const OP: &str = "blacklist.get";
        validate::id_card(id_card)?;
        self.db.with_conn(OP, |c| select_one(c, id_card))
    }

    /// Changes an entry; `not_found` if the id card is not listed.
    pub fn update(&self, id_card: &str, change: &EntryChange<'_>, by: &str) -> Result<Entry> {
        const OP: &str = "blacklist.update";
        validate::id_card(id_card)?;
        if let Some(n) = change.name {
            validate::name("name", n)?;
        }
        if let Some(r) = change.reason {
            validate::reason(r)?;
        }
        validate::name("by", by)?;
        let found = self.db.with_conn(OP, |c| {
            c.exec_drop(
                "UPDATE blacklist SET name = COALESCE(?, name), \
                 reason = IF(?, NULLIF(?, ''), reason), updated_by = ?, updated_at = ? \
                 WHERE id_card = ?",
                (
                    change.name,
                    change.reason.is_some(),
                    change.reason,
                    by,
                    now_ms(),
                    id_card,
                ),
            )?;
            // Read back rather than trust affected_rows, which is 0 when
            // nothing changed (same values in the same millisecond).
            select_one(c, id_card)
        })?;
        found.ok_or_else(|| not_found(id_card))
    }

    /// Removes an entry; `not_found` if the id card is not listed.
    pub fn remove(&self, id_card: &str) -> Result<()> {
        const OP: &str = "blacklist.remove";
        validate::id_card(id_card)?;
        let n = self.db.with_conn(OP, |c| {
            c.exec_drop("DELETE FROM blacklist WHERE id_card = ?", (id_card,))?;
            Ok(c.affected_rows())
        })?;
        if n == 0 {
            return Err(not_found(id_card));
        }
        Ok(())
    }

    /// One page of entries: in id card order, or with `name_prefix`, the
    /// names starting with it in name order (served by the name index).
    pub fn list(&self, q: &ListQuery<'_>) -> Result<Page> {
        const OP: &str = "blacklist.list";
        let limit = validate::limit(q.limit, DEFAULT_LIMIT)?;
        // One row more than asked tells whether there is a next page.
        let fetch = limit + 1;
        let rows: Vec<EntryRow> = match (q.name_prefix, q.after) {
            (None, None) => self.db.with_conn(OP, |c| {
                c.exec(
                    format!("SELECT {COLUMNS} FROM blacklist ORDER BY id_card LIMIT ?"),
                    (fetch,),
                )
            })?,
            (None, Some(after)) => {
                validate::id_card(after).map_err(|_| Error::Invalid {
                    field: "after",
                    rule: "an id card, or the next value of the previous page",
                })?;
                self.db.with_conn(OP, |c| {
                    c.exec(
                        format!(
                            "SELECT {COLUMNS} FROM blacklist WHERE id_card > ? ORDER BY id_card LIMIT ?"
                        ),
                        (after, fetch),
                    )
                })?
            }
            (Some(prefix), None) => {
                validate::name("name_prefix", prefix)?;
                self.db.with_conn(OP, |c| {
                    c.exec(
                        format!(
                            "SELECT {COLUMNS} FROM blacklist WHERE name LIKE ? ESCAPE '!' \
                             ORDER BY name, id_card LIMIT ?"
                        ),
                        (like_prefix(prefix), fetch),
                    )
                })?
            }
            (Some(prefix), Some(after)) => {
                validate::name("name_prefix", prefix)?;
                let (after_id, after_name) = parse_name_cursor(after)?;
                self.db.with_conn(OP, |c| {
                    c.exec(
                        format!(
                            "SELECT {COLUMNS} FROM blacklist WHERE name LIKE ? ESCAPE '!' \
                             AND (name > ? OR (name = ? AND id_card > ?)) \
                             ORDER BY name, id_card LIMIT ?"
                        ),
                        (
                            like_prefix(prefix),
                            &after_name,
                            &after_name,
                            after_id,
                            fetch,
                        ),
                    )
                })?
            }
        };
        let mut entries: Vec<Entry> = rows.into_iter().map(entry).collect();
        let next = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            entries.last().map(|e| match q.name_prefix {
                None => e.id_card.clone(),
                Some(_) => name_cursor(e),
            })
        } else {
            None
        };
        Ok(Page { entries, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefix_matches_wildcards_literally() {
        assert_eq!(like_prefix("50%_off!"), "50!%!_off!!%");
    }

    #[test]
    fn name_cursor_round_trips_any_name() {
        let e = Entry {
            id_card: "A-1".into(),
            name: "x' OR '1'='1 😀.".into(),
            reason: None,
            created_by: "u".into(),
            created_at: 0,
            updated_by: "u".into(),
            updated_at: 0,
        };
        let (id, name) = parse_name_cursor(&name_cursor(&e)).unwrap();
        assert_eq!((id.as_str(), name.as_str()), ("A-1", e.name.as_str()));
        assert!(parse_name_cursor("no-dot").is_err());
        assert!(parse_name_cursor("A.zz").is_err());
    }
}
