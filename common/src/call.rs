//! One signed, pipelined, blocking connection to one server: the one
//! implementation of a signed call, used by the SDK, heartbeats and view
//! pushes alike.
//!
//! [`Connection::send`] signs and writes a request and returns its id;
//! [`Connection::recv`] waits for the reply to a given id. Any number of
//! requests may be in flight; replies that arrive for another id than the
//! one waited for are kept until asked for, so a server may answer out of
//! order. Every reply's signature is checked over the raw bytes received.
//!
//! Failures are classified by whether the request can have reached the
//! server ([`Failure`]): that is what a client's retry rules need
//! (`dsf_client::Client`'s), and what a caller pipelining by hand needs
//! too.

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use crate::stream::FramedStream;
use crate::wire::envelope::encode_request_at;
use crate::wire::{Key, OutgoingRequest, Reply};
use crate::ErrorCode;

/// Frames a [`Connection`] keeps that came ahead of the one awaited.
pub const EARLY_MAX: usize = 8192;

/// Why a request on a [`Connection`] did not get a good reply, sorted by
/// what it means for resending.
#[derive(Debug)]
pub enum Failure {
    /// The request cannot have been acted on (the connection failed before
    /// it was fully written, or the server refused the connection itself):
    /// safe to send again anywhere.
    NotSent(String),
    /// The connection broke after the request was written: it may or may
    /// not have been acted on.
    Lost(String),
    /// No reply before the deadline; it may or may not have been acted on.
    TimedOut(Duration),
    /// The reply cannot be trusted (bad signature, malformed, wrong id).
    BadReply(String),
    /// The server refused the request with a signed error.
    Server(crate::Error),
}

// === impl Failure ===

impl Failure {
    /// Whether the connection can still be used after this failure.
    pub fn keeps_connection(&self) -> bool {
        matches!(self, Failure::Server(e) if !e.code().closes_connection())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotSent(why) => write!(f, "not sent: {why}"),
            Failure::Lost(why) => write!(f, "connection lost: {why}"),
            Failure::TimedOut(after) => write!(f, "no reply within {after:?}"),
            Failure::BadReply(why) => write!(f, "bad reply: {why}"),
            Failure::Server(e) => write!(f, "{}: {e}", e.code()),
        }
    }
}

/// The timestamp and nonce a request is signed with. A type that runs
/// once is resent with the same stamp (the server answers a resend with
/// the stored reply) while the stamp is inside the replay window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub ts: u64,
    pub nonce: String,
}

impl Stamp {
    /// Now, with a fresh random nonce.
    pub fn fresh() -> Stamp {
        Stamp {
            ts: crate::wire::now_ms(),
            nonce: crate::wire::new_nonce(),
        }
    }

    /// How long ago it was made.
    pub fn age(&self) -> Duration {
        Duration::from_millis(crate::wire::now_ms().saturating_sub(self.ts))
    }
}

/// Who signs: the app id and its key.
#[derive(Debug, Clone)]
pub struct Signer {
    /// App id sent as `app`.
    pub app: String,
    /// The app's key.
    pub key: Key,
}

/// A framed, signed connection to one server. See the module documentation.
#[derive(Debug)]
pub struct Connection {
    stream: FramedStream,
    signer: Signer,
    /// Node id or address, for error messages.
    server: String,
    next_id: u64,
    /// Ids sent and not yet answered, with the nonce each was signed with
    /// (its reply must be signed over it).
    pending: HashMap<u64, String>,
    /// Frames that came before they were asked for, by id: one reply, or
    /// the events (then the final reply) of a stream read while another
    /// request's reply was awaited. At most [`EARLY_MAX`] in all.
    early: HashMap<u64, VecDeque<Reply>>,
    early_len: usize,
    /// Set once the stream cannot be used any more.
    broken: bool,
    /// What the unsigned error that broke it claimed, if one did.
    unsigned: Option<crate::Error>,
    out: Vec<u8>,
    /// The last event seen of each streamed reply in flight.
    seqs: HashMap<u64, u64>,
}

