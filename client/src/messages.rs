//! Messaging from Rust: send to a user or a room, read the history, and
//! listen ([`Listener`]): every message of the inbox once, in order, from
//! whichever node holds the subscription, across that node's death. The
//! `client msg` commands are built on these.
//!
//! Delivery is at least once on the wire and exactly once to the
//! application: a new subscription starts after the last acknowledged
//! message, so what was delivered and not yet acknowledged comes again,
//! and the listener drops the numbers it has already handed over. The
//! application says when it has handled a message ([`Listener::handled`]);
//! acknowledgements go in batches.
//!
//! ```no_run
//! use dsf_client::{messages, Client, ClientConfig};
//! use std::time::{Duration, Instant};
//! let cfg = ClientConfig::new(vec!["127.0.0.1:6300".into()], "cli", b"secret".to_vec());
//! let mut c = Client::new(cfg)?;
//! c.set_token(Some("…token of user.login…".into()));
//! messages::send(&mut c, "bob", r#"{"text":"hi"}"#)?;
//! let mut inbox = messages::Listener::new(&c, "ann", messages::ListenOptions::default())?;
//! while let Some(m) = inbox.next(Instant::now() + Duration::from_secs(10))? {
//!     println!("{}: {}", m.from, m.body.get());
//!     inbox.handled(m.seq);
//! }
//! inbox.close();
//! # Ok::<(), dsf_client::Error>(())
//! ```

use std::time::{Duration, Instant};

use dsf_common::call::{Connection, Failure, Signer, Streamed};
use dsf_common::wire::Key;
use dsf_common::ErrorCode;
use dsf_proto::msg::{self, HistoryBody, RoomBody, SendBody, Sent};
use serde_json::value::RawValue;

pub use dsf_proto::msg::{Entry, History, Joined, Message};

use crate::client::{Client, ClientConfig};
use crate::error::{Error, Result};
use crate::stream::Attempt;

/// `msg.send` to user `to`; `body` is JSON text.
pub fn send(c: &mut Client, to: &str, body: &str) -> Result<Sent> {
    c.send::<msg::Send>(&SendBody {
        to: Some(to.to_string()),
        room: None,
        body: raw(body)?,
    })
}

/// `msg.send` to every other member of `room`; `body` is JSON text.
pub fn send_to_room(c: &mut Client, room: &str, body: &str) -> Result<Sent> {
    c.send::<msg::Send>(&SendBody {
        to: None,
        room: Some(room.to_string()),
        body: raw(body)?,
    })
}

/// The most sends [`send_many`] keeps in flight by default.
pub const WINDOW_DEFAULT: usize = 64;

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub enum To<'a> {
    /// A user, by name.
    User(&'a str),
    /// Every other member of a room.
    Room(&'a str),
}

/// `msg.send` of each `(to, body)`, with up to `window` sends in flight
/// on one connection: the app server runs them in this order and commits
/// those that arrive together in one transaction, so a window of 64 sends
/// many times what awaiting each does. `on_sent(i, result)` gets each
/// message's outcome, in input order; a send is stored (and runs once,
/// even when resent after a node's death) before its `Ok`. Messages are
/// read as the window frees. Returns an error only when no app server can
/// be reached at all.
///
/// ```no_run
/// use dsf_client::messages::{self, To};
/// use serde_json::value::RawValue;
/// # let mut c: dsf_client::Client = todo!();
/// let readings = (0..1000).map(|i| {
///     (To::User("bob"), RawValue::from_string(format!(r#"{{"reading":{i}}}"#)).unwrap())
/// });
/// messages::send_many(&mut c, readings, messages::WINDOW_DEFAULT, |i, sent| {
///     if let Err(e) = sent {
///         eprintln!("message {i}: {e}");
///     }
/// })?;
/// # Ok::<(), dsf_client::Error>(())
/// ```
pub fn send_many<'t, I, F>(c: &mut Client, messages: I, window: usize, mut on_sent: F) -> Result<()>
where
    I: IntoIterator<Item = (To<'t>, Box<RawValue>)>,
    F: FnMut(usize, Result<Sent>),
{
    let requests = messages.into_iter().map(|(to, body)| {
        let (to, room) = match to {
            To::User(u) => (Some(u.to_string()), None),
            To::Room(r) => (None, Some(r.to_string())),
        };
        let b = SendBody { to, room, body };
        serde_json::to_string(&b).expect("a send body serialises")
    });
    let kind = <msg::Send as dsf_proto::Message>::TYPE.name;
    c.call_many(kind, requests, window, |i, reply| {
        let sent = reply.and_then(|raw| {
            serde_json::from_str::<Sent>(raw.get()).map_err(|e| Error::BadReply {
                server: "app server".into(),
                reason: format!("msg.send reply is not what the catalogue says: {e}"),
            })
        });
        on_sent(i, sent);
    })
}

/// `msg.history`: a page of messages sent and received, newest first.
pub fn history(c: &mut Client, q: &HistoryBody) -> Result<History> {
    c.send::<msg::GetHistory>(q)
}

/// `msg.join`: joins `room` (made on its first join).
pub fn join(c: &mut Client, room: &str) -> Result<Joined> {
    c.send::<msg::Join>(&RoomBody {
        room: room.to_string(),
    })
}

/// `msg.leave`.
pub fn leave(c: &mut Client, room: &str) -> Result<()> {
    c.send::<msg::Leave>(&RoomBody {
        room: room.to_string(),
    })
    .map(|_| ())
}

fn raw(body: &str) -> Result<Box<RawValue>> {
    RawValue::from_string(body.to_string())
        .map_err(|e| Error::Config(format!("the message body is not JSON: {e}")))
}

/// How a [`Listener`] listens.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Messages the server may send before they are acknowledged.
    pub credit: u32,
    /// Acknowledge once this many handled messages wait (at most the credit).
    pub ack_every: u64,
    /// ... or once the oldest of them waited this long.
    pub ack_after: Duration,
    /// Asks the node if it is still there after this long without a frame.
    pub idle_check: Duration,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            credit: msg::CREDIT_DEFAULT,
            ack_every: u64::from(msg::CREDIT_DEFAULT) / 4,
            ack_after: Duration::from_millis(100),
            idle_check: Duration::from_secs(15),
        }
    }
}

