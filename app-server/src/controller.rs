//! The controller: a table from message type to [`Route`] (who may call it,
//! where it runs, which handler), and the steps every request takes through
//! it: admission (signature, timestamp, nonce), session and role, the
//! handler, the signed reply.
//!
//! Admission runs on the reactor thread, so a request for an unknown type
//! or with a bad signature never occupies a worker; everything that may
//! touch MySQL (sessions included) runs on a worker.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dsf_common::reactor::ConnId;
use dsf_common::wire::streams::{Streams, DEFAULT_STREAMS_PER_CONN};
use dsf_common::wire::{self, Admission, Admitted, Refused, Request};
use dsf_common::{Error, ErrorCode, Result};
use dsf_sql::password::Cost;
use dsf_sql::{Db, Once, Role, Session};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::handlers;
use crate::sessions::SessionCache;
use crate::stats::Metrics;

/// Who may send a message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// A valid app signature is enough.
    App,
    /// An app signature; a session token, when one is sent, must be valid
    /// and is handed to the handler (a job is then the user's too).
    AppMaybeUser,
    /// A session token of a user with at least this role.
    Role(Role),
}

/// Where a handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// On the reactor thread: only for handlers that never block (no MySQL).
    Inline,
    /// On a worker.
    Pool,
}

/// A handler: the call in, the reply body (a serialised JSON object) out.
pub type Handler = fn(&Call<'_>) -> Result<String>;

/// The route of message `M` (its name and auth from the catalogue).
pub const fn route<M: dsf_proto::Message>(exec: Exec, handler: Handler) -> Route {
    Route {
        kind: M::TYPE.name,
        auth: auth_of(M::TYPE.auth),
        exec,
        handler,
    }
}

/// The route of message `M` (an app-auth type) taking a session when
/// one is sent ([`Auth::AppMaybeUser`]).
pub const fn route_maybe_user<M: dsf_proto::Message>(exec: Exec, handler: Handler) -> Route {
    assert!(
        matches!(M::TYPE.auth, dsf_proto::Auth::App),
        "only app-auth types take an optional session"
    );
    Route {
        kind: M::TYPE.name,
        auth: Auth::AppMaybeUser,
        exec,
        handler,
    }
}

/// The app server's name for a catalogue auth.
const fn auth_of(a: dsf_proto::Auth) -> Auth {
    match a {
        dsf_proto::Auth::App => Auth::App,
        dsf_proto::Auth::Viewer => Auth::Role(Role::Viewer),
        dsf_proto::Auth::Operator => Auth::Role(Role::Operator),
        dsf_proto::Auth::Admin => Auth::Role(Role::Admin),
        dsf_proto::Auth::Cluster => panic!("app servers route no cluster types"),
    }
}

/// One entry of the table.
#[derive(Debug)]
pub struct Route {
    /// The message type, e.g. `blacklist.add`.
    pub kind: &'static str,
    pub auth: Auth,
    pub exec: Exec,
    pub handler: Handler,
}

/// What a handler works with: the shared [`App`], the request, the
/// caller's session when the route needs one, and the connection it came
/// on.
pub struct Call<'a> {
    pub app: &'a App,
    pub request: &'a Request,
    pub session: Option<&'a Session>,
    /// The connection the request came on (`msg.ack` acknowledges that
    /// connection's subscription).
    pub conn: Option<ConnId>,
    /// The address the request came from (rate limits of logins).
    pub peer: Option<IpAddr>,
    /// What to do once the handler's write is committed.
    pub effects: &'a RefCell<Vec<Effect>>,
}

/// Something a handler asks for after its write commits (never before:
/// a peer told of a message must find it stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Tell the node holding `user`'s subscription that message `seq` is
    /// waiting (this node's mailroom, or a peer's by `peer.notify`), with
    /// the message as its `message` event's body when it is small enough
    /// to carry.
    Notify {
        node: String,
        user: u64,
        seq: u64,
        event: Option<String>,
    },
    /// The subscription on `conn` is acknowledged up to `upto`: its credit
    /// comes back. After the commit, so that a run rolled back (a refusal,
    /// or Galera's warming run) leaves the mark where the database has it.
    Acked { conn: ConnId, user: u64, upto: u64 },
}

