//! Messaging's tables (migration 0004): messages, each recipient's inbox
//! with its own sequence, rooms, and presence (which app server holds a
//! user's subscription).
//!
//! - A send takes the recipient's next number by locking their `inboxes`
//!   row (one upsert), stores the message and lists it in the inbox, all
//!   in one transaction: the run-once write's, so a resend of the same
//!   signed request lists nothing twice. Because the number's row stays
//!   locked until commit, a recipient's messages commit in number order: a
//!   reader that sees number n has every number before it.
//! - A room's send does the same for every member, taking their rows in
//!   id order (two sends to one room never wait on each other in a cycle).
//! - Acknowledgement is a high-water mark per user (`inbox_acks`, a table
//!   of its own so that it never waits behind the sends to the user): a
//!   new subscription starts after it, so what was delivered and not
//!   acknowledged comes again (at least once on the wire; the SDK drops
//!   numbers it has already handed over).
//! - Sends in a group commit ([`crate::writes`]) made ready with
//!   [`Messages::prepare_group`] are staged: the group stores their
//!   messages in one statement (where the database numbers a statement's
//!   rows consecutively), then, in one round trip, takes every
//!   recipient's counter row once, in id order, and reads their presence;
//!   each send ([`Messages::send_in_group`]) numbers its message in
//!   memory, and the group's commit carries the inbox rows and the
//!   counters ([`crate::writes::before_commit`]). The run-once records of
//!   the sends stored ahead go in before the counters are taken, their
//!   replies `{"id"}` completed with the number when read
//!   ([`sent_reply`]). The counter rows stay locked
//!   from then to the commit, as above: the round trip that takes them,
//!   the handlers' work, and the commit's (two on Galera). Every group of
//!   a connection that cycles through its recipients takes the same rows,
//!   so such groups take turns, and how long the rows are held is what
//!   bounds them.
//! - Presence is one row per subscribed user: the node and an epoch that
//!   every new subscription increments. Senders read it to know whom to
//!   notify; a subscription whose epoch is gone was taken over. The holder
//!   refreshes `seen_at`; rows older than [`PRESENCE_STALE`] are ignored.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::PooledConn;

use crate::db::Db;
use crate::error::{Error, Result};

pub use dsf_proto::msg::{BODY_MAX, ROOM_MAX, ROOM_MEMBERS_MAX};

/// A presence row not refreshed for this long belongs to a node that died.
pub const PRESENCE_STALE: Duration = Duration::from_secs(30);

/// Who sends.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub id: u64,
    pub name: &'a str,
}

/// One inbox a send listed its message in, and where its owner is
/// subscribed (if anywhere, recently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub user: u64,
    pub seq: u64,
    /// The node holding the user's subscription.
    pub node: Option<String>,
}

/// What a send stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The message's id.
    pub id: u64,
    /// When, Unix ms (the storing node's clock).
    pub sent_at: u64,
    /// The inboxes it is listed in.
    pub listed: Vec<Listed>,
}

/// A message as an inbox lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub seq: u64,
    pub from: String,
    pub room: Option<String>,
    /// Its JSON text, as sent.
    pub body: String,
    /// Unix ms.
    pub sent_at: u64,
}

/// A message of a user's history, sent or received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    pub from: String,
    pub to: Option<String>,
    pub room: Option<String>,
    pub body: String,
    pub sent_at: u64,
    /// Its number in the user's inbox, when received.
    pub seq: Option<u64>,
}

/// What the slow poll of a subscription reads: the newest number of the
/// inbox and the node and epoch of the user's presence (`None`: no row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub user: u64,
    pub last_seq: u64,
    pub presence: Option<(String, u64)>,
}

/// A subscription just recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// Its presence epoch.
    pub epoch: u64,
    /// The inbox's acknowledged mark: delivery starts after it.
    pub acked: u64,
}

/// Sends staged in the group commit open on this thread.
struct Staged {
    /// [`crate::writes::group_serial`] of its group.
    group: u64,
    /// Recipients made ready: the last number given out, and the node
    /// holding their subscription.
    inboxes: BTreeMap<u64, (u64, Option<String>)>,
    /// Inbox rows to write: user, seq, message.
    rows: Vec<(u64, u64, u64)>,
    /// Messages stored ahead for the group's sends, by their place in it.
    ahead: BTreeMap<usize, Ahead>,
}

