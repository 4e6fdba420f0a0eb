//! `sys.ping` (app): answered on the reactor thread, no database. Its body
//! and reply are the catalogue's (`dsf_proto::sys`). (`sys.cancel` is the
//! service's own: it needs the connection, see `crate::service`.)

use dsf_common::Result;
use dsf_proto::sys::{self as msg, Pong};
use dsf_proto::Empty;

use crate::controller::{json, route, Call, Exec, Route};

/// This group's routes.
pub const ROUTES: &[Route] = &[route::<msg::Ping>(Exec::Inline, ping)];

/// `sys.ping`.
pub fn ping(call: &Call<'_>) -> Result<String> {
    let Empty {} = call.body()?;
    json(&Pong {
        node: call.app.node().to_string(),
    })
}
