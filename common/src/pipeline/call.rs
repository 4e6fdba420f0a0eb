//! [`Call`]: one request on its way through the pipeline, as every layer
//! and the handler see it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use dsf_proto::user::User;
use dsf_proto::Type;

use super::{Pipeline, Route};
use crate::error::{Error, Result};
use crate::reactor::{ConnId, ReplyTo};
use crate::wire::{Admitted, Request};

/// A user's session, as the auth layer found it for a request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Whose session it is, as of the lookup (a role change applies within
    /// the session cache's time).
    pub user: User,
    /// The app whose key logged in; the token is good only with that app's
    /// key (`None`: a session made before sessions had one).
    pub app: Option<String>,
    /// When it stops being valid, Unix ms.
    pub expires_at: i64,
}

/// One request: what was received, who sent it (after the auth layer), and
/// what to do once it is answered. Handlers get `&Call<S>`, where `S` is
/// the server's shared state ([`Call::server`]).
pub struct Call<S: Send + Sync + 'static> {
    pub(super) pipe: Arc<Pipeline<S>>,
    pub(super) route: usize,
    pub(super) admitted: Admitted,
    pub(super) peer: SocketAddr,
    pub(super) listener: Option<usize>,
    pub(super) conn: ConnId,
    pub(super) received: Instant,
    pub(super) session: Option<Session>,
    pub(super) woken: bool,
    pub(super) after: RefCell<Vec<Box<dyn FnOnce() + Send>>>,
    pub(super) reply: Option<ReplyTo>,
    /// The requests of the group it runs in, and its place among them.
    pub(super) batch: Option<(Arc<[Batched]>, usize)>,
}

/// A request of the group a [`Route::batched`] request runs in
/// ([`Call::batch`]).
#[derive(Debug, Clone)]
pub struct Batched {
    /// Its body, as sent.
    pub body: String,
    /// Its app and nonce: what its run-once record is kept under.
    pub app: String,
    pub nonce: String,
}

// === impl Call ===

impl<S: Send + Sync + 'static> Call<S> {
    /// The server's shared state.
    pub fn server(&self) -> &S {
        &self.pipe.server
    }

    /// The pipeline serving the call (for work after it, on other threads).
    pub fn pipeline(&self) -> &Arc<Pipeline<S>> {
        &self.pipe
    }

    /// The request as received: id, type, app, token, body.
    pub fn request(&self) -> &Request {
        &self.admitted.request
    }

    /// The message type, e.g. `order.place`.
    pub fn kind(&self) -> &str {
        &self.admitted.request.kind
    }

    /// Its catalogue entry.
    pub fn ty(&self) -> &Type {
        &self.route().ty
    }

    /// The app id whose key signed the request.
    pub fn app(&self) -> &str {
        &self.admitted.request.app
    }

    /// The session token sent with the request, if any.
    pub fn token(&self) -> Option<&str> {
        self.admitted
            .request
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
    }

    /// The caller's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The index of the listen address the request came in on.
    pub fn listener(&self) -> Option<usize> {
        self.listener
    }

    /// The connection it came on (a stream of that connection, say).
    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    /// When its frame was decoded.
    pub fn received(&self) -> Instant {
        self.received
    }

    /// The caller's session: always there for types that need a role,
    /// there for `AppOrUser` types when a token was sent.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The logged-in caller; `unauthorized` when the request carried no
    /// session (an `AppOrUser` type called without a token).
    pub fn user(&self) -> Result<&User> {
        self.session.as_ref().map(|s| &s.user).ok_or_else(|| {
            Error::Unauthorized(format!(
                "{} needs a session token here: log in with user.login and send its token",
                self.kind()
            ))
        })
    }

    /// A [`Route::batched`] request running in a group with others: the
    /// group's requests (this one's included), in the order they run, and
    /// this one's place among them. A handler may use it to make ready for
    /// the whole group at once (take every row the group will lock, in one
    /// order, with one statement). `None` when it runs on its own.
    pub fn batch(&self) -> Option<(&[Batched], usize)> {
        self.batch.as_ref().map(|(b, i)| (&b[..], *i))
    }

    /// Whether this is a long poll run again after its wait (woken by its
    /// topic, or its time up): it runs now, whatever it finds.
    pub fn is_woken(&self) -> bool {
        self.woken
    }

    /// Runs `f` once the request succeeded and its write committed (never
    /// for a request refused or rolled back, nor for a resend answered
    /// from its stored reply). Wake-ups and notifications go here, so
    /// that whoever they reach finds the write stored.
    pub fn after_commit(&self, f: impl FnOnce() + Send + 'static) {
        self.after.borrow_mut().push(Box::new(f));
    }

    /// Forgets what [`Call::after_commit`] was given: the run it belonged
    /// to was rolled back (the run-once layer runs a handler again after a
    /// lost race, and answers a resend from its stored reply).
    pub fn forget_after_commit(&self) {
        self.after.borrow_mut().clear();
    }

    /// Ends stream `id` of this connection (`sys.cancel`); whether it was open.
    pub fn cancel_stream(&self, id: u64) -> bool {
        self.pipe.streams.cancel(self.conn, id)
    }

    /// Streams open on this connection.
    pub fn streams_open(&self) -> usize {
        self.pipe.streams.open_on(self.conn)
    }

    /// Whether the request is a resend of a write this node admitted
    /// before (its stored reply answers it, if it ran).
    pub fn is_resend(&self) -> bool {
        self.admitted.replayed
    }

    /// The admitted request with the key its reply is signed with.
    pub fn admitted(&self) -> &Admitted {
        &self.admitted
    }

    pub(super) fn route(&self) -> &Route<S> {
        &self.pipe.router.routes[self.route]
    }

    /// Whether the connection that sent it has closed, so that no reply
    /// can reach it: a parked long poll in that state is dropped rather
    /// than run (a claim would take tasks for no one).
    pub fn client_gone(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| r.outbox().is_closed())
    }

    /// Whether the client has sent EOF since: it may still wait for this
    /// reply (a half-close) or be gone, so a wake-up for a few long polls
    /// goes to others first.
    pub fn client_done_sending(&self) -> bool {
        self.reply
            .as_ref()
            .is_some_and(|r| r.outbox().peer_done_sending())
    }

    /// Marks the call as released from its wait.
    pub fn set_woken(&mut self) {
        self.woken = true;
    }

    /// The reply handle of a request answered from another thread.
    pub(super) fn take_reply(&mut self) -> Option<ReplyTo> {
        self.reply.take()
    }
}

impl<S: Send + Sync + 'static> std::fmt::Debug for Call<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("kind", &self.kind())
            .field("id", &self.admitted.request.id)
            .field("app", &self.app())
            .field("peer", &self.peer)
            .finish()
    }
}