/// A direct send of a group, its message stored when the group was made
/// ready ([`Messages::prepare_group`]).
pub struct GroupSend<'a> {
    /// Its place in the group.
    pub index: usize,
    pub to: u64,
    /// Its JSON text.
    pub body: &'a str,
    /// Its request's `(app, nonce)`: the group records it early, before
    /// it takes the counters ([`sent_reply`]).
    pub key: (&'a str, &'a str),
}

/// A message stored ahead for a send of the group, and for whom.
struct Ahead {
    from: u64,
    to: u64,
    body: String,
    id: u64,
    sent_at: u64,
    used: bool,
}

thread_local! {
    static STAGED: RefCell<Option<Staged>> = const { RefCell::new(None) };
}

/// The messaging repository; get one with [`Db::messages`].
#[derive(Debug, Clone, Copy)]
pub struct Messages<'a> {
    db: &'a Db,
}

fn sql(op: &'static str) -> impl Fn(mysql::Error) -> Error {
    move |e| Error::from_mysql(op, e)
}

/// A message body's rules.
fn check_body(body: &str) -> Result<()> {
    if body.len() > BODY_MAX {
        return Err(Error::Invalid {
            field: "body",
            rule: "at most 65536 bytes of JSON",
        });
    }
    Ok(())
}

/// A room name's rules.
pub fn check_room(room: &str) -> Result<()> {
    let ok = !room.is_empty()
        && room.len() <= ROOM_MAX
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(Error::Invalid {
            field: "room",
            rule: "1 to 64 letters, digits, '.', '_' or '-'",
        });
    }
    Ok(())
}

// === impl Messages ===

