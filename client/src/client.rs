//! The SDK's entry point: [`Client`] resolves a node through the balancers,
//! connects to it directly (lookaside balancing), signs every request,
//! verifies every reply, and fails over to another node when one goes away.
//!
//! Resend rules. A read ([`is_idempotent`]) is sent again, freshly signed,
//! on another node whenever an attempt fails. A write is sent again only
//! with its first timestamp and nonce ([`dsf_common::call::Stamp`]): the
//! servers run each write once and answer a resend with the reply they
//! stored, or run it if its first attempt never committed. So after a lost
//! connection, a missing reply or `unavailable`, a write is resent (on the
//! same node or another) until the call's deadline, never past
//! [`RESEND_WINDOW`]; only when no answer came by then is it
//! [`Error::OutcomeUnknown`], as is a resend answered by anything that
//! cannot be the write's stored reply (a stale timestamp, an internal
//! error). `overloaded` and a connection that failed
//! before the request was written mean it never ran, and it goes
//! elsewhere. An idle connection is checked for a close by the server
//! before it is reused. [`Client::call_many`] follows the same rules for
//! a window of requests on one connection: every write under a stamp of
//! its own, and those in flight when the connection breaks sent again in
//! order, with their stamps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dsf_common::wire::{Key, DEFAULT_MAX_FRAME};
use dsf_common::ErrorCode;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::conn::{Connection, Failure, IntoError, Signer};
use crate::error::{Error, Result};
use dsf_common::call::Stamp;

/// Default balancer address.
pub const DEFAULT_LB: &str = "127.0.0.1:6300";
/// Default app id of the command-line tool.
pub const DEFAULT_APP: &str = "cli";
/// Default time allowed for one TCP connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time allowed for one reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default total time for finding a node and retrying, per call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);
/// First pause between attempts; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Whether a message type may be sent again, freshly signed, after it may
/// have reached a server: dsf's own reads (and `gate.check`, whose
/// repetition records one more check the gate device would have made
/// anyway). A type dsf does not know is not: it is resent as a write.
/// A write is resent too, but only with its first timestamp and nonce, so
/// that the servers answer it with the stored reply ([`RESEND_WINDOW`]).
pub fn is_idempotent(kind: &str) -> bool {
    !dsf_proto::writes(kind)
}

/// How a [`Client`] reaches the cluster and signs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Balancer addresses (`host:port`), tried in turn.
    pub balancers: Vec<String>,
    /// App id requests are signed under.
    pub app: String,
    /// The app's secret.
    pub secret: Vec<u8>,
    /// Key the balancer routes by (user name, device id, ...); `None` lets
    /// the balancer use our IP address.
    pub routing_key: Option<String>,
    /// Talk to this node directly and never ask a balancer.
    pub node: Option<String>,
    /// Time allowed for one TCP connect (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Time allowed for one reply (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
    /// Total time for resolving, connecting and retrying one call
    /// (default [`DEFAULT_DEADLINE`]).
    pub deadline: Duration,
    /// Largest reply frame accepted.
    pub max_frame: usize,
    /// The certificates to trust when the servers speak TLS
    /// ([`ClientConfig::tls_ca`]); plain without.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

// === impl ClientConfig ===

impl ClientConfig {
    /// A configuration with every default.
    pub fn new(balancers: Vec<String>, app: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        ClientConfig {
            balancers,
            app: app.into(),
            secret: secret.into(),
            routing_key: None,
            node: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            max_frame: DEFAULT_MAX_FRAME,
            tls: None,
        }
    }

    /// Speaks TLS to every server, trusting the PEM certificates in `ca`.
    pub fn tls_ca(mut self, ca: &std::path::Path) -> Result<Self> {
        let config =
            dsf_common::tls::client_config(ca).map_err(|e| Error::Config(e.to_string()))?;
        self.tls = Some(config);
        Ok(self)
    }
}

