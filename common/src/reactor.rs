//! The mio reactor every dsf server runs: one thread accepts, reads, decodes
//! frames, hands them to a [`Service`], and writes replies.
//!
//! A service answers a frame either inline (appending a reply to
//! [`Context::out`]) or later from another thread through a [`ReplyTo`]
//! obtained with [`Context::defer`]; deferred replies come back over a
//! channel and a `mio::Waker`, and only this thread ever writes to a socket.
//! When the service cannot take a frame ([`Dispatch::Busy`], e.g. its worker
//! queue is full) the reactor keeps the frame and stops reading from that
//! connection until capacity frees: backpressure instead of an unbounded
//! queue.
//!
//! Limits, each with a clear outcome: frames above `max_frame` get
//! `frame_too_large` and a close; a connection whose unsent output exceeds
//! `out_cap` (a peer that does not read) is closed; one idle for
//! `idle_timeout` with nothing in flight is closed; at `max_conns`, a new
//! connection gets an `overloaded` error and is closed.
//!
//! Shutdown ([`Shutdown::trigger`]): stop accepting, stop reading new
//! requests, deliver the replies of requests already dispatched, then return
//! once all are flushed or `shutdown_grace` has passed.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Error;
use crate::wire::admission::Refused;
use crate::wire::envelope::{encode_error, UNKNOWN_ID};
use crate::wire::frame::{FrameDecoder, DEFAULT_MAX_FRAME};

/// Default cap on connections: 10,000.
pub const DEFAULT_MAX_CONNS: usize = 10_000;
/// Default idle timeout: 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap on a connection's unsent output: 8 MiB.
pub const DEFAULT_OUT_CAP: usize = 8 << 20;
/// Default room offered to each `read` call: 64 KiB (at least 16 KiB).
pub const DEFAULT_READ_CHUNK: usize = 64 << 10;
/// Default listen backlog.
pub const DEFAULT_BACKLOG: i32 = 1024;
/// Default time allowed to deliver in-flight replies at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Reads per connection per wake-up before others get a turn.
const READS_PER_TURN: usize = 8;
const WAKER: Token = Token(usize::MAX);

/// Limits and socket settings of a reactor.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// Largest frame payload accepted.
    pub max_frame: usize,
    /// Connections held at once; more are refused with `overloaded`.
    pub max_conns: usize,
    /// A connection with no traffic and nothing in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Unsent output above this closes the connection (the peer is not reading).
    pub out_cap: usize,
    /// Room offered to each `read`; raised to 16 KiB if set lower.
    pub read_chunk: usize,
    /// Listen backlog.
    pub backlog: i32,
    /// How long shutdown waits for in-flight replies to be delivered.
    pub shutdown_grace: Duration,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            max_frame: DEFAULT_MAX_FRAME,
            max_conns: DEFAULT_MAX_CONNS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            out_cap: DEFAULT_OUT_CAP,
            read_chunk: DEFAULT_READ_CHUNK,
            backlog: DEFAULT_BACKLOG,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl ReactorConfig {
    /// The defaults, with the limits a server's flags may override
    /// (`--max-frame`, `--max-conns`, `--idle-timeout`).
    pub fn with_limits(
        max_frame: Option<usize>,
        max_conns: Option<usize>,
        idle_timeout: Option<Duration>,
    ) -> ReactorConfig {
        let d = ReactorConfig::default();
        ReactorConfig {
            max_frame: max_frame.unwrap_or(d.max_frame),
            max_conns: max_conns.unwrap_or(d.max_conns),
            idle_timeout: idle_timeout.unwrap_or(d.idle_timeout),
            ..d
        }
    }
}

/// Identifies a connection for the life of the reactor; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(usize);

/// What a service did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Answered inline, or deferred with a [`ReplyTo`] that will answer.
    Done,
    /// Cannot take it now; the reactor keeps the frame, stops reading from
    /// this connection, and offers the same frame again later.
    Busy,
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

    /// A connection is gone; replies still in flight for it are dropped.
    fn on_close(&mut self, _conn: ConnId) {}
}

