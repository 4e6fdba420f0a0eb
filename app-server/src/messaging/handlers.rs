//! Messaging's handlers: `msg.send`, `msg.ack`, `msg.history`, `msg.join`,
//! `msg.leave` (a logged-in user), `msg.subscribe` (a stream the
//! [`super::mailroom`] fills) and `peer.notify` (another app server), over
//! [`dsf_sql::messages`]. Bodies and replies are the catalogue's
//! (`dsf_proto::msg`).
//!
//! A send is stored before anyone is told: its reply and the inbox rows
//! commit with its run-once record, and only then is the recipient's node
//! notified (after the commit). A lost notification costs a poll
//! interval, never the message.

use dsf_common::pipeline::{Batched, Stream};
use dsf_common::{Error, Result};
use dsf_proto::msg::{
    self as msg, AckBody, Entry, History, HistoryBody, Joined, NotifyBody, RoomBody, SendBody,
    Sent, Subscribe, SubscribeBody, BODY_MAX, CREDIT_DEFAULT, CREDIT_MAX, HISTORY_DEFAULT,
};
use dsf_proto::Empty;
use dsf_sql::messages::{GroupSend, Sender};

use super::mailroom::{Mailroom, Sub};
use super::Messaging;
use crate::node::{Call, CallExt};

/// Largest body carried in a notification.
const CARRY_MAX: usize = 8 * 1024;

/// `msg.send`: to `to` (a user name) or to every other member of `room`.
pub fn send(call: &Call, b: SendBody) -> Result<Sent> {
    let me = call.user()?;
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
    let m = call.db().messages();
    // The group's first send makes it ready for all (a group whose first
    // request is refused before it gets here is run again one by one).
    let in_group = call.batch();
    if let Some((requests, 0)) = in_group {
        prepare_group(call, from, requests)?;
    }
    let (stored, sent) = match (&b.to, &b.room) {
        (Some(to), None) => {
            let to = call.state::<Messaging>().user_id(call.db(), to)?;
            let s = match in_group.and_then(|(_, i)| m.send_in_group(i, from, to, b.body.get())) {
                Some(s) => s?,
                None => m.send_to_id(from, to, b.body.get())?,
            };
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
            true => Some(dsf_common::pipeline::render(&msg::Message {
                id: stored.id,
                seq: l.seq,
                from: me.name.clone(),
                room: None,
                body: b.body.clone(),
                sent_at: stored.sent_at,
            })?),
            false => None,
        };
        let pipeline = call.pipeline().clone();
        call.after_commit(move || {
            let n = pipeline.server();
            if node == n.id() {
                let mail = n.state::<Mailroom>();
                match event {
                    Some(event) => mail.push(l.user, l.seq, event),
                    None => mail.wake(l.user),
                }
            } else {
                let message = event.and_then(|e| serde_json::value::RawValue::from_string(e).ok());
                n.peers().send::<msg::Notify>(
                    &node,
                    &NotifyBody {
                        user: l.user,
                        seq: l.seq,
                        message,
                    },
                );
            }
        });
    }
    Ok(sent)
}

/// Makes the group this send runs in ready for its direct sends from
/// this user (see `dsf_sql::messages`). A group with a room's send in it
/// is left as it is (a room's send takes its members' rows itself), and so
/// are bodies that do not parse and names that are not users (those sends
/// are refused on their own).
fn prepare_group(call: &Call, from: Sender<'_>, requests: &[Batched]) -> Result<()> {
    let parsed: Vec<Option<SendBody>> = requests
        .iter()
        .map(|r| serde_json::from_str::<SendBody>(&r.body).ok())
        .collect();
    let mut sends = Vec::with_capacity(requests.len());
    for ((index, b), r) in parsed.iter().enumerate().zip(requests) {
        let Some(b) = b else { continue };
        match (&b.to, &b.room) {
            (Some(name), None) => {
                if let Ok(to) = call.state::<Messaging>().user_id(call.db(), name) {
                    sends.push(GroupSend {
                        index,
                        to,
                        body: b.body.get(),
                        key: (&r.app, &r.nonce),
                    });
                }
            }
            (None, Some(_)) => return Ok(()),
            _ => {}
        }
    }
    Ok(call.db().messages().prepare_group(from, &sends)?)
}

