//! `msg.subscribe`: the open subscriptions of this node and the `mailroom`
//! thread that fills them.
//!
//! A subscription belongs to one connection and one user, holds at most
//! `credit` messages sent and not acknowledged, and is fed in inbox order:
//! the thread reads the messages after the last one it sent (one indexed
//! range read), and offers each to the stream; a full output budget only
//! pauses it. A notification (a send on this node, or `peer.notify` from
//! another) that carries the next message due is sent as it is, without a
//! read ([`Mailroom::push`]). The inbox is read when
//! - the subscription opens (everything after the acknowledged mark);
//! - a notification carries no message (a room's, a big one), or not the
//!   next one due (another node's is behind it), or finds no credit;
//! - an acknowledgement frees credit;
//! - every [`POLL`] (by default), for all subscriptions at once (one query
//!   per 500): the inbox heads and presence epochs. This finds the messages
//!   whose notification was lost, and the subscriptions another node took
//!   over (a newer epoch there), which end with `conflict`.
//!
//! One user has one subscription in the cluster: a newer one, here or on
//! another node, ends the older.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use dsf_common::reactor::ConnId;
use dsf_common::wire::streams::Stream;
use dsf_common::Error;
use dsf_proto::msg::MESSAGE;
use dsf_sql::Db;

/// How often every subscription's inbox head and presence are read.
pub const POLL: Duration = Duration::from_secs(1);
/// How often this node's presence rows are refreshed.
const REFRESH: Duration = Duration::from_secs(10);
/// Most messages read from one inbox at a time.
const READ_MAX: u32 = 100;
/// Most subscriptions one poll query covers.
const POLL_BATCH: usize = 500;
/// Events waiting for the thread at most; a notification beyond it is
/// dropped (the poll finds its message).
const QUEUE: usize = 65_536;
/// A reader this far behind (bytes unsent on its connection) gets no more
/// reads until it catches up.
const BACKLOG_MAX: usize = 1 << 20;

/// One open subscription.
pub struct Sub {
    pub user: u64,
    pub name: String,
    pub stream: Stream,
    /// Its presence epoch.
    pub epoch: u64,
    /// Acknowledged up to here.
    pub acked: u64,
    /// Sent up to here.
    pub sent: u64,
    pub credit: u32,
}

enum Slot {
    /// `msg.subscribe` is recording its presence.
    Opening,
    Open(Sub),
}

/// What the thread hears.
enum Event {
    Wake(u64),
    /// Message `seq` of `user`, rendered as its event's body.
    Pushed {
        user: u64,
        seq: u64,
        event: String,
    },
    /// A subscription went away: clear its presence.
    Gone {
        user: u64,
        epoch: u64,
    },
}

#[derive(Default)]
struct State {
    subs: HashMap<ConnId, Slot>,
    by_user: HashMap<u64, ConnId>,
}

struct Inner {
    db: Db,
    node: OnceLock<String>,
    state: Mutex<State>,
    tx: Sender<Event>,
    counters: MailCounters,
}

/// What the mailroom has done, for logs and tests.
#[derive(Debug, Default)]
pub struct MailCounters {
    /// Messages sent as a notification carried them, without a read.
    pub pushed: AtomicU64,
    /// Reads of an inbox.
    pub reads: AtomicU64,
}

/// This node's subscriptions and their thread; the thread stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Mailroom {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mailroom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailroom")
            .field("subscriptions", &self.len())
            .finish()
    }
}

/// What `msg.ack` learns of a connection's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubState {
    pub user: u64,
    pub acked: u64,
    pub sent: u64,
}

// === impl Mailroom ===