// === impl Call ===

impl Call<'_> {
    /// The body as `T`; a mismatch is a `bad_request` naming the field and
    /// what was expected (`name: invalid type: integer `5`, expected a string`).
    pub fn body<T: DeserializeOwned>(&self) -> Result<T> {
        parse_body(self.request.body.get())
    }

    /// The caller's session; only routes with [`Auth::Role`] have one.
    pub fn session(&self) -> Result<&Session> {
        self.session.ok_or_else(|| {
            Error::Internal(format!(
                "{} is routed without a session but its handler needs one",
                self.request.kind
            ))
        })
    }

    /// The token the request carried (checked, for [`Auth::Role`] routes).
    pub fn token(&self) -> Option<&str> {
        self.request.token.as_deref()
    }

    /// Records `action` on `subject` in the audit trail, as the caller on
    /// this node, in the write's transaction (`detail`: JSON text).
    pub fn audit(&self, action: &str, subject: &str, detail: Option<&str>) -> Result<()> {
        let actor = self.session.map(|s| s.user.name.as_str());
        self.app.db.audit().record(&dsf_sql::audit::Record {
            actor,
            node: self.app.node(),
            action,
            subject,
            detail,
        })?;
        Ok(())
    }

    /// Asks for `e` once the write commits.
    pub fn after_commit(&self, e: Effect) {
        self.effects.borrow_mut().push(e);
    }
}

/// Deserialises a body, naming the offending field in the error.
pub fn parse_body<T: DeserializeOwned>(body: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = strip_position(&e.into_inner().to_string());
        if path == "." {
            Error::bad_request(format!("body: {inner}"))
        } else {
            Error::bad_request(format!("{path}: {inner}"))
        }
    })
}

/// serde's message without " at line 1 column 17", which means nothing to
/// the sender.
fn strip_position(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// Renders a reply body.
pub fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("rendering a reply: {e}")))
}

/// What every handler shares: the database, the session cache, who this
/// node is.
#[derive(Debug)]
pub struct App {
    pub db: Db,
    pub sessions: SessionCache,
    /// Lifetime of sessions made by `user.login`.
    pub session_ttl: Duration,
    /// Work of each password hash (lowered only in tests).
    pub password_cost: Cost,
    /// Nudges the parked long polls of `task.claim` (a submit here).
    pub wake: Arc<crate::waiters::Wake>,
    /// This node's `msg.subscribe` subscriptions.
    pub mail: crate::mailroom::Mailroom,
    /// Links to the other app servers (`peer.notify`).
    pub peers: crate::peers::Peers,
    /// User ids by name, for `msg.send` (users are never deleted, so an
    /// entry stays right); cleared when full.
    pub user_ids: std::sync::Mutex<HashMap<String, u64>>,
    /// Whether `user.register` makes accounts.
    pub registration: crate::limits::Registration,
    /// The buckets of `user.login` and `user.register`.
    pub auth_limits: crate::limits::AuthLimits,
    node: OnceLock<String>,
}

// === impl App ===

impl App {
    /// The shared state; the node id is set once the listen address is known.
    pub fn new(
        db: Db,
        session_cache: Duration,
        session_ttl: Duration,
        password_cost: Cost,
        peer_secret: &[u8],
        msg_poll: Duration,
    ) -> App {
        App {
            mail: crate::mailroom::Mailroom::start(db.clone(), msg_poll),
            peers: crate::peers::Peers::new(peer_secret),
            user_ids: Default::default(),
            registration: crate::limits::Registration::Closed,
            auth_limits: crate::limits::AuthLimits::off(),
            db,
            sessions: SessionCache::new(session_cache),
            session_ttl,
            password_cost,
            wake: Arc::default(),
            node: OnceLock::new(),
        }
    }

    /// Sets this node's id (once).
    pub fn set_node(&self, id: String) {
        self.mail.set_node(&id);
        let _ = self.node.set(id);
    }