/// One subscription's connection.
struct Open {
    node: String,
    conn: Connection,
    /// The `msg.subscribe` request's id.
    id: u64,
    /// The highest number this subscription delivered (what may be acked).
    seen: u64,
    /// The highest number an ack was sent for on it.
    acked: u64,
    /// The highest number the server took an ack for.
    confirmed: u64,
    /// Acks sent and not yet answered: (request id, upto).
    acks: Vec<(u64, u64)>,
    /// A `sys.ping` sent to check an idle node, and when.
    ping: Option<(u64, Instant)>,
    last_frame: Instant,
}

/// The inbox of the logged-in user, followed from node to node. Not shared
/// between threads.
pub struct Listener {
    cfg: ClientConfig,
    signer: Signer,
    token: String,
    user: String,
    opts: ListenOptions,
    open: Option<Open>,
    /// The highest number handed to the application.
    delivered: u64,
    /// The highest number the application has handled.
    handled: u64,
    /// When the oldest handled, unacknowledged message was handled.
    handled_since: Option<Instant>,
    /// Nodes that failed the last subscribe attempts.
    exclude: Vec<String>,
    backoff: Duration,
    /// Subscriptions opened, the first included.
    pub subscriptions: u64,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("user", &self.user)
            .field("node", &self.open.as_ref().map(|o| o.node.as_str()))
            .field("delivered", &self.delivered)
            .finish()
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long an idle check may go unanswered before the node counts as gone.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

// === impl Listener ===

impl Listener {
    /// Listens to `user`'s inbox with `c`'s configuration and session token
    /// (the user's own: `user.login`). Its subscription goes to the node
    /// the balancers give `user`'s key.
    pub fn new(c: &Client, user: &str, opts: ListenOptions) -> Result<Listener> {
        let token = c.token().map(str::to_string).ok_or_else(|| {
            Error::Config("listening needs a session: log in first (client login NAME)".into())
        })?;
        let mut cfg = c.config().clone();
        cfg.routing_key = Some(user.to_string());
        let signer = Signer {
            app: cfg.app.clone(),
            key: Key::new(&cfg.secret),
        };
        let opts = ListenOptions {
            ack_every: opts.ack_every.clamp(1, u64::from(opts.credit.max(1))),
            ..opts
        };
        Ok(Listener {
            cfg,
            signer,
            token,
            user: user.to_string(),
            opts,
            open: None,
            delivered: 0,
            handled: 0,
            handled_since: None,
            exclude: Vec::new(),
            backoff: FIRST_BACKOFF,
            subscriptions: 0,
        })
    }

    /// The node holding the subscription now, if any.
    pub fn node(&self) -> Option<&str> {
        self.open.as_ref().map(|o| o.node.as_str())
    }