/// One item of a streamed reply ([`Connection::recv_stream`]).
#[derive(Debug)]
pub enum Streamed {
    Event {
        seq: u64,
        event: String,
        body: Box<RawValue>,
    },
    /// The final reply's body; the stream is over.
    Final(Box<RawValue>),
}

// === impl Connection ===

impl Connection {
    /// Connects to `addr` within `timeout`. `server` names it in errors
    /// (its node id, or the address itself).
    pub fn connect(
        addr: &str,
        server: &str,
        signer: Signer,
        timeout: Duration,
        max_frame: usize,
    ) -> io::Result<Connection> {
        Connection::connect_tls(addr, server, signer, timeout, max_frame, None)
    }

    /// [`Connection::connect`], over TLS when `tls` is given (the
    /// certificates to trust; the server's must name the host of `addr`).
    pub fn connect_tls(
        addr: &str,
        server: &str,
        signer: Signer,
        timeout: Duration,
        max_frame: usize,
        tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    ) -> io::Result<Connection> {
        let mut stream = FramedStream::connect(addr, timeout, max_frame)?;
        if let Some(config) = tls {
            stream = stream.start_tls(config, addr, timeout)?;
        }
        Ok(Connection {
            stream,
            signer,
            server: server.to_string(),
            next_id: 1,
            pending: HashMap::new(),
            early: HashMap::new(),
            early_len: 0,
            seqs: HashMap::new(),
            broken: false,
            unsigned: None,
            out: Vec::with_capacity(512),
        })
    }

    /// What the server claimed in the unsigned error about the connection
    /// that ended it ([`Failure::Lost`]): it cannot be trusted, but says
    /// something speaks the wire there (refused at its connection limit, a
    /// TLS port spoken to in plain).
    pub fn unsigned_error(&self) -> Option<&crate::Error> {
        self.unsigned.as_ref()
    }

    /// The name given at connect time.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Signs and writes one request; returns its id. `body` is a serialised
    /// JSON object.
    pub fn send(&mut self, kind: &str, body: &str, token: Option<&str>) -> Result<u64, Failure> {
        self.send_stamped(kind, body, token, &Stamp::fresh())
    }

