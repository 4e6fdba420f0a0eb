//! The framed dsf adapter: the [`Service`] trait an application implements,
//! the [`Context`] a frame comes with, and the per-connection state that
//! turns bytes into frames (decoder, the frame deadline, a parked frame, the
//! run of refused frames). Everything here that writes bytes writes dsf
//! frames; the core in `mod.rs` never does.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::outbox::{ConnShared, Handle, Outbox, ReplyTo, Sink};
use super::{ConnId, ReactorStats, Warn};
use crate::error::Error;
use crate::wire::admission::{Admitted, Refused};
use crate::wire::envelope::{encode_error, UNKNOWN_ID};
use crate::wire::frame::FrameDecoder;

/// What a service did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Answered inline, or deferred with a [`ReplyTo`] that will answer.
    Done,
    /// Cannot take it now; the reactor keeps the frame, stops reading from
    /// this connection, and offers the same frame again later, in turn
    /// with every other connection waiting the same way.
    Busy,
}

/// Where a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Accepted on the listen address of this index (the order given to
    /// [`Reactor::bind`](super::Reactor::bind)).
    Listener(usize),
    /// Opened by this process ([`Handle::connect`], or a pipe's backend).
    Outbound,
}

/// How a newly accepted connection is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// dsf frames, each to [`Service::on_frame`].
    Framed,
    /// Raw bytes to [`Service::on_bytes`] until it decides; at most `max`
    /// bytes, within `deadline` of the accept.
    Sniff { max: usize, deadline: Duration },
    /// A byte pipe to this backend, at once.
    Pipe(SocketAddr),
    /// Close at once, after writing whatever was put in [`Context::out`]
    /// (no backend to send it to, say).
    Close,
}

/// What [`Service::on_bytes`] decided about the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough yet: called again with more.
    NeedMore,
    /// Become a byte pipe to this backend; every byte seen so far is
    /// forwarded to it first.
    Pipe(SocketAddr),
    /// Become a framed dsf connection; the bytes seen so far are its start.
    Framed,
    /// Close, after writing whatever was put in [`Context::out`].
    Close,
    /// Stop reading and wait for a decision made on another thread (a
    /// lookup that blocks): [`Outbox::pipe`] makes the connection a pipe
    /// (every byte seen so far goes first), [`Outbox::send`] then
    /// [`Outbox::close`] answers and closes it. The first-packet deadline
    /// still holds: no decision in time closes the connection.
    Wait,
}

/// The application side of a reactor.
pub trait Service: Send + 'static {
    /// Handles one frame's payload from a connection.
    ///
    /// A frame answered with [`Dispatch::Busy`] is offered again, byte for
    /// byte, later: decide `Busy` before acting on it (before admission
    /// remembers its nonce, before anything is written), or the retry will
    /// not be the same request.
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch;

    /// How a connection just accepted is read: framed by default.
    fn on_accept(&mut self, _cx: &mut Context<'_>) -> Accept {
        Accept::Framed
    }

    /// The bytes received so far on a connection accepted with
    /// [`Accept::Sniff`].
    fn on_bytes(&mut self, _bytes: &[u8], _cx: &mut Context<'_>) -> Sniffed {
        Sniffed::Close
    }

    /// A pipe's backend could not be reached. Return another backend to
    /// try, or `None` to close the client's connection (after writing what
    /// was put in [`Context::out`]).
    fn on_pipe_failed(
        &mut self,
        _backend: SocketAddr,
        _error: &io::Error,
        _cx: &mut Context<'_>,
    ) -> Option<SocketAddr> {
        None
    }

    /// What a connection refused at `max_conns` is sent before it is
    /// closed: by default a dsf `overloaded` error.
    fn on_full(&mut self, _listener: usize, max_conns: usize, out: &mut Vec<u8>) {
        let e = Error::Overloaded(format!(
            "server is at its limit of {max_conns} connections; retry later or on another node"
        ));
        encode_error(None, UNKNOWN_ID, "", &e, out);
    }

    /// A connection is gone; replies still in flight for it are dropped and
    /// its outboxes refuse from now on.
    fn on_close(&mut self, _conn: ConnId) {}
}

/// The connection a frame (or first bytes) came from, and the ways to answer.
pub struct Context<'a> {
    pub(crate) conn: ConnId,
    pub(crate) peer: SocketAddr,
    pub(crate) origin: Origin,
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) close: &'a mut bool,
    pub(crate) inflight: &'a mut usize,
    pub(crate) idle: &'a mut Option<Duration>,
    pub(crate) preamble: &'a mut Vec<u8>,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) refused: &'a mut bool,
    pub(crate) shared: &'a Arc<ConnShared>,
    pub(crate) sink: &'a Arc<Sink>,
}

