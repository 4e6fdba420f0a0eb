//! [`Route`]: a message type and its handler. A route is declared from a
//! catalogue type `M` ([`dsf_proto::Message`]) with a typed handler, in one
//! of three kinds:
//!
//! - [`Route::unary`]: `(&Call, M::Body) -> Result<M::Reply>`;
//! - [`Route::long_poll`]: the same, plus a `wait` that may park the request
//!   off the workers until a topic wakes it or its wait ends;
//! - [`Route::stream`]: the handler is given a [`Stream`] to send events
//!   on, then one final reply (now, or later from any thread).
//!
//! and [`Route::deferred`], a unary answer given later from another thread
//! (a balancer's view, applied by its builder thread). The handler never
//! parses or renders JSON itself: bodies are parsed with the field named in
//! any error, replies rendered by the route.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use dsf_proto::{Kind, Message, Type};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::rate::Limit;
use super::Call;
use crate::error::{Error, Result};
use crate::reactor::ReplyTo;
use crate::wire::streams::{self, Ended};
use crate::wire::{self, Key};

/// Where a route's handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// On the reactor thread, as the frame is read: only for handlers that
    /// never block (no database, no lock held long).
    Inline,
    /// On a worker of the server's pool (the default).
    Pool,
}

/// How long a long poll waits, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    /// Wakes it: a commit anywhere that calls `wake(topic)`.
    pub topic: String,
    /// When it runs anyway, with what it finds then.
    pub until: Instant,
}

pub(super) type UnaryFn<S> = dyn Fn(&Call<S>, &str) -> Result<String> + Send + Sync;
pub(super) type WaitFn<S> = dyn Fn(&Call<S>, &str) -> Option<Wait> + Send + Sync;
pub(super) type StreamFn<S> =
    dyn Fn(&Call<S>, &str, streams::Stream, Weak<Home>) -> Result<()> + Send + Sync;
pub(super) type DeferredFn<S> = dyn Fn(&Call<S>, &str, Responder<()>) -> Result<()> + Send + Sync;

/// Where a [`Stream`] goes back to when its handler drops it unfinished,
/// while the handler still runs: the pipeline then ends it with the
/// handler's error (or says the handler gave no reply).
pub(super) type Home = Mutex<Option<streams::Stream>>;

pub(super) enum Handler<S: Send + Sync + 'static> {
    Unary(Box<UnaryFn<S>>),
    LongPoll {
        wait: Box<WaitFn<S>>,
        run: Box<UnaryFn<S>>,
    },
    Stream(Box<StreamFn<S>>),
    Deferred(Box<DeferredFn<S>>),
}

/// A message type and its handler; see the module documentation.
pub struct Route<S: Send + Sync + 'static> {
    pub(super) ty: Type,
    pub(super) exec: Exec,
    /// The listeners it is served on; all when `None`.
    pub(super) ports: Option<Vec<usize>>,
    pub(super) limits: Vec<Limit>,
    /// Runs in order per connection, in batches ([`Route::batched`]).
    pub(super) batched: bool,
    pub(super) handler: Handler<S>,
    /// What the route's constructor found wrong with it (a unary route on a
    /// stream type), reported when the server is built.
    pub(super) mismatch: Option<String>,
}

// === impl Route ===