impl<'a> Messages<'a> {
    pub(crate) fn new(db: &'a Db) -> Messages<'a> {
        Messages { db }
    }

    /// Sends `body` (JSON text) from `from` to the user named `to`:
    /// `not_found` if there is none.
    pub fn send(&self, from: Sender<'_>, to: &str, body: &str) -> Result<Stored> {
        let to_id = self.user_id(to)?;
        self.send_to_id(from, to_id, body)
    }

    /// The id of the user named `name`: `not_found` if there is none.
    /// Users are never deleted, so an id found once stays right.
    pub fn user_id(&self, name: &str) -> Result<u64> {
        crate::validate::name("to", name)?;
        let id: Option<u64> = self.db.with_conn("msg.send", |c| {
            c.exec_first("SELECT id FROM users WHERE name = ?", (name,))
        })?;
        id.ok_or_else(|| {
            Error::NotFound(format!(
                "no user named {name:?}: check the name (user names are case-insensitive)"
            ))
        })
    }

    /// Makes the group commit open on this thread ready for its direct
    /// sends from `from` (see the module documentation): on a database
    /// that numbers one statement's rows consecutively (MariaDB's default,
    /// not Galera's), stores their messages in one statement; then takes
    /// the recipients' counter rows, in id order, and reads their presence.
    /// Once per group; a no-op outside one. A send of the group that was
    /// not made ready here takes its rows on its own.
    pub fn prepare_group(&self, from: Sender<'_>, sends: &[GroupSend<'_>]) -> Result<()> {
        const OP: &str = "msg.send";
        let Some(group) = crate::writes::group_serial() else {
            return Ok(());
        };
        let ready = STAGED.with(|s| s.borrow().as_ref().is_some_and(|s| s.group == group));
        let sends: Vec<&GroupSend<'_>> = sends
            .iter()
            .filter(|g| check_body(g.body).is_ok())
            .collect();
        if ready || sends.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<u64> = sends.iter().map(|g| g.to).collect();
        ids.sort_unstable();
        ids.dedup();
        // Numbers and escaped text, not prepared statements: on Galera a
        // transaction that prepares one may be lost (`db::op_key`).
        let list = ids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let rows = ids
            .iter()
            .map(|u| format!("({u}, 0)"))
            .collect::<Vec<_>>()
            .join(", ");
        let q = sql(OP);
        let (inboxes, ahead) = self.db.with_conn_result(OP, |c| {
            // Before the counters are taken, so that they are held for as
            // little as can be.
            let ahead = store_ahead(c, from, &sends).map_err(&q)?;
            // Their records, with replies the numbers complete when read
            // (`sent_reply`): before the counters, so not while held.
            let records = early_records(c, &sends, &ahead);
            // One round trip from the first lock to the answer.
            let mut sets = crate::writes::query_all(
                c,
                &format!(
                    "{records}INSERT INTO inboxes (user_id, last_seq) VALUES {rows} \
                     ON DUPLICATE KEY UPDATE last_seq = last_seq; \
                     SELECT user_id, last_seq FROM inboxes WHERE user_id IN ({list}) FOR UPDATE; \
                     SELECT user_id, node FROM presence WHERE user_id IN ({list}) \
                     AND seen_at > NOW(3) - INTERVAL {} SECOND LOCK IN SHARE MODE",
                    PRESENCE_STALE.as_secs()
                ),
            )
            .map_err(|(_, e)| q(e))?;
            let skip = usize::from(!records.is_empty());
            let Ok([_, counters, nodes]) = <[Vec<mysql::Row>; 3]>::try_from(sets.split_off(skip))
            else {
                return Err(Error::Internal {
                    op: OP,
                    message: "the counters' query did not answer with 3 results".into(),
                });
            };
            let counters = rows_as::<(u64, u64)>(counters).map_err(&q)?;
            let nodes = rows_as::<(u64, String)>(nodes).map_err(&q)?;
            let mut nodes: BTreeMap<u64, String> = nodes.into_iter().collect();
            let inboxes = counters
                .into_iter()
                .map(|(u, last)| (u, (last, nodes.remove(&u))))
                .collect::<BTreeMap<_, _>>();
            Ok((inboxes, ahead))
        })?;
        STAGED.with(|s| {
            *s.borrow_mut() = Some(Staged {
                group,
                inboxes,
                rows: Vec::new(),
                ahead,
            })
        });
        let flushed = crate::writes::before_commit(move || {
            let Some(staged) = STAGED.with(|s| s.borrow_mut().take()) else {
                return Ok(Vec::new());
            };
            if staged.group != group {
                return Ok(Vec::new());
            }
            if staged.ahead.values().any(|a| !a.used) {
                // Every send of a group that commits ran its handler: one
                // that did not would leave its message unlisted.
                return Err("a message stored ahead for a send of the group was not sent".into());
            }
            if staged.rows.is_empty() {
                return Ok(Vec::new());
            }
            let rows = staged
                .rows
                .iter()
                .map(|(u, seq, m)| format!("({u}, {seq}, {m})"))
                .collect::<Vec<_>>()
                .join(", ");
            let counters = staged
                .inboxes
                .iter()
                .map(|(u, (last, _))| format!("({u}, {last})"))
                .collect::<Vec<_>>()
                .join(", ");
            Ok(vec![
                format!("INSERT INTO inbox (user_id, seq, message_id) VALUES {rows}"),
                format!(
                    "INSERT INTO inboxes (user_id, last_seq) VALUES {counters} \
                     ON DUPLICATE KEY UPDATE last_seq = VALUES(last_seq)"
                ),
            ])
        });
        debug_assert!(flushed, "a group is open");
        Ok(())
    }

    /// Send `index` of this thread's group, its message stored ahead
    /// ([`Messages::prepare_group`]), numbered from the counter the group
    /// holds; `None` when none was stored ahead for it (then
    /// [`Messages::send_to_id`] sends it). A message stored ahead for
    /// another sender, recipient or body breaks the group.
    pub fn send_in_group(
        &self,
        index: usize,
        from: Sender<'_>,
        to_id: u64,
        body: &str,
    ) -> Option<Result<Stored>> {
        let group = crate::writes::group_serial()?;
        let ahead = STAGED.with(|s| {
            let mut s = s.borrow_mut();
            let s = s.as_mut().filter(|s| s.group == group)?;
            let a = s.ahead.get_mut(&index)?;
            if (a.from, a.to, a.body.as_str()) != (from.id, to_id, body) || a.used {
                return Some(Err(()));
            }
            a.used = true;
            Some(Ok((a.id, a.sent_at)))
        });
        match ahead? {
            Ok((id, sent_at)) => Some(self.number_staged(to_id, id, sent_at)),
            Err(()) => Some(Err(crate::writes::rerun_alone(
                "a send unlike the one stored ahead for it",
            ))),
        }
    }

