//! The run-once layer: a request of a type that writes runs in one
//! transaction with the record of its `(app, nonce)` and reply
//! ([`dsf_sql::Writes::run_once`]), so the same signed request sent again,
//! to any node, gets the stored reply instead of running again. Every
//! statement the handler runs on this thread through the node's pool
//! (`call.tx(|tx| …)`, the repositories) joins that transaction.
//!
//! A resend this node admitted before is answered from its record when it
//! ran; one still running elsewhere, or refused with "try again" and not
//! recorded, runs: the record's unique key keeps it to once. What the
//! handler asked for after its commit ([`Call::after_commit`]) is forgotten
//! for a run rolled back, and for a resend answered from its record.
//!
//! [`GroupCommit`] is the app server's [`Group`]: a batch of
//! [`Route::batched`](dsf_common::pipeline::Route::batched) writes runs in
//! one transaction ([`dsf_sql::Writes::begin_group`]).

use dsf_common::pipeline::{Group, Layer, Next, Outcome};
use dsf_common::wire;
use dsf_common::{Error, ErrorCode};
use dsf_sql::Once;

use crate::node::{Call, Node};

/// The run-once layer.
pub struct RunOnce;

impl Layer<Node> for RunOnce {
    fn call(&self, call: &mut Call, next: Next<'_, Node>) -> Outcome {
        if !call.ty().writes() {
            return next.run(call);
        }
        // Its own handle: the handler borrows the call while this runs.
        let db = call.server().db().clone();
        let writes = db.writes();
        let (app, nonce, kind) = {
            let r = call.request();
            (r.app.clone(), r.nonce.clone(), r.kind.clone())
        };
        if call.is_resend() {
            if dsf_sql::writes::in_group() {
                // Its record is read on its own, outside any group.
                dsf_sql::writes::break_group("a resend");
                return Outcome::Reply(Err(Error::Unavailable("a resend runs on its own".into())));
            }
            match writes.stored_as(&kind, &app, &nonce) {
                Ok(Some(s)) => {
                    return Outcome::Stored {
                        ok: s.ok,
                        payload: s.reply,
                    }
                }
                Ok(None) => {}
                Err(e) => return Outcome::Reply(Err(e.into())),
            }
        }
        let run = writes.run_once(&app, &nonce, &kind, || {
            // A run rolled back and started again leaves nothing behind.
            call.forget_after_commit();
            match next.run(call) {
                Outcome::Reply(Ok(body)) => (true, body, false),
                Outcome::Reply(Err(e)) => {
                    call.forget_after_commit();
                    if e.code() == ErrorCode::Internal {
                        log::error!("{kind} (request {}): {e}", call.request().id);
                    }
                    // Kept, so a resend gets the same answer; not those
                    // that say to try again.
                    let keep = !e.code().says_try_again();
                    (false, wire::envelope::error_payload(&e), keep)
                }
                other => {
                    call.forget_after_commit();
                    let e = Error::Internal(format!(
                        "{kind} writes, so it is answered by one reply, not {other:?}"
                    ));
                    (false, wire::envelope::error_payload(&e), false)
                }
            }
        });
        match run {
            Ok(Once::Ran(s)) => Outcome::Stored {
                ok: s.ok,
                payload: s.reply,
            },
            Ok(Once::Replayed(s)) => {
                call.forget_after_commit();
                log::debug!(
                    "{kind} (request {}): ran before on some node; answered with its stored reply",
                    call.request().id
                );
                Outcome::Stored {
                    ok: s.ok,
                    payload: s.reply,
                }
            }
            Err(e) => {
                call.forget_after_commit();
                Outcome::Reply(Err(e.into()))
            }
        }
    }
}

/// Batches of writes in one transaction; see the module documentation.
pub struct GroupCommit(pub dsf_sql::Db);

impl Group for GroupCommit {
    fn begin(&self) -> bool {
        match self.0.writes().begin_group() {
            Ok(()) => true,
            Err(e) => {
                log::debug!("no group commit: {e}");
                false
            }
        }
    }

    fn commit(&self) -> Result<(), String> {
        self.0.writes().commit_group()
    }

    fn abort(&self) {
        dsf_sql::writes::break_group("aborted");
        let _ = self.0.writes().commit_group();
    }
}
