//! The connection core every dsf server runs: one mio thread that owns the
//! listeners, the accepted and outbound sockets, the timers and the budgets,
//! and hands bytes to a protocol adapter.
//!
//! - `framed`: the dsf adapter. Frames go to a [`Service`], which answers
//!   inline ([`Context::out`]) or later from any thread ([`ReplyTo`], with
//!   events first for a stream). [`Dispatch::Busy`] parks the frame and
//!   stops reading that connection: backpressure, not an unbounded queue.
//!   Parked connections are served in the order they parked.
//! - `pipe`: a byte pipe between two sockets, with watermarks and
//!   half-close. A connection accepted with [`Accept::Sniff`] shows its first
//!   bytes to the service, which may turn it into a pipe (proxy mode) or a
//!   framed connection.
//! - `outbox`: [`Outbox`] (send on a connection from any thread, within
//!   its output budget), [`Handle`] (open an outbound framed link, shut
//!   down).
//!
//! Limits, each with a default, a counter in [`ReactorStats`] and a log
//! line when hit:
//! - `max_conns`: a connection beyond it gets [`Service::on_full`]'s bytes
//!   (dsf: `overloaded`) and is closed. At start the file limit
//!   (`RLIMIT_NOFILE`) is raised to what `max_conns` needs.
//! - `memory_budget`: buffered input and unsent output of all connections
//!   together, counted by the capacity of their buffers. In its last eighth
//!   only connections holding nothing (no partial frame, no unsent reply)
//!   are read, [`RESERVE_READ`] bytes at a time, so a small request is
//!   still served while peers hold partial frames; at it nobody is read.
//!   Connections that stay paused for [`BUDGET_GRACE`] are closed, the
//!   largest first, until it has room again.
//! - `frame_timeout`: a frame must be whole within this time of its first
//!   byte; trickled bytes do not extend it (the idle timeout is separate).
//! - `max_refused`: a run of refused frames closes the connection.
//! - `out_cap`: one connection's unsent output; beyond it, closed.
//! - `idle_timeout`: nothing sent or received and nothing in flight.
//! - fairness: at most [`READS_PER_TURN`] reads per connection and
//!   [`ACCEPTS_PER_TURN`] accepts per listener each time round.
//!
//! Shutdown ([`Handle::trigger`]): stop accepting, stop reading new
//! requests, deliver the replies of requests already dispatched, then return
//! once all are flushed or `shutdown_grace` has passed.

/// The [`framed::Parts`] of connection `$c` (id `$id`): its fields a
/// service's [`Context`] borrows, taken one by one so that the rest of the
/// connection (its protocol state) stays free to borrow.
macro_rules! parts {
    ($id:expr, $c:expr) => {
        $crate::reactor::framed::Parts {
            conn: $id,
            peer: $c.peer,
            origin: $c.origin,
            out: &mut $c.out,
            closing: &mut $c.closing,
            inflight: &mut $c.inflight,
            idle: &mut $c.idle,
            preamble: &mut $c.preamble,
            local: $c.local,
            shared: &$c.shared,
        }
    };
}

mod framed;
mod outbox;
mod pipe;
mod tls;

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

pub use framed::{Accept, Context, Dispatch, Origin, Service, Sniffed};
pub use outbox::{Handle, Outbox, ReplyTo, SendError, Shutdown};

use crate::error::Error;
use crate::wire::frame::DEFAULT_MAX_FRAME;
use framed::{Flow, Framed, Rules};
use outbox::{ConnShared, Group, Msg, Sink};
use tls::Tls;

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
/// Default budget for buffered input and unsent output across all
/// connections: 64 MiB, what a small server can spare.
pub const DEFAULT_MEMORY_BUDGET: usize = 64 << 20;
/// Default time to finish a frame once its first byte came: 10 s.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Default run of refused frames that closes a connection: 16.
pub const DEFAULT_MAX_REFUSED: u32 = 16;
/// Default time an outbound connect (a link, a pipe's backend) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default unsent bytes on one side of a pipe that stop reading the other
/// side (reading starts again at a quarter of it).
pub const DEFAULT_PIPE_HIGH_WATER: usize = 256 << 10;

/// Reads per connection per turn before others get theirs.
pub const READS_PER_TURN: usize = 4;
/// Accepts per listener per turn.
pub const ACCEPTS_PER_TURN: usize = 64;
/// What a connection holding nothing may read at a time from the last
/// eighth of the budget.
pub const RESERVE_READ: usize = 16 << 10;
/// How long a connection may stay paused by a full budget before it is
/// closed.
pub const BUDGET_GRACE: Duration = Duration::from_secs(1);
/// Room above `out_cap` for replies, which always go, before a connection
/// that does not read is closed.
const OUT_HEADROOM: usize = 64 << 10;
/// Buffers above this are given back once empty.
const KEEP_BUFFER: usize = 64 << 10;
const WAKER: Token = Token(usize::MAX);

/// Limits and socket settings of a reactor.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// Largest frame payload accepted.
    pub max_frame: usize,
    /// Connections held at once; more are refused.
    pub max_conns: usize,
    /// A connection with no traffic and nothing in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Unsent output above this closes the connection (the peer is not reading).
    pub out_cap: usize,
    /// Buffered input plus unsent output across all connections.
    pub memory_budget: usize,
    /// A frame must be whole within this time of its first byte.
    pub frame_timeout: Duration,
    /// Refused frames in a row that close a connection.
    pub max_refused: u32,
    /// Time allowed for an outbound connect.
    pub connect_timeout: Duration,
    /// Unsent bytes on one side of a pipe that pause reading the other.
    pub pipe_high_water: usize,
    /// Room offered to each `read`; raised to 16 KiB if set lower.
    pub read_chunk: usize,
    /// Listen backlog.
    pub backlog: i32,
    /// How long shutdown waits for in-flight replies to be delivered.
    pub shutdown_grace: Duration,
    /// Bind the listeners with `SO_REUSEPORT`, so that
    /// [`Reactor::sibling`]s can accept on the same ports. Each address is
    /// first checked to be free, so a second server started on a port in
    /// use still fails to bind rather than sharing it.
    pub reuse_port: bool,
    /// TLS by listener, in the order of the addresses bound: `Some` makes
    /// that listener's connections TLS ([`crate::tls`]); a listener past
    /// the end of the list is plain.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            max_frame: DEFAULT_MAX_FRAME,
            max_conns: DEFAULT_MAX_CONNS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            out_cap: DEFAULT_OUT_CAP,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            max_refused: DEFAULT_MAX_REFUSED,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pipe_high_water: DEFAULT_PIPE_HIGH_WATER,
            read_chunk: DEFAULT_READ_CHUNK,
            backlog: DEFAULT_BACKLOG,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            reuse_port: false,
            tls: Vec::new(),
        }
    }
}

