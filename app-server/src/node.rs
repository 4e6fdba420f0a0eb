//! [`Node`]: what every handler, hook and background job of an app server
//! shares: the database, this node's id and settings, the links to the
//! other app servers, wake-ups by topic, and each service's own state.
//!
//! Handlers reach it through their [`Call`] ([`CallExt`]): `call.db()`,
//! `call.tx(|tx| …)` (inside the run-once transaction of a write),
//! `call.wake(topic)` (after the commit, on every node), `call.state::<T>()`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dsf_common::pipeline::{self, Drain, Stream};
use dsf_common::reactor::ConnId;
use dsf_common::{Error, Result};
use dsf_proto::Message;
use dsf_sql::{Db, PooledConn};

use crate::peers::Peers;
use crate::settings::Settings;
use crate::topics::{Step, Topics};

/// A request to an app server: [`pipeline::Call`] over this node.
pub type Call = pipeline::Call<Node>;

/// A route of an app server: [`pipeline::Route`] over this node.
pub type Route = pipeline::Route<Node>;

/// The state of one app server, shared by its handlers, hooks and jobs.
pub struct Node {
    db: Db,
    settings: Settings,
    id: OnceLock<String>,
    peers: Peers,
    topics: Topics<Node>,
    drain: Arc<Drain>,
    states: OnceLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    on_close: OnceLock<Vec<CloseHook>>,
}

/// What a service runs when a connection closes.
pub(crate) type CloseHook = Box<dyn Fn(&Node, ConnId) + Send + Sync>;

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id())
            .field("db", &self.db)
            .finish()
    }
}

// === impl Node ===

impl Node {
    pub(crate) fn new(db: Db, settings: Settings, drain: Arc<Drain>) -> Node {
        let peers = Peers::new(settings.peer_secret.expose());
        if let Some(ca) = &settings.tls_ca {
            peers.set_tls(ca.clone());
        }
        Node {
            db,
            settings,
            id: OnceLock::new(),
            peers,
            topics: Topics::new(),
            drain,
            states: OnceLock::new(),
            on_close: OnceLock::new(),
        }
    }

    /// The database pool.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// This node's id, as the view lists it (`unknown` before it listens).
    pub fn id(&self) -> &str {
        self.id.get().map_or("unknown", String::as_str)
    }

    pub(crate) fn set_id(&self, id: &str) {
        let _ = self.id.set(id.to_string());
        self.drain.set_node(id);
    }

    /// The server's settings (its flags, environment and config file).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The links to the other app servers of the view.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    pub(crate) fn topics(&self) -> &Topics<Node> {
        &self.topics
    }

    /// Whether the node drains for shutdown.
    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// The state service `T` made at start ([`crate::Service::state`]).
    ///
    /// # Panics
    /// When no service of this server made a `T`: a handler asking for
    /// another service's state names a service this server does not run
    /// (see [`crate::Service::requires`]).
    pub fn state<T: Any + Send + Sync>(&self) -> &T {
        self.try_state::<T>().unwrap_or_else(|| {
            panic!(
                "no service of this server made a {} (is its service composed in?)",
                std::any::type_name::<T>()
            )
        })
    }

    /// The state `T`, if a service made one.
    pub fn try_state<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.states
            .get()?
            .get(&TypeId::of::<T>())
            .and_then(|s| s.downcast_ref::<T>())
    }

    pub(crate) fn set_states(&self, states: HashMap<TypeId, Arc<dyn Any + Send + Sync>>) {
        let _ = self.states.set(states);
    }

    pub(crate) fn set_close_hooks(&self, hooks: Vec<CloseHook>) {
        let _ = self.on_close.set(hooks);
    }

    /// A connection closed: every service's hook runs.
    pub(crate) fn closed(&self, conn: ConnId) {
        for hook in self.on_close.get().into_iter().flatten() {
            hook(self, conn);
        }
        self.peers.on_close(conn);
    }

    /// Wakes the long polls and streams waiting on `topic`, here and on
    /// every other node of the view (over the peer links). Call it once
    /// the change is committed ([`CallExt::wake`] does).
    pub fn wake(&self, topic: &str) {
        self.wake_limited(topic, None);
    }

    /// Like [`Node::wake`], but of the long polls parked on `topic` only
    /// the `n` that waited longest run on each node (streams that follow
    /// it all look): a change that `n` waiters can take, such as `n` new
    /// tasks, wakes that many claims rather than every idle worker, who
    /// would find nothing and wait again. A long poll woken for nothing,
    /// or not woken at all, still runs at its deadline, and a service's own
    /// fallback (the tasks' `--claim-poll`) bounds a wake-up lost with its
    /// link. `n == 0` (nothing changed that a waiter could use) wakes
    /// nothing, streams included.
    pub fn wake_some(&self, topic: &str, n: usize) {
        if n > 0 {
            self.wake_limited(topic, Some(n));
        }
    }

    fn wake_limited(&self, topic: &str, limit: Option<usize>) {
        self.topics.wake(topic, limit);
        self.peers.broadcast::<dsf_proto::sys::Wake>(
            self.id(),
            &dsf_proto::sys::WakeBody {
                topics: vec![topic.to_string()],
                limit: limit.map(|n| n as u32),
            },
        );
    }

    /// Wakes the long polls and streams waiting on `topic` on this node only.
    pub fn wake_here(&self, topic: &str) {
        self.topics.wake(topic, None);
    }

    /// Like [`Node::wake_here`], but only the `n` long polls parked longest.
    pub fn wake_some_here(&self, topic: &str, n: usize) {
        if n > 0 {
            self.topics.wake(topic, Some(n));
        }
    }

    /// The topics long polls are parked on here, starting with `prefix`.
    pub fn parked_topics(&self, prefix: &str) -> Vec<String> {
        self.topics.parked_topics(prefix)
    }

    /// Long polls parked here now.
    pub fn parked(&self) -> usize {
        self.topics.parked()
    }

    /// Follows `topic` for `stream`: `step` runs on the `follow` thread at
    /// once, each time the topic is woken (on any node), and every `every`
    /// in any case (a wake-up can be lost with its link). It sends what
    /// changed and says whether to go on ([`Step::Wait`]) or end the
    /// stream with its final reply ([`Step::Finish`]); an error ends it
    /// with that error, except `unavailable` (the database is away: it
    /// waits for it). A stream whose connection closed or that was
    /// cancelled is dropped.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use app_server::prelude::*;
    /// use dsf_proto::task::{JobRef, Watch};
    ///
    /// // Follows a job: its status each time `job:<id>` is woken (by
    /// // `call.wake` after a commit on any node), or every second.
    /// fn watch(call: &Call, b: JobRef, stream: Stream<Watch>) -> Result<()> {
    ///     let db = call.db().clone();
    ///     call.node().follow(format!("job:{}", b.job), Duration::from_secs(1), stream, move |s| {
    ///         # let st: dsf_proto::task::JobStatus = unimplemented!();
    ///         // read the job with `db`, send what changed with `s.update(…)`
    ///         # let _ = (&db, &s);
    ///         Ok(if st.state == "running" { Step::Wait } else { Step::Finish(st) })
    ///     });
    ///     Ok(())
    /// }
    /// ```
    pub fn follow<M: Message>(
        &self,
        topic: impl Into<String>,
        every: Duration,
        stream: Stream<M>,
        step: impl FnMut(&mut Stream<M>) -> Result<Step<M::Reply>> + Send + 'static,
    ) {
        self.topics.follow(topic.into(), every, stream, step);
    }
}

