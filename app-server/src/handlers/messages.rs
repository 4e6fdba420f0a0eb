//! Messaging: `msg.send`, `msg.ack`, `msg.history`, `msg.join`,
//! `msg.leave` (a logged-in user), over [`dsf_sql::messages`]; and the
//! route of `msg.subscribe`, a stream served by [`subscribe`] and the
//! [`crate::mailroom`]. Bodies and replies are the catalogue's
//! (`dsf_proto::msg`).
//!
//! A send is stored before anyone is told: its reply and the inbox rows
//! commit with its run-once record, and only then is the recipient's node
//! notified ([`Effect::Notify`]). A lost notification costs a poll
//! interval, never the message.

use dsf_common::{Error, Result};
use dsf_proto::msg::{
    self as msg, AckBody, Entry, History, HistoryBody, Joined, RoomBody, SendBody, Sent,
    SubscribeBody, BODY_MAX, CREDIT_DEFAULT, CREDIT_MAX, HISTORY_DEFAULT,
};
use dsf_proto::Empty;
use dsf_sql::messages::Sender;

use crate::controller::{json, parse_body, route, Call, Controller, Effect, Exec, Route};
use crate::mailroom::Sub;
use crate::service::Job;

/// This group's routes. `msg.subscribe` is listed for its auth and runs
/// as a stream ([`subscribe`]), not through its handler.
pub const ROUTES: &[Route] = &[
    route::<msg::Send>(Exec::Pool, send),
    route::<msg::Subscribe>(Exec::Pool, streamed),
    route::<msg::Ack>(Exec::Pool, ack),
    route::<msg::GetHistory>(Exec::Pool, history),
    route::<msg::Join>(Exec::Pool, join),
    route::<msg::Leave>(Exec::Pool, leave),
];

/// Largest body carried in a notification.
const CARRY_MAX: usize = 8 * 1024;

fn streamed(call: &Call<'_>) -> Result<String> {
    Err(Error::Internal(format!(
        "{} is a stream and is served by the mailroom, not by a handler",
        call.request.kind
    )))
}

/// `msg.send`: to `to` (a user name) or to every other member of `room`.
pub fn send(call: &Call<'_>) -> Result<String> {
    let b: SendBody = call.body()?;
    let me = &call.session()?.user;
    let len = b.body.get().len();
    if len > BODY_MAX {
        return Err(Error::bad_request(format!(
            "body: at most {BODY_MAX} bytes of JSON, got {len}"
        )));
    }
    let from = Sender {
        id: me.id,
        name: &me.name,
    };
    let m = call.app.db.messages();
    let (stored, sent) = match (&b.to, &b.room) {
        (Some(to), None) => {
            let s = m.send_to_id(from, call.app.user_id(to)?, b.body.get())?;
            let seq = s.listed.first().map(|l| l.seq);
            let sent = Sent {
                id: s.id,
                seq,
                recipients: None,
            };
            (s, sent)
        }
        (None, Some(room)) => {
            let s = m.send_to_room(from, room, b.body.get())?;
            let sent = Sent {
                id: s.id,
                seq: None,
                recipients: Some(s.listed.len() as u64),
            };
            (s, sent)
        }
        _ => {
            return Err(Error::bad_request(
                "name one recipient: `to` (a user name) or `room`, not both",
            ))
        }
    };
    // A direct message of modest size rides in its notification as the
    // recipient's `message` event, so their node pushes it without reading
    // it back; a room's (one notification a member) and a big one do not.
    let carry = b.room.is_none() && len <= CARRY_MAX;
    for l in stored.listed {
        let Some(node) = l.node else { continue };
        let event = match carry {
            true => Some(json(&msg::Message {
                id: stored.id,
                seq: l.seq,
                from: me.name.clone(),
                room: None,
                body: b.body.clone(),
                sent_at: stored.sent_at,
            })?),
            false => None,
        };
        call.after_commit(Effect::Notify {
            node,
            user: l.user,
            seq: l.seq,
            event,
        });
    }
    json(&sent)
}

/// `msg.ack {upto}`: the subscription on this connection delivered up to
/// `upto` and its client handled them.
pub fn ack(call: &Call<'_>) -> Result<String> {
    let b: AckBody = call.body()?;
    let me = &call.session()?.user;
    let sub = call
        .conn
        .and_then(|c| call.app.mail.state_of(c).map(|s| (c, s)));
    let Some((conn, sub)) = sub else {
        return Err(Error::bad_request(
            "no msg.subscribe is open on this connection: msg.ack acknowledges what a subscription delivered, on the connection it delivered on",
        ));
    };
    if sub.user != me.id {
        return Err(Error::Forbidden(
            "the subscription on this connection is another user's".into(),
        ));
    }
    if b.upto > sub.sent {
        return Err(Error::bad_request(format!(
            "upto: {} is beyond the last message this subscription delivered ({})",
            b.upto, sub.sent
        )));
    }
    if b.upto > sub.acked {
        call.app.db.messages().ack(me.id, b.upto)?;
        call.after_commit(Effect::Acked {
            conn,
            user: me.id,
            upto: b.upto,
        });
    }
    json(&Empty {})
}