/// The connection limits every server takes from its flags, `None` for the
/// default.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub max_frame: Option<usize>,
    pub max_conns: Option<usize>,
    pub idle_timeout: Option<Duration>,
    pub memory_budget: Option<usize>,
    pub frame_timeout: Option<Duration>,
    pub max_refused: Option<u32>,
}

/// Most reactors one port takes (`--reactors`).
pub const MAX_REACTORS: usize = 64;

impl ReactorConfig {
    /// The settings for each of `n` reactors on one port: the listeners
    /// shared when there is more than one, and the memory budget split, so
    /// that the group holds no more than one reactor would.
    pub fn for_group(&self, n: usize) -> ReactorConfig {
        let n = n.max(1);
        ReactorConfig {
            reuse_port: n > 1,
            memory_budget: self.memory_budget / n,
            ..self.clone()
        }
    }

    /// The defaults, with the limits a server's flags override.
    pub fn with_limits(l: &Limits) -> ReactorConfig {
        let d = ReactorConfig::default();
        ReactorConfig {
            max_frame: l.max_frame.unwrap_or(d.max_frame),
            max_conns: l.max_conns.unwrap_or(d.max_conns),
            idle_timeout: l.idle_timeout.unwrap_or(d.idle_timeout),
            memory_budget: l.memory_budget.unwrap_or(d.memory_budget),
            frame_timeout: l.frame_timeout.unwrap_or(d.frame_timeout),
            max_refused: l.max_refused.unwrap_or(d.max_refused),
            ..d
        }
    }
}

/// TLS for an outbound link: the certificates to trust, and the name the
/// server's certificate must carry.
pub type LinkTls = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// Identifies a connection for the life of the reactor; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(usize);

/// Counters a reactor keeps, readable from any thread (heartbeats, metrics).
#[derive(Debug, Default)]
pub struct ReactorStats {
    /// Connections open now (accepted and outbound).
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
    /// Connections closed because a frame was not finished in time.
    pub closed_frame_timeout: AtomicU64,
    /// Connections closed after a run of refused frames.
    pub closed_refused: AtomicU64,
    /// Connections closed because they stayed paused by a full budget.
    pub closed_budget: AtomicU64,
    /// Times a connection was paused by the memory budget.
    pub budget_pauses: AtomicU64,
    /// Bytes held now in buffers, against the memory budget.
    pub buffered: AtomicUsize,
    /// Outbound connects started (links and pipe backends).
    pub connects: AtomicU64,
    /// Outbound connects that failed or timed out.
    pub connect_failed: AtomicU64,
    /// Byte pipes opened.
    pub pipes: AtomicU64,
    /// Bytes read on one side of a pipe (each byte counted once, as it is
    /// read; it is then written to the other side).
    pub pipe_bytes: AtomicU64,
}

/// The protocol a connection speaks now.
enum Proto {
    Framed(Framed),
    Sniff(pipe::Sniff),
    Pipe(pipe::PipeEnd),
}

struct Conn {
    stream: TcpStream,
    /// The TLS session, on a TLS listener's connection: `read_into` and
    /// `flush` then move plaintext through it.
    tls: Option<Box<Tls>>,
    peer: SocketAddr,
    origin: Origin,
    shared: Arc<ConnShared>,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_pos: usize,
    /// Deferred requests not yet answered.
    inflight: usize,
    /// The socket may hold unread bytes (edge-triggered readiness).
    want_read: bool,
    /// The last event reported the peer's FIN: read until EOF.
    read_closed: bool,
    /// The peer has not sent EOF.
    read_open: bool,
    /// We have not shut down our writing side.
    write_open: bool,
    /// Close once the output is written.
    closing: bool,
    /// An outbound connect in progress, and when it gives up.
    connecting: Option<Instant>,
    last_active: Instant,
    /// The last write that made progress (or found nothing to write): a
    /// connection whose output has not moved for [`BUDGET_GRACE`] is
    /// stalled, and can be closed when the budget is full.
    last_write: Instant,
    /// The socket reported an error.
    failed: bool,
    /// Backends tried for this client since its last working pipe.
    pipe_tries: usize,
    /// This connection's idle timeout, when the service set one
    /// ([`Context::set_idle_timeout`]); otherwise the reactor's.
    idle: Option<Duration>,
    /// Sent to a pipe's backend before the client's bytes.
    preamble: Vec<u8>,
    /// The local address of an accepted connection.
    local: Option<SocketAddr>,
    /// Not read since then, because the memory budget is spent.
    paused_since: Option<Instant>,
    /// Listed in [`Core::paused`] (listed once, however often it is paused).
    listed_paused: bool,
    /// The turn it was last queued for (no connection is driven twice a turn).
    mark: u64,
    /// Bytes last counted against the budget.
    held: usize,
    proto: Proto,
}