/// The connection a frame came from, and the ways to answer it.
pub struct Context<'a> {
    conn: ConnId,
    peer: SocketAddr,
    listener: usize,
    out: &'a mut Vec<u8>,
    close: &'a mut bool,
    inflight: &'a mut usize,
    sink: &'a Arc<ReplySink>,
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

    /// Index of the listen address the connection came in on, in the order
    /// given to [`Reactor::bind`].
    pub fn listener(&self) -> usize {
        self.listener
    }

    /// The connection's output: append whole encoded frames to answer inline.
    pub fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Close the connection once what is in its output is written.
    pub fn close(&mut self) {
        *self.close = true;
    }

    /// Answers a frame that admission refused, and closes the connection
    /// when the frame broke framing (the stream can no longer be trusted).
    pub fn refuse(&mut self, refused: &Refused) {
        refused.encode(self.out);
        if refused.closes_connection() {
            *self.close = true;
        }
    }

    /// A handle to answer this frame later, from any thread. The connection
    /// counts it as in flight until it is used or dropped.
    pub fn defer(&mut self) -> ReplyTo {
        *self.inflight += 1;
        self.sink.in_flight.fetch_add(1, Ordering::Relaxed);
        ReplyTo {
            conn: self.conn,
            sink: self.sink.clone(),
            done: false,
        }
    }

    /// Takes back a [`ReplyTo`] that was not handed on (its job was refused).
    pub fn cancel(&mut self, mut reply: ReplyTo) {
        reply.done = true;
        *self.inflight -= 1;
        self.sink.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where deferred replies go: a channel to the reactor and its waker.
pub struct ReplySink {
    // Unbounded by type, bounded in fact: it holds at most one entry per
    // deferred request, and those are capped by the service's bounded queue.
    tx: Sender<Reply>,
    waker: Waker,
    /// Set when a wake is already pending, so a burst of replies costs one
    /// wake-up syscall instead of one each.
    woken: AtomicBool,
    in_flight: AtomicUsize,
}

impl ReplySink {
    fn push(&self, reply: Reply) {
        let _ = self.tx.send(reply);
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("reactor waker failed: {e}");
            }
        }
    }
}

struct Reply {
    conn: ConnId,
    bytes: Vec<u8>,
    close: bool,
}

/// Answers one deferred frame. Dropping it unanswered frees the slot (the
/// client gets no reply for that request, which only happens if a handler
/// panicked).
pub struct ReplyTo {
    conn: ConnId,
    sink: Arc<ReplySink>,
    done: bool,
}

// === impl ReplyTo ===

impl ReplyTo {
    /// The connection this answers.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Sends encoded frames as the reply.
    pub fn send(self, bytes: Vec<u8>) {
        self.finish(bytes, false)
    }

    /// Sends encoded frames, then closes the connection.
    pub fn send_and_close(self, bytes: Vec<u8>) {
        self.finish(bytes, true)
    }

    fn finish(mut self, bytes: Vec<u8>, close: bool) {
        self.done = true;
        self.sink.push(Reply {
            conn: self.conn,
            bytes,
            close,
        });
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if !self.done {
            self.sink.push(Reply {
                conn: self.conn,
                bytes: Vec::new(),
                close: false,
            });
        }
    }
}

/// Counters a reactor keeps, readable from any thread (heartbeats, metrics).
#[derive(Debug, Default)]
pub struct ReactorStats {
    /// Connections open now.
    pub conns: AtomicUsize,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused at `max_conns`.
    pub refused: AtomicU64,
    /// Frames decoded.
    pub frames: AtomicU64,
    /// Connections closed for idling.
    pub closed_idle: AtomicU64,
    /// Connections closed because their peer did not read (output cap).
    pub closed_slow: AtomicU64,
    /// Connections closed after a frame that broke framing.
    pub closed_bad_frame: AtomicU64,
}

/// Asks a running reactor to shut down; clonable to any thread.
#[derive(Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    sink: Arc<ReplySink>,
}

// === impl Shutdown ===

impl Shutdown {
    /// Starts the shutdown: stop accepting, deliver in-flight replies, return.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
        let _ = self.sink.waker.wake();
    }

    /// Whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Requests dispatched and not yet answered, across all connections.
    pub fn in_flight(&self) -> usize {
        self.sink.in_flight.load(Ordering::Relaxed)
    }
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    decoder: FrameDecoder,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_pos: usize,
    inflight: usize,
    /// A frame the service could not take yet.
    parked: Option<Vec<u8>>,
    /// The socket may hold unread bytes (edge-triggered readiness).
    want_read: bool,
    /// The last event reported the peer's FIN: read until EOF.
    read_closed: bool,
    /// The peer has not sent EOF.
    read_open: bool,
    /// Close once the output is written.
    closing: bool,
    last_active: Instant,
}

