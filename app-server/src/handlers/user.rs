//! Accounts and sessions: `user.register`, `user.login` (app), `user.logout`,
//! `user.me` (viewer), `user.create` and `user.set_role` (admin). Bodies and
//! replies are the catalogue's (`dsf_proto::user`).
//!
//! No reply tells whether a name exists: a login answers an unknown name
//! and a wrong password alike, and a registration answers a taken name as
//! a free one. Logins and registrations are rate-limited per name and per
//! address ([`crate::limits`]).

use dsf_common::{Error, Result};
use dsf_proto::user::{self as msg, CreateBody, Credentials, LoggedIn, Registered, SetRoleBody};
use dsf_proto::Empty;
use dsf_sql::{password, validate, Role, Session, User};

use crate::controller::{json, route, Call, Exec, Route};
use crate::limits::Registration;

/// This group's routes.
pub const ROUTES: &[Route] = &[
    route::<msg::Register>(Exec::Pool, register),
    route::<msg::Login>(Exec::Pool, login),
    route::<msg::Logout>(Exec::Pool, logout),
    route::<msg::Me>(Exec::Pool, me),
    route::<msg::Create>(Exec::Pool, create),
    route::<msg::SetRole>(Exec::Pool, set_role),
];

/// The message that answers both an unknown name and a wrong password, so a
/// login does not reveal which names exist.
pub const BAD_CREDENTIALS: &str = "wrong name or password";

/// A user as replies show it.
pub fn view(u: &User) -> msg::User {
    msg::User {
        id: u.id,
        name: u.name.clone(),
        role: u.role,
    }
}

/// `name`: 1 to 64 characters…; `password`: 8 to 128 characters.
fn check_credentials(b: &Credentials) -> Result<()> {
    validate::name("name", &b.name)?;
    validate::password(&b.password)?;
    Ok(())
}

/// `user.register`: a new viewer when registration is open (`forbidden`
/// when closed). A taken name gets the same reply, after the same work (the
/// hash), and its account is untouched.
pub fn register(call: &Call<'_>) -> Result<String> {
    let b: Credentials = call.body()?;
    check_credentials(&b)?;
    if call.app.registration == Registration::Closed {
        return Err(Error::Forbidden(
            "registration is closed on this server: an admin makes accounts (user.create, `client user create NAME`)"
                .into(),
        ));
    }
    call.app
        .auth_limits
        .check("registration", &b.name, call.peer)?;
    let hash = password::hash_with(&b.password, call.app.password_cost)?;
    match call.app.db.users().create(&b.name, &hash, Role::Viewer) {
        Ok(user) => call.audit("user.create", &user.name, Some(r#"{"role":"viewer"}"#))?,
        Err(dsf_sql::Error::Conflict { .. }) => {
            log::info!("user.register of a taken name (request {}): answered as a new one, nothing changed", call.request.id);
        }
        Err(e) => return Err(e.into()),
    }
    json(&Registered { name: b.name })
}

/// `user.create`: an admin makes an account of any role (viewer by
/// default); `conflict` if the name is taken (admins may know who exists).
pub fn create(call: &Call<'_>) -> Result<String> {
    let b: CreateBody = call.body()?;
    validate::name("name", &b.name)?;
    validate::password(&b.password)?;
    let role = match &b.role {
        Some(r) => r.parse::<Role>().map_err(dsf_sql::Error::from)?,
        None => Role::Viewer,
    };
    let hash = password::hash_with(&b.password, call.app.password_cost)?;
    let user = call.app.db.users().create(&b.name, &hash, role)?;
    let detail = serde_json::json!({"role": role.as_str()}).to_string();
    call.audit("user.create", &user.name, Some(&detail))?;
    json(&view(&user))
}

/// `user.login`: a session token; `unauthorized` with the same message for
/// an unknown name and a wrong password.
pub fn login(call: &Call<'_>) -> Result<String> {
    let b: Credentials = call.body()?;
    check_credentials(&b)?;
    let app = call.app;
    app.auth_limits.check("login", &b.name, call.peer)?;
    let Some((user, hash)) = app.db.users().credentials(&b.name)? else {
        // As long as a real verification, so timing does not tell either.
        password::verify_nothing(&b.password);
        return Err(Error::Unauthorized(BAD_CREDENTIALS.into()));
    };
    if !password::verify(&b.password, &hash)? {
        return Err(Error::Unauthorized(BAD_CREDENTIALS.into()));
    }
    let new = app
        .db
        .sessions()
        .create(user.id, &call.request.app, app.session_ttl)?;
    let reply = json(&LoggedIn {
        token: new.token.clone(),
        expires_at: new.expires_at,
        user: view(&user),
    })?;
    app.sessions.put(
        &new.token,
        Session {
            user,
            app: Some(call.request.app.clone()),
            expires_at: new.expires_at,
        },
    );
    Ok(reply)
}

/// `user.logout`: ends the session of the token sent, here at once and on
/// every other node within the session cache time (≤ 2 s).
pub fn logout(call: &Call<'_>) -> Result<String> {
    let Empty {} = call.body()?;
    let token = call.token().unwrap_or_default();
    call.app.db.sessions().delete(token)?;
    // After the delete: a concurrent check that read the row before it
    // cannot re-cache it past this point.
    call.app.sessions.evict(token);
    json(&Empty {})
}

/// `user.me`: who the token belongs to.
pub fn me(call: &Call<'_>) -> Result<String> {
    let Empty {} = call.body()?;
    json(&view(&call.session()?.user))
}

/// `name` as for registering; `role`: one of viewer, operator, admin.
fn check_set_role(b: &SetRoleBody) -> Result<Role> {
    validate::name("name", &b.name)?;
    Ok(b.role.parse::<Role>().map_err(dsf_sql::Error::from)?)
}

/// `user.set_role`: gives a user a role; `not_found` if there is none.
pub fn set_role(call: &Call<'_>) -> Result<String> {
    let b: SetRoleBody = call.body()?;
    let role = check_set_role(&b)?;
    let (before, user) = call.app.db.users().change_role(&b.name, role)?;
    let detail = serde_json::json!({"from": before.as_str(), "to": role.as_str()}).to_string();
    call.audit("user.set_role", &user.name, Some(&detail))?;
    // This node applies the change at once; others within the cache time.
    call.app.sessions.evict_user(user.id);
    json(&view(&user))
}