/// `lb.resolve`'s answer: which node owns the key, and where it listens
/// (the catalogue's type).
pub use dsf_proto::lb::Resolved;

/// A connected node.
#[derive(Debug)]
struct Node {
    id: String,
    conn: Connection,
}

/// A client of one dsf cluster. Not shared between threads: give each
/// thread its own (they are cheap: one connection each).
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    signer: Signer,
    token: Option<String>,
    node: Option<Node>,
    /// Balancer that answered last, tried first next time.
    lb_first: usize,
    lb_conn: Option<(usize, Connection)>,
}

/// The state of one call's attempts: what to avoid, how long to wait.
/// How long a write is resent with its first stamp: inside the servers'
/// replay window (60 s), with room for clocks a few seconds apart.
pub const RESEND_WINDOW: Duration = Duration::from_secs(50);

/// What is known of a write whose reply has not been seen.
#[derive(Debug, Default)]
struct Unseen {
    /// The node it may have reached, and why no reply came.
    pending: Option<(String, String)>,
}

impl Unseen {
    /// `e`, unless the write may have run: then its outcome is unknown
    /// (rare: only when no node gave its answer within the call's deadline
    /// and the replay window).
    fn or(&self, kind: &str, e: Error) -> Error {
        let Some((server, reason)) = &self.pending else {
            return e;
        };
        let last = match e {
            Error::NoNode { last, .. } => last,
            other => other.to_string(),
        };
        Error::OutcomeUnknown {
            kind: kind.into(),
            server: server.clone(),
            reason: format!(
                "{reason}; resent with the same nonce while it could be, and no answer came ({last})"
            ),
        }
    }

    /// Whether `f`, for a resend, is the write's own answer (a refusal
    /// recorded the first time), rather than something about this attempt.
    fn is_answer(f: &Failure) -> bool {
        match f {
            Failure::Server(e) => matches!(
                e.code(),
                ErrorCode::Conflict
                    | ErrorCode::NotFound
                    | ErrorCode::BadRequest
                    | ErrorCode::Forbidden
            ),
            _ => false,
        }
    }
}

struct Attempts {
    started: Instant,
    deadline: Instant,
    backoff: Duration,
    exclude: Vec<String>,
    last: String,
}

// === impl Attempts ===

impl Attempts {
    fn new(total: Duration) -> Attempts {
        let started = Instant::now();
        Attempts {
            started,
            deadline: started + total,
            backoff: FIRST_BACKOFF,
            exclude: Vec::new(),
            last: String::new(),
        }
    }

    /// Records a failure on `node` and waits before the next attempt;
    /// `false` when the deadline leaves no time for one.
    fn failed(&mut self, node: Option<&str>, why: String) -> bool {
        if let Some(n) = node {
            if !self.exclude.iter().any(|e| e == n) {
                self.exclude.push(n.to_string());
            }
        }
        self.last = why;
        let now = Instant::now();
        if now + self.backoff >= self.deadline {
            return false;
        }
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        true
    }
}

// === impl Client ===