    /// [`Connection::send`] with the timestamp and nonce given: a resend of
    /// a request that runs once (under a new id on this connection).
    pub fn send_stamped(
        &mut self,
        kind: &str,
        body: &str,
        token: Option<&str>,
        stamp: &Stamp,
    ) -> Result<u64, Failure> {
        if self.broken {
            return Err(Failure::NotSent("connection already failed".into()));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.out.clear();
        let req = OutgoingRequest {
            id,
            kind,
            app: &self.signer.app,
            token,
            body,
        };
        encode_request_at(
            &self.signer.key,
            &req,
            stamp.ts,
            &stamp.nonce,
            &mut self.out,
        );
        // write_all fails only before the last byte is handed to the kernel,
        // so the server never holds the whole frame: it cannot act on it.
        if let Err(e) = self.stream.send(&self.out) {
            self.broken = true;
            return Err(Failure::NotSent(format!(
                "write to {} failed: {e}",
                self.server
            )));
        }
        self.pending.insert(id, stamp.nonce.clone());
        Ok(id)
    }

    /// Waits until `deadline` for the reply to `id`, verifies it, and
    /// returns its body or the server's error.
    pub fn recv(&mut self, id: u64, deadline: Instant) -> Result<Box<RawValue>, Failure> {
        let reply = self
            .recv_reply(id, deadline, false)?
            .expect("a deadline that passes fails the read");
        let nonce = self.pending.remove(&id).unwrap_or_default();
        if let Err(e) = reply.verify(&self.signer.key, &nonce) {
            self.broken = true;
            // An unsigned reply is never acted on beyond dropping the
            // connection; a signed one that does not verify (wrong secret,
            // or a recorded reply to another request) neither. Show what it
            // claims, marked as such: with a wrong secret it usually says
            // exactly that (`bad_signature`).
            let claim = match (reply.ok, reply.into_result()) {
                (false, Err(claimed)) if !e.to_string().starts_with("unsigned") => {
                    format!(" (it claims, unverified: {}: {claimed})", claimed.code())
                }
                _ => String::new(),
            };
            return Err(Failure::BadReply(format!(
                "reply to request {id}: {e}{claim}"
            )));
        }
        match reply.into_result() {
            Ok(body) => Ok(body),
            Err(e) if e.code() == ErrorCode::BadJson && e.to_string().starts_with("reply") => {
                self.broken = true;
                Err(Failure::BadReply(e.to_string()))
            }
            Err(e) => {
                if e.code().closes_connection() {
                    self.broken = true;
                }
                Err(Failure::Server(e))
            }
        }
    }

    /// The next item of the streamed reply to `id`: an event (verified, in
    /// sequence), or the final reply, which ends the stream.
    pub fn recv_stream(&mut self, id: u64, deadline: Instant) -> Result<Streamed, Failure> {
        let reply = self
            .recv_reply(id, deadline, false)?
            .expect("a deadline that passes fails the read");
        self.stream_item(id, reply, deadline)
    }

    /// [`Connection::recv_stream`] that returns `Ok(None)` when nothing
    /// came by `until`, leaving the connection usable (the frame decoder
    /// keeps a frame cut short): for a subscription that also has other
    /// work to do (acknowledgements, a time limit).
    pub fn poll_stream(&mut self, id: u64, until: Instant) -> Result<Option<Streamed>, Failure> {
        match self.recv_reply(id, until, true)? {
            Some(reply) => self.stream_item(id, reply, until).map(Some),
            None => Ok(None),
        }
    }

    /// The reply to `id` if it has come already (read while waiting for
    /// something else), verified; `None` if not yet.
    pub fn ready(&mut self, id: u64) -> Option<Result<Box<RawValue>, Failure>> {
        if self.early.get(&id).is_none_or(|q| q.is_empty()) {
            return None;
        }
        Some(self.recv(id, Instant::now()))
    }

    fn stream_item(
        &mut self,
        id: u64,
        reply: Reply,
        deadline: Instant,
    ) -> Result<Streamed, Failure> {
        if !reply.is_event() {
            self.seqs.remove(&id);
            self.put_early(id, reply)?;
            return self.recv(id, deadline).map(Streamed::Final);
        }
        let nonce = self.pending.get(&id).cloned().unwrap_or_default();
        if let Err(e) = reply.verify(&self.signer.key, &nonce) {
            self.broken = true;
            return Err(Failure::BadReply(format!("event of request {id}: {e}")));
        }
        let seq = reply.seq.unwrap_or(0);
        let last = self.seqs.entry(id).or_insert(0);
        if seq != *last + 1 {
            self.broken = true;
            return Err(Failure::BadReply(format!(
                "event {seq} of request {id} after event {last}: events come in order from 1"
            )));
        }
        *last = seq;
        let body = reply
            .body
            .unwrap_or_else(|| RawValue::from_string("{}".into()).expect("valid JSON"));
        Ok(Streamed::Event {
            seq,
            event: reply.event.unwrap_or_default(),
            body,
        })
    }

    /// Keeps a frame for later, in the order it came.
    fn put_early(&mut self, id: u64, reply: Reply) -> Result<(), Failure> {
        if self.early_len >= EARLY_MAX {
            self.broken = true;
            return Err(Failure::BadReply(format!(
                "{} frames arrived ahead of the reply awaited: the server sends more than was asked for",
                self.early_len
            )));
        }
        let q = self.early.entry(id).or_default();
        if q.iter().any(|r| !r.is_event()) {
            self.broken = true;
            return Err(Failure::BadReply(format!(
                "a second reply for id {id}, after its final one"
            )));
        }
        q.push_back(reply);
        self.early_len += 1;
        Ok(())
    }

    fn take_early(&mut self, id: u64) -> Option<Reply> {
        let q = self.early.get_mut(&id)?;
        let r = q.pop_front();
        if q.is_empty() {
            self.early.remove(&id);
        }
        if r.is_some() {
            self.early_len -= 1;
        }
        r
    }

    /// [`Connection::send`] then [`Connection::recv`].
    pub fn round_trip(
        &mut self,
        kind: &str,
        body: &str,
        token: Option<&str>,
        deadline: Instant,
    ) -> Result<Box<RawValue>, Failure> {
        self.round_trip_stamped(kind, body, token, &Stamp::fresh(), deadline)
    }

    /// [`Connection::send_stamped`] then [`Connection::recv`].
    pub fn round_trip_stamped(
        &mut self,
        kind: &str,
        body: &str,
        token: Option<&str>,
        stamp: &Stamp,
        deadline: Instant,
    ) -> Result<Box<RawValue>, Failure> {
        let id = self.send_stamped(kind, body, token, stamp)?;
        self.recv(id, deadline)
    }

    /// The next frame for `id`; `Ok(None)` only when `idle_ok` and nothing
    /// came by `deadline`.
    fn recv_reply(
        &mut self,
        id: u64,
        deadline: Instant,
        idle_ok: bool,
    ) -> Result<Option<Reply>, Failure> {
        if let Some(r) = self.take_early(id) {
            return Ok(Some(r));
        }
        if !self.pending.contains_key(&id) {
            return Err(Failure::BadReply(format!(
                "no request {id} is in flight on this connection"
            )));
        }
        if self.broken {
            return Err(Failure::Lost(format!(
                "connection to {} failed earlier",
                self.server
            )));
        }
        let started = Instant::now();
        loop {
            let payload = match self.stream.recv(deadline) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    self.broken = true;
                    return Err(Failure::Lost(format!(
                        "{} closed the connection before replying",
                        self.server
                    )));
                }
                Err(e) if e.kind() == ErrorKind::TimedOut && idle_ok => return Ok(None),
                Err(e) if e.kind() == ErrorKind::TimedOut => {
                    // The stream may be mid-frame now; never reuse it.
                    self.broken = true;
                    return Err(Failure::TimedOut(started.elapsed()));
                }
                Err(e) if e.kind() == ErrorKind::InvalidData => {
                    self.broken = true;
                    return Err(Failure::BadReply(format!("unreadable frame: {e}")));
                }
                Err(e) => {
                    self.broken = true;
                    return Err(Failure::Lost(format!(
                        "connection to {} failed: {e}",
                        self.server
                    )));
                }
            };
            let reply = match Reply::parse(&payload) {
                Ok(r) => r,
                Err(e) => {
                    self.broken = true;
                    return Err(Failure::BadReply(e.to_string()));
                }
            };
            if reply.id == id {
                return Ok(Some(reply));
            }
            if reply.id == crate::wire::envelope::UNKNOWN_ID && !reply.ok {
                // An error about the connection, not a request (refused at
                // max_conns, a frame the server could not read): unsigned,
                // so it is only a reason to stop using the connection. What
                // happened to the request is unknown.
                self.broken = true;
                self.unsigned = reply.unsigned_error();
                let claim = (self.unsigned.as_ref())
                    .map_or_else(String::new, |e| format!(" (it claims {}: {e})", e.code()));
                return Err(Failure::Lost(format!(
                    "{} sent an unsigned error and the connection was dropped{claim}",
                    self.server
                )));
            }
            if !self.pending.contains_key(&reply.id) {
                self.broken = true;
                return Err(Failure::BadReply(format!(
                    "reply for id {} that was not asked for",
                    reply.id
                )));
            }
            self.put_early(reply.id, reply)?;
        }
    }

    /// Whether the peer is known to have closed (or the stream is unusable)
    /// while nothing is in flight. Checked before reusing an idle
    /// connection, so that a request is not written into a connection the
    /// server already closed (it would then look like an unknown outcome).
    pub fn is_closed(&mut self) -> bool {
        if self.broken || !self.pending.is_empty() {
            return self.broken;
        }
        let s = self.stream.get_ref();
        if s.set_nonblocking(true).is_err() {
            return true;
        }
        let mut b = [0u8; 1];
        let closed = match s.peek(&mut b) {
            // EOF, or bytes nobody asked for (an error before a close).
            Ok(_) => true,
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        };
        if s.set_nonblocking(false).is_err() {
            return true;
        }
        if closed {
            self.broken = true;
        }
        closed
    }
}