/// `msg.history`: messages you sent and received, newest first.
pub fn history(call: &Call<'_>) -> Result<String> {
    let b: HistoryBody = call.body()?;
    let me = &call.session()?.user;
    let limit = dsf_sql::validate::limit(b.limit, HISTORY_DEFAULT)?;
    let rows = call
        .app
        .db
        .messages()
        .history(me.id, b.with.as_deref(), b.before, limit)?;
    let next = (rows.len() == limit as usize)
        .then(|| rows.last().map(|e| e.id))
        .flatten();
    let messages = rows
        .into_iter()
        .map(|e| Entry {
            id: e.id,
            from: e.from,
            to: e.to,
            room: e.room,
            body: raw(e.body),
            sent_at: e.sent_at,
            seq: e.seq,
        })
        .collect();
    json(&History { messages, next })
}

/// `msg.join`: joins a room, making it on the first join.
pub fn join(call: &Call<'_>) -> Result<String> {
    let b: RoomBody = call.body()?;
    let me = &call.session()?.user;
    let members = call.app.db.messages().join(me.id, &b.room)?;
    json(&Joined {
        room: b.room,
        members,
    })
}

/// `msg.leave`: leaves a room.
pub fn leave(call: &Call<'_>) -> Result<String> {
    let b: RoomBody = call.body()?;
    let me = &call.session()?.user;
    call.app.db.messages().leave(me.id, &b.room)?;
    json(&Empty {})
}

/// Stored JSON text as a raw value (it was valid JSON when sent).
pub fn raw(body: String) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(body)
        .unwrap_or_else(|_| serde_json::value::RawValue::from_string("null".into()).expect("JSON"))
}

/// `msg.subscribe {credit?}`, on a worker: checks the session, records the
/// user's presence on this node (ending any older subscription of theirs,
/// here or elsewhere), opens the stream, and hands it to the mailroom.
/// Errors before the stream opens are its final reply.
pub fn subscribe(controller: &Controller, job: Job) {
    let Job {
        admitted,
        reply,
        received,
        ..
    } = job;
    let app = controller.app();
    let conn = reply.conn();
    let opened = (|| {
        let b: SubscribeBody = parse_body(admitted.request.body.get())?;
        let credit = b.credit.unwrap_or(CREDIT_DEFAULT);
        if credit == 0 || credit > CREDIT_MAX {
            return Err(Error::bad_request(format!(
                "credit: 1 to {CREDIT_MAX} messages unacknowledged at a time, got {credit}"
            )));
        }
        let r = &admitted.request;
        let session = controller.session_for(&r.app, r.token.as_deref(), "msg.subscribe")?;
        if reply.outbox().is_closed() {
            // Queued while its connection went away: it must not take over
            // the subscription its client has made since.
            return Err(Error::Unavailable("the connection closed".into()));
        }
        app.mail.reserve(conn)?;
        match app.db.messages().subscribe(session.user.id, app.node()) {
            Ok(s) => Ok((session.user, credit, s)),
            Err(e) => {
                app.mail.unreserve(conn);
                Err(Error::from(e))
            }
        }
    })();
    let (user, credit, s) = match opened {
        Ok(v) => v,
        Err(e) => {
            let mut out = Vec::new();
            admitted.error(&e, &mut out);
            reply.send(out);
            controller.metrics().record(received, false);
            return;
        }
    };
    let Ok(stream) = controller.streams().open(&admitted, reply) else {
        // Refused (the connection's cap of streams): the refusal was sent.
        app.mail.unreserve(conn);
        let _ = app.db.messages().unsubscribe(user.id, s.epoch);
        controller.metrics().record(received, false);
        return;
    };
    log::debug!(
        "user {} subscribed (epoch {}, from message {})",
        user.name,
        s.epoch,
        s.acked + 1
    );
    app.mail.open(
        conn,
        Sub {
            user: user.id,
            name: user.name,
            stream,
            epoch: s.epoch,
            acked: s.acked,
            sent: s.acked,
            credit,
        },
    );
    controller.metrics().record(received, true);
}
