//! Streamed replies: a request answered by events (`seq` from 1, each
//! signed over the request's nonce), then one final reply.
//!
//! [`Streams`] is a server's registry of open streams, by connection: it
//! caps how many one connection may hold, ends one on `sys.cancel` (its
//! final reply is `{"cancelled":true}`), and ends all of a connection's
//! when it closes. A [`Stream`] is what the producer (a worker, a
//! subscription) holds; every send tells it whether to go on.
//!
//! A slow reader is held to its connection's output budget. An event that
//! supersedes the one before it (progress) is sent with [`Stream::update`]:
//! when the budget is full it waits, replacing any older one waiting, and
//! goes out on the next send or [`Stream::flush`]. Any other event
//! ([`Stream::event`]) cannot be dropped, so a full budget ends the stream
//! with `overloaded`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::reactor::{ConnId, ReplyTo, SendError};
use crate::wire::admission::Admitted;
use crate::wire::envelope::{encode_error, encode_event, encode_ok};
use crate::wire::sign::Key;

/// Default open streams per connection.
pub const DEFAULT_STREAMS_PER_CONN: usize = 16;

/// The final reply of a cancelled stream.
pub const CANCELLED: &str = "{\"cancelled\":true}";

/// Why a stream cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ended {
    /// `sys.cancel` ended it; its final reply was sent.
    #[error("the client cancelled the stream")]
    Cancelled,
    /// The connection is gone.
    #[error("the connection closed")]
    Closed,
    /// The reader fell too far behind for an event that cannot be dropped;
    /// the stream ended with `overloaded`.
    #[error("the reader is too slow: the stream ended with overloaded")]
    Overloaded,
    /// The stream already sent its final reply.
    #[error("the stream is finished")]
    Finished,
}

/// What the registry and the stream share: the reply handle, taken by
/// whoever ends the stream first.
struct Slot {
    reply: Mutex<Option<ReplyTo>>,
    cancelled: AtomicBool,
    /// Its connection closed.
    closed: AtomicBool,
    /// What the final reply of a cancel is signed with.
    key: Key,
    nonce: String,
}

/// A server's open streams, by connection. Share one (`Arc`) between the
/// reactor-side service (cancel, close) and the producers.
pub struct Streams {
    per_conn: usize,
    open: Mutex<HashMap<ConnId, HashMap<u64, Arc<Slot>>>>,
}

// === impl Streams ===

