//! `sys.ping`: `{}` → `{"node"}`. Answered on the reactor thread: it touches
//! nothing that can block, so it measures the reactor and the wire, and
//! tells a client which node it reached.

use serde::{Deserialize, Serialize};

use crate::controller::{json, Auth, Call, Exec, Route};
use dsf_common::Result;

/// This group's routes.
pub const ROUTES: &[Route] = &[Route {
    kind: "sys.ping",
    auth: Auth::App,
    exec: Exec::Inline,
    handler: ping,
}];

/// `sys.ping`'s body: nothing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {}

/// `sys.ping`'s reply.
#[derive(Debug, Serialize)]
pub struct Pong<'a> {
    /// The node that answered.
    pub node: &'a str,
}

/// `sys.ping`.
pub fn ping(call: &Call<'_>) -> Result<String> {
    let Ping {} = call.body()?;
    json(&Pong {
        node: call.app.node(),
    })
}