enum Status {
    Open,
    /// Open, with more to read when its turn comes again.
    More,
    Close(&'static str),
}

/// A reactor bound to its listen addresses, ready to [`run`](Reactor::run).
pub struct Reactor<S: Service> {
    cfg: ReactorConfig,
    poll: Poll,
    listeners: Vec<Option<TcpListener>>,
    local: Vec<SocketAddr>,
    conns: HashMap<ConnId, Conn>,
    next_id: usize,
    /// Every read lands here first and only the bytes received are copied
    /// to the connection, so an idle connection holds no read buffer.
    scratch: Vec<u8>,
    service: S,
    sink: Arc<ReplySink>,
    replies: Receiver<Reply>,
    shutdown: Arc<AtomicBool>,
    stats: Arc<ReactorStats>,
}

// === impl Reactor ===

impl<S: Service> Reactor<S> {
    /// Binds every address (port 0 picks a free one) and prepares the loop.
    pub fn bind(cfg: ReactorConfig, addrs: &[SocketAddr], service: S) -> io::Result<Reactor<S>> {
        let poll = Poll::new()?;
        let mut listeners = Vec::with_capacity(addrs.len());
        let mut local = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.iter().enumerate() {
            let mut l = listen(*addr, cfg.backlog)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)?;
            local.push(l.local_addr()?);
            listeners.push(Some(l));
        }
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (tx, replies) = unbounded();
        let sink = Arc::new(ReplySink {
            tx,
            waker,
            woken: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        });
        let mut cfg = cfg;
        cfg.read_chunk = cfg.read_chunk.max(16 << 10);
        Ok(Reactor {
            scratch: vec![0; cfg.read_chunk],
            cfg,
            poll,
            next_id: addrs.len(),
            listeners,
            local,
            conns: HashMap::new(),
            service,
            sink,
            replies,
            shutdown: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(ReactorStats::default()),
        })
    }

    /// The bound addresses, in the order given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// A handle that shuts this reactor down.
    pub fn shutdown_handle(&self) -> Shutdown {
        Shutdown {
            flag: self.shutdown.clone(),
            sink: self.sink.clone(),
        }
    }

    /// The reactor's counters.
    pub fn stats(&self) -> Arc<ReactorStats> {
        self.stats.clone()
    }

    /// Runs the loop on a new thread named `reactor`.
    pub fn spawn(self) -> io::Result<JoinHandle<io::Result<()>>> {
        std::thread::Builder::new()
            .name("reactor".into())
            .spawn(move || self.run())
    }

    /// Runs the loop on this thread until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let tick =
            (self.cfg.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut next_sweep = Instant::now() + tick;
        let mut again: Vec<ConnId> = Vec::new();
        let mut parked: Vec<ConnId> = Vec::new();
        // The connections to drive this wake-up; kept across wake-ups so
        // the loop does not allocate each time round.
        let mut turn: Vec<ConnId> = Vec::new();
        let mut grace_until: Option<Instant> = None;
        for a in &self.local {
            log::info!("listening on {a}");
        }
        loop {
            let timeout = if again.is_empty() {
                next_sweep.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            turn.clear();
            turn.append(&mut again);
            for ev in events.iter() {
                let token = ev.token();
                if token == WAKER {
                    continue;
                }
                if token.0 < self.listeners.len() {
                    self.accept(token.0, now);
                    continue;
                }
                let id = ConnId(token.0);
                if let Some(c) = self.conns.get_mut(&id) {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        c.want_read = true;
                    }
                    c.read_closed |= ev.is_read_closed() || ev.is_error();
                    turn.push(id);
                }
            }
            self.sink.woken.store(false, Ordering::Release);
            while let Ok(r) = self.replies.try_recv() {
                self.sink.in_flight.fetch_sub(1, Ordering::Relaxed);
                if let Some(c) = self.conns.get_mut(&r.conn) {
                    c.inflight -= 1;
                    c.out.extend_from_slice(&r.bytes);
                    c.closing |= r.close;
                    turn.push(r.conn);
                }
            }
            // Replies freed capacity: offer parked frames again.
            turn.append(&mut parked);
            let stopping = self.shutdown.load(Ordering::Acquire);
            turn.sort_unstable();
            turn.dedup();
            for &id in &turn {
                match self.drive(id, now, stopping) {
                    Status::Open => {}
                    Status::More => again.push(id),
                    Status::Close(why) => self.close(id, why),
                }
                if self.conns.get(&id).is_some_and(|c| c.parked.is_some()) {
                    parked.push(id);
                }
            }
            if now >= next_sweep {
                self.sweep(now, stopping);
                next_sweep = now + tick;
            }
            if stopping {
                let until = *grace_until.get_or_insert_with(|| {
                    self.stop_accepting();
                    now + self.cfg.shutdown_grace
                });
                self.close_drained();
                if self.conns.is_empty() {
                    log::info!("reactor stopped: every in-flight reply delivered");
                    return Ok(());
                }
                if now >= until {
                    log::warn!(
                        "reactor stopped after {:?} with {} connections still busy",
                        self.cfg.shutdown_grace,
                        self.conns.len()
                    );
                    return Ok(());
                }
                next_sweep = next_sweep.min(now + Duration::from_millis(20));
            }
        }
    }