impl Mailroom {
    /// Starts the `mailroom` thread over `db`, polling every `poll`.
    pub fn start(db: Db, poll: Duration) -> Mailroom {
        let (tx, rx) = bounded(QUEUE);
        let inner = Arc::new(Inner {
            db,
            node: OnceLock::new(),
            state: Mutex::new(State::default()),
            tx,
            counters: MailCounters::default(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("mailroom".into())
            .spawn(move || run(&weak, &rx, poll))
            .expect("spawning the mailroom thread");
        Mailroom { inner }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its counters.
    pub fn counters(&self) -> &MailCounters {
        &self.inner.counters
    }

    /// Sets this node's id, under which presence is recorded.
    pub fn set_node(&self, id: &str) {
        let _ = self.inner.node.set(id.to_string());
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        self.inner.node.get().map_or("unknown", String::as_str)
    }

    /// Open subscriptions.
    pub fn len(&self) -> usize {
        self.lock()
            .subs
            .values()
            .filter(|s| matches!(s, Slot::Open(_)))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `user`'s inbox soon (a message is waiting, or credit was freed).
    pub fn wake(&self, user: u64) {
        let _ = self.inner.tx.try_send(Event::Wake(user));
    }

    /// Message `seq` of `user` was stored; `event` is its `message` event's
    /// body. Sent as it is when it is the subscription's next and credit
    /// allows; otherwise the inbox is read (it is stored: nothing is lost
    /// by not using this copy).
    pub fn push(&self, user: u64, seq: u64, event: String) {
        let _ = self.inner.tx.try_send(Event::Pushed { user, seq, event });
    }

    /// Reserves `conn` for a subscription being opened; `bad_request` if it
    /// holds one.
    pub fn reserve(&self, conn: ConnId) -> Result<(), Error> {
        self.purge_ended(conn);
        let mut st = self.lock();
        if st.subs.contains_key(&conn) {
            return Err(Error::bad_request(
                "this connection has a msg.subscribe open: one a connection (cancel it with sys.cancel, or open another connection)",
            ));
        }
        st.subs.insert(conn, Slot::Opening);
        Ok(())
    }

    /// Drops `conn`'s subscription if its stream has ended (`sys.cancel`).
    pub fn purge_ended(&self, conn: ConnId) {
        let mut st = self.lock();
        if matches!(st.subs.get(&conn), Some(Slot::Open(s)) if s.stream.is_ended()) {
            if let Some(gone) = end(&mut st, conn, None) {
                self.gone(gone);
            }
        }
    }

    /// Clears a subscription's presence (on the thread).
    fn gone(&self, (user, epoch): (u64, u64)) {
        // Never blocks (this runs on the reactor too): with the queue full,
        // the presence goes stale instead, and the next subscribe replaces it.
        let _ = self.inner.tx.try_send(Event::Gone { user, epoch });
    }

    /// Gives up a reservation (the subscribe failed before opening).
    pub fn unreserve(&self, conn: ConnId) {
        let mut st = self.lock();
        if matches!(st.subs.get(&conn), Some(Slot::Opening)) {
            st.subs.remove(&conn);
        }
    }

    /// Opens `sub` on `conn` (reserved with [`Mailroom::reserve`]). An
    /// older subscription of the same user on this node ends with
    /// `conflict`. If the connection closed meanwhile, the subscription
    /// ends at once.
    pub fn open(&self, conn: ConnId, sub: Sub) {
        let (user, epoch) = (sub.user, sub.epoch);
        let mut st = self.lock();
        if !matches!(st.subs.get(&conn), Some(Slot::Opening)) {
            drop(st);
            let _ = sub
                .stream
                .fail(&Error::Unavailable("the connection closed".into()));
            self.gone((user, epoch));
            return;
        }
        // Two subscribes of one user racing here: the newer epoch stays.
        let newer = st
            .by_user
            .get(&user)
            .and_then(|c| match st.subs.get(c) {
                Some(Slot::Open(s)) => Some(s.epoch),
                _ => None,
            })
            .is_some_and(|e| e > epoch);
        if newer {
            st.subs.remove(&conn);
            drop(st);
            let _ = sub.stream.fail(&taken_over());
            return;
        }
        if let Some(old) = st.by_user.insert(user, conn) {
            if let Some(Slot::Open(s)) = st.subs.remove(&old) {
                log::info!(
                    "user {} subscribed again on this node: the older subscription ends",
                    s.name
                );
                let _ = s.stream.fail(&taken_over());
            }
        }
        st.subs.insert(conn, Slot::Open(sub));
        drop(st);
        self.wake(user);
    }

    /// The subscription of `conn`, if one is open.
    pub fn state_of(&self, conn: ConnId) -> Option<SubState> {
        match self.lock().subs.get(&conn) {
            Some(Slot::Open(s)) => Some(SubState {
                user: s.user,
                acked: s.acked,
                sent: s.sent,
            }),
            _ => None,
        }
    }

    /// `msg.ack` recorded `upto` for `user`'s subscription on `conn`:
    /// credit frees. (Another subscription there meanwhile is left alone.)
    pub fn acked(&self, conn: ConnId, user: u64, upto: u64) {
        match self.lock().subs.get_mut(&conn) {
            Some(Slot::Open(s)) if s.user == user => s.acked = s.acked.max(upto.min(s.sent)),
            _ => return,
        }
        self.wake(user);
    }

    /// The connection closed: its subscription ends.
    pub fn on_close(&self, conn: ConnId) {
        let mut st = self.lock();
        if let Some(Slot::Open(s)) = st.subs.remove(&conn) {
            if st.by_user.get(&s.user) == Some(&conn) {
                st.by_user.remove(&s.user);
            }
            self.gone((s.user, s.epoch));
        }
    }

    /// At shutdown: every subscription ends with `unavailable`, so its
    /// client subscribes again on another node at once.
    pub fn close(&self) {
        let subs: Vec<Sub> = {
            let mut st = self.lock();
            st.by_user.clear();
            st.subs
                .drain()
                .filter_map(|(_, s)| match s {
                    Slot::Open(s) => Some(s),
                    Slot::Opening => None,
                })
                .collect()
        };
        let node = self.node().to_string();
        for s in subs {
            let _ = s.stream.fail(&Error::Unavailable(format!(
                "node {node} is shutting down: subscribe again (the balancer names another node)"
            )));
            let _ = self.inner.db.messages().unsubscribe(s.user, s.epoch);
        }
    }
}

fn taken_over() -> Error {
    Error::Conflict(
        "a newer msg.subscribe of this user took over: one subscription a user at a time".into(),
    )
}

/// Ends the subscription of `conn` (if it is still `epoch`'s) with `e`,
/// or quietly when `e` is `None` (the stream ended already).
fn end(state: &mut State, conn: ConnId, e: Option<Error>) -> Option<(u64, u64)> {
    let Some(Slot::Open(s)) = state.subs.remove(&conn) else {
        return None;
    };
    if state.by_user.get(&s.user) == Some(&conn) {
        state.by_user.remove(&s.user);
    }
    if let Some(e) = e {
        let _ = s.stream.fail(&e);
    }
    Some((s.user, s.epoch))
}

fn run(inner: &std::sync::Weak<Inner>, rx: &Receiver<Event>, every: Duration) {
    let mut clock = Clock {
        next_poll: Instant::now() + every,
        next_refresh: Instant::now() + REFRESH,
        failing: false,
        every,
    };
    loop {
        let timeout = clock.next_poll.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(timeout) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        // A bug in one turn is logged; the subscriptions go on being served.
        let turned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            turn(&inner, rx, first, &mut clock)
        }));
        if turned.is_err() {
            log::error!("mailroom: a turn panicked (logged above); going on");
        }
    }
}

/// When the thread polls and refreshes next.
struct Clock {
    next_poll: Instant,
    next_refresh: Instant,
    /// The database failed last time (logged once).
    failing: bool,
    every: Duration,
}

/// One turn of the thread: the events that came, then the poll and the
/// refresh when due, then the reads they asked for.
fn turn(inner: &Inner, rx: &Receiver<Event>, first: Option<Event>, clock: &mut Clock) {
    let mut woken: HashSet<u64> = HashSet::new();
    let mut gone: Vec<(u64, u64)> = Vec::new();
    for e in first.into_iter().chain(rx.try_iter()) {
        match e {
            Event::Wake(u) => {
                woken.insert(u);
            }
            Event::Pushed { user, seq, event } => {
                if !woken.contains(&user) && !push(inner, user, seq, &event) {
                    woken.insert(user);
                }
            }
            Event::Gone { user, epoch } => gone.push((user, epoch)),
        }
    }
    let db = &inner.db;
    for (user, epoch) in gone.drain(..) {
        if let Err(e) = db.messages().unsubscribe(user, epoch) {
            log::debug!("mailroom: clearing user {user}'s presence: {e} (it goes stale)");
        }
    }
    let now = Instant::now();
    if now >= clock.next_poll {
        clock.next_poll = now + clock.every;
        match poll(inner, &mut woken) {
            Ok(()) if clock.failing => {
                log::info!("mailroom: the database answers again");
                clock.failing = false;
            }
            Ok(()) => {}
            Err(e) if !clock.failing => {
                log::warn!(
                    "mailroom: {e}; subscriptions wait for it (logged again when it answers)"
                );
                clock.failing = true;
            }
            Err(e) => log::debug!("mailroom: {e}"),
        }
    }
    if now >= clock.next_refresh {
        clock.next_refresh = now + REFRESH;
        if let Some(node) = inner.node.get() {
            if let Err(e) = db.messages().refresh(node) {
                log::debug!("mailroom: refreshing presence: {e}");
            }
        }
    }
    // A user whose read filled a whole batch is read again at once.
    while !woken.is_empty() {
        let mut again = HashSet::new();
        for user in woken.drain() {
            if deliver(inner, user) {
                again.insert(user);
            }
        }
        woken = again;
    }
}

/// Reads the heads and epochs of every subscription; wakes those behind
/// their inbox, ends those another node took over.
fn poll(inner: &Inner, woken: &mut HashSet<u64>) -> Result<(), dsf_sql::Error> {
    let subs: Vec<(ConnId, u64, u64, u64)> = {
        let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        // Streams that ended on their own (sys.cancel) go first.
        let ended: Vec<ConnId> = st
            .subs
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Open(s) if s.stream.is_ended()))
            .map(|(c, _)| *c)
            .collect();
        for c in ended {
            if let Some((user, epoch)) = end(&mut st, c, None) {
                let _ = inner.tx.try_send(Event::Gone { user, epoch });
            }
        }
        st.subs
            .iter()
            .filter_map(|(c, s)| match s {
                Slot::Open(s) => Some((*c, s.user, s.epoch, s.sent)),
                Slot::Opening => None,
            })
            .collect()
    };
    for chunk in subs.chunks(POLL_BATCH) {
        let users: Vec<u64> = chunk.iter().map(|s| s.1).collect();
        let heads = inner.db.messages().heads(&users)?;
        let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        for (conn, user, epoch, sent) in chunk {
            let Some(h) = heads.iter().find(|h| h.user == *user) else {
                continue;
            };
            // Another node's newer subscription took over. (A newer one of
            // this node replaced this one when it opened; one that never
            // opened, its connection gone, takes nothing over.)
            match &h.presence {
                Some((node, e)) if *e != *epoch && Some(node) != inner.node.get() => {
                    log::info!(
                        "mailroom: user {user} subscribed on node {node}; this subscription ends"
                    );
                    end(&mut st, *conn, Some(taken_over()));
                }
                _ if h.last_seq > *sent => {
                    woken.insert(*user);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Sends `event`, message `seq` of `user`, if it is the subscription's
/// next and credit and budget allow; whether it went (or is not needed:
/// no subscription here, or sent already).
fn push(inner: &Inner, user: u64, seq: u64, event: &str) -> bool {
    let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
    let Some(conn) = st.by_user.get(&user).copied() else {
        return true;
    };
    let Some(Slot::Open(s)) = st.subs.get_mut(&conn) else {
        return true;
    };
    if seq <= s.sent {
        return true;
    }
    if seq != s.sent + 1 || s.sent.saturating_sub(s.acked) >= u64::from(s.credit) {
        // A gap (another node's notification is behind this one), or no
        // credit: the inbox is read (at once, or when an ack frees credit).
        return false;
    }
    // Counted before the offer, so that a reader who got the message also
    // sees it counted; taken back if it did not go.
    inner.counters.pushed.fetch_add(1, Ordering::Relaxed);
    let offered = s.stream.offer(MESSAGE, event);
    if !matches!(offered, Ok(true)) {
        inner.counters.pushed.fetch_sub(1, Ordering::Relaxed);
    }
    match offered {
        Ok(true) => {
            s.sent = seq;
            true
        }
        // The reader is behind: read later.
        Ok(false) => false,
        Err(_) => {
            if let Some((user, epoch)) = end(&mut st, conn, None) {
                let _ = inner.tx.try_send(Event::Gone { user, epoch });
            }
            true
        }
    }
}

/// Sends `user`'s next messages, as far as credit and budget allow;
/// whether there may be more to read now.
fn deliver(inner: &Inner, user: u64) -> bool {
    let (conn, epoch, after, room) = {
        let st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = st.by_user.get(&user).copied() else {
            return false;
        };
        let Some(Slot::Open(s)) = st.subs.get(&conn) else {
            return false;
        };
        if s.stream.backlog() > BACKLOG_MAX {
            // Far behind: nothing more is read for it until it catches up
            // (the next wake or poll after that).
            return false;
        }
        let unacked = s.sent.saturating_sub(s.acked);
        let room = u64::from(s.credit).saturating_sub(unacked);
        (conn, s.epoch, s.sent, room.min(u64::from(READ_MAX)) as u32)
    };
    if room == 0 {
        return false;
    }
    inner.counters.reads.fetch_add(1, Ordering::Relaxed);
    let rows = match inner.db.messages().after(user, after, room) {
        Ok(rows) => rows,
        Err(e) => {
            log::debug!("mailroom: reading user {user}'s inbox: {e} (the next poll tries again)");
            return false;
        }
    };
    let full = rows.len() == room as usize;
    let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
    let Some(Slot::Open(s)) = st.subs.get_mut(&conn) else {
        return false;
    };
    if s.user != user || s.epoch != epoch {
        // Another subscription took this connection while this one read.
        return false;
    }
    if s.sent != after {
        // Another read went first (a wake while this one read).
        return true;
    }
    for m in rows {
        let event = dsf_proto::msg::Message {
            id: m.id,
            seq: m.seq,
            from: m.from,
            room: m.room,
            body: raw(m.body),
            sent_at: m.sent_at,
        };
        let body = serde_json::to_string(&event).expect("a message serialises");
        match s.stream.offer(MESSAGE, &body) {
            Ok(true) => s.sent = m.seq,
            // The reader is behind: the rest goes when it has read (the
            // next wake or poll).
            Ok(false) => return false,
            Err(_) => {
                // Closed, cancelled or finished: its final reply, if any,
                // was sent by whoever ended it.
                if let Some((user, epoch)) = end(&mut st, conn, None) {
                    let _ = inner.tx.try_send(Event::Gone { user, epoch });
                }
                return false;
            }
        }
    }
    full
}

/// Stored JSON text as a raw value (it was valid JSON when sent).
pub fn raw(body: String) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(body)
        .unwrap_or_else(|_| serde_json::value::RawValue::from_string("null".into()).expect("JSON"))
}