    /// Numbers message `id` for `to_id` from the counter the group holds.
    fn number_staged(&self, to_id: u64, id: u64, sent_at: u64) -> Result<Stored> {
        let numbered = STAGED.with(|s| {
            let mut s = s.borrow_mut();
            let s = s.as_mut()?;
            let (last, node) = s.inboxes.get_mut(&to_id)?;
            *last += 1;
            let seq = *last;
            let node = node.clone();
            s.rows.push((to_id, seq, id));
            Some((seq, node))
        });
        let Some((seq, node)) = numbered else {
            return Err(crate::writes::rerun_alone(
                "a send to a recipient the group does not hold",
            ));
        };
        Ok(Stored {
            id,
            sent_at,
            listed: vec![Listed {
                user: to_id,
                seq,
                node,
            }],
        })
    }

    /// A direct send staged in this thread's group, if `to_id` was made
    /// ready for it: its message stored now.
    fn send_staged(&self, from: Sender<'_>, to_id: u64, body: &str) -> Option<Result<Stored>> {
        const OP: &str = "msg.send";
        let group = crate::writes::group_serial()?;
        let ready = STAGED.with(|s| {
            s.borrow()
                .as_ref()
                .is_some_and(|s| s.group == group && s.inboxes.contains_key(&to_id))
        });
        if !ready {
            return None;
        }
        let inserted = self
            .db
            .with_conn_result(OP, |c| insert_message(c, OP, from, Some(to_id), None, body));
        Some(inserted.and_then(|(id, sent_at)| self.number_staged(to_id, id, sent_at)))
    }

    /// [`Messages::send`] to the user with id `to_id` (from
    /// [`Messages::user_id`]).
    pub fn send_to_id(&self, from: Sender<'_>, to_id: u64, body: &str) -> Result<Stored> {
        const OP: &str = "msg.send";
        check_body(body)?;
        if let Some(staged) = self.send_staged(from, to_id, body) {
            return staged;
        }
        let q = sql(OP);
        self.db.with_tx(OP, |c| {
            c.exec_drop(
                "INSERT INTO inboxes (user_id, last_seq) VALUES (?, LAST_INSERT_ID(1)) \
                 ON DUPLICATE KEY UPDATE last_seq = LAST_INSERT_ID(last_seq + 1)",
                (to_id,),
            )
            .map_err(&q)?;
            let seq = c.last_insert_id();
            let (id, sent_at) = insert_message(c, OP, from, Some(to_id), None, body)?;
            c.exec_drop(
                "INSERT INTO inbox (user_id, seq, message_id) VALUES (?, ?, ?)",
                (to_id, seq, id),
            )
            .map_err(&q)?;
            let mut listed = vec![Listed {
                user: to_id,
                seq,
                node: None,
            }];
            find_nodes(c, OP, &mut listed)?;
            Ok(Stored {
                id,
                sent_at,
                listed,
            })
        })
    }

    /// Sends `body` to every member of `room` but the sender, who must be
    /// one: `not_found` for a room that does not exist, `forbidden` for
    /// one the sender is not in.
    pub fn send_to_room(&self, from: Sender<'_>, room: &str, body: &str) -> Result<Stored> {
        const OP: &str = "msg.send";
        check_room(room)?;
        check_body(body)?;
        let q = sql(OP);
        self.db.with_tx(OP, |c| {
            let room_id = room_id(c, OP, room)?;
            let members: Vec<u64> = c
                .exec(
                    "SELECT user_id FROM room_members WHERE room_id = ? ORDER BY user_id",
                    (room_id,),
                )
                .map_err(&q)?;
            if !members.contains(&from.id) {
                return Err(Error::Forbidden(format!(
                    "you are not in room {room:?}: join it first (msg.join, `client msg join {room}`)"
                )));
            }
            let to: Vec<u64> = members.into_iter().filter(|m| *m != from.id).collect();
            let (id, sent_at) = insert_message(c, OP, from, None, Some(room_id), body)?;
            if to.is_empty() {
                return Ok(Stored {
                    id,
                    sent_at,
                    listed: vec![],
                });
            }
            let marks = vec!["(?, 1)"; to.len()].join(", ");
            c.exec_drop(
                format!(
                    "INSERT INTO inboxes (user_id, last_seq) VALUES {marks} \
                     ON DUPLICATE KEY UPDATE last_seq = last_seq + 1"
                ),
                to.clone(),
            )
            .map_err(&q)?;
            let marks = vec!["?"; to.len()].join(", ");
            let seqs: Vec<(u64, u64)> = c
                .exec(
                    format!(
                        "SELECT user_id, last_seq FROM inboxes WHERE user_id IN ({marks}) FOR UPDATE"
                    ),
                    to.clone(),
                )
                .map_err(&q)?;
            let marks = vec!["(?, ?, ?)"; seqs.len()].join(", ");
            let params: Vec<u64> = seqs.iter().flat_map(|(u, s)| [*u, *s, id]).collect();
            c.exec_drop(
                format!("INSERT INTO inbox (user_id, seq, message_id) VALUES {marks}"),
                params,
            )
            .map_err(&q)?;
            let mut listed: Vec<Listed> = seqs
                .into_iter()
                .map(|(user, seq)| Listed {
                    user,
                    seq,
                    node: None,
                })
                .collect();
            find_nodes(c, OP, &mut listed)?;
            Ok(Stored {
                id,
                sent_at,
                listed,
            })
        })
    }