    /// The id of the user named `name` (`not_found` if none), cached.
    pub fn user_id(&self, name: &str) -> Result<u64> {
        const MAX: usize = 100_000;
        let cached = self
            .user_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied();
        if let Some(id) = cached {
            return Ok(id);
        }
        let id = self.db.messages().user_id(name)?;
        let mut ids = self.user_ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.len() >= MAX {
            ids.clear();
        }
        ids.insert(name.to_string(), id);
        Ok(id)
    }

    /// Carries out what a committed write asked for.
    pub fn apply(&self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Notify {
                    node,
                    user,
                    seq,
                    event,
                } if node == self.node() => match event {
                    Some(event) => self.mail.push(user, seq, event),
                    None => self.mail.wake(user),
                },
                Effect::Notify {
                    node,
                    user,
                    seq,
                    event,
                } => {
                    self.peers.notify(&node, user, seq, event.as_deref());
                }
                Effect::Acked { conn, user, upto } => self.mail.acked(conn, user, upto),
            }
        }
    }

    /// This node's id, as `sys.ping` and gate checks report it.
    pub fn node(&self) -> &str {
        self.node.get().map_or("unknown", String::as_str)
    }
}

fn log_refusal(req: &Request, e: &Error) {
    if e.code() == ErrorCode::Internal {
        log::error!(
            "{} (request {} from app {}): {e}",
            req.kind,
            req.id,
            req.app
        );
    } else {
        log::debug!("{} (request {}): {}: {e}", req.kind, req.id, e.code());
    }
}

/// The catalogue's name for a route's auth.
fn proto_auth(a: Auth) -> dsf_proto::Auth {
    match a {
        Auth::App | Auth::AppMaybeUser => dsf_proto::Auth::App,
        Auth::Role(Role::Viewer) => dsf_proto::Auth::Viewer,
        Auth::Role(Role::Operator) => dsf_proto::Auth::Operator,
        Auth::Role(Role::Admin) => dsf_proto::Auth::Admin,
    }
}

/// Admission, the route table and the shared state; one per server, shared
/// by the reactor thread and the workers.
pub struct Controller {
    admission: Admission,
    routes: HashMap<&'static str, &'static Route, foldhash::fast::RandomState>,
    /// The routed types that write: run once, their replies stored.
    writes: HashSet<&'static str, foldhash::fast::RandomState>,
    app: App,
    metrics: Arc<Metrics>,
    waiters: crate::waiters::Waiters,
    /// Open streams by connection: `sys.cancel` and closes end them.
    streams: Arc<Streams>,
}

// === impl Controller ===

impl Controller {
    /// A controller over every handler group's routes.
    pub fn new(admission: Admission, app: App, metrics: Arc<Metrics>) -> Controller {
        let mut routes = HashMap::default();
        let mut writes = HashSet::default();
        for r in handlers::routes() {
            let dup = routes.insert(r.kind, r);
            assert!(dup.is_none(), "message type {} is routed twice", r.kind);
            let t = dsf_proto::get(r.kind)
                .unwrap_or_else(|| panic!("{} is routed but not in the catalogue", r.kind));
            assert_eq!(
                proto_auth(r.auth),
                t.auth,
                "{} is routed with another auth than the catalogue's",
                r.kind
            );
            if t.writes {
                writes.insert(r.kind);
            }
        }
        let waiters = crate::waiters::Waiters::start(app.db.clone(), app.wake.clone());
        Controller {
            admission,
            routes,
            writes,
            app,
            metrics,
            waiters,
            streams: Streams::new(DEFAULT_STREAMS_PER_CONN),
        }
    }

    /// The open streams (`job.watch`, `msg.subscribe`).
    pub fn streams(&self) -> &Arc<Streams> {
        &self.streams
    }

    /// The parked long polls of `task.claim`.
    pub fn waiters(&self) -> &crate::waiters::Waiters {
        &self.waiters
    }

