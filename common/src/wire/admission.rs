//! Admission: the checks every server runs on a frame before it acts on it.
//! Parse, find the app's key, verify the signature, then the timestamp, then
//! remember the nonce (only once the signature is known good).

use std::sync::Mutex;

use crate::error::Error;
use crate::wire::envelope::{self, Rejection, Request};
use crate::wire::keys::AppKeys;
use crate::wire::replay::ReplayGuard;
use crate::wire::sign::Key;

/// A request that passed admission, with the key its reply is signed with.
#[derive(Debug)]
pub struct Admitted {
    pub request: Request,
    pub key: Key,
    /// Its nonce was seen before (only for types that run once, see
    /// [`Admission::admit_with`]): answer with the stored reply, never run it.
    pub replayed: bool,
}

/// A refused frame: the error, the id to answer under, and the key to sign
/// the answer with (`None` when the app is unknown or the frame unparsable).
#[derive(Debug)]
pub struct Refused {
    pub rejection: Rejection,
    pub key: Option<Key>,
}

// === impl Refused ===

impl Refused {
    /// Appends the error reply to `out` as one frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        envelope::encode_error(
            self.key.as_ref(),
            self.rejection.id,
            &self.rejection.nonce,
            &self.rejection.error,
            out,
        )
    }

    /// Whether the connection must be closed after the reply.
    pub fn closes_connection(&self) -> bool {
        self.rejection.error.code().closes_connection()
    }
}

// === impl Admitted ===

impl Admitted {
    /// Appends the signed reply `body` (a serialised JSON object).
    pub fn ok(&self, body: &str, out: &mut Vec<u8>) {
        let r = &self.request;
        envelope::encode_ok(Some(&self.key), r.id, &r.nonce, body, out)
    }

    /// Appends the signed error reply.
    pub fn error(&self, error: &Error, out: &mut Vec<u8>) {
        let r = &self.request;
        envelope::encode_error(Some(&self.key), r.id, &r.nonce, error, out)
    }
}

/// Keys plus the replay guard; share one per server (`Arc`).
#[derive(Debug)]
pub struct Admission {
    keys: AppKeys,
    guard: Mutex<ReplayGuard>,
}

// === impl Admission ===

impl Admission {
    /// Admission over `keys` with the given replay guard.
    pub fn new(keys: AppKeys, guard: ReplayGuard) -> Admission {
        Admission {
            keys,
            guard: Mutex::new(guard),
        }
    }

    /// The keys admitted.
    pub fn keys(&self) -> &AppKeys {
        &self.keys
    }

    /// Runs every check on one frame's payload.
    pub fn admit(&self, payload: &[u8]) -> Result<Admitted, Refused> {
        self.admit_at(payload, envelope::now_ms())
    }

    /// [`Admission::admit`], except that a genuine request of a type for
    /// which `runs_once` holds is admitted with [`Admitted::replayed`] set
    /// when its nonce was seen before: such a type's reply is stored, and a
    /// resend gets it rather than `replayed_nonce`.
    pub fn admit_with(
        &self,
        payload: &[u8],
        runs_once: impl Fn(&str) -> bool,
    ) -> Result<Admitted, Refused> {
        self.admit_checked(payload, envelope::now_ms(), runs_once)
    }

    /// [`Admission::admit`] against a given clock.
    pub fn admit_at(&self, payload: &[u8], now_ms: u64) -> Result<Admitted, Refused> {
        self.admit_checked(payload, now_ms, |_| false)
    }