    fn accept(&mut self, index: usize, now: Instant) {
        loop {
            let Some(listener) = self.listeners[index].as_ref() else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and wait for the next event
                    // rather than spin.
                    log::warn!("accept on {} failed: {e}", self.local[index]);
                    return;
                }
            };
            if self.conns.len() >= self.cfg.max_conns {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                log::debug!("refusing {peer}: at max_conns {}", self.cfg.max_conns);
                let mut out = Vec::new();
                let err = Error::Overloaded(format!(
                    "server is at its limit of {} connections; retry later or on another node",
                    self.cfg.max_conns
                ));
                encode_error(None, UNKNOWN_ID, &err, &mut out);
                let _ = stream.write(&out);
                continue;
            }
            if let Err(e) = stream.set_nodelay(true) {
                log::debug!("nodelay on {peer}: {e}");
            }
            let id = ConnId(self.next_id);
            self.next_id += 1;
            let registered = self.poll.registry().register(
                &mut stream,
                Token(id.0),
                Interest::READABLE | Interest::WRITABLE,
            );
            if let Err(e) = registered {
                log::warn!("cannot register {peer}: {e}");
                continue;
            }
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            self.stats.conns.fetch_add(1, Ordering::Relaxed);
            log::debug!("{id:?} accepted from {peer}");
            self.conns.insert(
                id,
                Conn {
                    stream,
                    peer,
                    listener: index,
                    decoder: FrameDecoder::new(self.cfg.max_frame),
                    out: Vec::new(),
                    out_pos: 0,
                    inflight: 0,
                    parked: None,
                    want_read: true,
                    read_closed: false,
                    read_open: true,
                    closing: false,
                    last_active: now,
                },
            );
        }
    }

    /// Reads, dispatches and writes for one connection as far as it can go.
    fn drive(&mut self, id: ConnId, now: Instant, stopping: bool) -> Status {
        let Some(c) = self.conns.get_mut(&id) else {
            return Status::Open;
        };
        let service = &mut self.service;
        let sink = &self.sink;
        let stats = &self.stats;
        let scratch = &mut self.scratch;
        let mut reads = 0;
        let mut more = false;

        if !stopping {
            'conn: loop {
                if let Some(frame) = c.parked.take() {
                    if dispatch(c, id, service, sink, &frame) == Dispatch::Busy {
                        c.parked = Some(frame);
                        break;
                    }
                }
                while !c.closing {
                    match c.decoder.next_frame() {
                        Ok(Some(payload)) => {
                            stats.frames.fetch_add(1, Ordering::Relaxed);
                            let mut cx = Context {
                                conn: id,
                                peer: c.peer,
                                listener: c.listener,
                                out: &mut c.out,
                                close: &mut c.closing,
                                inflight: &mut c.inflight,
                                sink,
                            };
                            if service.on_frame(payload, &mut cx) == Dispatch::Busy {
                                c.parked = Some(payload.to_vec());
                                break 'conn;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            log::debug!("{id:?} from {}: {e}", c.peer);
                            stats.closed_bad_frame.fetch_add(1, Ordering::Relaxed);
                            encode_error(None, UNKNOWN_ID, &e, &mut c.out);
                            c.closing = true;
                        }
                    }
                }
                if c.closing || !c.want_read || !c.read_open {
                    break;
                }
                if reads == READS_PER_TURN {
                    more = true;
                    break;
                }
                reads += 1;
                match c.stream.read(scratch) {
                    Ok(0) => {
                        c.read_open = false;
                        if c.decoder.buffered() > 0 {
                            let e = Error::BadFrame(format!(
                                "connection closed in the middle of a frame ({} bytes of it received)",
                                c.decoder.buffered()
                            ));
                            encode_error(None, UNKNOWN_ID, &e, &mut c.out);
                            c.closing = true;
                        }
                    }
                    Ok(n) => {
                        c.decoder.push(&scratch[..n]);
                        c.last_active = now;
                        // A short read drained the socket; with edge-triggered
                        // readiness, anything arriving later (data or FIN)
                        // raises a new event, so the read that would only say
                        // WouldBlock is a syscall saved per request. A FIN
                        // already reported needs reading to EOF now.
                        if n < scratch.len() && !c.read_closed {
                            c.want_read = false;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => c.want_read = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Status::Close("read error"),
                }
            }
        }

        if let Err(why) = flush(c, now) {
            return Status::Close(why);
        }
        if c.out.len() - c.out_pos > self.cfg.out_cap {
            self.stats.closed_slow.fetch_add(1, Ordering::Relaxed);
            return Status::Close("peer is not reading its replies (output cap reached)");
        }
        let flushed = c.out_pos == c.out.len();
        if c.closing && flushed {
            return Status::Close("closed after an error");
        }
        if !c.read_open && flushed && c.inflight == 0 && c.parked.is_none() {
            return Status::Close("peer closed");
        }
        if more {
            Status::More
        } else {
            Status::Open
        }
    }

    fn sweep(&mut self, now: Instant, stopping: bool) {
        let idle = self.cfg.idle_timeout;
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.inflight == 0 && now.duration_since(c.last_active) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
            self.close(id, "idle timeout");
        }
        if stopping {
            return;
        }
        // Parked connections are retried on every reply; this catches a
        // service that reported Busy for a reason no reply will clear.
        let parked: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.parked.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in parked {
            if let Status::Close(why) = self.drive(id, now, false) {
                self.close(id, why);
            }
        }
    }

    fn stop_accepting(&mut self) {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
                log::info!("stopped accepting on {}", self.local[i]);
            }
        }
    }

    fn close_drained(&mut self) {
        let done: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.inflight == 0 && c.out_pos == c.out.len())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.close(id, "shutting down");
        }
    }

    fn close(&mut self, id: ConnId, why: &str) {
        if let Some(mut c) = self.conns.remove(&id) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.stats.conns.fetch_sub(1, Ordering::Relaxed);
            log::debug!("{id:?} from {} closed: {why}", c.peer);
            self.service.on_close(id);
        }
    }
}