impl<S: Send + Sync + 'static> Route<S> {
    fn new(ty: Type, handler: Handler<S>, want: &str) -> Route<S> {
        let fits = match (&handler, ty.kind) {
            (Handler::Stream(_), Kind::Stream { .. }) => true,
            (Handler::Stream(_), _) | (_, Kind::Stream { .. }) => false,
            _ => true,
        };
        Route {
            ty,
            exec: Exec::Pool,
            ports: None,
            limits: Vec::new(),
            batched: false,
            handler,
            mismatch: (!fits).then(|| {
                format!(
                    "{} is a {}, but is routed as a {want}",
                    ty.name,
                    ty.kind_str()
                )
            }),
        }
    }

    /// A request answered by one reply: `handler(call, body)`.
    ///
    /// ```
    /// use dsf_common::pipeline::{Call, Route};
    /// use dsf_proto::sys::{Ping, Pong};
    ///
    /// let route: Route<()> = Route::unary::<Ping>(|call: &Call<()>, _body| {
    ///     Ok(Pong { node: format!("seen from {}", call.peer()) })
    /// });
    /// ```
    pub fn unary<M: Message>(
        handler: impl Fn(&Call<S>, M::Body) -> Result<M::Reply> + Send + Sync + 'static,
    ) -> Route<S> {
        Route::new(M::TYPE, Handler::Unary(erase::<S, M>(handler)), "unary")
    }

    /// A request that may wait for something to happen: `wait(call, body)`
    /// says what to wait for (a topic) and how long, or `None` to run at
    /// once. A parked request holds no worker; it runs `handler` when its
    /// topic is woken (on any node) or its wait ends, and then whatever it
    /// finds ([`Call::is_woken`]).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use dsf_common::pipeline::{Route, Wait};
    /// use dsf_proto::{sys::{Ping, Pong}, Empty};
    ///
    /// // Waits up to a second for topic "news", then answers.
    /// let route: Route<()> = Route::long_poll::<Ping>(
    ///     |_call, _body: &Empty| {
    ///         Some(Wait { topic: "news".into(), until: Instant::now() + Duration::from_secs(1) })
    ///     },
    ///     |call, _body| Ok(Pong { node: format!("woken: {}", call.is_woken()) }),
    /// );
    /// ```
    pub fn long_poll<M: Message>(
        wait: impl Fn(&Call<S>, &M::Body) -> Option<Wait> + Send + Sync + 'static,
        handler: impl Fn(&Call<S>, M::Body) -> Result<M::Reply> + Send + Sync + 'static,
    ) -> Route<S> {
        let wait = Box::new(move |call: &Call<S>, body: &str| {
            // A body the handler will refuse runs at once, and is refused.
            let body: M::Body = parse_body(body).ok()?;
            wait(call, &body)
        });
        let run = erase::<S, M>(handler);
        Route::new(M::TYPE, Handler::LongPoll { wait, run }, "long poll")
    }

    /// A stream: `handler(call, body, stream)` sends events on `stream` and
    /// ends it with [`Stream::finish`], now or later from another thread
    /// (it may keep the stream anywhere). An error it returns is the
    /// stream's final reply.
    ///
    /// ```
    /// use dsf_common::pipeline::Route;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// pub struct Count { n: u64 }
    /// #[derive(Serialize, Deserialize)]
    /// pub struct Tick { i: u64 }
    /// dsf_proto::message!(pub Ticks = "demo.ticks", App, stream: Count => Count, event "tick": Tick);
    ///
    /// // `n` events, then the final reply.
    /// let route: Route<()> = Route::stream::<Ticks>(|_call, b, mut stream| {
    ///     for i in 0..b.n {
    ///         if stream.event(&Tick { i }).is_err() {
    ///             return Ok(()); // the reader went away
    ///         }
    ///     }
    ///     stream.finish(&Count { n: b.n }).ok();
    ///     Ok(())
    /// });
    /// ```
    pub fn stream<M: Message>(
        handler: impl Fn(&Call<S>, M::Body, Stream<M>) -> Result<()> + Send + Sync + 'static,
    ) -> Route<S> {
        let f = move |call: &Call<S>, body: &str, inner: streams::Stream, home: Weak<Home>| {
            // Wrapped first: a body refused here drops the stream back
            // home, where the error becomes its final reply.
            let stream = Stream {
                inner: Some(inner),
                home,
                _m: PhantomData,
            };
            let body: M::Body = parse_body(body)?;
            handler(call, body, stream)
        };
        Route::new(M::TYPE, Handler::Stream(Box::new(f)), "stream")
    }

    /// A unary request answered later, from any thread, through the
    /// [`Responder`] (a balancer hands a view to its builder thread, which
    /// answers once the view is in force). An error it returns before
    /// answering is the reply.
    pub fn deferred<M: Message>(
        handler: impl Fn(&Call<S>, M::Body, Responder<M>) -> Result<()> + Send + Sync + 'static,
    ) -> Route<S> {
        let f = move |call: &Call<S>, body: &str, r: Responder<()>| {
            let body: M::Body = parse_body(body)?;
            handler(call, body, r.typed())
        };
        Route::new(M::TYPE, Handler::Deferred(Box::new(f)), "deferred reply")
    }

    /// Runs the handler on the reactor thread instead of a worker: for
    /// handlers that never block.
    pub fn inline(mut self) -> Route<S> {
        self.exec = Exec::Inline;
        self
    }

    /// Runs this type's requests from one connection in the order they
    /// were sent, in batches: those that arrive while a batch runs make
    /// the next one (up to [`super::BATCH_MAX`]), run by one worker inside
    /// the server's [`super::Group`] (the app server's: one transaction, so
    /// a batch of writes commits once). A client that keeps many requests
    /// in flight gets them run in its order and committed together; one
    /// that waits for each reply gets batches of one. After a request that
    /// failed with "try again" (`unavailable`, `overloaded`, `internal`:
    /// not run, or rolled back), those behind it on its connection are
    /// answered `unavailable` without running, so that its client sends
    /// them again in order. At most [`super::LANE_MAX`] wait per
    /// connection (more are refused `overloaded`), and a connection with
    /// requests waiting keeps one worker. Unary routes on the pool only.
    pub fn batched(mut self) -> Route<S> {
        self.batched = true;
        self
    }

    /// Serves the route only on these listeners (indexes of the server's
    /// listen addresses): a balancer's cluster types on its cluster port.
    pub fn on_ports(mut self, ports: &[usize]) -> Route<S> {
        self.ports = Some(ports.to_vec());
        self
    }

    /// Counts each request against `limit` before it runs (see
    /// [`super::rate`]); several limits are checked in the order given.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use std::time::Duration;
    /// use dsf_common::pipeline::{Limit, Per, Rate, Route};
    /// use dsf_proto::sys::{Ping, Pong};
    ///
    /// // 10 at once and 10 more a minute, per caller address; a server may
    /// // set another rate for "pings" in its settings.
    /// const PINGS: Limit = Limit::new(
    ///     "pings",
    ///     Per::Peer,
    ///     Rate::Every { burst: NonZeroU32::new(10).unwrap(), period: Duration::from_secs(60) },
    /// );
    /// let route: Route<()> =
    ///     Route::unary::<Ping>(|_, _| Ok(Pong { node: "n1".into() })).limit(PINGS);
    /// ```
    pub fn limit(mut self, limit: Limit) -> Route<S> {
        self.limits.push(limit);
        self
    }

    /// Its catalogue entry.
    pub fn ty(&self) -> &Type {
        &self.ty
    }

    /// Where it runs.
    pub fn exec(&self) -> Exec {
        self.exec
    }

    /// Whether it is served on listener `port` (`None`: an outbound link).
    pub(super) fn serves(&self, port: Option<usize>) -> bool {
        match (&self.ports, port) {
            (None, _) => true,
            (Some(ports), Some(p)) => ports.contains(&p),
            (Some(_), None) => false,
        }
    }

    /// Whether its answer goes through a reply handle (not the reactor's
    /// inline output).
    pub(super) fn answers_later(&self) -> bool {
        matches!(self.handler, Handler::Stream(_) | Handler::Deferred(_))
    }
}