    fn admit_checked(
        &self,
        payload: &[u8],
        now_ms: u64,
        runs_once: impl Fn(&str) -> bool,
    ) -> Result<Admitted, Refused> {
        let request = Request::parse(payload).map_err(|rejection| Refused {
            rejection,
            key: None,
        })?;
        let refuse = |error: Error, key: Option<&Key>| Refused {
            rejection: Rejection {
                id: request.id,
                nonce: request.nonce.clone(),
                error,
            },
            key: key.cloned(),
        };
        let Some(key) = self.keys.get(&request.app) else {
            let app = request.app.as_str();
            let fix = if let Some(node) = app.strip_prefix(crate::wire::keys::NODE_APP_PREFIX) {
                format!("node {node:?} is not in this collector's --node-keys (only collectors take node keys)")
            } else if app == crate::wire::keys::CLUSTER_APP {
                "this server takes no cluster secret (app servers sign peer.notify with the peer secret, app \"peer\")".into()
            } else if app == crate::wire::keys::PEER_APP {
                "only app servers take the peer secret".into()
            } else {
                "add it to --app-keys".into()
            };
            return Err(refuse(
                Error::Unauthorized(format!(
                    "unknown app {app:?}: this server has no key for it ({fix})"
                )),
                None,
            ));
        };
        if let Err(e) = key.verify_request(&request.signed_fields(), &request.sig) {
            return Err(refuse(e, Some(key)));
        }
        let admitted = self.guard.lock().unwrap_or_else(|p| p.into_inner()).admit(
            &request.app,
            &request.nonce,
            request.ts,
            now_ms,
        );
        let mut replayed = false;
        if let Err(e) = admitted {
            if e.code() == crate::error::ErrorCode::ReplayedNonce && runs_once(&request.kind) {
                replayed = true;
            } else {
                return Err(refuse(e, Some(key)));
            }
        }
        if let Err(allowed) = self.keys.scope(&request.app, &request.kind) {
            let e = Error::Forbidden(format!(
                "app {:?}'s key may send only {allowed}; {} is not among them (its entry in --app-keys scopes it)",
                request.app, request.kind
            ));
            return Err(refuse(e, Some(key)));
        }
        let key = key.clone();
        Ok(Admitted {
            request,
            key,
            replayed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::wire::envelope::{encode_request_at, OutgoingRequest};
    use crate::wire::frame::HEADER_LEN;

    fn frame(key: &Key, app: &str, ts: u64, nonce: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let req = OutgoingRequest {
            id: 7,
            kind: "sys.ping",
            app,
            token: None,
            body: "{}",
        };
        encode_request_at(key, &req, ts, nonce, &mut out);
        out.split_off(HEADER_LEN)
    }

    fn admission() -> Admission {
        let mut keys = AppKeys::new();
        keys.insert("cli", b"secret");
        Admission::new(keys, ReplayGuard::default())
    }

    const NOW: u64 = 1_763_700_000_000;

    #[test]
    fn a_good_request_is_admitted_once() {
        let a = admission();
        let f = frame(&Key::new(b"secret"), "cli", NOW, "0011223344556677");
        assert_eq!(a.admit_at(&f, NOW).unwrap().request.id, 7);
        let r = a.admit_at(&f, NOW).unwrap_err();
        assert_eq!(r.rejection.error.code(), ErrorCode::ReplayedNonce);
        assert!(r.key.is_some() && !r.closes_connection());
    }

    #[test]
    fn a_forged_request_does_not_burn_its_nonce() {
        let a = admission();
        let forged = frame(&Key::new(b"wrong"), "cli", NOW, "0011223344556677");
        let r = a.admit_at(&forged, NOW).unwrap_err();
        assert_eq!(r.rejection.error.code(), ErrorCode::BadSignature);
        // The genuine sender's request with the same nonce still goes through.
        let good = frame(&Key::new(b"secret"), "cli", NOW, "0011223344556677");
        a.admit_at(&good, NOW).unwrap();
    }

    #[test]
    fn unknown_app_is_answered_unsigned() {
        let a = admission();
        let f = frame(&Key::new(b"secret"), "who", NOW, "0011223344556677");
        let r = a.admit_at(&f, NOW).unwrap_err();
        assert_eq!(r.rejection.error.code(), ErrorCode::Unauthorized);
        assert!(r.key.is_none());
    }

    #[test]
    fn stale_request_is_refused_signed() {
        let a = admission();
        let f = frame(
            &Key::new(b"secret"),
            "cli",
            NOW - 61_000,
            "0011223344556677",
        );
        let r = a.admit_at(&f, NOW).unwrap_err();
        assert_eq!(r.rejection.error.code(), ErrorCode::StaleTimestamp);
        assert!(r.key.is_some());
    }
}
