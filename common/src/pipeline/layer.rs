//! [`Layer`]: one concern of the request path, wrapped around the rest of
//! it. Layers are sync and run on the thread that runs the request (a
//! worker, or the reactor for inline routes); each calls [`Next::run`] to
//! go on, or answers itself (a refusal, a stored reply, a long poll
//! parked). The pipeline composes them in one place
//! ([`super::Builder::build`]): metrics, auth, rate limits, then the
//! server's own (the app server's long polls and run-once writes), then
//! the handler.

use super::Call;
use crate::error::{Error, Result};

/// What became of a request.
#[derive(Debug)]
pub enum Outcome {
    /// Answer with this body, or this error.
    Reply(Result<String>),
    /// A reply as stored by a write that ran once: `ok`, and the body or
    /// the error object as it was sent the first time.
    Stored {
        /// Whether it was a success.
        ok: bool,
        /// The reply's body, or the error object.
        payload: String,
    },
    /// Answered through its reply handle (a stream opened, a reply given
    /// later); `ok` is false when it was refused.
    Answered {
        /// False when it was refused.
        ok: bool,
    },
    /// Park it: a long poll waits for its topic or its time.
    Park(super::Wait),
}

// === impl Outcome ===

impl Outcome {
    /// Whether it counts as a success.
    pub fn is_ok(&self) -> bool {
        match self {
            Outcome::Reply(r) => r.is_ok(),
            Outcome::Stored { ok, .. } | Outcome::Answered { ok } => *ok,
            Outcome::Park(_) => true,
        }
    }

    /// The error of a refusal.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Outcome::Reply(Err(e)) => Some(e),
            _ => None,
        }
    }
}

/// One concern of the request path. See the module documentation.
///
/// ```
/// use dsf_common::pipeline::{Call, Layer, Next, Outcome};
///
/// /// Logs every request that took longer than 100 ms.
/// struct Slow;
///
/// impl<S: Send + Sync + 'static> Layer<S> for Slow {
///     fn call(&self, call: &mut Call<S>, next: Next<'_, S>) -> Outcome {
///         let outcome = next.run(call);
///         if call.received().elapsed().as_millis() > 100 {
///             log::warn!("{} took {:?}", call.kind(), call.received().elapsed());
///         }
///         outcome
///     }
/// }
/// ```
pub trait Layer<S: Send + Sync + 'static>: Send + Sync + 'static {
    /// Handles `call`, going on with `next` or answering itself.
    fn call(&self, call: &mut Call<S>, next: Next<'_, S>) -> Outcome;
}

/// The rest of the path after a layer. It may be run more than once (the
/// run-once layer runs a write again after a lost race).
pub struct Next<'a, S: Send + Sync + 'static> {
    pub(super) rest: &'a [Box<dyn Layer<S>>],
}

impl<S: Send + Sync + 'static> Clone for Next<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: Send + Sync + 'static> Copy for Next<'_, S> {}

impl<S: Send + Sync + 'static> Next<'_, S> {
    /// Runs the layers after this one, then the handler.
    pub fn run(self, call: &mut Call<S>) -> Outcome {
        match self.rest.split_first() {
            Some((layer, rest)) => layer.call(call, Next { rest }),
            None => super::handle(call),
        }
    }
}
