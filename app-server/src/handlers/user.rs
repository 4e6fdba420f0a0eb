//! Accounts and sessions: `user.register`, `user.login` (app), `user.logout`,
//! `user.me` (viewer), `user.set_role` (admin).

use dsf_common::{Error, Result};
use dsf_sql::{password, validate, Role, Session, User};
use serde::{Deserialize, Serialize};

use crate::controller::{json, Auth, Call, Exec, Route};

/// This group's routes.
pub const ROUTES: &[Route] = &[
    Route {
        kind: "user.register",
        auth: Auth::App,
        exec: Exec::Pool,
        handler: register,
    },
    Route {
        kind: "user.login",
        auth: Auth::App,
        exec: Exec::Pool,
        handler: login,
    },
    Route {
        kind: "user.logout",
        auth: Auth::Role(Role::Viewer),
        exec: Exec::Pool,
        handler: logout,
    },
    Route {
        kind: "user.me",
        auth: Auth::Role(Role::Viewer),
        exec: Exec::Pool,
        handler: me,
    },
    Route {
        kind: "user.set_role",
        auth: Auth::Role(Role::Admin),
        exec: Exec::Pool,
        handler: set_role,
    },
];

/// The message that answers both an unknown name and a wrong password, so a
/// login does not reveal which names exist.
pub const BAD_CREDENTIALS: &str = "wrong name or password";

/// A user as replies show it.
#[derive(Debug, Serialize)]
pub struct UserView<'a> {
    pub id: u64,
    pub name: &'a str,
    pub role: Role,
}

impl<'a> From<&'a User> for UserView<'a> {
    fn from(u: &'a User) -> Self {
        UserView {
            id: u.id,
            name: &u.name,
            role: u.role,
        }
    }
}

/// `user.register` and `user.login`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub name: String,
    pub password: String,
}

impl Credentials {
    /// `name`: 1 to 64 characters…; `password`: 8 to 128 characters.
    pub fn validate(&self) -> Result<()> {
        validate::name("name", &self.name)?;
        validate::password(&self.password)?;
        Ok(())
    }
}

/// `user.register`: a new viewer; `conflict` if the name is taken.
pub fn register(call: &Call<'_>) -> Result<String> {
    let b: Credentials = call.body()?;
    b.validate()?;
    let hash = password::hash_with(&b.password, call.app.password_cost)?;
    let user = call.app.db.users().create(&b.name, &hash, Role::Viewer)?;
    json(&UserView::from(&user))
}

/// `user.login`'s reply.
#[derive(Debug, Serialize)]
pub struct LoggedIn<'a> {
    pub token: &'a str,
    pub expires_at: i64,
    pub user: UserView<'a>,
}

/// `user.login`: a session token; `unauthorized` with the same message for
/// an unknown name and a wrong password.
pub fn login(call: &Call<'_>) -> Result<String> {
    let b: Credentials = call.body()?;
    b.validate()?;
    let app = call.app;
    let Some((user, hash)) = app.db.users().credentials(&b.name)? else {
        // As long as a real verification, so timing does not tell either.
        password::verify_nothing(&b.password);
        return Err(Error::Unauthorized(BAD_CREDENTIALS.into()));
    };
    if !password::verify(&b.password, &hash)? {
        return Err(Error::Unauthorized(BAD_CREDENTIALS.into()));
    }
    let new = app.db.sessions().create(user.id, app.session_ttl)?;
    let reply = json(&LoggedIn {
        token: &new.token,
        expires_at: new.expires_at,
        user: UserView::from(&user),
    })?;
    app.sessions.put(
        &new.token,
        Session {
            user,
            expires_at: new.expires_at,
        },
    );
    Ok(reply)
}

/// A body that must be empty (`user.logout`, `user.me`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `user.logout`: ends the session of the token sent, here at once and on
/// every other node within the session cache time (≤ 2 s).
pub fn logout(call: &Call<'_>) -> Result<String> {
    let Empty {} = call.body()?;
    let token = call.token().unwrap_or_default();
    call.app.db.sessions().delete(token)?;
    // After the delete: a concurrent check that read the row before it
    // cannot re-cache it past this point.
    call.app.sessions.evict(token);
    Ok("{}".into())
}

/// `user.me`: who the token belongs to.
pub fn me(call: &Call<'_>) -> Result<String> {
    let Empty {} = call.body()?;
    json(&UserView::from(&call.session()?.user))
}

/// `user.set_role`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    pub name: String,
    pub role: String,
}

impl SetRole {
    /// `name` as for registering; `role`: one of viewer, operator, admin.
    pub fn validate(&self) -> Result<Role> {
        validate::name("name", &self.name)?;
        Ok(self.role.parse::<Role>()?)
    }
}

/// `user.set_role`: gives a user a role; `not_found` if there is none.
pub fn set_role(call: &Call<'_>) -> Result<String> {
    let b: SetRole = call.body()?;
    let role = b.validate()?;
    let user = call.app.db.users().set_role(&b.name, role)?;
    // This node applies the change at once; others within the cache time.
    call.app.sessions.evict_user(user.id);
    json(&UserView::from(&user))
}
