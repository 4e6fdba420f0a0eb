//! [`Service`]: the unit an app server is composed of. A service has a
//! name, its message types and their routes, its migrations (numbered in a
//! namespace of their own, its name), state made at start, hooks, and
//! background jobs. dsf's own services (accounts, blacklist, tasks,
//! messaging) are built with this API alone, as a user's are.
//!
//! ```no_run
//! use app_server::prelude::*;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] pub struct GetBody { id: u64 }
//! # #[derive(Serialize, Deserialize)] pub struct Order { id: u64, item: String }
//! # dsf_proto::message!(pub Get = "order.get", Viewer, read: GetBody => Order);
//! use app_server::Migration;
//!
//! const MIGRATIONS: &[Migration] = &[Migration {
//!     version: 1,
//!     name: "orders",
//!     sql: "CREATE TABLE orders (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, item VARCHAR(100) NOT NULL);",
//! }];
//!
//! pub fn service() -> Service {
//!     Service::new("orders")
//!         .requires("accounts")
//!         .migrations(MIGRATIONS)
//!         .unary::<Get>(|call, b| {
//!             let row: Option<(u64, String)> =
//!                 call.conn(|c| Ok(c.exec_first("SELECT id, item FROM orders WHERE id = ?", (b.id,))?))?;
//!             let (id, item) = row.ok_or_else(|| Error::NotFound(format!("no order {}", b.id)))?;
//!             Ok(Order { id, item })
//!         })
//! }
//! ```

use std::any::{Any, TypeId};
use std::sync::Arc;
use std::time::Duration;

use dsf_common::pipeline::{Sessions, Wait};
use dsf_common::reactor::ConnId;
use dsf_common::Result;
use dsf_proto::Message;
use dsf_sql::migrate::Migration;

use crate::node::{Call, CloseHook, Node, Route};
use crate::settings::Settings;
use dsf_common::pipeline::Stream;

/// An error a service's start-up hook returns (it stops the server from
/// starting, with the service named).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type StateFn =
    Box<dyn FnOnce(&Node) -> std::result::Result<(TypeId, Arc<dyn Any + Send + Sync>), BoxError>>;
pub(crate) type StartFn = Box<dyn FnOnce(&Node) -> std::result::Result<(), BoxError>>;
pub(crate) type DrainFn = Box<dyn FnOnce(&Node) + Send + Sync>;
pub(crate) type SessionsFn = Box<dyn FnOnce(&Node) -> Arc<dyn Sessions>>;

/// A background job: `run` every `every` on a thread of its own, named
/// after it, until the server stops.
pub struct Job {
    pub(crate) name: String,
    pub(crate) every: Box<dyn FnOnce(&Settings) -> Duration>,
    pub(crate) run: Box<dyn FnMut(&Node) + Send>,
}

/// One service; see the module documentation.
pub struct Service {
    pub(crate) name: String,
    pub(crate) routes: Vec<Route>,
    pub(crate) migrations: Vec<Migration>,
    pub(crate) states: Vec<StateFn>,
    pub(crate) on_start: Vec<StartFn>,
    pub(crate) on_drain: Vec<DrainFn>,
    pub(crate) on_close: Vec<CloseHook>,
    pub(crate) jobs: Vec<Job>,
    pub(crate) sessions: Option<SessionsFn>,
    pub(crate) requires: Vec<&'static str>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("routes", &self.routes.len())
            .field("migrations", &self.migrations.len())
            .finish()
    }
}

// === impl Service ===