fn dispatch<S: Service>(
    c: &mut Conn,
    id: ConnId,
    service: &mut S,
    sink: &Arc<ReplySink>,
    frame: &[u8],
) -> Dispatch {
    let mut cx = Context {
        conn: id,
        peer: c.peer,
        listener: c.listener,
        out: &mut c.out,
        close: &mut c.closing,
        inflight: &mut c.inflight,
        sink,
    };
    service.on_frame(frame, &mut cx)
}

/// Writes as much of the output as the socket takes.
fn flush(c: &mut Conn, now: Instant) -> Result<(), &'static str> {
    while c.out_pos < c.out.len() {
        match c.stream.write(&c.out[c.out_pos..]) {
            Ok(0) => return Err("peer closed while writing"),
            Ok(n) => {
                c.out_pos += n;
                c.last_active = now;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err("write error"),
        }
    }
    if c.out_pos == c.out.len() {
        c.out.clear();
        c.out_pos = 0;
        if c.out.capacity() > 1 << 20 {
            c.out.shrink_to(64 << 10);
        }
    } else if c.out_pos > 64 << 10 {
        c.out.drain(..c.out_pos);
        c.out_pos = 0;
    }
    Ok(())
}

/// A non-blocking listener with SO_REUSEADDR and the given backlog.
fn listen(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}
