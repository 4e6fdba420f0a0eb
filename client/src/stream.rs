//! [`Client::stream`]: a stream type's events as an iterator, followed
//! from node to node.
//!
//! A stream (`job.watch`, `msg.subscribe`, a user's `order.watch`) is a
//! read: opening it again runs nothing twice. When its node goes away
//! (the connection breaks, or the node answers `unavailable` or
//! `overloaded` while draining), [`Events`] opens it again, with the same
//! body, on the node the balancers name next, within the client's
//! deadline. What the server sends first on a new stream (the current
//! state, for the streams dsf ships and the orders example) is then seen
//! again: a type whose events must not repeat carries a cursor in its body
//! (`msg.subscribe`'s is [`crate::messages::Listener`]).
//!
//! ```no_run
//! # fn main() -> dsf_client::Result<()> {
//! use dsf_client::{Client, ClientConfig, StreamItem};
//! use dsf_proto::task::{JobRef, Watch};
//!
//! let mut c = Client::new(ClientConfig::new(vec!["127.0.0.1:7000".into()], "demo", "secret"))?;
//! for item in c.stream::<Watch>(&JobRef { job: 7 })? {
//!     match item? {
//!         StreamItem::Event(p) => println!("{} of {} done", p.done, p.total),
//!         StreamItem::Done(st) => println!("job ended: {}", st.state),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use dsf_common::call::{Connection, Failure, Signer, Streamed};
use dsf_common::wire::Key;
use dsf_common::ErrorCode;
use dsf_proto::Message;
use serde_json::value::RawValue;

use crate::client::{Client, ClientConfig};
use crate::conn::IntoError;
use crate::error::{Error, Result};

/// What a stream gives: its events, then its final reply.
#[derive(Debug)]
pub enum StreamItem<M: Message> {
    /// One event (the type's `event` name; events of other names are
    /// skipped).
    Event(M::Event),
    /// The final reply: the stream has ended.
    Done(M::Reply),
}

/// What a stream of a type known only by name gives ([`Client::stream_raw`]).
#[derive(Debug)]
pub enum RawItem {
    /// One event: its name and body.
    Event { event: String, body: Box<RawValue> },
    /// The final reply: the stream has ended.
    Done(Box<RawValue>),
}

/// The open stream of `M`; see the module documentation.
pub struct Events<M: Message> {
    raw: RawEvents,
    _m: PhantomData<fn() -> M>,
}

/// The open stream of a type known by name ([`Client::stream_raw`]).
pub struct RawEvents {
    kind: String,
    cfg: ClientConfig,
    signer: Signer,
    token: Option<String>,
    body: String,
    open: Option<(String, Connection, u64)>,
    /// Nodes that failed since the stream last opened.
    exclude: Vec<String>,
    /// Streams opened, the first included.
    opened: u64,
    ended: bool,
}

impl std::fmt::Debug for RawEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawEvents")
            .field("kind", &self.kind)
            .field("node", &self.node())
            .field("opened", &self.opened)
            .finish()
    }
}

impl<M: Message> std::fmt::Debug for Events<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.raw.fmt(f)
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long [`Iterator::next`] waits for the next frame: a stream sends
/// when something changes, so this is "as long as it takes".
const FOREVER: Duration = Duration::from_secs(24 * 3600);

// === impl Client ===

impl Client {
    /// Opens stream `M` with `body` under this client's session token and
    /// routing key; see [`crate::stream`]. A node is found and the stream
    /// sent here; a refusal (`unauthorized`, `bad_request`, `not_found`)
    /// is its first item.
    pub fn stream<M: Message>(&mut self, body: &M::Body) -> Result<Events<M>> {
        let kind = M::TYPE.name;
        if !M::TYPE.streams() {
            return Err(Error::Config(format!(
                "{kind} is a {} type, not a stream: send it with Client::send",
                M::TYPE.kind_str()
            )));
        }
        let body = serde_json::to_string(body)
            .map_err(|e| Error::Config(format!("body of {kind} does not serialise: {e}")))?;
        Ok(Events {
            raw: self.stream_raw(kind, &body)?,
            _m: PhantomData,
        })
    }