    /// The highest message number handed over.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The next message not handed over before, waiting until `until`
    /// (`None` then). Subscribes, and subscribes again on another node when
    /// its node goes away, as often as it takes; errors only on a refusal
    /// that another try would not change (no session, another listener of
    /// the same user took over).
    pub fn next(&mut self, until: Instant) -> Result<Option<Message>> {
        loop {
            self.flush_acks(false);
            if self.open.is_none() && !self.subscribe(until)? {
                return Ok(None);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            let wait = self.next_wakeup(now).min(until);
            let open = self.open.as_mut().expect("subscribed above");
            let got = open.conn.poll_stream(open.id, wait);
            match got {
                Ok(Some(Streamed::Event { body, .. })) => {
                    open.last_frame = Instant::now();
                    let m: Message =
                        serde_json::from_str(body.get()).map_err(|e| Error::BadReply {
                            server: open.node.clone(),
                            reason: format!("a message event: {e}"),
                        })?;
                    open.seen = open.seen.max(m.seq);
                    if m.seq <= self.delivered {
                        // Delivered before, not acknowledged then: again on
                        // the wire, not to the application.
                        continue;
                    }
                    self.delivered = m.seq;
                    return Ok(Some(m));
                }
                Ok(Some(Streamed::Final(_))) => {
                    let node = open.node.clone();
                    log::info!("the subscription on {node} ended; subscribing again");
                    self.lost(&node);
                }
                Ok(None) => self.check_idle(),
                Err(Failure::Server(e)) => self.refused(e)?,
                Err(f) => {
                    let node = open.node.clone();
                    log::info!("the subscription on {node} failed ({f}); subscribing again");
                    self.lost(&node);
                }
            }
        }
    }

    /// The application has handled every message up to `seq`; it is
    /// acknowledged soon (in a batch).
    pub fn handled(&mut self, seq: u64) {
        if seq > self.handled {
            self.handled = seq.min(self.delivered);
            self.handled_since.get_or_insert_with(Instant::now);
        }
    }

    /// Sends the acknowledgements still waiting and waits for their
    /// answers, until the request timeout; one refused (the database was
    /// busy or away) is sent again, since what it covered would otherwise
    /// come back at the next subscribe. The subscription ends.
    pub fn close(mut self) {
        self.flush_acks(true);
        let Some(mut o) = self.open.take() else {
            return;
        };
        let deadline = Instant::now() + self.cfg.request_timeout;
        let mut waiting = std::mem::take(&mut o.acks);
        while !waiting.is_empty() {
            let mut refused = 0;
            for (id, upto) in std::mem::take(&mut waiting) {
                match o.conn.recv(id, deadline) {
                    Ok(_) => o.confirmed = o.confirmed.max(upto),
                    Err(f) => {
                        log::debug!("an acknowledgement at close: {f}");
                        if !f.keeps_connection() {
                            // The connection is gone: nothing more to send.
                            return;
                        }
                        refused = refused.max(upto);
                    }
                }
            }
            if refused <= o.confirmed || Instant::now() >= deadline {
                return;
            }
            let body = serde_json::to_string(&msg::AckBody { upto: refused })
                .expect("a number serialises");
            match o.conn.send("msg.ack", &body, Some(&self.token)) {
                Ok(id) => waiting.push((id, refused)),
                Err(f) => log::debug!("msg.ack at close on {}: {f}", o.node),
            }
        }
    }

    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut at = now + self.opts.idle_check;
        if let Some(since) = self.handled_since {
            at = at.min(since + self.opts.ack_after);
        }
        if let Some(o) = &self.open {
            if let Some((_, sent)) = o.ping {
                at = at.min(sent + PING_TIMEOUT);
            }
            at = at.min(o.last_frame + self.opts.idle_check);
        }
        at.max(now + Duration::from_millis(1))
    }

    /// Acknowledges what was handled when enough waits (or `now`).
    fn flush_acks(&mut self, now: bool) {
        let Some(o) = self.open.as_mut() else {
            return;
        };
        // Answers to earlier acks. A refusal (the database was away) is
        // logged, and what it covered is acked again: otherwise the credit
        // it held would never come back.
        let mut refused = false;
        o.acks.retain(|(id, upto)| match o.conn.ready(*id) {
            None => true,
            Some(Ok(_)) => {
                o.confirmed = o.confirmed.max(*upto);
                false
            }
            Some(Err(f)) => {
                log::warn!("msg.ack refused by {}: {f}; sending it again", o.node);
                refused = true;
                false
            }
        });
        if refused {
            o.acked = o
                .confirmed
                .max(o.acks.iter().map(|a| a.1).max().unwrap_or(0));
            self.handled_since.get_or_insert_with(Instant::now);
        }
        let upto = self.handled.min(o.seen);
        if upto <= o.acked {
            if self.handled <= o.acked {
                self.handled_since = None;
            }
            return;
        }
        let due = now
            || upto - o.acked >= self.opts.ack_every
            || self
                .handled_since
                .is_some_and(|t| t.elapsed() >= self.opts.ack_after);
        if !due {
            return;
        }
        let body = serde_json::to_string(&msg::AckBody { upto }).expect("a number serialises");
        match o.conn.send("msg.ack", &body, Some(&self.token)) {
            Ok(id) => {
                o.acks.push((id, upto));
                o.acked = upto;
                self.handled_since = (self.handled > upto).then(Instant::now);
            }
            Err(f) => log::debug!("msg.ack on {}: {f}", o.node),
        }
    }

