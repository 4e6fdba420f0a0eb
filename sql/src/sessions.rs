//! The `sessions` table: login sessions, stored by the hash of their token
//! so that a session made on one app server is valid on every other.

use std::time::Duration;

use mysql::prelude::Queryable;
use serde::Serialize;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::time::now_ms;
use crate::token;
use crate::users::{user_from_row, User};

/// Default session lifetime: a working day.
pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);

/// A session just made: the token is returned once, to the client, and
/// stored only as its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewSession {
    /// The bearer token (64 hex characters).
    pub token: String,
    /// When it stops being valid, Unix ms.
    pub expires_at: i64,
}

/// A valid session found by its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    /// Whose session it is, as of this lookup (a role change applies at once).
    pub user: User,
    /// The app whose key logged in (`None`: made before sessions had one);
    /// the token is good only with that app's key.
    pub app: Option<String>,
    /// When it stops being valid, Unix ms.
    pub expires_at: i64,
}

/// The `sessions` repository; get one with [`Db::sessions`].
#[derive(Debug, Clone, Copy)]
pub struct Sessions<'a> {
    db: &'a Db,
}

// === impl Sessions ===

impl<'a> Sessions<'a> {
    pub(crate) fn new(db: &'a Db) -> Sessions<'a> {
        Sessions { db }
    }

    /// Opens a session for `user_id` lasting `ttl`; `not_found` if the user
    /// does not exist.
    pub fn create(&self, user_id: u64, app: &str, ttl: Duration) -> Result<NewSession> {
        const OP: &str = "sessions.create";
        let token = token::generate();
        let now = now_ms();
        let expires_at = now.saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64);
        self.db
            .with_conn(OP, |c| {
                c.exec_drop(
                    "INSERT INTO sessions (token_hash, user_id, app, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                    (&token::hash(&token)[..], user_id, app, now, expires_at),
                )
            })
            .map_err(|e| match e {
                // 1452: the foreign key found no such user.
                Error::Internal { message, .. } if message.starts_with("server error 1452") => {
                    Error::NotFound(format!("no user with id {user_id}"))
                }
                other => other,
            })?;
        Ok(NewSession { token, expires_at })
    }

    /// The unexpired session for `token`, with its user, if any.
    pub fn get(&self, token: &str) -> Result<Option<Session>> {
        const OP: &str = "sessions.get";
        type Row = (u64, String, String, i64, Option<String>, i64);
        let row: Option<Row> = self.db.with_conn(OP, |c| {
            c.exec_first(
                "SELECT u.id, u.name, u.role, u.created_at, s.app, s.expires_at \
                 FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = ? AND s.expires_at > ?",
                (&token::hash(token)[..], now_ms()),
            )
        })?;
        row.map(|(id, name, role, created_at, app, expires_at)| {
            Ok(Session {
                user: user_from_row(OP, (id, name, role, created_at))?,
                app,
                expires_at,
            })
        })
        .transpose()
    }

    /// Ends the session for `token`; whether there was one.
    pub fn delete(&self, token: &str) -> Result<bool> {
        const OP: &str = "sessions.delete";
        let n = self.db.with_conn(OP, |c| {
            c.exec_drop(
                "DELETE FROM sessions WHERE token_hash = ?",
                (&token::hash(token)[..],),
            )?;
            Ok(c.affected_rows())
        })?;
        Ok(n > 0)
    }

    /// Ends every session of `user_id`; how many there were.
    pub fn delete_for_user(&self, user_id: u64) -> Result<u64> {
        const OP: &str = "sessions.delete_for_user";
        self.db.with_conn(OP, |c| {
            c.exec_drop("DELETE FROM sessions WHERE user_id = ?", (user_id,))?;
            Ok(c.affected_rows())
        })
    }

    /// Removes expired sessions, at most `batch` rows per call (small
    /// batches keep row locks short); how many went.
    pub fn delete_expired(&self, batch: u32) -> Result<u64> {
        const OP: &str = "sessions.delete_expired";
        self.db.with_conn(OP, |c| {
            c.exec_drop(
                "DELETE FROM sessions WHERE expires_at <= ? LIMIT ?",
                (now_ms(), batch),
            )?;
            Ok(c.affected_rows())
        })
    }
}
