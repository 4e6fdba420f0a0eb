//! The byte pipe adapter, and the first-bytes state that leads to it.
//!
//! A pipe is a session over two connections, each [`Proto::Pipe`] naming
//! the other. Bytes read on one side go to the other side's output. Reading
//! a side stops while the other side's unsent output is at the high
//! watermark and starts again at a quarter of it, so a slow reader on
//! either side holds at most the watermark, never more. EOF on one side
//! becomes `shutdown(Write)` on the other once what was read before it is
//! written (half-close); when both sides have ended, both close. An error
//! or the idle timeout on either side closes both.
//!
//! A connection accepted with [`Accept::Sniff`](super::Accept) first
//! collects bytes for [`Service::on_bytes`](super::Service::on_bytes),
//! within a size cap and a deadline; the service turns it into a pipe
//! (the bytes collected are sent to the backend first) or a framed
//! connection, or closes it.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::framed::{Framed, Service, Sniffed};
use super::outbox::ConnShared;
use super::{Budget, Conn, ConnId, Core, Got, Proto, Status, READS_PER_TURN};

/// Backends tried for one client before it is closed.
const PIPE_TRIES: usize = 8;

/// First bytes of a connection, kept until the service decides.
#[derive(Debug)]
pub(crate) struct Sniff {
    pub(crate) buf: Vec<u8>,
    max: usize,
    pub(crate) deadline: Instant,
    /// The service answered [`Sniffed::Wait`]: read nothing more.
    waiting: bool,
}

impl Default for Sniff {
    fn default() -> Self {
        Sniff {
            buf: Vec::new(),
            max: 0,
            deadline: Instant::now(),
            waiting: false,
        }
    }
}

impl Sniff {
    pub(crate) fn new(max: usize, deadline: Instant) -> Sniff {
        Sniff {
            buf: Vec::new(),
            max: max.max(1),
            deadline,
            waiting: false,
        }
    }
}

/// One side of a pipe.
#[derive(Debug)]
pub(crate) struct PipeEnd {
    /// The connection on the other side.
    pub(crate) other: ConnId,
    /// Not read because the other side's output reached the high watermark.
    held_back: bool,
}

impl PipeEnd {
    fn new(other: ConnId) -> PipeEnd {
        PipeEnd {
            other,
            held_back: false,
        }
    }
}

enum Decided {
    Wait,
    Pipe(SocketAddr, Vec<u8>),
    Framed(Vec<u8>),
}

// === impl Core (pipes) ===

impl Core {
    /// Reads the first bytes of a sniffing connection and acts on the
    /// service's decision.
    pub(super) fn drive_sniff<S: Service>(
        &mut self,
        service: &mut S,
        id: ConnId,
        now: Instant,
        stopping: bool,
    ) -> Status {
        let Some(c) = self.conns.get_mut(&id) else {
            return Status::Open;
        };
        let mut decided = Decided::Wait;
        let mut reads = 0;
        let mut more = false;
        while !stopping && !c.closing && c.want_read && c.read_open {
            if reads == READS_PER_TURN {
                more = true;
                break;
            }
            let Proto::Sniff(s) = &mut c.proto else {
                unreachable!("drive_sniff on a sniffing connection");
            };
            if s.waiting {
                break;
            }
            let left = s.max - s.buf.len();
            if left == 0 {
                log::debug!(
                    "{id:?} from {}: no decision after {} bytes (the first packet's cap); closing",
                    c.peer,
                    s.max
                );
                return Status::Close("first packet above its size cap");
            }
            let room = self
                .budget
                .room(s.buf.len() + c.out.len() - c.out_pos)
                .min(self.scratch.len())
                .min(left);
            if room == 0 {
                super::pause(
                    c,
                    id,
                    now,
                    &mut self.paused,
                    &self.stats,
                    &mut self.warn.budget,
                    &self.budget,
                );
                break;
            }
            c.paused_since = None;
            reads += 1;
            let got = c.read_into(&mut self.scratch[..room], now);
            let Proto::Sniff(s) = &mut c.proto else {
                unreachable!("drive_sniff on a sniffing connection");
            };
            match got {
                Got::Bytes(n) => {
                    s.buf.extend_from_slice(&self.scratch[..n]);
                    let mut refused = false;
                    let mut parts = parts!(id, c);
                    let mut cx = parts.context(&mut refused, &self.sink);
                    match service.on_bytes(&s.buf, &mut cx) {
                        Sniffed::NeedMore => {}
                        Sniffed::Close => c.closing = true,
                        Sniffed::Wait => s.waiting = true,
                        Sniffed::Pipe(addr) => {
                            decided = Decided::Pipe(addr, std::mem::take(&mut s.buf));
                            break;
                        }
                        Sniffed::Framed => {
                            decided = Decided::Framed(std::mem::take(&mut s.buf));
                            break;
                        }
                    }
                }
                Got::Eof | Got::Nothing => {}
                Got::Failed => return Status::Close("read error"),
            }
            self.budget.recount(c);
        }
        match decided {
            Decided::Wait => {
                if !c.read_open && !c.closing {
                    return Status::Close("peer closed before its first packet was complete");
                }
                let status = super::finish_turn(
                    c,
                    now,
                    self.cfg.out_cap,
                    &self.stats,
                    &mut self.warn.slow,
                    more,
                );
                self.budget.recount(c);
                status
            }
            Decided::Framed(bytes) => {
                let mut f = Framed::new(self.cfg.max_frame);
                f.decoder.push(&bytes);
                c.proto = Proto::Framed(f);
                self.budget.recount(c);
                Status::More
            }
            Decided::Pipe(addr, bytes) => {
                self.open_pipe(service, id, addr, bytes, now);
                Status::More
            }
        }
    }