    /// Joins `room`, making it if it does not exist; the members after.
    pub fn join(&self, user: u64, room: &str) -> Result<u64> {
        const OP: &str = "msg.join";
        check_room(room)?;
        let q = sql(OP);
        self.db.with_tx(OP, |c| {
            // Made or found, its row locked (joins of one room queue here,
            // so the member count below holds), its id either way.
            c.exec_drop(
                "INSERT INTO rooms (name, created_by, created_at) VALUES (?, ?, NOW(3)) \
                 ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
                (room, user),
            )
            .map_err(&q)?;
            let room_id = c.last_insert_id();
            let members: u64 = c
                .exec_first(
                    "SELECT COUNT(*) FROM room_members WHERE room_id = ?",
                    (room_id,),
                )
                .map_err(&q)?
                .unwrap_or(0);
            let member: Option<u64> = c
                .exec_first(
                    "SELECT user_id FROM room_members WHERE room_id = ? AND user_id = ?",
                    (room_id, user),
                )
                .map_err(&q)?;
            if member.is_some() {
                return Ok(members);
            }
            if members >= ROOM_MEMBERS_MAX {
                return Err(Error::Conflict {
                    op: OP,
                    message: format!(
                        "room {room:?} has {members} members, the most a room may have"
                    ),
                });
            }
            c.exec_drop(
                "INSERT INTO room_members (room_id, user_id, joined_at) VALUES (?, ?, NOW(3))",
                (room_id, user),
            )
            .map_err(&q)?;
            Ok(members + 1)
        })
    }

    /// Leaves `room`: `not_found` if it does not exist or the user is not in it.
    pub fn leave(&self, user: u64, room: &str) -> Result<()> {
        const OP: &str = "msg.leave";
        check_room(room)?;
        let q = sql(OP);
        self.db.with_tx(OP, |c| {
            let room_id = room_id(c, OP, room)?;
            c.exec_drop(
                "DELETE FROM room_members WHERE room_id = ? AND user_id = ?",
                (room_id, user),
            )
            .map_err(&q)?;
            if c.affected_rows() == 0 {
                return Err(Error::NotFound(format!("you are not in room {room:?}")));
            }
            Ok(())
        })
    }

    /// Records a subscription of `user` on `node`: its presence under a
    /// new epoch, and where delivery starts.
    pub fn subscribe(&self, user: u64, node: &str) -> Result<Subscribed> {
        self.db.with_conn("msg.subscribe", |c| {
            c.exec_drop(
                "INSERT INTO presence (user_id, node, epoch, seen_at) VALUES (?, ?, LAST_INSERT_ID(1), NOW(3)) \
                 ON DUPLICATE KEY UPDATE node = VALUES(node), epoch = LAST_INSERT_ID(epoch + 1), seen_at = NOW(3)",
                (user, node),
            )?;
            let epoch = c.last_insert_id();
            let acked: Option<u64> =
                c.exec_first("SELECT acked FROM inbox_acks WHERE user_id = ?", (user,))?;
            Ok(Subscribed {
                epoch,
                acked: acked.unwrap_or(0),
            })
        })
    }

    /// Clears the presence of a subscription that ended, unless a newer one
    /// took its place.
    pub fn unsubscribe(&self, user: u64, epoch: u64) -> Result<()> {
        self.db.with_conn("msg.unsubscribe", |c| {
            c.exec_drop(
                "DELETE FROM presence WHERE user_id = ? AND epoch = ?",
                (user, epoch),
            )
        })
    }

