//! The dashboard, on the metrics port: a page at `/` that polls its JSON
//! every second, and the JSON itself.
//!
//! - `GET /api/status`: `cluster.status`'s body (nodes, balancers, view,
//!   `dead_after_ms`), each node with its `share` of the ring, plus
//!   `history` (the last [`crate::cluster::HISTORY`] changes of
//!   membership, oldest first: `{at_ms, version, node, event}`) and
//!   `now_ms`, the collector's clock.
//! - `GET /api/jobs`: with `--db`, the newest jobs of every app with their
//!   counts, `{jobs: [{job, app, name, created_at_ms, state, total, done,
//!   failed, dead, running, ready}], as_of_ms, error}`; without, `404`
//!   saying so. A `jobs` thread reads them once a second while the page
//!   is open (asked within [`JOBS_IDLE`]), so a slow or absent database
//!   never holds up `/metrics` on the same port.
//!
//! The page is one file of HTML, CSS and JavaScript in the binary, with no
//! build step and nothing fetched from elsewhere. Access is the metrics
//! port's: loopback by default (`--metrics-listen`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsf_common::wire::now_ms;
use dsf_ring::{Ring, RingConfig};
use dsf_sql::tasks::JobSummary;
use dsf_sql::{Db, DbConfig};
use serde::Serialize;

use crate::cluster::{Change, Cluster, Snapshot};
use crate::service::status::{status, Status};

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");

/// Jobs the page lists.
pub const JOBS_SHOWN: u32 = 20;
/// How often the jobs are read while the page is open.
pub const JOBS_EVERY: Duration = Duration::from_secs(1);
/// Past this long without a request for them, jobs are not read.
pub const JOBS_IDLE: Duration = Duration::from_secs(10);

/// One answer of the port.
pub struct Page {
    pub status: u16,
    pub kind: &'static str,
    pub body: Vec<u8>,
}

/// `/api/status`.
#[derive(Serialize)]
struct ApiStatus<'a> {
    now_ms: u64,
    #[serde(flatten)]
    status: Status<'a>,
    /// Each node's share of the hash space, as a balancer with the default
    /// ring (160 points per unit of weight) divides it.
    shares: BTreeMap<&'a str, f64>,
    history: &'a [Change],
}

/// What the `jobs` thread last read.
#[derive(Debug, Default)]
pub struct Jobs {
    state: Mutex<JobsState>,
    /// When the page last asked, in ms since the epoch.
    asked_ms: AtomicU64,
}

#[derive(Debug, Default, Clone, Serialize)]
struct JobsState {
    jobs: Vec<JobSummary>,
    /// When they were read; `null` before the first read.
    as_of_ms: Option<u64>,
    /// Why the last read failed, until one succeeds.
    error: Option<String>,
}

/// The answer to `GET path`, or `None` if the dashboard has no such page.
pub fn route(path: &str, cluster: &Cluster, jobs: Option<&Jobs>) -> Option<Page> {
    Some(match path {
        "/" | "/index.html" => Page {
            status: 200,
            kind: "text/html; charset=utf-8",
            body: PAGE.as_bytes().to_vec(),
        },
        "/api/status" => Page {
            status: 200,
            kind: "application/json",
            body: api_status(&cluster.snapshot()).into_bytes(),
        },
        "/api/jobs" => match jobs {
            Some(jobs) => {
                jobs.asked_ms.store(now_ms(), Ordering::Relaxed);
                let state = jobs.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
                json(200, &state)
            }
            None => json(
                404,
                &serde_json::json!({
                    "error": "this collector has no database: start it with --db mysql://USER@HOST:PORT/DB (the app servers' database) to see jobs"
                }),
            ),
        },
        _ => return None,
    })
}

fn json<T: Serialize>(status: u16, body: &T) -> Page {
    Page {
        status,
        kind: "application/json",
        body: serde_json::to_vec(body).expect("dashboard JSON serialises"),
    }
}

/// `/api/status`'s body.
pub fn api_status(snap: &Snapshot) -> String {
    let shares = match Ring::from_view(&snap.view, RingConfig::default()) {
        Ok(ring) => snap
            .view
            .nodes
            .iter()
            .filter_map(|n| Some((n.id.as_str(), ring.node(ring.index_of(&n.id)?).share())))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let body = ApiStatus {
        now_ms: now_ms(),
        status: status(snap),
        shares,
        history: &snap.history,
    };
    serde_json::to_string(&body).expect("status serialises")
}

/// The loop of the `jobs` thread: reads the newest jobs once a second
/// while the page is open, connecting on first need and again after a
/// failure; ends when the collector stops.
pub fn run_jobs(jobs: Arc<Jobs>, cfg: DbConfig, cluster: Arc<Cluster>) {
    let mut db: Option<Db> = None;
    while !cluster.wait_stop(JOBS_EVERY) {
        let asked = jobs.asked_ms.load(Ordering::Relaxed);
        if now_ms().saturating_sub(asked) > JOBS_IDLE.as_millis() as u64 {
            continue;
        }
        if db.is_none() {
            // One attempt a round: the next round is the retry.
            match Db::connect_once(&cfg) {
                Ok(d) => db = Some(d),
                Err(e) => {
                    note_error(&jobs, format!("cannot reach the database: {e}"));
                    continue;
                }
            }
        }
        let read = db.as_ref().map(|d| {
            // With a list (Galera nodes): off a node that cannot serve,
            // back to the first once it can.
            if !d.check_in_use() {
                d.prefer_first();
            }
            d.tasks().recent(JOBS_SHOWN)
        });
        let mut state = jobs.state.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Some(Ok(list)) => {
                *state = JobsState {
                    jobs: list,
                    as_of_ms: Some(now_ms()),
                    error: None,
                }
            }
            Some(Err(e)) => {
                if state.error.is_none() {
                    log::warn!("dashboard: cannot read jobs: {e}");
                }
                state.error = Some(format!("cannot read jobs: {e}"));
            }
            None => {}
        }
    }
}

fn note_error(jobs: &Jobs, why: String) {
    let mut state = jobs.state.lock().unwrap_or_else(|p| p.into_inner());
    if state.error.is_none() {
        log::warn!("dashboard: {why}");
    }
    state.error = Some(why);
}