    /// Nothing came for a while: is the node still there?
    fn check_idle(&mut self) {
        let Some(o) = self.open.as_mut() else {
            return;
        };
        match o.ping {
            Some((id, sent)) => match o.conn.ready(id) {
                Some(Ok(_)) => {
                    o.ping = None;
                    o.last_frame = Instant::now();
                }
                Some(Err(_)) => {}
                None if sent.elapsed() >= PING_TIMEOUT => {
                    let node = o.node.clone();
                    log::info!("{node} did not answer for {PING_TIMEOUT:?}; subscribing elsewhere");
                    self.lost(&node);
                }
                None => {}
            },
            None if o.last_frame.elapsed() >= self.opts.idle_check => {
                if let Ok(id) = o.conn.send("sys.ping", "{}", None) {
                    o.ping = Some((id, Instant::now()));
                }
            }
            None => {}
        }
    }

    /// The subscription's node went away: forget it, and avoid it once.
    fn lost(&mut self, node: &str) {
        self.open = None;
        if !self.exclude.iter().any(|n| n == node) {
            self.exclude.push(node.to_string());
        }
    }

    /// The subscription was refused or ended by the server.
    fn refused(&mut self, e: dsf_common::Error) -> Result<()> {
        let node = self
            .open
            .as_ref()
            .map_or_else(String::new, |o| o.node.clone());
        match e.code() {
            // The node is going away, or busy: elsewhere.
            ErrorCode::Unavailable | ErrorCode::Overloaded => {
                log::info!("{node}: {e}; subscribing again");
                self.lost(&node);
                Ok(())
            }
            code => Err(Error::Refused {
                kind: "msg.subscribe".into(),
                server: node,
                code,
                message: e.to_string(),
            }),
        }
    }

    /// Opens a subscription on the node the balancers give the user's key
    /// (avoiding the nodes that just failed); `false` if `until` came first.
    fn subscribe(&mut self, until: Instant) -> Result<bool> {
        loop {
            if Instant::now() >= until {
                return Ok(false);
            }
            match self.try_subscribe() {
                Ok(open) => {
                    log::debug!(
                        "subscribed on {} after message {}",
                        open.node,
                        self.delivered
                    );
                    self.open = Some(open);
                    self.exclude.clear();
                    self.backoff = FIRST_BACKOFF;
                    self.subscriptions += 1;
                    return Ok(true);
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry { node, why }) => {
                    log::debug!("subscribing: {why}");
                    match node {
                        Some(n) if !self.exclude.contains(&n) => self.exclude.push(n),
                        // Every node failed once: give them all another chance.
                        Some(_) | None => self.exclude.clear(),
                    }
                    let pause = self
                        .backoff
                        .min(until.saturating_duration_since(Instant::now()));
                    std::thread::sleep(pause);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn try_subscribe(&mut self) -> std::result::Result<Open, Attempt> {
        let mut lb = Client::new(self.cfg.clone()).map_err(Attempt::Fatal)?;
        let (node, mut conn) =
            crate::stream::connect_next(&mut lb, &self.signer, Some(&self.user), &self.exclude)?;
        let retry = |why: String| Attempt::Retry {
            node: Some(node.clone()),
            why,
        };
        let body = serde_json::to_string(&msg::SubscribeBody {
            credit: Some(self.opts.credit),
        })
        .expect("a body serialises");
        let id = conn
            .send(
                <msg::Subscribe as dsf_proto::Message>::TYPE.name,
                &body,
                Some(&self.token),
            )
            .map_err(|f| retry(f.to_string()))?;
        // A refusal comes at once; a subscription that opened sends events
        // only when there are messages. Either is seen by `next`.
        Ok(Open {
            node,
            conn,
            id,
            seen: 0,
            acked: 0,
            confirmed: 0,
            acks: Vec::new(),
            ping: None,
            last_frame: Instant::now(),
        })
    }
}