    /// Connects `front` to a backend, trying the next one the service names
    /// when a connect fails at once; `initial` goes to the backend first.
    pub(super) fn open_pipe<S: Service>(
        &mut self,
        service: &mut S,
        front: ConnId,
        mut addr: SocketAddr,
        initial: Vec<u8>,
        now: Instant,
    ) {
        loop {
            // Counted on the client across asynchronous failures too, so a
            // service that always names another backend cannot loop forever.
            let Some(f) = self.conns.get_mut(&front) else {
                return;
            };
            f.pipe_tries += 1;
            if f.pipe_tries > PIPE_TRIES {
                break;
            }
            let initial = if f.preamble.is_empty() {
                initial.clone()
            } else {
                let mut all = f.preamble.clone();
                all.extend_from_slice(&initial);
                all
            };
            let back = self.sink.group.next_id();
            let shared = ConnShared::new(self.cfg.out_cap);
            match self.connect(back, shared, addr, self.cfg.connect_timeout, None, now) {
                Ok(()) => {
                    let b = self.conns.get_mut(&back).expect("inserted by connect");
                    b.proto = Proto::Pipe(PipeEnd::new(front));
                    self.stats
                        .pipe_bytes
                        .fetch_add(initial.len() as u64, Ordering::Relaxed);
                    b.out = initial;
                    self.budget.recount(b);
                    let mut idle = None;
                    if let Some(f) = self.conns.get_mut(&front) {
                        f.proto = Proto::Pipe(PipeEnd::new(back));
                        idle = f.idle;
                        self.budget.recount(f);
                    }
                    if let Some(b) = self.conns.get_mut(&back) {
                        b.idle = idle;
                    }
                    self.stats.pipes.fetch_add(1, Ordering::Relaxed);
                    log::debug!("{front:?} piped to {addr} as {back:?}");
                    return;
                }
                Err(e) => {
                    self.stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                    match self.pipe_failed(service, front, addr, &e) {
                        Some(next) => addr = next,
                        None => return,
                    }
                }
            }
        }
        log::info!("{front:?}: no backend reachable after {PIPE_TRIES} tries; closing");
        self.flush_and_close(service, front, "no backend reachable");
    }

    /// Asks the service what to do for `front` now that `addr` failed; on
    /// `None` the client is sent what the service wrote, and closed.
    fn pipe_failed<S: Service>(
        &mut self,
        service: &mut S,
        front: ConnId,
        addr: SocketAddr,
        e: &io::Error,
    ) -> Option<SocketAddr> {
        let c = self.conns.get_mut(&front)?;
        log::info!("{front:?} from {}: backend {addr} failed: {e}", c.peer);
        // Detached until a backend takes it.
        c.proto = Proto::Sniff(Sniff::default());
        let mut refused = false;
        let mut parts = parts!(front, c);
        let mut cx = parts.context(&mut refused, &self.sink);
        let next = service.on_pipe_failed(addr, e, &mut cx);
        if next.is_none() {
            self.flush_and_close(service, front, "backend unreachable");
        }
        next
    }

    /// An outbound connect failed: a link closes; a pipe's backend is
    /// dropped and the service may name another.
    pub(super) fn connect_failed<S: Service>(
        &mut self,
        service: &mut S,
        id: ConnId,
        e: io::Error,
    ) -> Status {
        self.stats.connect_failed.fetch_add(1, Ordering::Relaxed);
        let Some(c) = self.conns.get(&id) else {
            return Status::Open;
        };
        let Proto::Pipe(p) = &c.proto else {
            log::info!("link {id:?} to {} failed: {e}", c.peer);
            return Status::Close("connect failed");
        };
        let front = p.other;
        let mut b = self.conns.remove(&id).expect("looked up above");
        let _ = self.poll.registry().deregister(&mut b.stream);
        self.stats.conns.fetch_sub(1, Ordering::Relaxed);
        self.budget.held -= b.held;
        b.shared.closed.store(true, Ordering::Release);
        let mut bytes = std::mem::take(&mut b.out);
        // The preamble goes to the next backend afresh.
        if let Some(f) = self.conns.get(&front) {
            if !f.preamble.is_empty() && bytes.starts_with(&f.preamble) {
                bytes.drain(..f.preamble.len());
            }
        }
        if let Some(next) = self.pipe_failed(service, front, b.peer, &e) {
            self.open_pipe(service, front, next, bytes, Instant::now());
        }
        Status::Open
    }