// === impl Conn ===

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr, origin: Origin, shared: Arc<ConnShared>) -> Conn {
        Conn {
            stream,
            tls: None,
            peer,
            origin,
            shared,
            out: Vec::new(),
            out_pos: 0,
            inflight: 0,
            want_read: true,
            read_closed: false,
            read_open: true,
            write_open: true,
            closing: false,
            connecting: None,
            last_active: Instant::now(),
            last_write: Instant::now(),
            failed: false,
            pipe_tries: 0,
            idle: None,
            preamble: Vec::new(),
            local: None,
            paused_since: None,
            listed_paused: false,
            mark: 0,
            held: 0,
            proto: Proto::Sniff(pipe::Sniff::default()),
        }
    }

    /// Bytes this connection's buffers hold (capacity: what memory it costs).
    fn measure(&self) -> usize {
        let input = match &self.proto {
            Proto::Framed(f) => {
                f.decoder.capacity() + f.parked.as_ref().map_or(0, |p| p.capacity())
            }
            Proto::Sniff(s) => s.buf.capacity(),
            Proto::Pipe(_) => 0,
        };
        input + self.out.capacity()
    }

    fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn flushed(&self) -> bool {
        self.out_pos == self.out.len() && self.tls.as_ref().is_none_or(|t| !t.session.wants_write())
    }

    /// Writes as much of the output as the socket takes.
    fn flush(&mut self, now: Instant) -> Result<(), &'static str> {
        if self.connecting.is_some() {
            self.shared.unsent.store(self.unsent(), Ordering::Release);
            return Ok(());
        }
        if let Some(tls) = self.tls.as_mut() {
            let (out, pos) = (&self.out, &mut self.out_pos);
            let progressed = tls.flush(&mut self.stream, out, pos)?;
            if progressed {
                self.last_active = now;
                self.last_write = now;
            }
        }
        while self.tls.is_none() && self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err("peer closed while writing"),
                Ok(n) => {
                    self.out_pos += n;
                    self.last_active = now;
                    self.last_write = now;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err("write error"),
            }
        }
        if self.out_pos == self.out.len() {
            // Nothing waits: as good as written, for the stall check.
            self.last_write = now;
            self.out_pos = 0;
            if self.out.capacity() > KEEP_BUFFER {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
        } else if self.out_pos > KEEP_BUFFER && self.out_pos > self.out.len() / 2 {
            // Moving the rest down costs at most as much as was written.
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        self.shared.unsent.store(self.unsent(), Ordering::Release);
        Ok(())
    }

    /// Reads once into `buf` (the budget already allowed its length) and
    /// keeps the readiness bookkeeping.
    fn read_into(&mut self, buf: &mut [u8], now: Instant) -> Got {
        if let Some(tls) = self.tls.as_mut() {
            let got = tls.read(&mut self.stream, buf, &mut self.want_read, self.peer);
            match got {
                Got::Eof => {
                    self.read_open = false;
                    self.shared.peer_eof.store(true, Ordering::Release);
                }
                Got::Bytes(_) => self.last_active = now,
                _ => {}
            }
            return got;
        }
        match self.stream.read(buf) {
            Ok(0) => {
                self.read_open = false;
                self.shared.peer_eof.store(true, Ordering::Release);
                Got::Eof
            }
            Ok(n) => {
                self.last_active = now;
                // A short read drained the socket; with edge-triggered
                // readiness, anything arriving later (data or FIN) raises a
                // new event, so the read that would only say WouldBlock is a
                // syscall saved per request. A FIN already reported needs
                // reading to EOF now.
                if n < buf.len() && !self.read_closed {
                    self.want_read = false;
                }
                Got::Bytes(n)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.want_read = false;
                Got::Nothing
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Got::Nothing,
            Err(_) => Got::Failed,
        }
    }

    /// Whether an outbound connect finished: `Ok(true)` connected,
    /// `Ok(false)` still going.
    fn check_connected(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connecting = None;
                let _ = self.stream.set_nodelay(true);
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// What one read brought.
enum Got {
    Bytes(usize),
    Eof,
    /// Nothing now (would block, or interrupted).
    Nothing,
    Failed,
}

/// How a connection came out of its turn.
enum Status {
    Open,
    /// Open, with more to do when its turn comes again.
    More,
    Close(&'static str),
}

/// The budget for buffered bytes across all connections.
struct Budget {
    limit: usize,
    /// The last part, kept for connections that hold nothing.
    reserve: usize,
    held: usize,
}

// === impl Budget ===

impl Budget {
    /// Bytes a connection with `pending` bytes of unfinished input and
    /// unsent output may read now (0: paused).
    fn room(&self, pending: usize) -> usize {
        let soft = self.limit - self.reserve;
        if self.held < soft {
            soft - self.held
        } else if pending == 0 {
            RESERVE_READ.min(self.limit.saturating_sub(self.held))
        } else {
            0
        }
    }

    /// Whether only connections holding nothing are read.
    fn pressed(&self) -> bool {
        self.held >= self.limit - self.reserve
    }

    /// Counts the change in one connection's buffers.
    fn recount(&mut self, c: &mut Conn) {
        let now = c.measure();
        self.held = self.held + now - c.held;
        c.held = now;
    }
}

/// A warning logged at most once per [`Warn::EVERY`], with the count of
/// those it held back, so a flood of hostile peers cannot flood the log.
#[derive(Default)]
struct Warn {
    last: Option<Instant>,
    held_back: u64,
}

impl Warn {
    const EVERY: Duration = Duration::from_secs(10);

    fn hit(&mut self, now: Instant, msg: impl FnOnce() -> String) {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            self.held_back += 1;
            return;
        }
        let more = std::mem::take(&mut self.held_back);
        if more > 0 {
            log::warn!("{} ({more} more like it since the last such line)", msg());
        } else {
            log::warn!("{}", msg());
        }
        self.last = Some(now);
    }
}

#[derive(Default)]
struct Warnings {
    full: Warn,
    accept: Warn,
    budget: Warn,
    budget_close: Warn,
    frame_timeout: Warn,
    refused: Warn,
    slow: Warn,
}

/// Everything of the reactor but the service, so that the two can be
/// borrowed apart.
struct Core {
    cfg: ReactorConfig,
    poll: Poll,
    listeners: Vec<Option<TcpListener>>,
    local: Vec<SocketAddr>,
    conns: HashMap<ConnId, Conn>,
    /// Every read lands here first and only the bytes received are copied
    /// to the connection, so an idle connection holds no read buffer.
    scratch: Vec<u8>,
    sink: Arc<Sink>,
    inbox: Receiver<Msg>,
    stats: Arc<ReactorStats>,
    budget: Budget,
    /// Connections waiting on a busy service, in the order they parked.
    parked: VecDeque<ConnId>,
    /// Connections not read because the budget is spent.
    paused: Vec<ConnId>,
    /// Listeners that had more to accept when their turn ended.
    accept_more: Vec<usize>,
    /// Listeners whose last accept failed; the sweep tries them again.
    accept_retry: Vec<usize>,
    /// This reactor's share of `stats.buffered` as last added.
    reported: usize,
    turn: u64,
    warn: Warnings,
}

/// A reactor bound to its listen addresses, ready to [`run`](Reactor::run).
pub struct Reactor<S: Service> {
    core: Core,
    service: S,
}

// === impl Reactor ===

impl<S: Service> Reactor<S> {
    /// Binds every address (port 0 picks a free one) and prepares the loop.
    pub fn bind(cfg: ReactorConfig, addrs: &[SocketAddr], service: S) -> io::Result<Reactor<S>> {
        let mut listeners = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let l = if cfg.reuse_port {
                listen_shared(*addr, cfg.backlog, true)
            } else {
                listen(*addr, cfg.backlog)
            };
            listeners.push(Some(l.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?));
        }
        raise_file_limit(cfg.max_conns);
        let group = Group::new(addrs.len());
        let stats = Arc::new(ReactorStats::default());
        let core = Core::new(cfg, listeners, group, stats)?;
        Ok(Reactor { core, service })
    }

    /// Another reactor, on its own thread, accepting on the same ports as
    /// this one for the listeners in `listeners` (indexes into
    /// [`Reactor::local_addrs`]; the kernel spreads new connections over
    /// the group with `SO_REUSEPORT`). It shares this reactor's counters,
    /// its connection ids and so `max_conns`, which counts the whole
    /// group's connections, and its shutdown: [`Handle::trigger`] on any of
    /// them stops all. Connections are not moved between reactors.
    ///
    /// This reactor must have been bound with [`ReactorConfig::reuse_port`].
    pub fn sibling<T: Service>(&self, listeners: &[usize], service: T) -> io::Result<Reactor<T>> {
        if !self.core.cfg.reuse_port {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "a sibling reactor needs the first one bound with ReactorConfig::reuse_port",
            ));
        }
        let mut bound = Vec::with_capacity(self.core.local.len());
        for (i, addr) in self.core.local.iter().enumerate() {
            bound.push(match listeners.contains(&i) {
                true => Some(
                    listen_shared(*addr, self.core.cfg.backlog, false).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot listen again on {addr}: {e}"))
                    })?,
                ),
                false => None,
            });
        }
        let mut core = Core::new(
            self.core.cfg.clone(),
            bound,
            self.core.sink.group.clone(),
            self.core.stats.clone(),
        )?;
        core.local = self.core.local.clone();
        Ok(Reactor { core, service })
    }

    /// The service, before the loop starts (to hand it the reactor's
    /// stats or handle).
    pub fn service_mut(&mut self) -> &mut S {
        &mut self.service
    }

    /// The bound addresses, in the order given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.core.local
    }

    /// A handle to this reactor, usable from any thread: outbound links,
    /// shutdown.
    pub fn handle(&self) -> Handle {
        Handle {
            sink: self.core.sink.clone(),
            out_cap: self.core.cfg.out_cap,
        }
    }

    /// A handle that shuts this reactor down (the same as [`Reactor::handle`]).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.handle()
    }

    /// The reactor's counters.
    pub fn stats(&self) -> Arc<ReactorStats> {
        self.core.stats.clone()
    }

    /// Runs the loop on a new thread named `reactor`.
    pub fn spawn(self) -> io::Result<JoinHandle<io::Result<()>>> {
        self.spawn_as("reactor")
    }

    /// Runs the loop on a new thread of that name (`reactor-1`, ... for
    /// siblings).
    pub fn spawn_as(self, name: &str) -> io::Result<JoinHandle<io::Result<()>>> {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || self.run())
    }

    /// Runs the loop on this thread until shutdown completes.
    pub fn run(self) -> io::Result<()> {
        let Reactor {
            mut core,
            mut service,
        } = self;
        core.run(&mut service)
    }
}