impl Streams {
    /// A registry allowing `per_conn` open streams per connection (at least 1).
    pub fn new(per_conn: usize) -> Arc<Streams> {
        Arc::new(Streams {
            per_conn: per_conn.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, HashMap<u64, Arc<Slot>>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a stream answering `admitted` through `reply`, or refuses it
    /// with `overloaded` when the connection holds its cap of streams (the
    /// refusal is sent; the caller does nothing more).
    pub fn open(self: &Arc<Self>, admitted: &Admitted, reply: ReplyTo) -> Result<Stream, Ended> {
        let conn = reply.conn();
        let r = &admitted.request;
        let mut open = self.lock();
        let streams = open.entry(conn).or_default();
        if streams.contains_key(&r.id) {
            drop(open);
            let e = Error::bad_request(format!(
                "id {}: a stream of this connection is open under that id; number each request afresh",
                r.id
            ));
            refuse(admitted, reply, &e);
            return Err(Ended::Finished);
        }
        if streams.len() >= self.per_conn {
            drop(open);
            let e = Error::Overloaded(format!(
                "this connection has {} streams open, the most allowed; cancel one (sys.cancel) or open another connection",
                self.per_conn
            ));
            refuse(admitted, reply, &e);
            return Err(Ended::Overloaded);
        }
        let slot = Arc::new(Slot {
            reply: Mutex::new(Some(reply)),
            cancelled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            key: admitted.key.clone(),
            nonce: r.nonce.clone(),
        });
        streams.insert(r.id, slot.clone());
        Ok(Stream {
            streams: self.clone(),
            conn,
            id: r.id,
            nonce: r.nonce.clone(),
            key: admitted.key.clone(),
            seq: 0,
            slot,
            waiting: None,
        })
    }

    /// `sys.cancel`: ends stream `id` of `conn` with its final reply
    /// `{"cancelled":true}`; whether it was open.
    pub fn cancel(&self, conn: ConnId, id: u64) -> bool {
        let slot = {
            let mut open = self.lock();
            let slot = open.get_mut(&conn).and_then(|s| s.remove(&id));
            if open.get(&conn).is_some_and(HashMap::is_empty) {
                open.remove(&conn);
            }
            slot
        };
        let Some(slot) = slot else {
            return false;
        };
        // Under the reply's lock, so a producer sees the stream either open
        // or cancelled, never finished in between.
        let reply = {
            let mut reply = slot.reply.lock().unwrap_or_else(|p| p.into_inner());
            slot.cancelled.store(true, Ordering::Release);
            reply.take()
        };
        match reply {
            Some(reply) => {
                reply.send(final_frame(&slot.key, id, &slot.nonce, CANCELLED));
                true
            }
            None => false,
        }
    }

    /// The connection closed: every stream of it ends.
    pub fn close_conn(&self, conn: ConnId) {
        let Some(streams) = self.lock().remove(&conn) else {
            return;
        };
        for slot in streams.into_values() {
            // Its replies can no longer be delivered; dropping frees them.
            slot.closed.store(true, Ordering::Release);
            slot.reply.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }

    /// Streams open on `conn`.
    pub fn open_on(&self, conn: ConnId) -> usize {
        self.lock().get(&conn).map_or(0, HashMap::len)
    }

    /// Drops `slot` from the registry, if it is still the one under its id.
    fn forget(&self, conn: ConnId, id: u64, slot: &Arc<Slot>) {
        let mut open = self.lock();
        if let Some(s) = open.get_mut(&conn) {
            if s.get(&id).is_some_and(|o| Arc::ptr_eq(o, slot)) {
                s.remove(&id);
            }
            if s.is_empty() {
                open.remove(&conn);
            }
        }
    }
}

/// Answers a request that opens no stream with `e`, as its final reply.
fn refuse(admitted: &Admitted, reply: ReplyTo, e: &Error) {
    let mut out = Vec::new();
    admitted.error(e, &mut out);
    reply.send(out);
}

fn final_frame(key: &Key, id: u64, nonce: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_ok(Some(key), id, nonce, body, &mut out);
    out
}

/// One open stream, held by its producer. Dropping it unfinished ends it
/// with an `internal` error (a producer that gave up without saying why).
pub struct Stream {
    streams: Arc<Streams>,
    conn: ConnId,
    id: u64,
    nonce: String,
    key: Key,
    seq: u64,
    slot: Arc<Slot>,
    /// A superseding event waiting for room: (event, body).
    waiting: Option<(String, String)>,
}

// === impl Stream ===

impl Stream {
    /// The request this stream answers.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Events sent so far.
    pub fn sent(&self) -> u64 {
        self.seq
    }

    /// Whether the stream has ended (cancelled, its connection closed, or
    /// finished): nothing more can be sent on it.
    pub fn is_ended(&self) -> bool {
        self.state().is_err()
    }

    /// Bytes sent on its connection and not yet written: how far behind
    /// the reader is.
    pub fn backlog(&self) -> usize {
        let reply = self.slot.reply.lock().unwrap_or_else(|p| p.into_inner());
        reply.as_ref().map_or(0, |r| r.outbox().unsent())
    }

    /// Sends an event that cannot be dropped; a reader too slow for it ends
    /// the stream with `overloaded`.
    pub fn event(&mut self, event: &str, body: &str) -> Result<(), Ended> {
        self.flush()?;
        if self.waiting.is_some() {
            // Order is kept: nothing overtakes a waiting event.
            return self.overloaded();
        }
        match self.send(event, body)? {
            true => Ok(()),
            false => self.overloaded(),
        }
    }

    /// Sends an event if the connection's output budget has room for it:
    /// `Ok(false)` if not, and the stream goes on (the producer keeps the
    /// event and offers it again later, as a subscription does with a
    /// message it has not sent yet).
    pub fn offer(&mut self, event: &str, body: &str) -> Result<bool, Ended> {
        if !self.flush()? {
            return Ok(false);
        }
        self.send(event, body)
    }

    /// Sends an event that supersedes the one before it (progress): if the
    /// reader is behind, it waits in place of any older one, and goes out
    /// when there is room.
    pub fn update(&mut self, event: &str, body: &str) -> Result<(), Ended> {
        self.waiting = Some((event.to_string(), body.to_string()));
        self.flush().map(|_| ())
    }

    /// Sends the waiting update, if any, when there is room; whether
    /// nothing waits any more.
    pub fn flush(&mut self) -> Result<bool, Ended> {
        let Some((event, body)) = self.waiting.take() else {
            return self.state().map(|_| true);
        };
        if self.send(&event, &body)? {
            return Ok(true);
        }
        self.waiting = Some((event, body));
        Ok(false)
    }

    /// Ends the stream with its final reply `body` (after any waiting
    /// update).
    pub fn finish(mut self, body: &str) -> Result<(), Ended> {
        if let Some((event, b)) = self.waiting.take() {
            // The last word on progress goes before the end if there is
            // room; if not, the final reply says how it ended anyway, and
            // `end` reports a cancel or a close.
            let _ = self.send(&event, &b);
        }
        let frame = final_frame(&self.key, self.id, &self.nonce, body);
        self.end(frame)
    }

    /// Ends the stream with an error reply.
    pub fn fail(self, e: &Error) -> Result<(), Ended> {
        let mut out = Vec::new();
        encode_error(Some(&self.key), self.id, &self.nonce, e, &mut out);
        self.end(out)
    }

    fn state(&self) -> Result<(), Ended> {
        if self.slot.cancelled.load(Ordering::Acquire) {
            return Err(Ended::Cancelled);
        }
        if self.slot.closed.load(Ordering::Acquire) {
            return Err(Ended::Closed);
        }
        let reply = self.slot.reply.lock().unwrap_or_else(|p| p.into_inner());
        match &*reply {
            None => Err(Ended::Finished),
            Some(r) if r.outbox().is_closed() => Err(Ended::Closed),
            Some(_) => Ok(()),
        }
    }

    /// Sends one event if the budget has room: `Ok(false)` when it has not.
    fn send(&mut self, event: &str, body: &str) -> Result<bool, Ended> {
        self.state()?;
        let mut out = Vec::new();
        encode_event(
            &self.key,
            self.id,
            &self.nonce,
            self.seq + 1,
            event,
            body,
            &mut out,
        );
        let reply = self.slot.reply.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = &*reply else {
            drop(reply);
            self.state()?;
            return Err(Ended::Finished);
        };
        match r.event(out) {
            Ok(()) => {
                self.seq += 1;
                Ok(true)
            }
            Err(SendError::Full { .. }) => Ok(false),
            Err(SendError::Closed) => Err(Ended::Closed),
        }
    }

    fn end(&self, frame: Vec<u8>) -> Result<(), Ended> {
        let reply = self
            .slot
            .reply
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.streams.forget(self.conn, self.id, &self.slot);
        match reply {
            Some(r) => {
                r.send(frame);
                Ok(())
            }
            None if self.slot.cancelled.load(Ordering::Acquire) => Err(Ended::Cancelled),
            None => Err(Ended::Closed),
        }
    }

    fn overloaded(&mut self) -> Result<(), Ended> {
        let e = Error::Overloaded(format!(
            "the reader fell behind: {} events were sent and the next did not fit in this connection's output budget; read faster, or ask for less",
            self.seq
        ));
        let mut out = Vec::new();
        encode_error(Some(&self.key), self.id, &self.nonce, &e, &mut out);
        let _ = self.end(out);
        Err(Ended::Overloaded)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let reply = self
            .slot
            .reply
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.streams.forget(self.conn, self.id, &self.slot);
        if let Some(r) = reply {
            let e = Error::Internal(format!(
                "stream {} ended without a final reply (logged)",
                self.id
            ));
            log::error!("{e}");
            let mut out = Vec::new();
            encode_error(Some(&self.key), self.id, &self.nonce, &e, &mut out);
            r.send(out);
        }
    }
}
