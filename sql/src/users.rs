//! The `users` table: accounts with a unique name, an argon2id password hash
//! and a role.

use mysql::prelude::Queryable;
use serde::Serialize;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::time::now_ms;
use crate::validate;

/// What a user may do: the catalogue's type (`dsf_proto::user::Role`).
pub use dsf_proto::user::Role;

impl From<dsf_proto::user::UnknownRole> for Error {
    fn from(_: dsf_proto::user::UnknownRole) -> Error {
        Error::Invalid {
            field: "role",
            rule: "one of viewer, operator, admin",
        }
    }
}

/// An account, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Stable numeric id.
    pub id: u64,
    /// Unique name (case-insensitively unique).
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// When the account was made, Unix ms.
    pub created_at: i64,
}

/// The `users` repository; get one with [`Db::users`].
#[derive(Debug, Clone, Copy)]
pub struct Users<'a> {
    db: &'a Db,
}

type UserRow = (u64, String, String, i64);

pub(crate) fn user_from_row(
    op: &'static str,
    (id, name, role, created_at): UserRow,
) -> Result<User> {
    let role = role.parse().map_err(|_| Error::Internal {
        op,
        message: format!("user {id} has unknown role {role:?}"),
    })?;
    Ok(User {
        id,
        name,
        role,
        created_at,
    })
}

// === impl Users ===

impl<'a> Users<'a> {
    pub(crate) fn new(db: &'a Db) -> Users<'a> {
        Users { db }
    }

    /// Creates a user; `conflict` if the name is taken. `password_hash` is a
    /// PHC string from [`crate::password::hash`].
    pub fn create(&self, name: &str, password_hash: &str, role: Role) -> Result<User> {
        const OP: &str = "users.create";
        validate::name("name", name)?;
        let created_at = now_ms();
        let id = self
            .db
            .with_conn(OP, |c| {
                c.exec_drop(
                    "INSERT INTO users (name, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                    (name, password_hash, role.as_str(), created_at),
                )?;
                Ok(c.last_insert_id())
            })
            .map_err(|e| e.on_conflict(|| format!("user name {name:?} is taken")))?;
        Ok(User {
            id,
            name: name.to_string(),
            role,
            created_at,
        })
    }

    /// The user called `name` (case-insensitive), if any.
    pub fn get(&self, name: &str) -> Result<Option<User>> {
        const OP: &str = "users.get";
        validate::name("name", name)?;
        let row: Option<UserRow> = self.db.with_conn(OP, |c| {
            c.exec_first(
                "SELECT id, name, role, created_at FROM users WHERE name = ?",
                (name,),
            )
        })?;
        row.map(|r| user_from_row(OP, r)).transpose()
    }

    /// The user with `id`, if any.
    pub fn get_by_id(&self, id: u64) -> Result<Option<User>> {
        const OP: &str = "users.get_by_id";
        let row: Option<UserRow> = self.db.with_conn(OP, |c| {
            c.exec_first(
                "SELECT id, name, role, created_at FROM users WHERE id = ?",
                (id,),
            )
        })?;
        row.map(|r| user_from_row(OP, r)).transpose()
    }

    /// The user called `name` with their password hash, for a login.
    pub fn credentials(&self, name: &str) -> Result<Option<(User, String)>> {
        const OP: &str = "users.credentials";
        validate::name("name", name)?;
        let row: Option<(u64, String, String, i64, String)> = self.db.with_conn(OP, |c| {
            c.exec_first(
                "SELECT id, name, role, created_at, password_hash FROM users WHERE name = ?",
                (name,),
            )
        })?;
        row.map(|(id, name, role, created_at, hash)| {
            Ok((user_from_row(OP, (id, name, role, created_at))?, hash))
        })
        .transpose()
    }

    /// Gives `name` the role `role`; `not_found` if there is no such user.
    pub fn set_role(&self, name: &str, role: Role) -> Result<User> {
        self.change_role(name, role).map(|(_, user)| user)
    }

    /// [`Users::set_role`], with the role the user had before. The last
    /// admin cannot be demoted (`conflict`): the admins' rows are locked
    /// first, so two admins demoting each other at once cannot both pass.
    pub fn change_role(&self, name: &str, role: Role) -> Result<(Role, User)> {
        const OP: &str = "users.set_role";
        validate::name("name", name)?;
        self.db.with_tx(OP, |c| {
            let admins: Vec<u64> = c
                .exec("SELECT id FROM users WHERE role = 'admin' FOR UPDATE", ())
                .map_err(|e| Error::from_mysql(OP, e))?;
            let row: Option<UserRow> = c
                .exec_first(
                    "SELECT id, name, role, created_at FROM users WHERE name = ? FOR UPDATE",
                    (name,),
                )
                .map_err(|e| Error::from_mysql(OP, e))?;
            let before = row
                .map(|r| user_from_row(OP, r))
                .transpose()?
                .ok_or_else(|| Error::NotFound(format!("no user named {name:?}")))?;
            if before.role == Role::Admin && role != Role::Admin && admins.len() <= 1 {
                return Err(Error::Conflict {
                    op: OP,
                    message: format!("{name} is the last admin: make another user admin first"),
                });
            }
            c.exec_drop(
                "UPDATE users SET role = ? WHERE id = ?",
                (role.as_str(), before.id),
            )
            .map_err(|e| Error::from_mysql(OP, e))?;
            let old = before.role;
            Ok((old, User { role, ..before }))
        })
    }

    /// Replaces the password hash of `name`; `not_found` if there is no such user.
    pub fn set_password_hash(&self, name: &str, password_hash: &str) -> Result<()> {
        const OP: &str = "users.set_password_hash";
        validate::name("name", name)?;
        self.db.with_conn(OP, |c| {
            c.exec_drop(
                "UPDATE users SET password_hash = ? WHERE name = ?",
                (password_hash, name),
            )
        })?;
        match self.get(name)? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound(format!("no user named {name:?}"))),
        }
    }

    /// How many users have `role` (e.g. to refuse removing the last admin).
    pub fn count_with_role(&self, role: Role) -> Result<u64> {
        const OP: &str = "users.count_with_role";
        let n: Option<u64> = self.db.with_conn(OP, |c| {
            c.exec_first(
                "SELECT COUNT(*) FROM users WHERE role = ?",
                (role.as_str(),),
            )
        })?;
        Ok(n.unwrap_or(0))
    }
}
