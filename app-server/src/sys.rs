//! The framework's own service, in every app server: `sys.ping`,
//! `sys.cancel` (ends a stream of the connection), `peer.wake` (another
//! app server's wake-ups by topic), the run-once records' table
//! (namespace `dsf`) and the `janitor` that keeps the database in order.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use dsf_common::{Error, Result};
use dsf_proto::sys::Cancel;
use dsf_proto::sys::{CancelBody, Ping, Pong, Wake, WakeBody, TOPIC_MAX, WAKE_TOPICS_MAX};
use dsf_proto::Empty;

use crate::node::{Call, CallExt, Node, Route};
use crate::service::Service;

/// How often the janitor checks that the database node in use serves.
const JANITOR_TICK: Duration = Duration::from_secs(1);
/// How often the janitor goes back to the first node of a list and
/// deletes expired run-once records.
const JANITOR_EVERY: Duration = Duration::from_secs(10);
/// How often the database is probed, and how long a probe waits for its
/// answer ([`dsf_sql::Db::probe`]): a database that does not answer within
/// it is taken for unreachable, and requests that need it are answered
/// `unavailable` at once until it answers again.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Records are kept for twice the replay window: a resend older than the
/// window is refused as stale before its record is looked up.
const WRITES_KEPT: Duration = Duration::from_secs(2 * 60);

/// The framework's service (namespace `dsf`).
pub fn service() -> Service {
    let mut next_round = Instant::now() + JANITOR_EVERY;
    Service::new(dsf_sql::migrate::CORE_NAMESPACE)
        .migrations(dsf_sql::migrate::CORE)
        .route(Route::unary::<Ping>(ping).inline())
        .route(Route::unary::<Cancel>(cancel).inline())
        .route(Route::unary::<Wake>(wake).inline())
        .job("db-probe", PROBE_EVERY, |node| {
            node.db().probe(PROBE_TIMEOUT);
        })
        .job("janitor", JANITOR_TICK, move |node| {
            // With a --db list, move off a node that answers but cannot
            // serve (a Galera node cut off from the others).
            node.db().check_in_use();
            if Instant::now() >= next_round {
                next_round = Instant::now() + JANITOR_EVERY;
                follow_db_clock(node.db());
                janitor_round(node);
            }
        })
}

/// A reading of the clock slower than this is not trusted (its error is
/// up to half of it).
const CLOCK_READ_MAX: Duration = Duration::from_secs(1);
/// An offset this large is logged as a warning, and a change this large
/// logged again.
const CLOCK_OFF: i64 = 1_000;

/// The offset last logged (`i64::MIN`: none yet).
static CLOCK_LOGGED: AtomicI64 = AtomicI64::new(i64::MIN);

/// Follows the database's clock: the server judges and stamps every `ts`
/// by it ([`dsf_common::clock`]), so that a replayed write is refused as
/// stale for as long as its run-once record could have expired, however
/// wrong this host's own clock is. Read at start and by the janitor every
/// round; a failed or slow reading keeps the last one.
pub fn follow_db_clock(db: &dsf_sql::Db) {
    let (offset, took) = match db.clock_offset() {
        Ok(r) => r,
        Err(e) => {
            log::debug!("clock: cannot read the database's clock: {e}");
            return;
        }
    };
    if took > CLOCK_READ_MAX {
        log::debug!("clock: the database's clock took {took:?} to read; kept the last offset");
        return;
    }
    dsf_common::clock::set_offset_ms(offset);
    let last = CLOCK_LOGGED.load(Ordering::Relaxed);
    let changed = match last {
        i64::MIN => offset.abs() >= CLOCK_OFF,
        last => (offset - last).abs() >= CLOCK_OFF,
    };
    if !changed {
        return;
    }
    CLOCK_LOGGED.store(offset, Ordering::Relaxed);
    if offset.abs() >= CLOCK_OFF {
        log::warn!(
            "clock: this host's clock is {:.1} s {} the database's ({}); this server judges and stamps times by the database's clock: sync this host's clock (NTP)",
            offset.abs() as f64 / 1000.0,
            if offset > 0 { "behind" } else { "ahead of" },
            db.target()
        );
    } else {
        log::info!("clock: this host's clock is back within 1 s of the database's");
    }
}

/// `sys.ping`: which node answers.
fn ping(call: &Call, _: Empty) -> Result<Pong> {
    Ok(Pong {
        node: call.node_id().to_string(),
    })
}

/// `sys.cancel {"id"}`: ends that stream of this connection.
fn cancel(call: &Call, b: CancelBody) -> Result<Empty> {
    match call.cancel_stream(b.id) {
        true => Ok(Empty {}),
        false => Err(Error::NotFound(format!(
            "no stream {} is open on this connection",
            b.id
        ))),
    }
}

/// `peer.wake {"topics", "limit"?}`: what waits on those topics here
/// looks again (of the parked long polls, the `limit` oldest).
fn wake(call: &Call, b: WakeBody) -> Result<Empty> {
    if b.topics.len() > WAKE_TOPICS_MAX {
        return Err(Error::bad_request(format!(
            "topics: at most {WAKE_TOPICS_MAX}, got {}",
            b.topics.len()
        )));
    }
    if let Some(t) = b
        .topics
        .iter()
        .find(|t| t.is_empty() || t.len() > TOPIC_MAX)
    {
        return Err(Error::bad_request(format!(
            "topics: 1 to {TOPIC_MAX} bytes each, got {}",
            t.len()
        )));
    }
    for t in &b.topics {
        match b.limit {
            Some(n) => call.node().wake_some_here(t, n as usize),
            None => call.node().wake_here(t),
        }
    }
    Ok(Empty {})
}

/// The janitor's work every [`JANITOR_EVERY`]: back to the first node of a
/// `--db` list once it serves again, and run-once records past
/// [`WRITES_KEPT`] deleted. Every app server runs one; they delete the
/// same rows, which is harmless.
fn janitor_round(node: &Node) {
    let db = node.db();
    db.prefer_first();
    match db.writes().expire(WRITES_KEPT, 10_000) {
        Ok(0) => {}
        Ok(n) => log::debug!("janitor: deleted {n} expired run-once records"),
        Err(e) => log::warn!("janitor: cannot delete expired run-once records: {e}"),
    }
}