    /// How long a `task.claim` may wait, when it asks to and nothing of its
    /// app is ready now; `None` to run it at once (no wait asked, a body
    /// the handler will refuse, something ready, or no answer from the
    /// database).
    pub fn claim_wait(&self, admitted: &Admitted) -> Option<Instant> {
        if self.metrics.is_draining() {
            return None;
        }
        let b: dsf_proto::task::ClaimBody = parse_body(admitted.request.body.get()).ok()?;
        let wait = b
            .wait_ms
            .filter(|w| *w > 0 && *w <= dsf_proto::task::WAIT_MAX_MS)?;
        match self.app.db.tasks().has_ready(&admitted.request.app) {
            Ok(false) => Some(Instant::now() + Duration::from_millis(wait)),
            _ => None,
        }
    }

    /// The shared state.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The counters replies are recorded in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Every message type served.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.routes.keys().copied()
    }

    /// Signature, timestamp and nonce of one frame. A resend of a type that
    /// writes is admitted as [`Admitted::replayed`]: it gets its stored reply.
    pub fn admit(&self, payload: &[u8]) -> std::result::Result<Admitted, Refused> {
        self.admission
            .admit_with(payload, |kind| self.writes.contains(kind))
    }

    /// Whether a type runs once (its reply stored with its write).
    pub fn runs_once(&self, kind: &str) -> bool {
        self.writes.contains(kind)
    }

    /// The route of a message type.
    pub fn route(&self, kind: &str) -> Option<&'static Route> {
        self.routes.get(kind).copied()
    }

    /// The error for a type no route serves.
    pub fn unknown_type(kind: &str) -> Error {
        Error::UnknownType(format!(
            "no message type {kind:?} on app servers (see the message catalogue: sys.ping, user.*, blacklist.*, gate.*, task.*, job.*, msg.*)"
        ))
    }

    /// Runs an admitted request through its route and appends the signed
    /// reply to `out`; records it in the metrics. A type that writes runs
    /// once: in one transaction with the record of its nonce and reply, or,
    /// sent again, answered with the reply stored the first time.
    /// `conn` is the connection the request came on.
    pub fn handle(
        &self,
        route: &Route,
        admitted: &Admitted,
        conn: Option<ConnId>,
        peer: Option<IpAddr>,
        received: Instant,
        out: &mut Vec<u8>,
    ) {
        let req = &admitted.request;
        let effects = RefCell::new(Vec::new());
        let ok = if self.runs_once(route.kind) {
            self.handle_once(route, admitted, conn, peer, &effects, out)
        } else {
            match self.call(route, req, conn, peer, &effects) {
                Ok(body) => {
                    admitted.ok(&body, out);
                    true
                }
                Err(e) => {
                    log_refusal(req, &e);
                    admitted.error(&e, out);
                    false
                }
            }
        };
        // Effects are asked for only by a run that committed; a stored
        // reply (a resend) has had its effects already.
        if ok {
            self.app.apply(effects.into_inner());
        }
        self.metrics.record(received, ok);
    }

    fn handle_once(
        &self,
        route: &Route,
        admitted: &Admitted,
        conn: Option<ConnId>,
        peer: Option<IpAddr>,
        effects: &RefCell<Vec<Effect>>,
        out: &mut Vec<u8>,
    ) -> bool {
        let req = &admitted.request;
        let writes = self.app.db.writes();
        // A resend this node has seen: its stored reply, if it ran. If not
        // (it is still running, or was refused with "try again" and not
        // recorded), it runs: the record's unique key keeps it to once, and
        // a run still going elsewhere is waited for and answers it.
        if admitted.replayed {
            match writes.stored(&req.app, &req.nonce) {
                Ok(Some(s)) => return self.reply_stored(admitted, &s, out),
                Ok(None) => {}
                Err(e) => {
                    let e = e.into();
                    log_refusal(req, &e);
                    admitted.error(&e, out);
                    return false;
                }
            }
        }
        let run = writes.run_once(&req.app, &req.nonce, &req.kind, || {
            // A run rolled back and started again leaves nothing behind.
            effects.borrow_mut().clear();
            match self.call(route, req, conn, peer, effects) {
                Ok(body) => (true, body, false),
                Err(e) => {
                    effects.borrow_mut().clear();
                    log_refusal(req, &e);
                    // Kept, so a resend gets the same answer; not those
                    // that say to try again.
                    let keep = !matches!(
                        e.code(),
                        ErrorCode::Unavailable | ErrorCode::Overloaded | ErrorCode::Internal
                    );
                    (false, wire::envelope::error_payload(&e), keep)
                }
            }
        });
        let outcome = match run {
            Ok(Once::Ran(s)) => Ok(s),
            Ok(Once::Replayed(s)) => {
                effects.borrow_mut().clear();
                log::debug!(
                    "{} (request {}): ran before on some node; answered with its stored reply",
                    req.kind,
                    req.id
                );
                Ok(s)
            }
            Err(e) => {
                effects.borrow_mut().clear();
                Err(e.into())
            }
        };
        match outcome {
            Ok(s) => self.reply_stored(admitted, &s, out),
            Err(e) => {
                log_refusal(req, &e);
                admitted.error(&e, out);
                false
            }
        }
    }

    fn reply_stored(&self, admitted: &Admitted, s: &dsf_sql::Stored, out: &mut Vec<u8>) -> bool {
        let req = &admitted.request;
        wire::envelope::encode_reply(Some(&admitted.key), req.id, &req.nonce, s.ok, &s.reply, out);
        s.ok
    }

    fn call(
        &self,
        route: &Route,
        req: &Request,
        conn: Option<ConnId>,
        peer: Option<IpAddr>,
        effects: &RefCell<Vec<Effect>>,
    ) -> Result<String> {
        let session = match route.auth {
            Auth::App => None,
            Auth::AppMaybeUser => match req.token.as_deref() {
                Some(t) if !t.is_empty() => Some(self.authenticate(req)?),
                _ => None,
            },
            Auth::Role(min) => {
                let s = self.authenticate(req)?;
                if s.user.role < min {
                    return Err(Error::Forbidden(format!(
                        "{} needs role {min} or above; user {:?} is {}",
                        req.kind, s.user.name, s.user.role
                    )));
                }
                Some(s)
            }
        };
        (route.handler)(&Call {
            app: &self.app,
            request: req,
            session: session.as_ref(),
            conn,
            peer,
            effects,
        })
    }

    /// The session of the request's token, from the cache or MySQL.
    fn authenticate(&self, req: &Request) -> Result<Session> {
        self.session_for(&req.app, req.token.as_deref(), &req.kind)
    }

    /// The session of `token` (cached up to the session cache's age), for
    /// a request of type `kind` signed by `app`: a session is good only
    /// with the key of the app that logged in, so another app's key with a
    /// sniffed token gets nothing.
    pub fn session_for(&self, app: &str, token: Option<&str>, kind: &str) -> Result<Session> {
        let s = self.find_session(token, kind)?;
        if s.app.as_deref() != Some(app) {
            return Err(Error::Unauthorized(
                "this session token was made under another app's key: log in with this app (user.login)"
                    .into(),
            ));
        }
        Ok(s)
    }

    fn find_session(&self, token: Option<&str>, kind: &str) -> Result<Session> {
        let token = match token {
            Some(t) if !t.is_empty() => t,
            _ => {
                return Err(Error::Unauthorized(format!(
                    "{kind} needs a session token: log in with user.login and send its token"
                )))
            }
        };
        if let Some(s) = self.app.sessions.get(token) {
            return Ok(s);
        }
        match self.app.db.sessions().get(token)? {
            Some(s) => {
                self.app.sessions.put(token, s.clone());
                Ok(s)
            }
            None => Err(Error::Unauthorized(
                "session token is unknown, expired or logged out: log in again with user.login"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        limit: Option<u32>,
    }

    #[test]
    fn body_errors_name_the_field() {
        let e = parse_body::<Body>(r#"{"name":5}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert!(e.to_string().starts_with("name: invalid type"), "{e}");
        let e = parse_body::<Body>(r#"{"name":"a","limit":"x"}"#).unwrap_err();
        assert!(e.to_string().starts_with("limit: "), "{e}");
        let e = parse_body::<Body>(r#"{}"#).unwrap_err();
        assert_eq!(e.to_string(), "body: missing field `name`");
        let e = parse_body::<Body>(r#"{"name":"a","nme":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `nme`"), "{e}");
    }
}
