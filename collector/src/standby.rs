//! A standby collector (`--standby-for HOST:PORT`): it takes heartbeats
//! like the active one (app servers send to both), so its member table is
//! whole, but sends no views while the active collector answers and feeds
//! the balancers. The `standby` thread asks the active one for
//! `cluster.status` every [`CHECK_EVERY`]. When it has not answered for
//! [`TAKE_OVER_AFTER`], or has answered without feeding for longer than that
//! plus a warm-up (`--dead-after`, which both should share), the standby
//! takes over with a new version; when the active one feeds again, it
//! stands by again. A restarted active collector warms up before it feeds,
//! and the standby feeds meanwhile.
//!
//! Active/standby rather than both feeding: two collectors with different
//! tables (one missed a node's heartbeats) would each push their own view,
//! and the balancers would flip between them, moving keys every time. With
//! one feeder, a balancer's view changes only when membership does. Versions
//! follow the clock in both, so the one that takes over sends versions above
//! the last one the other sent (and a balancer that holds a greater one
//! says so in its reply, which the pusher overtakes).
//!
//! Only a true active collector counts: one that is itself a standby (two
//! collectors given `--standby-for` each other) is logged as a mistake and
//! not deferred to. One that answers but refuses the question (another
//! cluster secret, TLS on one side only) is alive and may well be feeding:
//! that is logged as an error, and the standby stands by, since taking
//! over would make two feeders. One that answers with errors of its own
//! (overloaded, internal) is alive but not known to feed: it is given the
//! same time as one that answers without feeding.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dsf_common::call::{Connection, Failure, Signer};
use dsf_common::wire::keys::CLUSTER_APP;
use dsf_common::wire::Key;
use dsf_common::ErrorCode;
use serde::Deserialize;

use crate::cluster::Cluster;
use crate::push::PushConfig;

/// How often the standby asks the active collector.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long the active collector may go without answering before the
/// standby takes over.
pub const TAKE_OVER_AFTER: Duration = Duration::from_millis(1500);

/// The part of the active collector's `cluster.status` the standby reads.
#[derive(Debug, Deserialize)]
struct Peer {
    feeding: bool,
    #[serde(default)]
    standby_for: Option<String>,
}

/// The loop of the `standby` thread; returns when the cluster stops.
pub fn run_standby(active: String, cluster: Arc<Cluster>, key: Key, cfg: PushConfig) {
    let signer = Signer {
        app: CLUSTER_APP.into(),
        key,
    };
    let mut conn: Option<Connection> = None;
    // The active collector's warm-up, taken to be ours: it may answer
    // without feeding that long (after a start) before we feed instead.
    let patience = TAKE_OVER_AFTER + cluster.snapshot().members.dead_after();
    let (mut seen_alive, mut seen_feeding) = (Instant::now(), Instant::now());
    let (mut said_misconfigured, mut said_refused) = (false, false);
    loop {
        if cluster.wait_stop(CHECK_EVERY) {
            return;
        }
        let why = match ask(&active, &signer, &cfg, &mut conn) {
            Ok(Peer {
                feeding: true,
                standby_for: None,
            }) => {
                (seen_alive, seen_feeding) = (Instant::now(), Instant::now());
                (said_misconfigured, said_refused) = (false, false);
                cluster.stand_by(
                    true,
                    &format!("collector {active} answers and feeds the balancers"),
                );
                continue;
            }
            Ok(Peer {
                standby_for: Some(theirs),
                ..
            }) => {
                seen_alive = Instant::now();
                if !said_misconfigured {
                    log::error!(
                        "collector {active} is itself a standby (for {theirs}): give the active collector no --standby-for; feeding the balancers meanwhile"
                    );
                    said_misconfigured = true;
                }
                format!("collector {active} is a standby too")
            }
            Ok(Peer { feeding: false, .. }) => {
                seen_alive = Instant::now();
                format!("collector {active} answers but has sent no views for {patience:?}")
            }
            Err(Asked::Refused(e)) => {
                conn = None;
                (seen_alive, seen_feeding) = (Instant::now(), Instant::now());
                if !said_refused {
                    log::error!(
                        "collector {active} answers but refuses this standby's cluster.status: {e}; \
                         standing by, since it may be feeding the balancers. Give both collectors the \
                         same DSF_CLUSTER_SECRET, and --tls-ca when the active speaks TLS, and check \
                         that --standby-for is the active collector's --listen"
                    );
                    said_refused = true;
                }
                cluster.stand_by(true, &format!("collector {active} answers (and refuses)"));
                continue;
            }
            Err(Asked::Failing(e)) => {
                conn = None;
                seen_alive = Instant::now();
                format!("collector {active} answers with errors ({e}) and has sent no views for {patience:?}")
            }
            Err(Asked::Silent(e)) => {
                conn = None;
                format!("collector {active} has not answered for {TAKE_OVER_AFTER:?} ({e})")
            }
        };
        said_refused = false;
        if seen_alive.elapsed() >= TAKE_OVER_AFTER || seen_feeding.elapsed() >= patience {
            cluster.stand_by(false, &why);
        }
    }
}

/// Why the active collector's status was not had.
enum Asked {
    /// No answer: the connection refused, reset, closed or timed out.
    Silent(String),
    /// Something answers, but not to this standby: a reply that does not
    /// verify (another cluster secret), a refusal of the request, a status
    /// that does not read, TLS on one side only. It may well be feeding.
    Refused(String),
    /// The active collector answers with an error of its own (overloaded,
    /// unavailable, internal): alive, not known to feed.
    Failing(String),
}

fn ask(
    active: &str,
    signer: &Signer,
    cfg: &PushConfig,
    conn: &mut Option<Connection>,
) -> Result<Peer, Asked> {
    if conn.as_mut().is_some_and(Connection::is_closed) {
        *conn = None;
    }
    if conn.is_none() {
        let c = Connection::connect_tls(
            active,
            active,
            signer.clone(),
            cfg.connect_timeout,
            cfg.max_frame,
            cfg.tls.as_ref(),
        )
        .map_err(|e| match e.kind() {
            // A TLS handshake that failed on what came back (a plain port,
            // a certificate not trusted), or an address TLS cannot name.
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                Asked::Refused(format!("cannot connect: {e}"))
            }
            _ => Asked::Silent(format!("cannot connect: {e}")),
        })?;
        *conn = Some(c);
    }
    let c = conn.as_mut().expect("connected above");
    let reply = c
        .round_trip(
            <dsf_proto::cluster::Status as dsf_proto::Message>::TYPE.name,
            "{}",
            None,
            Instant::now() + cfg.reply_timeout,
        )
        .map_err(|f| {
            let failing = |code| {
                matches!(
                    code,
                    ErrorCode::Overloaded | ErrorCode::Unavailable | ErrorCode::Internal
                )
            };
            match &f {
                Failure::Server(e) if failing(e.code()) => Asked::Failing(f.to_string()),
                Failure::Server(_) | Failure::BadReply(_) => Asked::Refused(f.to_string()),
                // An unsigned error about the connection: something speaks
                // the wire there (a TLS port spoken to in plain, a full one).
                Failure::Lost(_) => match c.unsigned_error() {
                    Some(e) if failing(e.code()) => Asked::Failing(f.to_string()),
                    Some(_) => Asked::Refused(f.to_string()),
                    None => Asked::Silent(f.to_string()),
                },
                _ => Asked::Silent(f.to_string()),
            }
        })?;
    serde_json::from_str(reply.get()).map_err(|e| Asked::Refused(format!("unreadable status: {e}")))
}