    /// Clears every presence of `node` (it starts: none of its
    /// subscriptions survived); how many.
    pub fn clear_node(&self, node: &str) -> Result<u64> {
        self.db.with_conn("msg.clear_node", |c| {
            c.exec_drop("DELETE FROM presence WHERE node = ?", (node,))?;
            Ok(c.affected_rows())
        })
    }

    /// Refreshes the presences of `node`'s subscriptions.
    pub fn refresh(&self, node: &str) -> Result<()> {
        self.db.with_conn("msg.refresh", |c| {
            c.exec_drop(
                "UPDATE presence SET seen_at = NOW(3) WHERE node = ?",
                (node,),
            )
        })
    }

    /// Up to `limit` messages of `user`'s inbox after number `after`, in order.
    pub fn after(&self, user: u64, after: u64, limit: u32) -> Result<Vec<Message>> {
        type Row = (u64, u64, String, Option<String>, String, u64);
        let rows: Vec<Row> = self.db.with_conn("msg.fetch", |c| {
            c.exec(
                "SELECT i.seq, m.id, m.sender_name, r.name, m.body, m.sent_at \
                 FROM inbox i JOIN messages m ON m.id = i.message_id \
                 LEFT JOIN rooms r ON r.id = m.room_id \
                 WHERE i.user_id = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
                (user, after, limit),
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|(seq, id, from, room, body, sent_at)| Message {
                id,
                seq,
                from,
                room,
                body,
                sent_at,
            })
            .collect())
    }

    /// The inbox heads and presence epochs of `users`, in one query.
    pub fn heads(&self, users: &[u64]) -> Result<Vec<Head>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; users.len()].join(", ");
        type Row = (u64, Option<u64>, Option<String>, Option<u64>);
        let rows: Vec<Row> = self.db.with_conn("msg.poll", |c| {
            c.exec(
                format!(
                    "SELECT u.id, b.last_seq, p.node, p.epoch FROM users u \
                     LEFT JOIN inboxes b ON b.user_id = u.id \
                     LEFT JOIN presence p ON p.user_id = u.id \
                     WHERE u.id IN ({marks})"
                ),
                users.to_vec(),
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|(user, last_seq, node, epoch)| Head {
                user,
                last_seq: last_seq.unwrap_or(0),
                presence: node.zip(epoch),
            })
            .collect())
    }

    /// Marks everything up to `upto` acknowledged (a mark never goes back,
    /// nor past the inbox's last number: read without a lock, so that it
    /// never waits behind the sends to the user).
    ///
    /// In a transaction of its own, run again when it loses a deadlock or,
    /// on Galera, certification (acknowledgements of one user through two
    /// nodes): one that failed would bring its messages back at the next
    /// subscribe.
    pub fn ack(&self, user: u64, upto: u64) -> Result<()> {
        const OP: &str = "msg.ack";
        self.db.with_tx(OP, |c| {
            let last: Option<u64> = c
                .exec_first("SELECT last_seq FROM inboxes WHERE user_id = ?", (user,))
                .map_err(sql(OP))?;
            if last.is_none_or(|last| last < upto) {
                return Ok(());
            }
            c.exec_drop(
                "INSERT INTO inbox_acks (user_id, acked) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE acked = GREATEST(acked, VALUES(acked))",
                (user, upto),
            )
            .map_err(sql(OP))
        })
    }

    /// The acknowledged mark of `user`'s inbox.
    pub fn acked(&self, user: u64) -> Result<u64> {
        let v: Option<u64> = self.db.with_conn("msg.acked", |c| {
            c.exec_first("SELECT acked FROM inbox_acks WHERE user_id = ?", (user,))
        })?;
        Ok(v.unwrap_or(0))
    }

