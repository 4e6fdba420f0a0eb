//! Sending from any thread: [`Outbox`] (frames on a connection, within its
//! output budget), [`ReplyTo`] (the answer to one deferred request, with
//! events before it for streams), and [`Handle`] (open outbound links, shut
//! down). Everything sent lands on one channel that the reactor drains after
//! a `mio::Waker`; only the reactor thread ever writes to a socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crossbeam_channel::Sender;
use mio::Waker;

use super::ConnId;

/// What other threads ask of the reactor.
pub(crate) enum Msg {
    /// Bytes for a connection. `reply` marks the end of a deferred request.
    Out {
        conn: ConnId,
        bytes: Vec<u8>,
        close: bool,
        reply: bool,
    },
    /// Open an outbound framed link under an id already handed out.
    Pipe { conn: ConnId, addr: SocketAddr },
    Connect {
        conn: ConnId,
        shared: Arc<ConnShared>,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<super::LinkTls>,
    },
}

/// The reactor's inbox: a channel, its waker, and the counters every
/// sender needs.
pub(crate) struct Sink {
    // Unbounded by type, bounded in fact: replies are capped by the
    // services' bounded queues, events and pushes by each connection's
    // output budget (checked before sending), connects by their callers.
    pub(crate) tx: Sender<Msg>,
    pub(crate) waker: Waker,
    /// Set while a wake is pending, so a burst of sends costs one syscall.
    pub(crate) woken: AtomicBool,
    /// Deferred requests not yet answered, across all connections.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) shutdown: AtomicBool,
    /// The reactors this one shares a port with (itself included).
    pub(crate) group: Arc<Group>,
}

/// What reactors sharing a port share: their connection ids, so an id
/// names one connection across the group, and each other, so that one
/// handle shuts them all down.
pub(crate) struct Group {
    /// Connection ids are handed out here, by accepts and by [`Handle::connect`].
    pub(crate) next_id: AtomicUsize,
    pub(crate) members: Mutex<Vec<Weak<Sink>>>,
}

impl Group {
    pub(crate) fn new(first_id: usize) -> Arc<Group> {
        Arc::new(Group {
            next_id: AtomicUsize::new(first_id),
            members: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn next_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn sinks(&self) -> Vec<Arc<Sink>> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.iter().filter_map(Weak::upgrade).collect()
    }
}

impl Sink {
    pub(crate) fn push(&self, msg: Msg) {
        let _ = self.tx.send(msg);
        self.wake();
    }

    pub(crate) fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("reactor waker failed: {e}");
            }
        }
    }
}

/// What any thread may know of one connection.
#[derive(Debug)]
pub(crate) struct ConnShared {
    /// Bytes sent through outboxes and not yet taken by the reactor.
    pub(crate) queued: AtomicUsize,
    /// Bytes in the connection's output not yet written, as the reactor
    /// last saw them.
    pub(crate) unsent: AtomicUsize,
    pub(crate) closed: AtomicBool,
    /// The peer sent EOF: it may still read (a half-close), or be gone.
    pub(crate) peer_eof: AtomicBool,
    /// The connection's output budget.
    pub(crate) cap: usize,
}

impl ConnShared {
    pub(crate) fn new(cap: usize) -> Arc<ConnShared> {
        Arc::new(ConnShared {
            queued: AtomicUsize::new(0),
            unsent: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            peer_eof: AtomicBool::new(false),
            cap,
        })
    }
}

/// Why an [`Outbox`] did not take a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is closed (or failed to connect); nothing more will
    /// be delivered on it.
    #[error("connection closed")]
    Closed,
    /// The connection's unsent output would go past its budget: the peer is
    /// not reading fast enough. A stream coalesces or ends; nothing is
    /// queued.
    #[error("output budget full: {unsent} bytes unsent, budget {cap}")]
    Full { unsent: usize, cap: usize },
}

/// Sends whole frames on one connection from any thread, at any time,
/// within that connection's output budget (`out_cap`). Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    pub(crate) conn: ConnId,
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) sink: Arc<Sink>,
}

// === impl Outbox ===

impl Outbox {
    /// The connection it sends on.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the peer has sent EOF: it sends nothing more, and either
    /// waits for the replies still owed (a half-close) or is gone, which
    /// TCP does not tell apart until a write fails.
    pub fn peer_done_sending(&self) -> bool {
        self.shared.peer_eof.load(Ordering::Acquire)
    }

    /// Bytes sent and not yet written to the socket.
    pub fn unsent(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire) + self.shared.unsent.load(Ordering::Acquire)
    }

    /// Queues encoded frames; refused when closed or past the budget.
    pub fn send(&self, bytes: Vec<u8>) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        let unsent = self.unsent();
        if unsent + bytes.len() > self.shared.cap {
            return Err(SendError::Full {
                unsent,
                cap: self.shared.cap,
            });
        }
        self.push(bytes, false, false);
        Ok(())
    }

    /// Ends a [`Sniffed::Wait`](super::Sniffed::Wait): the connection
    /// becomes a byte pipe to `addr`, the bytes it sent so far going first.
    /// Ignored when the connection has closed or was decided meanwhile.
    pub fn pipe(&self, addr: SocketAddr) {
        if !self.is_closed() {
            self.sink.push(Msg::Pipe {
                conn: self.conn,
                addr,
            });
        }
    }

    /// Closes the connection once what was sent before is written.
    pub fn close(&self) {
        if !self.is_closed() {
            self.push(Vec::new(), true, false);
        }
    }

    fn push(&self, bytes: Vec<u8>, close: bool, reply: bool) {
        self.shared.queued.fetch_add(bytes.len(), Ordering::AcqRel);
        self.sink.push(Msg::Out {
            conn: self.conn,
            bytes,
            close,
            reply,
        });
    }
}