impl Service {
    /// An empty service named `name`: its migrations' namespace, and how
    /// errors and logs name it. 1 to 64 letters, digits, `_` or `-`.
    pub fn new(name: impl Into<String>) -> Service {
        Service {
            name: name.into(),
            routes: Vec::new(),
            migrations: Vec::new(),
            states: Vec::new(),
            on_start: Vec::new(),
            on_drain: Vec::new(),
            on_close: Vec::new(),
            jobs: Vec::new(),
            sessions: None,
            requires: Vec::new(),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Serves `route`: its message type is this service's (no other
    /// service of the server may declare it).
    pub fn route(mut self, route: Route) -> Service {
        self.routes.push(route);
        self
    }

    /// Serves `M` with a unary handler, on a worker ([`Route::unary`]).
    pub fn unary<M: Message>(
        self,
        handler: impl Fn(&Call, M::Body) -> Result<M::Reply> + Send + Sync + 'static,
    ) -> Service {
        self.route(Route::unary::<M>(handler))
    }

    /// Serves `M` as a stream ([`Route::stream`]); [`Node::follow`] keeps
    /// one going off the workers.
    pub fn stream<M: Message>(
        self,
        handler: impl Fn(&Call, M::Body, Stream<M>) -> Result<()> + Send + Sync + 'static,
    ) -> Service {
        self.route(Route::stream::<M>(handler))
    }

    /// Serves `M` as a long poll ([`Route::long_poll`]).
    pub fn long_poll<M: Message>(
        self,
        wait: impl Fn(&Call, &M::Body) -> Option<Wait> + Send + Sync + 'static,
        handler: impl Fn(&Call, M::Body) -> Result<M::Reply> + Send + Sync + 'static,
    ) -> Service {
        self.route(Route::long_poll::<M>(wait, handler))
    }

    /// Its migrations, numbered in the namespace of its name: applied by
    /// `migrate` and checked at start, never colliding with another
    /// service's.
    pub fn migrations(mut self, migrations: &[Migration]) -> Service {
        self.migrations.extend_from_slice(migrations);
        self
    }

    /// State made at start, once the database is reached: handlers get it
    /// with `call.state::<T>()`, hooks and jobs with `node.state::<T>()`.
    /// A state maker sees no other service's state.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::time::Duration;
    /// use app_server::prelude::*;
    /// use dsf_proto::sys::{Ping, Pong};
    ///
    /// #[derive(Default)]
    /// struct Seen(AtomicU64);
    ///
    /// let service = Service::new("counter")
    ///     .state(|_node| Ok(Seen::default()))
    ///     .unary::<Ping>(|call, _| {
    ///         let n = call.state::<Seen>().0.fetch_add(1, Ordering::Relaxed);
    ///         Ok(Pong { node: format!("{} ({n} before)", call.node_id()) })
    ///     })
    ///     .job("report", Duration::from_secs(60), |node| {
    ///         log::info!("{} pings so far", node.state::<Seen>().0.load(Ordering::Relaxed));
    ///     });
    /// assert_eq!(service.name(), "counter");
    /// ```
    pub fn state<T: Any + Send + Sync>(
        mut self,
        make: impl FnOnce(&Node) -> std::result::Result<T, BoxError> + 'static,
    ) -> Service {
        self.states.push(Box::new(move |node| {
            let state: Arc<dyn Any + Send + Sync> = Arc::new(make(node)?);
            Ok((TypeId::of::<T>(), state))
        }));
        self
    }

    /// Runs `f` once every state is made and the node has its id, before
    /// it serves (clearing what a crash left behind, say).
    pub fn on_start(
        mut self,
        f: impl FnOnce(&Node) -> std::result::Result<(), BoxError> + 'static,
    ) -> Service {
        self.on_start.push(Box::new(f));
        self
    }

    /// Runs `f` when the node starts draining for shutdown (ending streams
    /// with `unavailable`, so their clients go elsewhere now).
    pub fn on_drain(mut self, f: impl FnOnce(&Node) + Send + Sync + 'static) -> Service {
        self.on_drain.push(Box::new(f));
        self
    }

    /// Runs `f` when a client's connection closes (after its streams end).
    pub fn on_close(mut self, f: impl Fn(&Node, ConnId) + Send + Sync + 'static) -> Service {
        self.on_close.push(Box::new(f));
        self
    }

    /// Runs `f` every `every` on a thread named `name` until the server
    /// stops: a janitor, a reaper, a fallback poll.
    pub fn job(
        self,
        name: impl Into<String>,
        every: Duration,
        f: impl FnMut(&Node) + Send + 'static,
    ) -> Service {
        self.job_every(name, move |_| every, f)
    }

    /// [`Service::job`], its interval read from the server's settings at
    /// start (the reaper's `reap_every`).
    pub fn job_every(
        mut self,
        name: impl Into<String>,
        every: impl FnOnce(&Settings) -> Duration + 'static,
        f: impl FnMut(&Node) + Send + 'static,
    ) -> Service {
        self.jobs.push(Job {
            name: name.into(),
            every: Box::new(every),
            run: Box::new(f),
        });
        self
    }

    /// Provides the sessions the auth layer checks tokens against (the
    /// accounts service does; one service of a server at most).
    pub fn sessions(mut self, f: impl FnOnce(&Node) -> Arc<dyn Sessions> + 'static) -> Service {
        self.sessions = Some(Box::new(f));
        self
    }

    /// Refuses to start without service `name` in the same server (the
    /// blacklist writes the accounts' audit trail).
    pub fn requires(mut self, name: &'static str) -> Service {
        self.requires.push(name);
        self
    }
}