// === impl Core ===

impl Core {
    /// A loop over `listeners` (by index; `None` for an address this
    /// reactor does not accept on), in `group`, counting into `stats`.
    fn new(
        cfg: ReactorConfig,
        mut listeners: Vec<Option<TcpListener>>,
        group: Arc<Group>,
        stats: Arc<ReactorStats>,
    ) -> io::Result<Core> {
        let poll = Poll::new()?;
        let mut local = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.iter_mut().enumerate() {
            if let Some(l) = l {
                poll.registry().register(l, Token(i), Interest::READABLE)?;
                local.push(l.local_addr()?);
            } else {
                local.push(SocketAddr::from(([0, 0, 0, 0], 0)));
            }
        }
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (tx, inbox) = unbounded();
        let sink = Arc::new(Sink {
            tx,
            waker,
            woken: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            group: group.clone(),
        });
        group
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&sink));
        let mut cfg = cfg;
        cfg.read_chunk = cfg.read_chunk.max(16 << 10);
        cfg.max_refused = cfg.max_refused.max(1);
        cfg.pipe_high_water = cfg.pipe_high_water.max(4 << 10);
        // The budget must hold at least one frame of the largest size, and
        // the reserve at least one small holder.
        let limit = cfg.memory_budget.max(2 * cfg.max_frame);
        let budget = Budget {
            limit,
            reserve: limit / 8,
            held: 0,
        };
        Ok(Core {
            scratch: vec![0; cfg.read_chunk],
            cfg,
            poll,
            listeners,
            local,
            conns: HashMap::new(),
            sink,
            inbox,
            stats,
            budget,
            parked: VecDeque::new(),
            paused: Vec::new(),
            accept_more: Vec::new(),
            accept_retry: Vec::new(),
            reported: 0,
            turn: 0,
            warn: Warnings::default(),
        })
    }

    fn run<S: Service>(&mut self, service: &mut S) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let tick = (self.cfg.idle_timeout / 4)
            .min(self.cfg.frame_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut next_sweep = Instant::now() + tick;
        let mut again: Vec<ConnId> = Vec::new();
        // Kept across turns so the loop does not allocate each time round.
        let mut turn: Vec<ConnId> = Vec::new();
        let mut grace_until: Option<Instant> = None;
        for (l, a) in self.listeners.iter().zip(&self.local) {
            if l.is_some() {
                log::info!("listening on {a}");
            }
        }
        loop {
            let timeout = if again.is_empty() && self.accept_more.is_empty() {
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
            let stopping = self.sink.shutdown.load(Ordering::Acquire);
            self.turn += 1;
            turn.clear();
            for id in again.drain(..) {
                self.queue(id, &mut turn);
            }
            let mut accept: Vec<usize> = std::mem::take(&mut self.accept_more);
            for ev in events.iter() {
                let token = ev.token();
                if token == WAKER {
                    continue;
                }
                if token.0 < self.listeners.len() {
                    accept.push(token.0);
                    continue;
                }
                let id = ConnId(token.0);
                if let Some(c) = self.conns.get_mut(&id) {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        c.want_read = true;
                    }
                    c.read_closed |= ev.is_read_closed() || ev.is_error();
                    c.failed |= ev.is_error() && c.connecting.is_none();
                    self.queue(id, &mut turn);
                }
            }
            accept.sort_unstable();
            accept.dedup();
            for i in accept {
                if !stopping {
                    self.accept(service, i, now, &mut turn);
                }
            }
            self.sink.woken.store(false, Ordering::Release);
            self.take_inbox(service, now, &mut turn);
            // Capacity freed by replies goes first to the connections that
            // have waited longest for it.
            if !stopping {
                self.serve_parked(service, now, &mut again);
            }
            if !self.paused.is_empty() && self.budget.room(0) > 0 {
                for id in std::mem::take(&mut self.paused) {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.listed_paused = false;
                    }
                    self.queue(id, &mut turn);
                }
            }
            for &id in &turn {
                let status = self.drive(service, id, now, stopping);
                self.settle(service, id, status, &mut again);
            }
            if now >= next_sweep {
                self.sweep(service, now, stopping, &mut again);
                next_sweep = now + tick;
            }
            // The group's counter: each reactor adds what changed in its own.
            let held = self.budget.held;
            if held >= self.reported {
                self.stats
                    .buffered
                    .fetch_add(held - self.reported, Ordering::Relaxed);
            } else {
                self.stats
                    .buffered
                    .fetch_sub(self.reported - held, Ordering::Relaxed);
            }
            self.reported = held;
            if stopping {
                let until = *grace_until.get_or_insert_with(|| {
                    self.stop_accepting();
                    now + self.cfg.shutdown_grace
                });
                self.close_drained(service);
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

    /// Puts a connection in this turn once.
    fn queue(&mut self, id: ConnId, turn: &mut Vec<ConnId>) {
        if let Some(c) = self.conns.get_mut(&id) {
            if c.mark != self.turn {
                c.mark = self.turn;
                turn.push(id);
            }
        }
    }

    fn settle<S: Service>(
        &mut self,
        service: &mut S,
        id: ConnId,
        status: Status,
        again: &mut Vec<ConnId>,
    ) {
        match status {
            Status::Open => {}
            Status::More => again.push(id),
            Status::Close(why) => self.close(service, id, why),
        }
    }

    /// What other threads sent: replies, events, pushes, connects.
    fn take_inbox<S: Service>(&mut self, service: &mut S, now: Instant, turn: &mut Vec<ConnId>) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                Msg::Out {
                    conn,
                    bytes,
                    close,
                    reply,
                } => {
                    if reply {
                        self.sink.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                    let Some(c) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    if reply {
                        c.inflight -= 1;
                    }
                    let n = bytes.len();
                    if c.out.is_empty() {
                        c.out = bytes;
                    } else {
                        c.out.extend_from_slice(&bytes);
                    }
                    // Counted as unsent before it stops counting as queued,
                    // so an outbox never sees it in neither.
                    c.shared.unsent.store(c.unsent(), Ordering::Release);
                    c.shared.queued.fetch_sub(n, Ordering::AcqRel);
                    c.closing |= close;
                    self.budget.recount(c);
                    self.queue(conn, turn);
                }
                Msg::Pipe { conn, addr } => {
                    // Only a connection still waiting on its first bytes'
                    // decision becomes a pipe; one closed or decided since
                    // ignores it.
                    let Some(c) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    let Proto::Sniff(s) = &mut c.proto else {
                        continue;
                    };
                    let bytes = std::mem::take(&mut s.buf);
                    self.open_pipe(service, conn, addr, bytes, now);
                    self.queue(conn, turn);
                }
                Msg::Connect {
                    conn,
                    shared,
                    addr,
                    timeout,
                    tls,
                } => {
                    if let Err(e) = self.connect(conn, shared.clone(), addr, timeout, tls, now) {
                        log::info!("link {conn:?} to {addr} failed: {e}");
                        shared.closed.store(true, Ordering::Release);
                        self.stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                        service.on_close(conn);
                    } else {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.proto = Proto::Framed(Framed::new(self.cfg.max_frame));
                        }
                        self.queue(conn, turn);
                    }
                }
            }
        }
    }

    /// Starts a non-blocking connect under `id`.
    fn connect(
        &mut self,
        id: ConnId,
        shared: Arc<ConnShared>,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<LinkTls>,
        now: Instant,
    ) -> io::Result<()> {
        let tls = tls
            .map(|(config, name)| Tls::client(config, name))
            .transpose()
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e.to_string()))?
            .map(Box::new);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let mut stream = TcpStream::connect(addr)?;
        self.poll.registry().register(
            &mut stream,
            Token(id.0),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut c = Conn::new(stream, addr, Origin::Outbound, shared);
        c.tls = tls;
        c.connecting = Some(
            now.checked_add(timeout)
                .unwrap_or(now + DEFAULT_CONNECT_TIMEOUT),
        );
        c.last_active = now;
        self.conns.insert(id, c);
        self.stats.conns.fetch_add(1, Ordering::Relaxed);
        log::debug!("{id:?} connecting to {addr}");
        Ok(())
    }

    fn accept<S: Service>(
        &mut self,
        service: &mut S,
        index: usize,
        now: Instant,
        turn: &mut Vec<ConnId>,
    ) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.listeners[index].as_ref() else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: wait for the sweep to try again
                    // rather than spin (the backlog raises no new event).
                    let local = self.local[index];
                    self.warn.accept.hit(now, || {
                        format!("accept on {local} failed: {e} (connections wait in the backlog; is the file limit too low for --max-conns?)")
                    });
                    if !self.accept_retry.contains(&index) {
                        self.accept_retry.push(index);
                    }
                    return;
                }
            };
            let tls = self.cfg.tls.get(index).cloned().flatten();
            // The group's count: siblings share max_conns.
            if self.stats.conns.load(Ordering::Relaxed) >= self.cfg.max_conns {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let max = self.cfg.max_conns;
                self.warn.full.hit(now, || {
                    format!("refusing connections from {peer} and others: at max_conns {max} (raise --max-conns if the host can take more)")
                });
                // In plain only: a TLS client could not read it.
                if tls.is_none() {
                    let mut out = Vec::new();
                    service.on_full(index, max, &mut out);
                    let _ = stream.write(&out);
                }
                continue;
            }
            let tls = match tls.map(Tls::server).transpose() {
                Ok(t) => t.map(Box::new),
                Err(e) => {
                    log::warn!("cannot start TLS with {peer}: {e}");
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                log::debug!("nodelay on {peer}: {e}");
            }
            let id = self.sink.group.next_id();
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
            let mut c = Conn::new(
                stream,
                peer,
                Origin::Listener(index),
                ConnShared::new(self.cfg.out_cap),
            );
            c.last_active = now;
            c.tls = tls;
            // The listener's address, unless it is a wildcard (then ask).
            let bound = self.local[index];
            c.local = if bound.ip().is_unspecified() {
                c.stream.local_addr().ok()
            } else {
                Some(bound)
            };
            let mut refused = false;
            let accept = {
                let mut parts = parts!(id, c);
                service.on_accept(&mut parts.context(&mut refused, &self.sink))
            };
            match accept {
                Accept::Framed => c.proto = Proto::Framed(Framed::new(self.cfg.max_frame)),
                Accept::Sniff { max, deadline } => {
                    let until = now
                        .checked_add(deadline)
                        .unwrap_or(now + DEFAULT_FRAME_TIMEOUT);
                    c.proto = Proto::Sniff(pipe::Sniff::new(max, until))
                }
                Accept::Pipe(_) => {}
                Accept::Close => c.closing = true,
            }
            self.conns.insert(id, c);
            if let Accept::Pipe(backend) = accept {
                self.open_pipe(service, id, backend, Vec::new(), now);
            }
            self.queue(id, turn);
        }
        self.accept_more.push(index);
    }

    /// Serves parked connections in the order they parked; the first one
    /// still refused ends the round (capacity is gone for everyone behind).
    fn serve_parked<S: Service>(&mut self, service: &mut S, now: Instant, again: &mut Vec<ConnId>) {
        while let Some(&id) = self.parked.front() {
            let Some(c) = self.conns.get_mut(&id) else {
                self.parked.pop_front();
                continue;
            };
            let Proto::Framed(f) = &mut c.proto else {
                self.parked.pop_front();
                continue;
            };
            let Some(frame) = f.parked.take() else {
                self.parked.pop_front();
                continue;
            };
            let mut rules = Rules {
                max_refused: self.cfg.max_refused,
                warn: &mut self.warn.refused,
                sink: &self.sink,
                stats: &self.stats,
                now,
            };
            let mut parts = parts!(id, c);
            f.parked = Some(frame);
            if let Flow::Parked = framed::dispatch_parked(f, &mut parts, service, &mut rules) {
                break;
            }
            self.parked.pop_front();
            self.budget.recount(c);
            // One frame per turn for a connection that waited: it reads on
            // next time round, behind the others still waiting.
            again.push(id);
        }
    }

    fn drive<S: Service>(
        &mut self,
        service: &mut S,
        id: ConnId,
        now: Instant,
        stopping: bool,
    ) -> Status {
        let Some(c) = self.conns.get_mut(&id) else {
            return Status::Open;
        };
        if c.connecting.is_some() {
            match c.check_connected() {
                Ok(false) => return Status::Open,
                Ok(true) => log::debug!("{id:?} connected to {}", c.peer),
                Err(e) => return self.connect_failed(service, id, e),
            }
        }
        if c.failed {
            // Reset or broken: nothing more can be read or delivered.
            return Status::Close("socket error");
        }
        match c.proto {
            Proto::Framed(_) => self.drive_framed(service, id, now, stopping),
            Proto::Sniff(_) => self.drive_sniff(service, id, now, stopping),
            Proto::Pipe(_) => self.drive_pipe(id, now),
        }
    }

    /// Reads, dispatches and writes for one framed connection as far as it
    /// can go this turn.
    fn drive_framed<S: Service>(
        &mut self,
        service: &mut S,
        id: ConnId,
        now: Instant,
        stopping: bool,
    ) -> Status {
        let Core {
            conns,
            scratch,
            budget,
            sink,
            stats,
            cfg,
            parked,
            paused,
            warn,
            ..
        } = self;
        let Some(c) = conns.get_mut(&id) else {
            return Status::Open;
        };
        let mut rules = Rules {
            max_refused: cfg.max_refused,
            warn: &mut warn.refused,
            sink,
            stats,
            now,
        };
        let mut reads = 0;
        let mut more = false;
        if !stopping {
            loop {
                let Proto::Framed(f) = &mut c.proto else {
                    unreachable!("drive_framed on a framed connection");
                };
                let was_parked = f.parked.is_some();
                let mut parts = parts!(id, c);
                if was_parked {
                    // Waits its turn in `parked`.
                    break;
                }
                let flow = framed::dispatch(f, &mut parts, service, &mut rules);
                if f.decoder.buffered() == 0 {
                    f.decoder.release(KEEP_BUFFER);
                }
                if let Flow::Parked = flow {
                    parked.push_back(id);
                    break;
                }
                if c.closing || !c.want_read || !c.read_open {
                    break;
                }
                if reads == READS_PER_TURN {
                    more = true;
                    break;
                }
                let pending = f.decoder.buffered() + c.out.len() - c.out_pos;
                let room = budget.room(pending).min(scratch.len());
                if room == 0 {
                    pause(c, id, now, paused, stats, &mut warn.budget, budget);
                    break;
                }
                c.paused_since = None;
                reads += 1;
                let got = c.read_into(&mut scratch[..room], now);
                let Proto::Framed(f) = &mut c.proto else {
                    unreachable!("drive_framed on a framed connection");
                };
                match got {
                    Got::Eof if f.decoder.buffered() > 0 => {
                        let e = Error::BadFrame(format!(
                            "connection closed in the middle of a frame ({} bytes of it received)",
                            f.decoder.buffered()
                        ));
                        framed::farewell(&e, &mut c.out);
                        c.closing = true;
                    }
                    Got::Bytes(n) => {
                        f.decoder.push(&scratch[..n]);
                        budget.recount(c);
                    }
                    Got::Eof | Got::Nothing => {}
                    Got::Failed => return Status::Close("read error"),
                }
            }
        }
        let status = finish_turn(c, now, cfg.out_cap, stats, &mut warn.slow, more);
        budget.recount(c);
        status
    }

    fn close_drained<S: Service>(&mut self, service: &mut S) {
        let done: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.inflight == 0 && c.flushed())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.close(service, id, "shutting down");
        }
    }

    /// Timers: idle connections, unfinished frames and first packets,
    /// connects that take too long, and connections a full budget holds.
    fn sweep<S: Service>(
        &mut self,
        service: &mut S,
        now: Instant,
        stopping: bool,
        again: &mut Vec<ConnId>,
    ) {
        let frame_timeout = self.cfg.frame_timeout;
        let mut expired: Vec<(ConnId, Expiry)> = Vec::new();
        for (id, c) in &self.conns {
            if let Some(deadline) = c.connecting {
                if now >= deadline {
                    expired.push((*id, Expiry::Connect));
                }
                continue;
            }
            let last = match &c.proto {
                Proto::Pipe(p) => self
                    .conns
                    .get(&p.other)
                    .map_or(c.last_active, |o| o.last_active.max(c.last_active)),
                _ => c.last_active,
            };
            // A peer that closed its side is idle-closed even with work in
            // flight: nothing it asked for may ever finish (a subscription).
            let idle = c.idle.unwrap_or(self.cfg.idle_timeout);
            if (c.inflight == 0 || !c.read_open) && now.duration_since(last) >= idle {
                expired.push((*id, Expiry::Idle));
                continue;
            }
            match &c.proto {
                Proto::Framed(f)
                    if f.parked.is_none()
                        && !c.closing
                        && f.frame_started
                            .is_some_and(|t| now.duration_since(t) >= frame_timeout) =>
                {
                    expired.push((*id, Expiry::Frame));
                }
                Proto::Sniff(s) if now >= s.deadline => expired.push((*id, Expiry::Sniff)),
                _ => {}
            }
        }
        for (id, why) in expired {
            match why {
                Expiry::Idle => {
                    self.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                    self.close(service, id, "idle timeout");
                }
                Expiry::Connect => {
                    let e = io::Error::new(
                        ErrorKind::TimedOut,
                        format!("no answer within {:?}", self.cfg.connect_timeout),
                    );
                    if let Status::Close(why) = self.connect_failed(service, id, e) {
                        self.close(service, id, why);
                    }
                }
                Expiry::Frame => {
                    self.stats
                        .closed_frame_timeout
                        .fetch_add(1, Ordering::Relaxed);
                    let peer = self.conns.get(&id).map(|c| c.peer);
                    self.warn.frame_timeout.hit(now, || {
                        format!("closed {peer:?}: a frame was not finished within {frame_timeout:?} of its first byte (--frame-timeout)")
                    });
                    let e = Error::BadFrame(format!(
                        "a frame must be complete within {frame_timeout:?} of its first byte (frame_timeout); closing"
                    ));
                    self.close_with(service, id, &e, "frame timeout");
                }
                Expiry::Sniff => {
                    self.stats
                        .closed_frame_timeout
                        .fetch_add(1, Ordering::Relaxed);
                    self.close(service, id, "first packet not complete in time");
                }
            }
        }
        if self.budget.pressed() {
            self.evict(service, now);
        }
        // Ids of connections that closed while listed.
        let conns = &self.conns;
        self.paused.retain(|id| conns.contains_key(id));
        self.parked.retain(|id| conns.contains_key(id));
        // Listeners whose accept failed (out of descriptors): try again.
        if !stopping {
            for i in std::mem::take(&mut self.accept_retry) {
                let mut turn = Vec::new();
                self.accept(service, i, now, &mut turn);
                for id in turn {
                    again.push(id);
                }
            }
        }
        if !stopping {
            // Parked connections are retried on every reply; this catches a
            // service that reported Busy for a reason no reply will clear.
            self.serve_parked(service, now, again);
        }
    }

    /// Closes connections the budget has paused, or whose output has not
    /// moved, for longer than [`BUDGET_GRACE`], the largest first, until it
    /// has room again.
    fn evict<S: Service>(&mut self, service: &mut S, now: Instant) {
        let mut held: Vec<(usize, ConnId)> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let paused = c
                    .paused_since
                    .is_some_and(|t| now.duration_since(t) >= BUDGET_GRACE);
                // Output that has not moved: a peer that stopped reading.
                let stalled = c.unsent() > 0 && now.duration_since(c.last_write) >= BUDGET_GRACE;
                paused || stalled
            })
            .map(|(id, c)| (c.held, *id))
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        for (bytes, id) in held {
            if !self.budget.pressed() {
                break;
            }
            self.stats.closed_budget.fetch_add(1, Ordering::Relaxed);
            let limit = self.budget.limit;
            let peer = self.conns.get(&id).map(|c| c.peer);
            self.warn.budget_close.hit(now, || {
                format!("closed {peer:?}, which held {bytes} bytes: the memory budget of {limit} bytes stayed full (--memory-budget)")
            });
            let e = Error::Overloaded(format!(
                "this server's buffers are full (memory budget {limit} bytes) and this connection held {bytes} bytes of unfinished frames or unread replies; closing"
            ));
            self.close_with(service, id, &e, "memory budget");
        }
    }

    /// Sends a framed connection its error, as far as the socket takes it
    /// now, then closes.
    fn close_with<S: Service>(
        &mut self,
        service: &mut S,
        id: ConnId,
        e: &Error,
        why: &'static str,
    ) {
        if let Some(c) = self.conns.get_mut(&id) {
            if let Proto::Framed(_) = c.proto {
                framed::farewell(e, &mut c.out);
                let _ = c.flush(Instant::now());
            }
        }
        self.close(service, id, why);
    }

    fn stop_accepting(&mut self) {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
                log::info!("stopped accepting on {}", self.local[i]);
            }
        }
    }

    fn close<S: Service>(&mut self, service: &mut S, id: ConnId, why: &str) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        if let Some(tls) = c.tls.as_mut() {
            tls.close_notify(&mut c.stream);
        }
        // No deregister: dropping the stream below closes its descriptor,
        // which takes it out of the epoll set (one syscall fewer per close;
        // tokens are never reused, so a stale event finds no connection).
        self.stats.conns.fetch_sub(1, Ordering::Relaxed);
        self.budget.held -= c.held;
        c.shared.closed.store(true, Ordering::Release);
        log::debug!("{id:?} from {} closed: {why}", c.peer);
        service.on_close(id);
        if let Proto::Pipe(p) = &c.proto {
            self.close(service, p.other, why);
        }
    }
}

