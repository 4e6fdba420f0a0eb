//! The accounts service: users, sessions, roles and the audit trail.
//!
//! | type | auth | file |
//! |---|---|---|
//! | `user.register`, `user.login` | app | [`user`] |
//! | `user.logout`, `user.me` | viewer | [`user`] |
//! | `user.create`, `user.set_role` | admin | [`user`] |
//! | `audit.list` | admin | [`audit`](mod@audit) |
//!
//! It provides the sessions every other service's `Viewer`, `Operator`
//! and `Admin` types are checked against ([`sessions`]: a short-lived
//! cache over the `sessions` table), and [`audit()`](fn@audit), which other
//! services call to record what they change. Logins and registrations are
//! rate-limited per name and per address (the limits `auth-name` and
//! `auth-addr`, `--auth-rate-name` and `--auth-rate-addr`).

pub mod audit;
pub mod sessions;
pub mod user;

use std::sync::Arc;
use std::time::Duration;

use dsf_common::pipeline::{Limit, Per, Rate, Session, Sessions};
use dsf_common::Result;
use dsf_sql::password::Cost;
use dsf_sql::Db;

use crate::node::{Call, CallExt, Route};
use crate::service::Service;
use crate::settings::{AUTH_ADDR, AUTH_NAME};
use sessions::SessionCache;

/// Default `--auth-rate-name`: 10 attempts, refilled over a minute.
pub const DEFAULT_PER_NAME: &str = "10/1m";
/// Default `--auth-rate-addr`: 60 attempts, refilled over a minute.
pub const DEFAULT_PER_ADDR: &str = "60/1m";

pub use crate::settings::Registration;

/// What the accounts' handlers share.
#[derive(Debug)]
pub struct Accounts {
    /// Token checks, cached at most 2 s.
    pub sessions: Arc<SessionCache>,
    pub registration: Registration,
    /// Lifetime of sessions made by `user.login`.
    pub session_ttl: Duration,
    /// Work of each password hash (lowered only in tests).
    pub password_cost: Cost,
}

/// The sessions the auth layer checks tokens against: the cache, then the
/// `sessions` table.
struct Store {
    db: Db,
    cache: Arc<SessionCache>,
}

impl Sessions for Store {
    fn session(&self, token: &str) -> Result<Option<Session>> {
        if let Some(s) = self.cache.get(token) {
            return Ok(Some(s));
        }
        let Some(s) = self.db.sessions().get(token)? else {
            return Ok(None);
        };
        let s = session(s);
        self.cache.put(token, s.clone());
        Ok(Some(s))
    }
}

/// A session as the pipeline sees it.
pub fn session(s: dsf_sql::Session) -> Session {
    Session {
        user: user::view(&s.user),
        app: s.app,
        expires_at: s.expires_at,
    }
}

/// The limits of `user.login` and `user.register`, in the order they are
/// checked: the address first, so one address sending many names is
/// refused before it fills the name table. Every attempt counts, good or
/// bad: a password hash costs tens of milliseconds of a worker.
fn limits(route: Route, what: &'static str) -> Route {
    let per_addr: Rate = DEFAULT_PER_ADDR.parse().expect("valid default");
    let per_name: Rate = DEFAULT_PER_NAME.parse().expect("valid default");
    route
        .limit(Limit::new(AUTH_ADDR, Per::Peer, per_addr).counting(what))
        .limit(Limit::new(AUTH_NAME, Per::Field("name"), per_name).counting(what))
}

/// The accounts service (namespace `accounts`).
pub fn service() -> Service {
    Service::new("accounts")
        .migrations(dsf_sql::migrate::ACCOUNTS)
        .state(|node| {
            let s = node.settings();
            Ok(Accounts {
                sessions: Arc::new(SessionCache::new(s.session_cache)),
                registration: s.registration,
                session_ttl: s.session_ttl,
                password_cost: s.password_cost,
            })
        })
        .sessions(|node| {
            Arc::new(Store {
                db: node.db().clone(),
                cache: node.state::<Accounts>().sessions.clone(),
            })
        })
        .route(limits(
            Route::unary::<dsf_proto::user::Register>(user::register),
            "registration",
        ))
        .route(limits(
            Route::unary::<dsf_proto::user::Login>(user::login),
            "login",
        ))
        .unary::<dsf_proto::user::Logout>(user::logout)
        .unary::<dsf_proto::user::Me>(user::me)
        .unary::<dsf_proto::user::Create>(user::create)
        .unary::<dsf_proto::user::SetRole>(user::set_role)
        .unary::<dsf_proto::audit::List>(audit::list)
}

/// Records `action` on `subject` in the audit trail, as the caller on this
/// node, in the call's transaction (a write's: a change rolled back leaves
/// no entry). `detail` is JSON text.
pub fn audit(call: &Call, action: &str, subject: &str, detail: Option<&str>) -> Result<()> {
    let actor = call.session().map(|s| s.user.name.as_str());
    call.db().audit().record(&dsf_sql::audit::Record {
        actor,
        node: call.node_id(),
        action,
        subject,
        detail,
    })?;
    Ok(())
}