    fn flush_and_close<S: Service>(&mut self, service: &mut S, id: ConnId, why: &'static str) {
        if let Some(c) = self.conns.get_mut(&id) {
            let _ = c.flush(Instant::now());
        }
        self.close(service, id, why);
    }

    /// Moves bytes both ways between the two sides of a pipe.
    pub(super) fn drive_pipe(&mut self, id: ConnId, now: Instant) -> Status {
        let other = match self.conns.get(&id).map(|c| &c.proto) {
            Some(Proto::Pipe(p)) => p.other,
            _ => return Status::Open,
        };
        let [Some(a), Some(b)] = self.conns.get_disjoint_mut([&id, &other]) else {
            return Status::Close("the other side of the pipe is gone");
        };
        // A side still connecting is finished by its own events (its
        // error is read once, there); until then the bytes for it wait in
        // its output, up to the watermark.
        let high = self.cfg.pipe_high_water;
        let mut reads = 0;
        let mut moved = 0u64;
        let mut more = false;
        for forward in [true, false] {
            let (src, dst) = if forward {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            let pumped = pump(
                src,
                dst,
                &mut self.scratch,
                &mut self.budget,
                high,
                now,
                (&mut reads, &mut moved),
            );
            match pumped {
                Ok(Pumped::Done) => {}
                Ok(Pumped::More) => more = true,
                Ok(Pumped::Paused) => {
                    let (c, cid) = if forward {
                        (&mut *a, id)
                    } else {
                        (&mut *b, other)
                    };
                    super::list_paused(c, cid, &mut self.paused);
                }
                Err(why) => {
                    self.stats.pipe_bytes.fetch_add(moved, Ordering::Relaxed);
                    return Status::Close(why);
                }
            }
        }
        self.stats.pipe_bytes.fetch_add(moved, Ordering::Relaxed);
        for forward in [true, false] {
            let (src, dst) = if forward {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            if let Err(why) = dst.flush(now) {
                return Status::Close(why);
            }
            // Half-close: what src sent before its EOF is written; pass the EOF on.
            if !src.read_open && dst.write_open && dst.flushed() && dst.connecting.is_none() {
                let _ = dst.stream.shutdown(Shutdown::Write);
                dst.write_open = false;
            }
        }
        self.budget.recount(a);
        self.budget.recount(b);
        if !a.read_open && !b.read_open && !a.write_open && !b.write_open {
            return Status::Close("both sides of the pipe ended");
        }
        if more {
            Status::More
        } else {
            Status::Open
        }
    }
}

enum Pumped {
    Done,
    More,
    Paused,
}

/// Copies from `src`'s socket into `dst`'s output while `dst` keeps up,
/// counting reads (this turn's share) and bytes moved.
fn pump(
    src: &mut Conn,
    dst: &mut Conn,
    scratch: &mut [u8],
    budget: &mut Budget,
    high: usize,
    now: Instant,
    (reads, moved): (&mut usize, &mut u64),
) -> Result<Pumped, &'static str> {
    loop {
        if !src.want_read || !src.read_open || src.connecting.is_some() {
            return Ok(Pumped::Done);
        }
        dst.flush(now)?;
        let unsent = dst.unsent();
        let held_back = held_back(src);
        if unsent >= high || (*held_back && unsent > high / 4) {
            *held_back = true;
            return Ok(Pumped::Done);
        }
        *held_back = false;
        if *reads >= READS_PER_TURN * 2 {
            return Ok(Pumped::More);
        }
        let room = budget.room(unsent).min(scratch.len()).min(high - unsent);
        if room == 0 {
            if src.paused_since.is_none() {
                src.paused_since = Some(now);
            }
            return Ok(Pumped::Paused);
        }
        src.paused_since = None;
        *reads += 1;
        match src.read_into(&mut scratch[..room], now) {
            Got::Bytes(n) => {
                dst.out.extend_from_slice(&scratch[..n]);
                *moved += n as u64;
                budget.recount(dst);
            }
            Got::Eof => return Ok(Pumped::Done),
            Got::Nothing => {}
            Got::Failed => return Err("read error"),
        }
    }
}

/// Whether a pipe side is held back by its other side's watermark.
fn held_back(c: &mut Conn) -> &mut bool {
    match &mut c.proto {
        Proto::Pipe(end) => &mut end.held_back,
        _ => unreachable!("a pipe side"),
    }
}