/// Answers one deferred request, from any thread. A streaming request sends
/// [`ReplyTo::event`]s, then its final reply with [`ReplyTo::send`].
/// Dropping it unanswered frees the slot (the client gets no reply for that
/// request, which only happens if a handler panicked).
pub struct ReplyTo {
    pub(crate) outbox: Outbox,
    pub(crate) done: bool,
}

// === impl ReplyTo ===

impl ReplyTo {
    /// The connection this answers.
    pub fn conn(&self) -> ConnId {
        self.outbox.conn
    }

    /// The connection's outbox, for events sent after this request is
    /// answered (a subscription).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Sends one event frame of a stream, within the connection's output
    /// budget: on [`SendError::Full`] the stream coalesces what supersedes
    /// itself, or ends with `overloaded`.
    pub fn event(&self, bytes: Vec<u8>) -> Result<(), SendError> {
        self.outbox.send(bytes)
    }

    /// Sends encoded frames as the final reply. A reply always goes (it is
    /// bounded by the requests in flight, not by the budget).
    pub fn send(self, bytes: Vec<u8>) {
        self.finish(bytes, false)
    }

    /// Sends encoded frames, then closes the connection.
    pub fn send_and_close(self, bytes: Vec<u8>) {
        self.finish(bytes, true)
    }

    fn finish(mut self, bytes: Vec<u8>, close: bool) {
        self.done = true;
        self.outbox.push(bytes, close, true);
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if !self.done {
            self.outbox.push(Vec::new(), false, true);
        }
    }
}

/// Reaches a running reactor from any thread: open outbound links, shut
/// it down, count what is in flight. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    pub(crate) sink: Arc<Sink>,
    pub(crate) out_cap: usize,
}

// === impl Handle ===

impl Handle {
    /// Opens a framed link to `addr`: a non-blocking connect that fails
    /// after `timeout`. Frames sent before it connects are written once it
    /// does; frames the peer sends reach the service's `on_frame` with
    /// [`Origin::Outbound`](super::Origin). If it cannot connect, or later
    /// closes, the service's `on_close` is called and the outbox refuses.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> Outbox {
        self.connect_tls(addr, timeout, None)
    }

    /// [`Handle::connect`], over TLS when `tls` is given: the certificates
    /// to trust, and the name the server's certificate must carry.
    pub fn connect_tls(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<super::LinkTls>,
    ) -> Outbox {
        let conn = self.sink.group.next_id();
        let shared = ConnShared::new(self.out_cap);
        self.sink.push(Msg::Connect {
            conn,
            shared: shared.clone(),
            addr,
            timeout,
            tls,
        });
        Outbox {
            conn,
            shared,
            sink: self.sink.clone(),
        }
    }

    /// [`Handle::connect`] to `host:port`, the name resolved here, on the
    /// calling thread (never on the reactor's, where a slow resolver would
    /// stall every connection): the first address it resolves to.
    pub fn connect_host(&self, host_port: &str, timeout: Duration) -> std::io::Result<Outbox> {
        self.connect_host_tls(host_port, timeout, None)
    }

    /// [`Handle::connect_host`], over TLS when `tls` is given (the
    /// certificates to trust; the server's must name the host).
    pub fn connect_host_tls(
        &self,
        host_port: &str,
        timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> std::io::Result<Outbox> {
        use std::net::ToSocketAddrs;
        let tls = match tls {
            Some(config) => {
                let name = crate::tls::server_name(host_port).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?;
                Some((config.clone(), name))
            }
            None => None,
        };
        let addr = host_port.to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host_port} resolves to no address"),
            )
        })?;
        Ok(self.connect_tls(addr, timeout, tls))
    }

    /// Starts the shutdown: stop accepting, deliver in-flight replies,
    /// return. Every reactor of the group (see [`super::Reactor::sibling`])
    /// stops.
    pub fn trigger(&self) {
        for sink in self.sink.group.sinks() {
            sink.shutdown.store(true, Ordering::Release);
            let _ = sink.waker.wake();
        }
    }

    /// Whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        self.sink.shutdown.load(Ordering::Acquire)
    }

    /// Requests dispatched and not yet answered, across all connections
    /// of every reactor of the group.
    pub fn in_flight(&self) -> usize {
        let sinks = self.sink.group.sinks();
        sinks
            .iter()
            .map(|s| s.in_flight.load(Ordering::Relaxed))
            .sum()
    }
}

/// The old name of [`Handle`], kept for the servers' shutdown paths.
pub type Shutdown = Handle;