enum Expiry {
    Idle,
    Connect,
    Frame,
    Sniff,
}

/// Stops reading a connection until the budget has room.
fn pause(
    c: &mut Conn,
    id: ConnId,
    now: Instant,
    paused: &mut Vec<ConnId>,
    stats: &ReactorStats,
    warn: &mut Warn,
    budget: &Budget,
) {
    if c.paused_since.is_none() {
        c.paused_since = Some(now);
        stats.budget_pauses.fetch_add(1, Ordering::Relaxed);
        let (held, limit) = (budget.held, budget.limit);
        warn.hit(now, || {
            format!("memory budget nearly spent ({held} of {limit} bytes held in buffers): not reading from the connections that hold the most (--memory-budget)")
        });
    }
    list_paused(c, id, paused);
}

/// Lists a paused connection to be read again when the budget has room.
fn list_paused(c: &mut Conn, id: ConnId, paused: &mut Vec<ConnId>) {
    if !c.listed_paused {
        c.listed_paused = true;
        paused.push(id);
    }
}

/// Writes what the turn produced and says whether the connection stays.
fn finish_turn(
    c: &mut Conn,
    now: Instant,
    out_cap: usize,
    stats: &ReactorStats,
    warn: &mut Warn,
    more: bool,
) -> Status {
    if let Err(why) = c.flush(now) {
        return Status::Close(why);
    }
    // Outboxes stop at out_cap; replies always go, so the close comes only
    // past some headroom above it.
    if c.unsent() > out_cap + (out_cap / 8).max(OUT_HEADROOM) {
        stats.closed_slow.fetch_add(1, Ordering::Relaxed);
        let peer = c.peer;
        warn.hit(now, || {
            format!("closed {peer}: it did not read its replies ({out_cap} bytes unsent, the output cap)")
        });
        return Status::Close("peer is not reading its replies (output cap reached)");
    }
    let flushed = c.flushed();
    if c.closing && flushed {
        return Status::Close("closed after an error");
    }
    let parked = matches!(&c.proto, Proto::Framed(f) if f.parked.is_some());
    if !c.read_open && flushed && c.inflight == 0 && !parked {
        return Status::Close("peer closed");
    }
    if more {
        Status::More
    } else {
        Status::Open
    }
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

/// A listener with `SO_REUSEPORT` as well, that siblings can bind again.
/// With `probe`, the address is first bound without it, so that a port in
/// use by anyone fails here as it would without sharing, and port 0 is
/// resolved to a free port that the group then shares.
fn listen_shared(addr: SocketAddr, backlog: i32, probe: bool) -> io::Result<TcpListener> {
    let mut addr = addr;
    if probe {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        if let Some(bound) = socket.local_addr()?.as_socket() {
            addr = bound;
        }
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// File descriptors a server needs beyond one per connection: listeners,
/// the database pool, logs, links.
const SPARE_FILES: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to what `max_conns` needs, up to the hard
/// limit; warns, naming both numbers, when it cannot.
fn raise_file_limit(max_conns: usize) {
    let want = max_conns as u64 + SPARE_FILES;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got >= want => log::debug!("file limit {got} (max_conns {max_conns})"),
        Ok(got) => log::warn!(
            "the file limit (RLIMIT_NOFILE) is {got}, below the {want} that --max-conns {max_conns} needs, and the hard limit stops it going higher: connections past about {} will fail to be accepted (raise the hard limit, `ulimit -Hn`, or lower --max-conns)",
            got.saturating_sub(SPARE_FILES)
        ),
        Err(e) => log::warn!(
            "cannot raise the file limit (RLIMIT_NOFILE) to {want} for --max-conns {max_conns}: {e}"
        ),
    }
}
