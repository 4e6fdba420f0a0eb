//! The auth layer: who may send what, one rule set for every server, read
//! from each route's [`Auth`] (declared with its message type).
//!
//! - `App`: any app key. Node keys and the peer secret sign only their own
//!   types, so a key handed to one node or to the app servers is good for
//!   nothing else.
//! - `AppOrUser`: an app key; a session token, when sent, must be valid.
//! - `Viewer`, `Operator`, `Admin`: a session of a user with at least that
//!   role, made under the same app's key (a sniffed token is no good with
//!   another app's key).
//! - `Cluster`: the cluster secret (app `cluster`).
//! - `Node`: a node's own key speaking for itself (app `node:<id>`, the
//!   body's `id` the same), or the cluster secret where the server takes no
//!   node keys.
//! - `Peer`: the peer secret (app `peer`), between app servers.
//!
//! Sessions are looked up through [`Sessions`], which a server with
//! accounts provides (the app server's accounts service); a server without
//! one cannot serve types that need a user, and refuses to start with them.

use std::sync::Arc;

use dsf_proto::Auth;

use super::{Call, Layer, Next, Outcome, Session};
use crate::error::{Error, Result};
use crate::wire::keys::{CLUSTER_APP, NODE_APP_PREFIX, PEER_APP};

/// Finds the session of a token.
pub trait Sessions: Send + Sync + 'static {
    /// The unexpired session of `token`, if there is one.
    fn session(&self, token: &str) -> Result<Option<Session>>;
}

/// The auth layer; see the module documentation.
pub struct AuthLayer {
    pub(super) sessions: Option<Arc<dyn Sessions>>,
    /// Whether `Node` types must come under node keys (`--node-keys`).
    pub(super) node_keys: bool,
    /// The types each reserved signer may send, for the refusals.
    pub(super) peer_types: String,
    pub(super) node_types: String,
}

// === impl AuthLayer ===

impl AuthLayer {
    /// Checks `call` against its route's auth; the session, when one is read.
    pub fn check<S: Send + Sync + 'static>(&self, call: &Call<S>) -> Result<Option<Session>> {
        let (kind, app, auth) = (call.kind(), call.app(), call.ty().auth);
        if app == PEER_APP && auth != Auth::Peer {
            return Err(Error::Forbidden(format!(
                "the peer secret signs only {} on this server, not {kind}",
                self.peer_types
            )));
        }
        if app.starts_with(NODE_APP_PREFIX) && auth != Auth::Node {
            return Err(Error::Forbidden(format!(
                "a node key signs only {}, not {kind}",
                self.node_types
            )));
        }
        match auth {
            Auth::App => Ok(None),
            Auth::AppOrUser => match call.token() {
                Some(_) => self.session(call).map(Some),
                None => Ok(None),
            },
            Auth::Viewer | Auth::Operator | Auth::Admin => {
                let s = self.session(call)?;
                let min = auth.role().expect("a role's auth names the role");
                if s.user.role < min {
                    return Err(Error::Forbidden(format!(
                        "{kind} needs role {min} or above; user {:?} is {}",
                        s.user.name, s.user.role
                    )));
                }
                Ok(Some(s))
            }
            Auth::Cluster if app == CLUSTER_APP => Ok(None),
            Auth::Cluster => Err(Error::Forbidden(format!(
                "{kind} needs the cluster secret (app \"cluster\"), not app {app:?}"
            ))),
            Auth::Peer if app == PEER_APP => Ok(None),
            Auth::Peer => Err(Error::Forbidden(format!(
                "{kind} is for app servers, under the peer secret (app \"peer\"), not app {app:?}"
            ))),
            Auth::Node => self.speaks_for(call).map(|()| None),
        }
    }

    /// The rule of [`Auth::Node`].
    fn speaks_for<S: Send + Sync + 'static>(&self, call: &Call<S>) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Named {
            id: String,
        }
        let (kind, app) = (call.kind(), call.app());
        if app == CLUSTER_APP {
            if self.node_keys {
                return Err(Error::Forbidden(format!(
                    "this collector takes {kind} only under node keys (--node-keys): sign with the node's own key \
                     (app-server --node-key-file), not the cluster secret"
                )));
            }
            return Ok(());
        }
        let Some(signer) = app.strip_prefix(NODE_APP_PREFIX) else {
            return Err(Error::Forbidden(format!(
                "{kind} needs a node's own key (app \"node:<id>\") or the cluster secret, not app {app:?}"
            )));
        };
        let named: Named = call.request().body()?;
        if named.id != signer {
            return Err(Error::Forbidden(format!(
                "signed with node {signer:?}'s key, which speaks only for {signer:?}, not for {:?}",
                named.id
            )));
        }
        Ok(())
    }

    /// The session of the request's token, made under the same app's key.
    fn session<S: Send + Sync + 'static>(&self, call: &Call<S>) -> Result<Session> {
        let kind = call.kind();
        let Some(token) = call.token() else {
            return Err(Error::Unauthorized(format!(
                "{kind} needs a session token: log in with user.login and send its token"
            )));
        };
        let Some(sessions) = &self.sessions else {
            return Err(Error::Internal(format!(
                "{kind} needs a session, and this server has no accounts service"
            )));
        };
        let Some(s) = sessions.session(token)? else {
            return Err(Error::Unauthorized(
                "session token is unknown, expired or logged out: log in again with user.login"
                    .into(),
            ));
        };
        if s.app.as_deref() != Some(call.app()) {
            return Err(Error::Unauthorized(
                "this session token was made under another app's key: log in with this app (user.login)"
                    .into(),
            ));
        }
        Ok(s)
    }
}

impl<S: Send + Sync + 'static> Layer<S> for AuthLayer {
    fn call(&self, call: &mut Call<S>, next: Next<'_, S>) -> Outcome {
        // A long poll released from its wait passed already.
        if !call.woken {
            match self.check(call) {
                Ok(session) => call.session = session,
                Err(e) => return Outcome::Reply(Err(e)),
            }
        }
        next.run(call)
    }
}