    /// Messages `user` sent or received, newest first, older than message
    /// `before`; with `with`, only the direct ones between them and the
    /// user named so (`not_found` if there is none).
    pub fn history(
        &self,
        user: u64,
        with: Option<&str>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Entry>> {
        const OP: &str = "msg.history";
        let q = sql(OP);
        let before = before.unwrap_or(u64::MAX);
        let mut conn = self.db.conn(OP)?;
        let c: &mut PooledConn = &mut conn;
        let with_id = match with {
            None => None,
            Some(name) => {
                let id: Option<u64> = c
                    .exec_first("SELECT id FROM users WHERE name = ?", (name,))
                    .map_err(&q)?;
                Some(id.ok_or_else(|| Error::NotFound(format!("no user named {name:?}")))?)
            }
        };
        type Row = (
            u64,
            String,
            Option<String>,
            Option<String>,
            String,
            u64,
            Option<u64>,
        );
        let cols = "m.id, m.sender_name, u.name, r.name, m.body, m.sent_at";
        let joins =
            "LEFT JOIN users u ON u.id = m.recipient_id LEFT JOIN rooms r ON r.id = m.room_id";
        let (sent_filter, recv_filter) = match with_id {
            Some(_) => (
                "AND m.recipient_id = ?",
                "AND m.sender_id = ? AND m.recipient_id IS NOT NULL",
            ),
            None => ("AND ? = 0", "AND ? = 0"),
        };
        let w = with_id.unwrap_or(0);
        let rows: Vec<Row> = c
            .exec(
                format!(
                    "(SELECT {cols}, NULL AS seq FROM messages m {joins} \
                      WHERE m.sender_id = ? {sent_filter} AND m.id < ? ORDER BY m.id DESC LIMIT ?) \
                     UNION ALL \
                     (SELECT {cols}, i.seq FROM inbox i JOIN messages m ON m.id = i.message_id {joins} \
                      WHERE i.user_id = ? {recv_filter} AND i.message_id < ? ORDER BY i.message_id DESC LIMIT ?) \
                     ORDER BY 1 DESC LIMIT ?"
                ),
                (user, w, before, limit, user, w, before, limit, limit),
            )
            .map_err(&q)?;
        Ok(rows
            .into_iter()
            .map(|(id, from, to, room, body, sent_at, seq)| Entry {
                id,
                from,
                to,
                room,
                body,
                sent_at,
                seq,
            })
            .collect())
    }
}

fn insert_message(
    c: &mut PooledConn,
    op: &'static str,
    from: Sender<'_>,
    to: Option<u64>,
    room: Option<u64>,
    body: &str,
) -> Result<(u64, u64)> {
    // The storing node's clock, so the reply and the notification carry
    // the time without a read.
    let sent_at = crate::time::now_ms().max(0) as u64;
    c.exec_drop(
        "INSERT INTO messages (sender_id, sender_name, recipient_id, room_id, body, sent_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
        (from.id, from.name, to, room, body, sent_at),
    )
    .map_err(sql(op))?;
    Ok((c.last_insert_id(), sent_at))
}

/// Stores the messages of a group's `sends` from `from` in one statement,
/// when the database numbers one statement's rows consecutively (then the
/// ids follow from the first); nothing otherwise (each send stores its
/// own).
fn store_ahead(
    c: &mut PooledConn,
    from: Sender<'_>,
    sends: &[&GroupSend<'_>],
) -> mysql::Result<BTreeMap<usize, Ahead>> {
    let mode: Option<(u32, u64)> =
        c.query_first("SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment")?;
    let Some((0 | 1, step)) = mode else {
        return Ok(BTreeMap::new());
    };
    let sent_at = crate::time::now_ms().max(0) as u64;
    let plain = c.no_backslash_escape();
    let name = mysql::Value::from(from.name).as_sql(plain);
    let rows = sends
        .iter()
        .map(|g| {
            format!(
                "({}, {name}, {}, NULL, {}, {sent_at})",
                from.id,
                g.to,
                mysql::Value::from(g.body).as_sql(plain)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    c.query_drop(format!(
        "INSERT INTO messages (sender_id, sender_name, recipient_id, room_id, body, sent_at) \
         VALUES {rows}"
    ))?;
    let first = c.last_insert_id();
    Ok(sends
        .iter()
        .enumerate()
        .map(|(k, g)| {
            let a = Ahead {
                from: from.id,
                to: g.to,
                body: g.body.to_string(),
                id: first + k as u64 * step,
                sent_at,
                used: false,
            };
            (g.index, a)
        })
        .collect())
}

/// Completes a direct send's reply recorded early, `{"id"}`, with the
/// message's number in its recipient's inbox: `msg.send`'s completer for
/// [`Writes::complete_replies`](crate::writes::Writes::complete_replies).
/// A group records its stored-ahead sends before it takes the
/// recipients' counters, when the numbers are not yet known, so that the
/// records are not written while the counters are held. `None` for a
/// reply recorded whole (a send that ran alone, a room's send); an
/// internal error if the message's inbox entry is gone (it commits with
/// the record, and nothing deletes it), rather than a reply unlike the
/// first.
pub fn sent_reply(c: &mut PooledConn, reply: &str) -> Result<Option<String>> {
    const OP: &str = "msg.send";
    let Ok(sent) = serde_json::from_str::<dsf_proto::msg::Sent>(reply) else {
        return Ok(None);
    };
    if sent.seq.is_some() || sent.recipients.is_some() {
        return Ok(None);
    }
    let seq: Option<u64> = c
        .exec_first(
            "SELECT i.seq FROM messages m \
             JOIN inbox i ON i.user_id = m.recipient_id AND i.message_id = m.id WHERE m.id = ?",
            (sent.id,),
        )
        .map_err(sql(OP))?;
    let Some(seq) = seq else {
        return Err(Error::Internal {
            op: OP,
            message: format!("message {} is recorded as sent and is in no inbox", sent.id),
        });
    };
    let sent = dsf_proto::msg::Sent {
        seq: Some(seq),
        ..sent
    };
    Ok(Some(
        serde_json::to_string(&sent).expect("a reply of numbers renders"),
    ))
}

/// The statement that records the `sends` stored `ahead` in the group
/// (`;`-terminated), their replies `{"id"}` ([`crate::writes::record_early`]);
/// empty when none was.
fn early_records(
    c: &PooledConn,
    sends: &[&GroupSend<'_>],
    ahead: &BTreeMap<usize, Ahead>,
) -> String {
    let kind = <dsf_proto::msg::Send as dsf_proto::Message>::TYPE.name;
    let records: Vec<[String; 4]> = sends
        .iter()
        .filter_map(|g| {
            let a = ahead.get(&g.index)?;
            let reply = serde_json::to_string(&dsf_proto::msg::Sent {
                id: a.id,
                seq: None,
                recipients: None,
            })
            .expect("a reply of numbers renders");
            Some([g.key.0.into(), g.key.1.into(), kind.into(), reply])
        })
        .collect();
    crate::writes::record_early(c, &records).map_or_else(String::new, |sql| sql + "; ")
}

/// `rows` as `T`s.
fn rows_as<T: mysql::prelude::FromRow>(rows: Vec<mysql::Row>) -> mysql::Result<Vec<T>> {
    rows.into_iter()
        .map(|r| mysql::from_row_opt(r).map_err(|e| mysql::Error::FromRowError(e.0)))
        .collect()
}

fn room_id(c: &mut PooledConn, op: &'static str, room: &str) -> Result<u64> {
    let id: Option<u64> = c
        .exec_first("SELECT id FROM rooms WHERE name = ?", (room,))
        .map_err(sql(op))?;
    id.ok_or_else(|| {
        Error::NotFound(format!(
            "no room {room:?}: msg.join makes a room, and its first member (`client msg join {room}`)"
        ))
    })
}

/// Fills in where each listed user is subscribed, from fresh presence rows.
/// A locking read: it sees the latest presence, and a subscription being
/// recorded at the same moment waits for this send to commit, so its first
/// read of the inbox finds this message. Either the send sees the
/// subscription and notifies it, or the subscription sees the message.
fn find_nodes(c: &mut PooledConn, op: &'static str, listed: &mut [Listed]) -> Result<()> {
    if listed.is_empty() {
        return Ok(());
    }
    let marks = vec!["?"; listed.len()].join(", ");
    let mut params: Vec<mysql::Value> = listed.iter().map(|l| l.user.into()).collect();
    params.push(PRESENCE_STALE.as_millis().to_string().into());
    let rows: Vec<(u64, String)> = c
        .exec(
            format!(
                "SELECT user_id, node FROM presence WHERE user_id IN ({marks}) \
                 AND seen_at > NOW(3) - INTERVAL (? / 1000) SECOND LOCK IN SHARE MODE"
            ),
            params,
        )
        .map_err(sql(op))?;
    for (user, node) in rows {
        if let Some(l) = listed.iter_mut().find(|l| l.user == user) {
            l.node = Some(node);
        }
    }
    Ok(())
}