    /// [`Client::stream`] for a type known only by its name (`client
    /// stream TYPE JSON`): events and the final reply come as raw JSON.
    pub fn stream_raw(&mut self, kind: &str, body: &str) -> Result<RawEvents> {
        let cfg = self.config().clone();
        let mut events = RawEvents {
            kind: kind.to_string(),
            signer: Signer {
                app: cfg.app.clone(),
                key: Key::new(&cfg.secret),
            },
            cfg,
            token: self.token().map(str::to_string),
            body: body.to_string(),
            open: None,
            exclude: Vec::new(),
            opened: 0,
            ended: false,
        };
        events.reopen(self)?;
        Ok(events)
    }
}

// === impl Events ===

impl<M: Message> Events<M> {
    /// The node the stream is open on.
    pub fn node(&self) -> Option<&str> {
        self.raw.node()
    }

    /// How many times the stream was opened (1 until a node was lost).
    pub fn opened(&self) -> u64 {
        self.raw.opened
    }

    /// The next event or the final reply, waiting until `until`: `None`
    /// if nothing came by then, or the stream has ended.
    pub fn next_until(&mut self, until: Instant) -> Result<Option<StreamItem<M>>> {
        let kind = M::TYPE.name;
        loop {
            let server = self.raw.node().unwrap_or("server").to_string();
            let bad = |what: &str, e: serde_json::Error| Error::BadReply {
                server: server.clone(),
                reason: format!("{what} of {kind} is not what its type says: {e}"),
            };
            return match self.raw.next_until(until)? {
                None => Ok(None),
                Some(RawItem::Event { event, body }) if Some(event.as_str()) == M::TYPE.event() => {
                    let e = serde_json::from_str(body.get()).map_err(|e| bad("an event", e))?;
                    Ok(Some(StreamItem::Event(e)))
                }
                Some(RawItem::Event { event, .. }) => {
                    log::debug!("{kind}: skipping an event named {event:?}");
                    continue;
                }
                Some(RawItem::Done(body)) => {
                    let r =
                        serde_json::from_str(body.get()).map_err(|e| bad("the final reply", e))?;
                    Ok(Some(StreamItem::Done(r)))
                }
            };
        }
    }
}

