//! The framework's own service, in every app server: `sys.ping`,
//! `sys.cancel` (ends a stream of the connection), `peer.wake` (another
//! app server's wake-ups by topic), the run-once records' table
//! (namespace `dsf`) and the `janitor` that keeps the database in order.

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
        .job("janitor", JANITOR_TICK, move |node| {
            // With a --db list, move off a node that answers but cannot
            // serve (a Galera node cut off from the others).
            node.db().check_in_use();
            if Instant::now() >= next_round {
                next_round = Instant::now() + JANITOR_EVERY;
                janitor_round(node);
            }
        })
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

/// `peer.wake {"topics"}`: what waits on those topics here looks again.
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
        call.node().wake_here(t);
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