fn erase<S: Send + Sync + 'static, M: Message>(
    handler: impl Fn(&Call<S>, M::Body) -> Result<M::Reply> + Send + Sync + 'static,
) -> Box<UnaryFn<S>> {
    Box::new(move |call: &Call<S>, body: &str| {
        let body: M::Body = parse_body(body)?;
        render(&handler(call, body)?)
    })
}

/// Deserialises a body, naming the offending field in the error
/// (`name: invalid type: integer `5`, expected a string`).
pub fn parse_body<T: DeserializeOwned>(body: &str) -> Result<T> {
    // Most bodies are good: parse them plainly, and only a bad one again
    // with its path tracked for the message.
    if let Ok(v) = serde_json::from_str(body) {
        return Ok(v);
    }
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
pub fn render<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("rendering a reply: {e}")))
}

/// The stream of a [`Route::stream`] request, typed by its message: events
/// carry `M::Event`, the final reply `M::Reply`. It may be moved to any
/// thread; dropped unfinished, it ends with an `internal` error.
pub struct Stream<M: Message> {
    inner: Option<streams::Stream>,
    home: Weak<Home>,
    _m: PhantomData<fn() -> M>,
}

// === impl Stream ===

impl<M: Message> Stream<M> {
    fn inner(&mut self) -> &mut streams::Stream {
        self.inner
            .as_mut()
            .expect("a stream is whole until consumed")
    }

    /// The event name of `M`.
    fn name() -> &'static str {
        M::TYPE.event().unwrap_or("event")
    }

    /// Sends an event that must not be lost; a reader too slow for it ends
    /// the stream with `overloaded`.
    pub fn event(&mut self, body: &M::Event) -> std::result::Result<(), Ended> {
        let body = render(body).map_err(|_| Ended::Finished)?;
        self.inner().event(Self::name(), &body)
    }

    /// Sends an event that supersedes the one before it (progress): a slow
    /// reader gets the latest.
    pub fn update(&mut self, body: &M::Event) -> std::result::Result<(), Ended> {
        let body = render(body).map_err(|_| Ended::Finished)?;
        self.inner().update(Self::name(), &body)
    }

    /// Sends a waiting update when there is room; whether nothing waits.
    pub fn flush(&mut self) -> std::result::Result<bool, Ended> {
        self.inner().flush()
    }

    /// Whether the stream has ended (cancelled, its connection closed).
    pub fn is_ended(&self) -> bool {
        self.inner.as_ref().is_none_or(|s| s.is_ended())
    }

    /// Events sent so far.
    pub fn sent(&self) -> u64 {
        self.inner.as_ref().map_or(0, |s| s.sent())
    }

    /// Ends the stream with its final reply.
    pub fn finish(mut self, reply: &M::Reply) -> std::result::Result<(), Ended> {
        let body = render(reply).map_err(|_| Ended::Finished)?;
        let inner = self.inner.take().expect("a stream is whole until consumed");
        inner.finish(&body)
    }

    /// Ends the stream with an error.
    pub fn fail(mut self, e: &Error) -> std::result::Result<(), Ended> {
        let inner = self.inner.take().expect("a stream is whole until consumed");
        inner.fail(e)
    }

    /// The untyped stream (events of any name and body).
    pub fn into_inner(mut self) -> streams::Stream {
        self.inner.take().expect("a stream is whole until consumed")
    }
}