impl<M: Message> Iterator for Events<M> {
    type Item = Result<StreamItem<M>>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.raw.ended {
            match self.next_until(Instant::now() + FOREVER) {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) => continue,
                Err(e) => {
                    self.raw.ended = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

// === impl RawEvents ===

impl RawEvents {
    /// The node the stream is open on.
    pub fn node(&self) -> Option<&str> {
        self.open.as_ref().map(|(n, _, _)| n.as_str())
    }

    /// How many times the stream was opened (1 until a node was lost).
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// The next event or the final reply, waiting until `until`: `None`
    /// if nothing came by then, or the stream has ended.
    pub fn next_until(&mut self, until: Instant) -> Result<Option<RawItem>> {
        while !self.ended {
            if self.open.is_none() {
                let mut c = Client::new(self.cfg.clone())?;
                self.reopen(&mut c)?;
            }
            let (node, conn, id) = self.open.as_mut().expect("opened above");
            match conn.poll_stream(*id, until) {
                Ok(None) => return Ok(None),
                Ok(Some(Streamed::Event { event, body, .. })) => {
                    return Ok(Some(RawItem::Event { event, body }))
                }
                Ok(Some(Streamed::Final(body))) => {
                    self.ended = true;
                    return Ok(Some(RawItem::Done(body)));
                }
                Err(f) => {
                    let node = node.clone();
                    self.failed(&node, f)?;
                }
            }
        }
        Ok(None)
    }

    /// Handles a failure of the open stream: a lost node (or one going
    /// away) is left for another; anything else ends the stream.
    fn failed(&mut self, node: &str, f: Failure) -> Result<()> {
        let elsewhere = match &f {
            Failure::NotSent(_) | Failure::Lost(_) | Failure::TimedOut(_) => true,
            Failure::Server(e) => {
                matches!(e.code(), ErrorCode::Unavailable | ErrorCode::Overloaded)
            }
            Failure::BadReply(_) => false,
        };
        self.open = None;
        if !elsewhere || self.cfg.node.is_some() {
            self.ended = true;
            return Err(f.into_error(&self.kind, node));
        }
        log::info!(
            "{} on {node} ended: {f}; opening it on another node",
            self.kind
        );
        if !self.exclude.iter().any(|n| n == node) {
            self.exclude.push(node.to_string());
        }
        Ok(())
    }

    /// Opens the stream on the node the balancers name (avoiding those
    /// that failed), trying until the client's deadline.
    fn reopen(&mut self, c: &mut Client) -> Result<()> {
        let kind = self.kind.clone();
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let why = match self.try_open(c) {
                Ok(open) => {
                    self.open = Some(open);
                    self.opened += 1;
                    self.exclude.clear();
                    return Ok(());
                }
                Err(Attempt::Fatal(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                Err(Attempt::Retry { node, why }) => {
                    match node {
                        Some(n) if !self.exclude.contains(&n) => self.exclude.push(n),
                        // Every node failed once: give them all another chance.
                        Some(_) | None => self.exclude.clear(),
                    }
                    why
                }
            };
            log::debug!("opening {kind}: {why}");
            if self.cfg.node.is_some() || started.elapsed() + backoff > self.cfg.deadline {
                self.ended = true;
                return Err(Error::NoNode {
                    kind,
                    deadline: started.elapsed(),
                    last: format!("{why} (check the app servers with `client status`)"),
                });
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt: resolve, connect, send.
    fn try_open(
        &mut self,
        c: &mut Client,
    ) -> std::result::Result<(String, Connection, u64), Attempt> {
        let key = self.cfg.routing_key.clone();
        let (node, mut conn) = connect_next(c, &self.signer, key.as_deref(), &self.exclude)?;
        let id = conn
            .send(&self.kind, &self.body, self.token.as_deref())
            .map_err(|f| Attempt::Retry {
                node: Some(node.clone()),
                why: f.to_string(),
            })?;
        Ok((node, conn, id))
    }
}

/// One attempt to reach the node that owns `key` (avoiding `exclude`),
/// or the node `c` is set to talk to: the node's id and a connection to
/// it. A balancer's `unavailable` or a node that cannot be reached is
/// worth another attempt; any other refusal is not.
pub(crate) fn connect_next(
    c: &mut Client,
    signer: &Signer,
    key: Option<&str>,
    exclude: &[String],
) -> std::result::Result<(String, Connection), Attempt> {
    let cfg = c.config().clone();
    let (node, addr) = match &cfg.node {
        Some(n) => (n.clone(), n.clone()),
        None => match c.resolve(key, exclude) {
            Ok(r) => (r.node, r.addr),
            Err(Error::Refused {
                code: ErrorCode::Unavailable,
                message,
                ..
            }) => {
                return Err(Attempt::Retry {
                    node: None,
                    why: format!("balancer: unavailable: {message}"),
                })
            }
            Err(e @ Error::Refused { .. }) => return Err(Attempt::Fatal(e)),
            Err(e) => {
                return Err(Attempt::Retry {
                    node: None,
                    why: e.to_string(),
                })
            }
        },
    };
    let conn = Connection::connect_tls(
        &addr,
        &node,
        signer.clone(),
        cfg.connect_timeout,
        cfg.max_frame,
        cfg.tls.as_ref(),
    )
    .map_err(|e| Attempt::Retry {
        node: Some(node.clone()),
        why: format!("cannot connect to {node} at {addr}: {e}"),
    })?;
    Ok((node, conn))
}

/// How one attempt to reach a node went wrong.
pub(crate) enum Attempt {
    Retry { node: Option<String>, why: String },
    Fatal(Error),
}

impl Iterator for RawEvents {
    type Item = Result<RawItem>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.ended {
            match self.next_until(Instant::now() + FOREVER) {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) => continue,
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}