impl Client {
    /// A client; connects lazily on the first call.
    pub fn new(cfg: ClientConfig) -> Result<Client> {
        if cfg.balancers.is_empty() && cfg.node.is_none() {
            return Err(Error::Config(
                "no balancer address: pass --lb HOST:PORT or set DSF_LB".into(),
            ));
        }
        if cfg.secret.is_empty() {
            return Err(Error::Config(format!(
                "no secret for app {:?}: set {} or pass --app-secret-file FILE",
                cfg.app,
                dsf_common::wire::keys::APP_SECRET_ENV
            )));
        }
        let signer = Signer {
            app: cfg.app.clone(),
            key: Key::new(&cfg.secret),
        };
        Ok(Client {
            cfg,
            signer,
            token: None,
            node: None,
            lb_first: 0,
            lb_conn: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Attaches a session token to every later call (`None` detaches it).
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// The session token attached to calls.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Routes later connections by `key`; drops the current connection if
    /// the key changed, since another node may own the new key.
    pub fn set_routing_key(&mut self, key: Option<String>) {
        if self.cfg.routing_key != key {
            self.cfg.routing_key = key;
            self.node = None;
        }
    }

    /// Id of the node currently connected, if any.
    pub fn node_id(&self) -> Option<&str> {
        self.node.as_ref().map(|n| n.id.as_str())
    }

    /// Sends `kind` with `body` (any serialisable object) and returns the
    /// reply body. See the module documentation for what is retried.
    pub fn call<B: Serialize + ?Sized>(
        &mut self,
        kind: &str,
        body: &B,
    ) -> Result<serde_json::Value> {
        let body = serde_json::to_string(body)
            .map_err(|e| Error::Config(format!("body of {kind} does not serialise: {e}")))?;
        let raw = self.call_raw(kind, &body)?;
        parse_body(&raw, self.node_id().unwrap_or("server"))
    }

    /// A typed call: message `M`'s body in, its reply out, for any type
    /// declared with [`dsf_proto::message!`] (dsf's own, or a service's
    /// of your own). `M`'s kind says how it is resent: a read freely, to
    /// any node; a write only with its first timestamp and nonce, so that
    /// it runs once. A stream is opened with [`Client::stream`].
    ///
    /// ```no_run
    /// # fn main() -> dsf_client::Result<()> {
    /// use dsf_client::{Client, ClientConfig};
    /// use dsf_proto::{sys::Ping, Empty};
    ///
    /// let mut c = Client::new(ClientConfig::new(vec!["127.0.0.1:7000".into()], "demo", "secret"))?;
    /// let pong = c.send::<Ping>(&Empty {})?;
    /// println!("answered by {}", pong.node);
    /// # Ok(())
    /// # }
    /// ```
    pub fn send<M: dsf_proto::Message>(&mut self, body: &M::Body) -> Result<M::Reply> {
        let kind = M::TYPE.name;
        if M::TYPE.streams() {
            return Err(Error::Config(format!(
                "{kind} is a stream: open it with Client::stream"
            )));
        }
        let body = serde_json::to_string(body)
            .map_err(|e| Error::Config(format!("body of {kind} does not serialise: {e}")))?;
        let raw = self.call_raw_as(kind, &body, !M::TYPE.writes())?;
        serde_json::from_str(raw.get()).map_err(|e| Error::BadReply {
            server: self.node_id().unwrap_or("server").to_string(),
            reason: format!("{kind} reply is not what the catalogue says: {e}"),
        })
    }

    /// [`Client::call`] with an already-serialised body, returning the raw
    /// reply body (exactly the bytes that were verified). A type that is
    /// not one of dsf's own is resent as a write ([`is_idempotent`]); say
    /// otherwise with [`Client::call_raw_as`].
    pub fn call_raw(&mut self, kind: &str, body: &str) -> Result<Box<RawValue>> {
        self.call_raw_as(kind, body, is_idempotent(kind))
    }

    /// [`Client::call_raw`] for a type whose kind the caller knows: `read`
    /// lets it be resent freshly signed, to any node; otherwise it is
    /// resent only with its first timestamp and nonce.
    pub fn call_raw_as(&mut self, kind: &str, body: &str, read: bool) -> Result<Box<RawValue>> {
        let idempotent = read;
        // A write runs once on the servers: every attempt carries the same
        // timestamp and nonce, so a resend is answered with the stored
        // reply, never run twice.
        let stamp = Stamp::fresh();
        let mut outcome = Unseen::default();
        let mut tries = Attempts::new(self.cfg.deadline);
        loop {
            if let Err(e) = self.ensure_node(kind, &mut tries) {
                return Err(outcome.or(kind, e));
            }
            if !idempotent && outcome.pending.is_some() && stamp.age() >= RESEND_WINDOW {
                return Err(outcome.or(kind, self.no_node(kind, &tries)));
            }
            let node = self.node.as_mut().expect("ensure_node connected");
            let deadline = Instant::now() + self.cfg.request_timeout;
            let token = self.token.as_deref();
            let attempt = if idempotent {
                node.conn.round_trip(kind, body, token, deadline)
            } else {
                node.conn
                    .round_trip_stamped(kind, body, token, &stamp, deadline)
            };
            let failure = match attempt {
                Ok(raw) => return Ok(raw),
                Err(f) => f,
            };
            let id = node.id.clone();
            if !failure.keeps_connection() {
                self.node = None;
            }
            match self.after_failure(kind, &id, failure, idempotent, &mut outcome, &mut tries) {
                Some(e) => return Err(e),
                None => continue,
            }
        }
    }

    /// Decides what a failed attempt means: `None` to try again (after the
    /// backoff), or the error to return.
    fn after_failure(
        &mut self,
        kind: &str,
        node: &str,
        failure: Failure,
        idempotent: bool,
        outcome: &mut Unseen,
        tries: &mut Attempts,
    ) -> Option<Error> {
        let (why, exclude) = match failure {
            Failure::NotSent(why) => (why, true),
            Failure::Lost(why) if idempotent => (why, true),
            Failure::TimedOut(after) if idempotent => {
                (format!("no reply from {node} within {after:?}"), true)
            }
            // A write that may have run is sent again with the same stamp:
            // if it ran, the stored reply comes back.
            Failure::Lost(why) => {
                outcome.pending = Some((node.to_string(), why.clone()));
                (why, true)
            }
            Failure::TimedOut(after) => {
                self.node = None;
                let why = format!("no reply within {after:?}");
                outcome.pending = Some((node.to_string(), why.clone()));
                (why, true)
            }
            // A resend of a write that is still running elsewhere: wait,
            // then ask again for its stored reply.
            Failure::Server(e)
                if e.code() == ErrorCode::ReplayedNonce && outcome.pending.is_some() =>
            {
                (
                    format!("{node}: the first attempt is still running: {e}"),
                    false,
                )
            }
            // `unavailable` may follow a commit whose acknowledgement was
            // lost (the database went away): a read goes elsewhere, a write
            // too, with the same stamp, so it cannot run twice.
            Failure::Server(e) if e.code() == ErrorCode::Unavailable => {
                self.node = None;
                let why = format!("{node}: unavailable: {e}");
                if !idempotent {
                    outcome.pending = Some((node.to_string(), why.clone()));
                }
                (why, true)
            }
            // `overloaded` is a refusal before any work was done (a node
            // at its limits, or draining for shutdown): any request, even
            // a write, may go to another node.
            Failure::Server(e) if e.code() == ErrorCode::Overloaded => {
                self.node = None;
                (format!("{node}: overloaded: {e}"), true)
            }
            // A resend's final word must be the write's stored answer;
            // anything else (a stale timestamp, an internal error, a reply
            // that does not verify) says nothing of whether it ran.
            other if outcome.pending.is_some() && !Unseen::is_answer(&other) => {
                let e = other.into_error(kind, node);
                return Some(outcome.or(kind, e));
            }
            other => return Some(other.into_error(kind, node)),
        };
        if tries.failed(exclude.then_some(node), why) {
            None
        } else {
            Some(outcome.or(kind, self.no_node(kind, tries)))
        }
    }

    fn no_node(&self, kind: &str, tries: &Attempts) -> Error {
        Error::NoNode {
            kind: kind.into(),
            deadline: tries.started.elapsed(),
            last: format!(
                "{} (check the app servers with `client status`)",
                tries.last
            ),
        }
    }

    /// Makes sure a live connection to a node is open: reuses the current
    /// one if the server has not closed it, else resolves (excluding the
    /// nodes that failed in this call) and connects.
    fn ensure_node(&mut self, kind: &str, tries: &mut Attempts) -> Result<()> {
        if let Some(n) = &mut self.node {
            if !n.conn.is_closed() {
                return Ok(());
            }
            log::debug!(
                "connection to {} was closed by the server; reconnecting",
                n.id
            );
            self.node = None;
        }
        loop {
            let (id, addr) = match &self.cfg.node {
                Some(addr) => (addr.clone(), addr.clone()),
                None => {
                    let key = self.cfg.routing_key.clone();
                    let exclude = tries.exclude.clone();
                    match self.resolve(key.as_deref(), &exclude) {
                        Ok(r) => (r.node, r.addr),
                        Err(Error::Refused {
                            code: ErrorCode::Unavailable,
                            message,
                            ..
                        }) => {
                            // Nothing left once our exclusions are applied:
                            // wait, then give every node another chance.
                            tries.exclude.clear();
                            if tries.failed(None, format!("balancer: unavailable: {message}")) {
                                continue;
                            }
                            return Err(self.no_node(kind, tries));
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            let conn = Connection::connect_tls(
                &addr,
                &id,
                self.signer.clone(),
                self.cfg.connect_timeout,
                self.cfg.max_frame,
                self.cfg.tls.as_ref(),
            );
            match conn {
                Ok(conn) => {
                    log::debug!("connected to node {id} at {addr}");
                    self.node = Some(Node { id, conn });
                    return Ok(());
                }
                Err(e) => {
                    let why = format!("cannot connect to {id} at {addr}: {e}");
                    let node = self.cfg.node.is_none().then_some(id.as_str());
                    if !tries.failed(node, why) {
                        return Err(self.no_node(kind, tries));
                    }
                }
            }
        }
    }

    /// Asks the balancers which node owns `key` (`None`: our address),
    /// avoiding the node ids in `exclude`.
    pub fn resolve(&mut self, key: Option<&str>, exclude: &[String]) -> Result<Resolved> {
        let body = dsf_proto::lb::ResolveBody {
            key: key.map(str::to_string),
            exclude: exclude.to_vec(),
        };
        let body = serde_json::to_string(&body).expect("plain strings serialise");
        let raw = self.balancer_call("lb.resolve", &body)?;
        serde_json::from_str(raw.get()).map_err(|e| Error::BadReply {
            server: "balancer".into(),
            reason: format!("lb.resolve reply has not the shape {{node, addr, view}}: {e}"),
        })
    }

    /// Sends one `lb.*` request to the balancers, trying each in turn until
    /// one answers. A balancer that answers `unavailable` is passed over
    /// for the next one (it may hold an older view); if all do, that answer
    /// is returned.
    pub fn balancer_call(&mut self, kind: &str, body: &str) -> Result<Box<RawValue>> {
        let n = self.cfg.balancers.len();
        if n == 0 {
            return Err(Error::Config(
                "no balancer address: pass --lb HOST:PORT or set DSF_LB".into(),
            ));
        }
        let mut tried = Vec::new();
        let mut last = String::new();
        let mut refusal = None;
        let mut bad_reply = None;
        for step in 0..n {
            let i = (self.lb_first + step) % n;
            let addr = self.cfg.balancers[i].clone();
            tried.push(addr.clone());
            let cached = match self.lb_conn.take() {
                Some((j, mut c)) if j == i => (!c.is_closed()).then_some(c),
                _ => None,
            };
            let mut conn = match cached {
                Some(c) => c,
                None => match Connection::connect_tls(
                    &addr,
                    &addr,
                    self.signer.clone(),
                    self.cfg.connect_timeout,
                    self.cfg.max_frame,
                    self.cfg.tls.as_ref(),
                ) {
                    Ok(c) => c,
                    Err(e) => {
                        last = format!("{addr}: {e}");
                        continue;
                    }
                },
            };
            let deadline = Instant::now() + self.cfg.request_timeout;
            match conn.round_trip(kind, body, None, deadline) {
                Ok(raw) => {
                    self.lb_first = i;
                    self.lb_conn = Some((i, conn));
                    return Ok(raw);
                }
                Err(Failure::Server(e)) if e.code() == ErrorCode::Unavailable => {
                    self.lb_conn = Some((i, conn));
                    refusal = Some(Failure::Server(e).into_error(kind, &addr));
                }
                Err(f @ Failure::Server(_)) => {
                    if f.keeps_connection() {
                        self.lb_conn = Some((i, conn));
                    }
                    return Err(f.into_error(kind, &addr));
                }
                // A reply that does not verify means the balancer is up and
                // we hold the wrong secret (or app id): say that, not
                // "unreachable", if no other balancer answers.
                Err(f @ Failure::BadReply(_)) => bad_reply = Some(f.into_error(kind, &addr)),
                Err(f) => last = format!("{addr}: {}", f.into_error(kind, &addr)),
            }
        }
        Err(bad_reply
            .or(refusal)
            .unwrap_or(Error::NoBalancer { tried, last }))
    }

    /// Sends one request to `addr` on a connection of its own, without
    /// resolving or retrying (e.g. `cluster.status` to the collector).
    pub fn call_at(&self, addr: &str, kind: &str, body: &str) -> Result<Box<RawValue>> {
        let mut conn = Connection::connect_tls(
            addr,
            addr,
            self.signer.clone(),
            self.cfg.connect_timeout,
            self.cfg.max_frame,
            self.cfg.tls.as_ref(),
        )
        .map_err(|e| Error::NoNode {
            kind: kind.into(),
            deadline: self.cfg.connect_timeout,
            last: format!("cannot connect to {addr}: {e} (is it running and is this its address?)"),
        })?;
        let deadline = Instant::now() + self.cfg.request_timeout;
        conn.round_trip(kind, body, self.token.as_deref(), deadline)
            .map_err(|f| match f {
                Failure::TimedOut(after) if !is_idempotent(kind) => Error::OutcomeUnknown {
                    kind: kind.into(),
                    server: addr.into(),
                    reason: format!("no reply within {after:?}"),
                },
                f => f.into_error(kind, addr),
            })
    }

    /// Sends one request of type `kind` per body, up to `window` in flight
    /// on one connection, and hands each reply to `on_reply` with the
    /// body's index, in input order. Bodies are read from the iterator as
    /// the window frees, so a stream of any length runs in bounded memory.
    ///
    /// A batched type's requests (`msg.send`) run on the server in the
    /// order sent and commit together; other types' may run in any order.
    ///
    /// When the connection breaks (or its node says `unavailable`, or
    /// `overloaded`: not run), the requests still in flight are sent again
    /// on another node, in order:
    /// reads freshly signed, writes with their first stamp, so that one
    /// that ran is answered with its stored reply instead of running again
    /// ([`RESEND_WINDOW`]; past it, and after any other failure, a write
    /// that may have run is reported as [`Error::OutcomeUnknown`]).
    /// Returns an error only when no node can be reached at all, after
    /// reporting every request not yet answered (a write that was sent as
    /// [`Error::OutcomeUnknown`]).
    pub fn call_many<I, F>(
        &mut self,
        kind: &str,
        bodies: I,
        window: usize,
        mut on_reply: F,
    ) -> Result<()>
    where
        I: IntoIterator<Item = String>,
        F: FnMut(usize, Result<Box<RawValue>>),
    {
        struct Pending {
            index: usize,
            body: String,
            /// `None` until written on the current connection.
            id: Option<u64>,
            /// The connections it was written on: more than one, and a
            /// write's answer may be its stored one, or say nothing of it.
            sent: u32,
            /// A write is sent again only under its first stamp.
            stamp: Stamp,
        }
        let idempotent = is_idempotent(kind);
        // What is still pending when no node can be reached: the writes
        // that were sent may have run.
        let give_up = |pending: &mut VecDeque<Pending>, on_reply: &mut F, e: &dyn Fn() -> Error| {
            for p in pending.drain(..) {
                let r = match (idempotent, p.sent) {
                    (false, 1..) => Error::OutcomeUnknown {
                        kind: kind.into(),
                        server: "the last node tried".into(),
                        reason: e().to_string(),
                    },
                    _ => e(),
                };
                on_reply(p.index, Err(r));
            }
        };
        let window = window.max(1);
        let mut input = bodies.into_iter().enumerate();
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut tries = Attempts::new(self.cfg.deadline);
        let mut input_done = false;
        loop {
            if pending.is_empty() && input_done {
                return Ok(());
            }
            if let Err(e) = self.ensure_node(kind, &mut tries) {
                let no_node = || self.no_node(kind, &tries);
                give_up(&mut pending, &mut on_reply, &no_node);
                return Err(e);
            }
            let token = self.token.clone();
            let node = self.node.as_mut().expect("ensure_node connected");
            // Fill the window: first what must be (re)sent, then new input.
            let mut send_failed = None;
            let send = |conn: &mut Connection, p: &Pending| {
                if idempotent {
                    conn.send(kind, &p.body, token.as_deref())
                } else {
                    conn.send_stamped(kind, &p.body, token.as_deref(), &p.stamp)
                }
            };
            for p in pending.iter_mut().filter(|p| p.id.is_none()) {
                match send(&mut node.conn, p) {
                    Ok(id) => {
                        p.id = Some(id);
                        p.sent += 1;
                    }
                    Err(f) => {
                        send_failed = Some(f);
                        break;
                    }
                }
            }
            while send_failed.is_none() && !input_done && pending.len() < window {
                match input.next() {
                    Some((index, body)) => {
                        let mut p = Pending {
                            index,
                            body,
                            id: None,
                            sent: 0,
                            stamp: Stamp::fresh(),
                        };
                        match send(&mut node.conn, &p) {
                            Ok(id) => {
                                p.id = Some(id);
                                p.sent = 1;
                            }
                            Err(f) => send_failed = Some(f),
                        }
                        pending.push_back(p);
                    }
                    None => input_done = true,
                }
            }
            let failure = match send_failed {
                Some(f) => f,
                None => {
                    let Some(head) = pending.front() else {
                        continue;
                    };
                    let id = head.id.expect("sent above");
                    let deadline = Instant::now() + self.cfg.request_timeout;
                    match node.conn.recv(id, deadline) {
                        Ok(raw) => {
                            let p = pending.pop_front().expect("head exists");
                            on_reply(p.index, Ok(raw));
                            tries = Attempts::new(self.cfg.deadline);
                            continue;
                        }
                        Err(f)
                            if f.keeps_connection()
                                && !is_unavailable(&f)
                                && !is_overloaded(&f) =>
                        {
                            let p = pending.pop_front().expect("head exists");
                            // A resent write's refusal is its stored answer
                            // only if it is one a write can get; anything
                            // else (a stale stamp, say) says nothing of
                            // whether it ran the first time.
                            let e = match idempotent || p.sent < 2 || Unseen::is_answer(&f) {
                                true => f.into_error(kind, &node.id),
                                false => Error::OutcomeUnknown {
                                    kind: kind.into(),
                                    server: node.id.clone(),
                                    reason: f.into_error(kind, &node.id).to_string(),
                                },
                            };
                            on_reply(p.index, Err(e));
                            continue;
                        }
                        Err(f) => f,
                    }
                }
            };
            // The connection is gone (or the node is unavailable): sort out
            // what was in flight on it.
            let id = node.id.clone();
            self.node = None;
            // A write resent with its stamp is answered from its record if
            // it ran: safe while the servers still know the stamp.
            let in_window = pending
                .iter()
                .filter(|p| p.sent > 0)
                .all(|p| p.stamp.age() < RESEND_WINDOW);
            let resend = idempotent
                || (in_window
                    && (matches!(
                        failure,
                        Failure::NotSent(_) | Failure::Lost(_) | Failure::TimedOut(_)
                    ) || is_unavailable(&failure)
                        || is_overloaded(&failure)));
            if !resend {
                let why = match &failure {
                    Failure::Lost(w) | Failure::NotSent(w) | Failure::BadReply(w) => w.clone(),
                    Failure::TimedOut(after) => format!("no reply within {after:?}"),
                    Failure::Server(e) => format!("{}: {e}", e.code()),
                };
                // Those never written can go to the next node; the others
                // may have been acted on.
                let mut kept = VecDeque::new();
                for mut p in pending.drain(..) {
                    if p.sent == 0 {
                        p.id = None;
                        kept.push_back(p);
                    } else {
                        on_reply(
                            p.index,
                            Err(Error::OutcomeUnknown {
                                kind: kind.into(),
                                server: id.clone(),
                                reason: why.clone(),
                            }),
                        );
                    }
                }
                pending = kept;
                continue;
            }
            if let Failure::BadReply(reason) = &failure {
                // Do not trust this node again in this call.
                log::warn!("bad reply from {id}: {reason}; resending elsewhere");
            }
            for p in pending.iter_mut() {
                p.id = None;
            }
            let why = match failure {
                Failure::Lost(w) | Failure::NotSent(w) | Failure::BadReply(w) => w,
                Failure::TimedOut(after) => format!("no reply from {id} within {after:?}"),
                Failure::Server(e) => format!("{id}: {}: {e}", e.code()),
            };
            if !tries.failed(Some(&id), why) {
                let no_node = || self.no_node(kind, &tries);
                give_up(&mut pending, &mut on_reply, &no_node);
                return Err(self.no_node(kind, &tries));
            }
        }
    }
}

fn is_unavailable(f: &Failure) -> bool {
    matches!(f, Failure::Server(e) if e.code() == ErrorCode::Unavailable)
}

/// A refusal before any work was done (a node at its limits, draining, or
/// cut off from its database): any request may go to another node.
fn is_overloaded(f: &Failure) -> bool {
    matches!(f, Failure::Server(e) if e.code() == ErrorCode::Overloaded)
}

/// Parses a verified raw body into a JSON value.
pub(crate) fn parse_body(raw: &RawValue, server: &str) -> Result<serde_json::Value> {
    serde_json::from_str(raw.get()).map_err(|e| Error::BadReply {
        server: server.into(),
        reason: format!("reply body is not JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_checks_and_balancer_calls_are_idempotent_writes_are_not() {
        for k in [
            "sys.ping",
            "gate.check",
            "user.me",
            "blacklist.get",
            "blacklist.list",
            "gate.history",
            "lb.resolve",
            "lb.view",
            "cluster.status",
            // A second session or heartbeat changes nothing that matters.
            "user.login",
            "node.heartbeat",
        ] {
            assert!(is_idempotent(k), "{k}");
        }
        for k in [
            "user.register",
            "user.logout",
            "user.set_role",
            "blacklist.add",
            "blacklist.update",
            "blacklist.remove",
            "no.such.type",
        ] {
            assert!(!is_idempotent(k), "{k}");
        }
    }

    #[test]
    fn a_client_without_secret_or_balancer_says_how_to_configure_one() {
        let e = Client::new(ClientConfig::new(vec![], "cli", b"s".to_vec())).unwrap_err();
        assert!(e.to_string().contains("DSF_LB"), "{e}");
        let e = Client::new(ClientConfig::new(
            vec![DEFAULT_LB.into()],
            "cli",
            Vec::new(),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("DSF_APP_SECRET"), "{e}");
    }
}