// === impl Context ===

impl Context<'_> {
    /// The connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Where the connection came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Index of the listen address the connection came in on, in the order
    /// given to [`Reactor::bind`](super::Reactor::bind); `None` for an
    /// outbound link.
    pub fn listener(&self) -> Option<usize> {
        match self.origin {
            Origin::Listener(i) => Some(i),
            Origin::Outbound => None,
        }
    }

    /// The connection's output: append whole encoded frames to answer inline.
    pub fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Close the connection once what is in its output is written.
    pub fn close(&mut self) {
        *self.close = true;
    }

    /// This connection's idle timeout instead of the reactor's (an MQTT
    /// device's keep-alive, say). A pipe's backend side takes the client
    /// side's when the pipe opens.
    pub fn set_idle_timeout(&mut self, idle: Duration) {
        *self.idle = Some(idle);
    }

    /// Bytes a pipe's backend gets before anything the client sent (a
    /// PROXY protocol header, say); sent again to a backend tried after
    /// one that failed.
    pub fn set_preamble(&mut self, bytes: Vec<u8>) {
        *self.preamble = bytes;
    }

    /// The local address an accepted connection came in on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Answers a frame that admission refused, and closes the connection
    /// when the frame broke framing (the stream can no longer be trusted).
    /// Counts toward the run of refused frames that closes a connection.
    pub fn refuse(&mut self, refused: &Refused) {
        refused.encode(self.out);
        *self.refused = true;
        if refused.closes_connection() {
            *self.close = true;
        }
    }

    /// Answers a request with an error that counts toward the run of
    /// refused frames (an unknown type, say).
    pub fn reject(&mut self, admitted: &Admitted, error: &Error) {
        admitted.error(error, self.out);
        *self.refused = true;
        if error.code().closes_connection() {
            *self.close = true;
        }
    }

    /// A handle to answer this frame later, from any thread. The connection
    /// counts it as in flight until it is used or dropped.
    pub fn defer(&mut self) -> ReplyTo {
        *self.inflight += 1;
        self.sink.in_flight.fetch_add(1, Ordering::Relaxed);
        ReplyTo {
            outbox: self.outbox(),
            done: false,
        }
    }

    /// Takes back a [`ReplyTo`] that was not handed on (its job was refused).
    pub fn cancel(&mut self, mut reply: ReplyTo) {
        debug_assert_eq!(
            reply.conn(),
            self.conn,
            "a ReplyTo cancelled on another connection"
        );
        reply.done = true;
        *self.inflight -= 1;
        self.sink.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// An outbox for this connection, usable from any thread (pushes,
    /// subscriptions).
    pub fn outbox(&self) -> Outbox {
        Outbox {
            conn: self.conn,
            shared: self.shared.clone(),
            sink: self.sink.clone(),
        }
    }

    /// A handle to the reactor, to open outbound links.
    pub fn handle(&self) -> Handle {
        Handle {
            sink: self.sink.clone(),
            out_cap: self.shared.cap,
        }
    }
}

/// The framed state of one connection.
pub(crate) struct Framed {
    pub(crate) decoder: FrameDecoder,
    /// A frame the service could not take yet.
    pub(crate) parked: Option<Vec<u8>>,
    /// When the first byte of the frame now arriving came.
    pub(crate) frame_started: Option<Instant>,
    /// Refused frames in a row.
    pub(crate) refused_run: u32,
}

impl Framed {
    pub(crate) fn new(max_frame: usize) -> Framed {
        Framed {
            decoder: FrameDecoder::new(max_frame),
            parked: None,
            frame_started: None,
            refused_run: 0,
        }
    }
}

/// What the connection asked of the core after its frames were handled.
pub(crate) enum Flow {
    /// Every whole frame was handled; read more.
    Read,
    /// The service is busy: the frame is parked; stop reading.
    Parked,
}

/// The connection's fields a frame's handling touches.
pub(crate) struct Parts<'a> {
    pub(crate) conn: ConnId,
    pub(crate) peer: SocketAddr,
    pub(crate) origin: Origin,
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) closing: &'a mut bool,
    pub(crate) inflight: &'a mut usize,
    pub(crate) idle: &'a mut Option<Duration>,
    pub(crate) preamble: &'a mut Vec<u8>,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) shared: &'a Arc<ConnShared>,
}

// === impl Parts ===