/// `msg.ack {upto}`: the subscription on this connection delivered up to
/// `upto` and its client handled them.
pub fn ack(call: &Call, b: AckBody) -> Result<Empty> {
    let me = call.user()?;
    let mail = call.state::<Mailroom>();
    let conn = call.conn_id();
    // A subscription cancelled on this connection is gone.
    mail.purge_ended(conn);
    let Some(sub) = mail.state_of(conn) else {
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
        call.db().messages().ack(me.id, b.upto)?;
        // After the commit, so that a run rolled back (a refusal, or
        // Galera's warming run) leaves the mark where the database has it.
        let (mail, user, upto) = (mail.clone(), me.id, b.upto);
        call.after_commit(move || mail.acked(conn, user, upto));
    }
    Ok(Empty {})
}

/// `msg.history`: messages you sent and received, newest first.
pub fn history(call: &Call, b: HistoryBody) -> Result<History> {
    let me = call.user()?;
    let limit = dsf_sql::validate::limit(b.limit, HISTORY_DEFAULT)?;
    let rows = call
        .db()
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
            body: super::mailroom::raw(e.body),
            sent_at: e.sent_at,
            seq: e.seq,
        })
        .collect();
    Ok(History { messages, next })
}

/// `msg.join`: joins a room, making it on the first join.
pub fn join(call: &Call, b: RoomBody) -> Result<Joined> {
    let me = call.user()?;
    let members = call.db().messages().join(me.id, &b.room)?;
    Ok(Joined {
        room: b.room,
        members,
    })
}

/// `msg.leave`: leaves a room.
pub fn leave(call: &Call, b: RoomBody) -> Result<Empty> {
    let me = call.user()?;
    call.db().messages().leave(me.id, &b.room)?;
    Ok(Empty {})
}

/// `msg.subscribe {credit?}`, on a worker: records the user's presence on
/// this node (ending any older subscription of theirs, here or
/// elsewhere), and hands the stream to the mailroom. An error is the
/// stream's final reply.
pub fn subscribe(call: &Call, b: SubscribeBody, stream: Stream<Subscribe>) -> Result<()> {
    let credit = b.credit.unwrap_or(CREDIT_DEFAULT);
    if credit == 0 || credit > CREDIT_MAX {
        return Err(Error::bad_request(format!(
            "credit: 1 to {CREDIT_MAX} messages unacknowledged at a time, got {credit}"
        )));
    }
    let user = call.user()?;
    if stream.is_ended() {
        // Queued while its connection went away: it must not take over
        // the subscription its client has made since.
        return Err(Error::Unavailable("the connection closed".into()));
    }
    let (mail, conn) = (call.state::<Mailroom>(), call.conn_id());
    mail.reserve(conn)?;
    let s = match call.db().messages().subscribe(user.id, call.node_id()) {
        Ok(s) => s,
        Err(e) => {
            mail.unreserve(conn);
            return Err(e.into());
        }
    };
    log::debug!(
        "user {} subscribed (epoch {}, from message {})",
        user.name,
        s.epoch,
        s.acked + 1
    );
    mail.open(
        conn,
        Sub {
            user: user.id,
            name: user.name.clone(),
            stream: stream.into_inner(),
            epoch: s.epoch,
            acked: s.acked,
            sent: s.acked,
            credit,
        },
    );
    Ok(())
}

/// `peer.notify {"user","seq","message"?}`: another app server stored
/// message `seq` for `user`, whose subscription this node holds.
pub fn notify(call: &Call, b: NotifyBody) -> Result<Empty> {
    let mail = call.state::<Mailroom>();
    match b.message {
        Some(m) => mail.push(b.user, b.seq, m.get().to_string()),
        None => mail.wake(b.user),
    }
    Ok(Empty {})
}