/// What an app server's handlers reach through their [`Call`].
///
/// ```no_run
/// use app_server::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] pub struct Body { item: String }
/// # #[derive(Serialize, Deserialize)] pub struct Reply { id: u64 }
/// # dsf_proto::message!(pub Place = "order.place", Viewer, write: Body => Reply);
///
/// fn place(call: &Call, b: Body) -> Result<Reply> {
///     let owner = call.user()?.id;
///     // A write runs once: this joins the transaction its run-once
///     // record commits in.
///     let id = call.tx(|tx| {
///         tx.exec_drop(
///             "INSERT INTO orders (owner, item) VALUES (?, ?)",
///             (owner, &b.item),
///         )?;
///         Ok(tx.last_insert_id())
///     })?;
///     call.wake(format!("order:{id}"));
///     Ok(Reply { id })
/// }
/// ```
pub trait CallExt {
    /// The node serving the call.
    fn node(&self) -> &Node;

    /// The database pool.
    fn db(&self) -> &Db {
        self.node().db()
    }

    /// Runs `f` in a transaction: the run-once transaction of a write (so
    /// the write and the record that it ran commit together), a new one
    /// otherwise, committed when `f` returns `Ok`, run again after a
    /// deadlock or a lost Galera certification.
    fn tx<T>(&self, f: impl FnMut(&mut PooledConn) -> dsf_sql::Result<T>) -> Result<T>;

    /// Runs `f` on a connection (the run-once transaction's, inside a write).
    fn conn<T>(&self, f: impl FnOnce(&mut PooledConn) -> dsf_sql::Result<T>) -> Result<T>;

    /// Runs a statement whose success is all the handler needs (no rows,
    /// no insert id): inside a write it is staged and goes out with the
    /// write's record and `COMMIT`, one round trip for the three (see
    /// [`Db::exec_write`]). If it fails there, the handler runs again and
    /// meets the error here.
    fn write(&self, sql: &str, params: impl Into<dsf_sql::mysql::Params>) -> Result<()>;

    /// Wakes `topic` on every node once the call's write committed.
    fn wake(&self, topic: impl Into<String>);

    /// Wakes at most `n` long polls on `topic` on each node (the oldest
    /// first; see [`Node::wake_some`]) once the call's write committed.
    fn wake_some(&self, topic: impl Into<String>, n: usize);

    /// The state service `T` made at start.
    fn state<T: Any + Send + Sync>(&self) -> &T {
        self.node().state::<T>()
    }

    /// This node's id.
    fn node_id(&self) -> &str {
        self.node().id()
    }
}

impl CallExt for Call {
    fn node(&self) -> &Node {
        self.server()
    }

    fn tx<T>(&self, mut f: impl FnMut(&mut PooledConn) -> dsf_sql::Result<T>) -> Result<T> {
        self.db()
            .with_tx(self.ty().name, |c| f(c))
            .map_err(Error::from)
    }

    fn conn<T>(&self, f: impl FnOnce(&mut PooledConn) -> dsf_sql::Result<T>) -> Result<T> {
        self.db()
            .with_conn_result(self.ty().name, f)
            .map_err(Error::from)
    }

    fn write(&self, sql: &str, params: impl Into<dsf_sql::mysql::Params>) -> Result<()> {
        self.db()
            .exec_write(self.ty().name, sql, params)
            .map_err(Error::from)
    }

    fn wake(&self, topic: impl Into<String>) {
        let topic = topic.into();
        let pipeline = self.pipeline().clone();
        self.after_commit(move || pipeline.server().wake(&topic));
    }

    fn wake_some(&self, topic: impl Into<String>, n: usize) {
        let topic = topic.into();
        let pipeline = self.pipeline().clone();
        self.after_commit(move || pipeline.server().wake_some(&topic, n));
    }
}