impl<M: Message> Drop for Stream<M> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        // While the handler runs, it goes back to the pipeline, which ends
        // it with the handler's error; afterwards it ends as dropped.
        if let Some(home) = self.home.upgrade() {
            *home.lock().unwrap_or_else(|p| p.into_inner()) = Some(inner);
        }
    }
}

/// Answers one [`Route::deferred`] request once, from any thread.
pub struct Responder<M> {
    pub(super) slot: Arc<Mutex<Option<ReplyTo>>>,
    pub(super) key: Key,
    pub(super) id: u64,
    pub(super) nonce: String,
    pub(super) _m: PhantomData<fn() -> M>,
}

// === impl Responder ===

impl<M> Responder<M> {
    fn typed<N>(self) -> Responder<N> {
        Responder {
            slot: self.slot,
            key: self.key,
            id: self.id,
            nonce: self.nonce,
            _m: PhantomData,
        }
    }

    /// Sends the reply (the first answer wins; later ones are dropped).
    fn send(&self, frame: impl FnOnce(&mut Vec<u8>)) -> bool {
        let reply = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(reply) = reply else {
            return false;
        };
        let mut out = Vec::new();
        frame(&mut out);
        reply.send(out);
        true
    }

    /// Answers with an error.
    pub fn fail(&self, e: &Error) -> bool {
        self.send(|out| wire::encode_error(Some(&self.key), self.id, &self.nonce, e, out))
    }
}

impl<M: Message> Responder<M> {
    /// Answers with `reply`.
    pub fn ok(&self, reply: &M::Reply) -> bool {
        match render(reply) {
            Ok(body) => {
                self.send(|out| wire::encode_ok(Some(&self.key), self.id, &self.nonce, &body, out))
            }
            Err(e) => self.fail(&e),
        }
    }

    /// Answers with `reply`, or its error.
    pub fn answer(&self, reply: Result<M::Reply>) -> bool {
        match reply {
            Ok(r) => self.ok(&r),
            Err(e) => self.fail(&e),
        }
    }
}

impl<M> Clone for Responder<M> {
    fn clone(&self) -> Self {
        Responder {
            slot: self.slot.clone(),
            key: self.key.clone(),
            id: self.id,
            nonce: self.nonce.clone(),
            _m: PhantomData,
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
        assert_eq!(e.code(), crate::ErrorCode::BadRequest);
        assert!(e.to_string().starts_with("name: invalid type"), "{e}");
        let e = parse_body::<Body>(r#"{"name":"a","limit":"x"}"#).unwrap_err();
        assert!(e.to_string().starts_with("limit: "), "{e}");
        let e = parse_body::<Body>(r#"{}"#).unwrap_err();
        assert_eq!(e.to_string(), "body: missing field `name`");
        let e = parse_body::<Body>(r#"{"name":"a","nme":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `nme`"), "{e}");
    }

    #[test]
    fn a_route_of_the_wrong_kind_says_so() {
        use dsf_proto::{sys, task};
        let r: Route<()> = Route::unary::<task::Watch>(|_, _| unreachable!());
        assert_eq!(
            r.mismatch.as_deref(),
            Some("job.watch is a stream, but is routed as a unary")
        );
        let r: Route<()> = Route::stream::<sys::Ping>(|_, _, _| unreachable!());
        assert!(r.mismatch.is_some());
        let r: Route<()> = Route::unary::<sys::Ping>(|_, _| unreachable!());
        assert!(r.mismatch.is_none());
    }

    #[test]
    fn only_a_unary_route_on_the_workers_may_be_batched() {
        use crate::wire::keys::AppKeys;
        use dsf_proto::{sys, task};
        let build = |r: Route<()>| {
            super::super::Builder::new()
                .routes("svc", [r])
                .build((), AppKeys::default())
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let e = build(
            Route::unary::<sys::Ping>(|_, _| unreachable!())
                .inline()
                .batched(),
        );
        assert_eq!(
            e.unwrap_err(),
            "route sys.ping is batched, which only a unary route on the workers can be (service \"svc\")"
        );
        let stream = Route::stream::<task::Watch>(|_, _, _| unreachable!()).batched();
        assert!(build(stream).unwrap_err().contains("is batched"));
        assert!(build(Route::unary::<sys::Ping>(|_, _| unreachable!()).batched()).is_ok());
    }
}