impl Parts<'_> {
    /// The [`Context`] a service sees, over these fields.
    pub(crate) fn context<'b>(
        &'b mut self,
        refused: &'b mut bool,
        sink: &'b Arc<Sink>,
    ) -> Context<'b> {
        Context {
            conn: self.conn,
            peer: self.peer,
            origin: self.origin,
            out: self.out,
            close: self.closing,
            inflight: self.inflight,
            idle: self.idle,
            preamble: self.preamble,
            local: self.local,
            refused,
            shared: self.shared,
            sink,
        }
    }
}

/// Limits the framed adapter enforces.
pub(crate) struct Rules<'a> {
    pub(crate) max_refused: u32,
    pub(crate) warn: &'a mut Warn,
    pub(crate) sink: &'a Arc<Sink>,
    pub(crate) stats: &'a ReactorStats,
    pub(crate) now: Instant,
}

/// Offers the parked frame again: [`Flow::Parked`] while still busy.
pub(crate) fn dispatch_parked<S: Service>(
    f: &mut Framed,
    p: &mut Parts<'_>,
    service: &mut S,
    rules: &mut Rules<'_>,
) -> Flow {
    let Some(frame) = f.parked.take() else {
        return Flow::Read;
    };
    if offer(f, p, service, rules, &frame) == Dispatch::Busy {
        f.parked = Some(frame);
        return Flow::Parked;
    }
    // The frame behind it could not arrive while reading was stopped: its
    // deadline starts now.
    f.frame_started = (f.decoder.buffered() > 0).then_some(rules.now);
    Flow::Read
}

/// Offers every whole frame buffered to the service, until it is busy.
pub(crate) fn dispatch<S: Service>(
    f: &mut Framed,
    p: &mut Parts<'_>,
    service: &mut S,
    rules: &mut Rules<'_>,
) -> Flow {
    let mut decoded = false;
    while !*p.closing {
        match f.decoder.next_frame() {
            Ok(Some(payload)) => {
                decoded = true;
                rules.stats.frames.fetch_add(1, Ordering::Relaxed);
                let mut refused = false;
                let mut cx = p.context(&mut refused, rules.sink);
                if service.on_frame(payload, &mut cx) == Dispatch::Busy {
                    f.parked = Some(payload.to_vec());
                    f.frame_started = (f.decoder.buffered() > 0).then_some(rules.now);
                    return Flow::Parked;
                }
                count_refused(&mut f.refused_run, refused, p, rules);
            }
            Ok(None) => break,
            Err(e) => {
                log::debug!("{:?} from {}: {e}", p.conn, p.peer);
                rules.stats.closed_bad_frame.fetch_add(1, Ordering::Relaxed);
                encode_error(None, UNKNOWN_ID, "", &e, p.out);
                *p.closing = true;
            }
        }
    }
    if decoded {
        f.frame_started = (f.decoder.buffered() > 0).then_some(rules.now);
    } else if f.decoder.buffered() > 0 && f.frame_started.is_none() {
        f.frame_started = Some(rules.now);
    }
    Flow::Read
}

fn offer<S: Service>(
    f: &mut Framed,
    p: &mut Parts<'_>,
    service: &mut S,
    rules: &mut Rules<'_>,
    frame: &[u8],
) -> Dispatch {
    let mut refused = false;
    let mut cx = p.context(&mut refused, rules.sink);
    let d = service.on_frame(frame, &mut cx);
    if d == Dispatch::Done {
        count_refused(&mut f.refused_run, refused, p, rules);
    }
    d
}

/// A run of refused frames closes the connection: a peer sending only junk
/// costs a parse and an answer each, and gets no more of them.
fn count_refused(run: &mut u32, refused: bool, p: &mut Parts<'_>, rules: &mut Rules<'_>) {
    if !refused {
        *run = 0;
        return;
    }
    *run += 1;
    if *run >= rules.max_refused && !*p.closing {
        rules.stats.closed_refused.fetch_add(1, Ordering::Relaxed);
        let (peer, n) = (p.peer, *run);
        rules.warn.hit(rules.now, || {
            format!("closed {peer}: {n} refused frames in a row (bad JSON, signatures, types; --max-refused)")
        });
        let e = Error::BadRequest(format!(
            "closing the connection after {} refused frames in a row (max_refused); fix the requests above and reconnect",
            *run
        ));
        encode_error(None, UNKNOWN_ID, "", &e, p.out);
        *p.closing = true;
    }
}

/// The error frame a framed connection is sent when the core closes it.
pub(crate) fn farewell(e: &Error, out: &mut Vec<u8>) {
    encode_error(None, UNKNOWN_ID, "", e, out);
}
