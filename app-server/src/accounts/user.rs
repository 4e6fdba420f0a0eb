//! Accounts and sessions: `user.register`, `user.login` (app), `user.logout`,
//! `user.me` (viewer), `user.create` and `user.set_role` (admin). Bodies and
//! replies are the catalogue's (`dsf_proto::user`).
//!
//! No reply tells whether a name exists: a login answers an unknown name
//! and a wrong password alike, and a registration answers a taken name as
//! a free one.

use dsf_common::{Error, Result};
use dsf_proto::user::{self as msg, CreateBody, Credentials, LoggedIn, Registered, SetRoleBody};
use dsf_proto::Empty;
use dsf_sql::{password, validate, Role, User};

use super::{audit, session, Accounts, Registration};
use crate::node::{Call, CallExt};

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
pub fn register(call: &Call, b: Credentials) -> Result<Registered> {
    check_credentials(&b)?;
    let accounts = call.state::<Accounts>();
    if accounts.registration == Registration::Closed {
        return Err(Error::Forbidden(
            "registration is closed on this server: an admin makes accounts (user.create, `client user create NAME`)"
                .into(),
        ));
    }
    let hash = password::hash_with(&b.password, accounts.password_cost)?;
    match call.db().users().create(&b.name, &hash, Role::Viewer) {
        Ok(user) => audit(
            call,
            "user.create",
            &user.name,
            Some(r#"{"role":"viewer"}"#),
        )?,
        Err(dsf_sql::Error::Conflict { .. }) => {
            log::info!("user.register of a taken name (request {}): answered as a new one, nothing changed", call.request().id);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Registered { name: b.name })
}

/// `user.create`: an admin makes an account of any role (viewer by
/// default); `conflict` if the name is taken (admins may know who exists).
pub fn create(call: &Call, b: CreateBody) -> Result<msg::User> {
    validate::name("name", &b.name)?;
    validate::password(&b.password)?;
    let role = match &b.role {
        Some(r) => r.parse::<Role>().map_err(dsf_sql::Error::from)?,
        None => Role::Viewer,
    };
    let hash = password::hash_with(&b.password, call.state::<Accounts>().password_cost)?;
    let user = call.db().users().create(&b.name, &hash, role)?;
    let detail = serde_json::json!({"role": role.as_str()}).to_string();
    audit(call, "user.create", &user.name, Some(&detail))?;
    Ok(view(&user))
}

/// `user.login`: a session token; `unauthorized` with the same message for
/// an unknown name and a wrong password.
pub fn login(call: &Call, b: Credentials) -> Result<LoggedIn> {
    validate::name("name", &b.name)?;
    if b.password.chars().count() > validate::PASSWORD_MAX {
        // Bounded work: the hash is not run on a password of any length.
        validate::password(&b.password)?;
    }
    let db = call.db();
    // A password too short for the rules is wrong, as any other: the
    // rules are for choosing one (register, create), not for logging in.
    let found = match validate::password(&b.password) {
        Ok(()) => db.users().credentials(&b.name)?,
        Err(_) => None,
    };
    let Some((user, hash)) = found else {
        // As long as a real verification, so timing does not tell either.
        password::verify_nothing(&b.password);
        return Err(Error::Unauthorized(BAD_CREDENTIALS.into()));
    };
    if !password::verify(&b.password, &hash)? {
        return Err(Error::Unauthorized(BAD_CREDENTIALS.into()));
    }
    let accounts = call.state::<Accounts>();
    let new = db
        .sessions()
        .create(user.id, call.app(), accounts.session_ttl)?;
    accounts.sessions.put(
        &new.token,
        session(dsf_sql::Session {
            user: user.clone(),
            app: Some(call.app().to_string()),
            expires_at: new.expires_at,
        }),
    );
    Ok(LoggedIn {
        token: new.token,
        expires_at: new.expires_at,
        user: view(&user),
    })
}

/// `user.logout`: ends the session of the token sent, here at once and on
/// every other node within the session cache time (≤ 2 s).
pub fn logout(call: &Call, _: Empty) -> Result<Empty> {
    let token = call.token().unwrap_or_default();
    call.db().sessions().delete(token)?;
    // After the delete: a concurrent check that read the row before it
    // cannot re-cache it past this point.
    call.state::<Accounts>().sessions.evict(token);
    Ok(Empty {})
}

/// `user.me`: who the token belongs to.
pub fn me(call: &Call, _: Empty) -> Result<msg::User> {
    Ok(call.user()?.clone())
}

/// `name` as for registering; `role`: one of viewer, operator, admin.
fn check_set_role(b: &SetRoleBody) -> Result<Role> {
    validate::name("name", &b.name)?;
    Ok(b.role.parse::<Role>().map_err(dsf_sql::Error::from)?)
}

/// `user.set_role`: gives a user a role; `not_found` if there is none.
pub fn set_role(call: &Call, b: SetRoleBody) -> Result<msg::User> {
    let role = check_set_role(&b)?;
    let (before, user) = call.db().users().change_role(&b.name, role)?;
    let detail = serde_json::json!({"from": before.as_str(), "to": role.as_str()}).to_string();
    audit(call, "user.set_role", &user.name, Some(&detail))?;
    // This node applies the change at once; others within the cache time.
    call.state::<Accounts>().sessions.evict_user(user.id);
    Ok(view(&user))
}
