//! One `push` thread per balancer: a persistent connection to its cluster
//! port, every published view sent as `lb.set_view` under the cluster
//! secret, the reply's `{"applied": version}` checked and recorded.
//!
//! Each balancer has its own thread and connection, so one that is down or
//! slow delays nobody else. A failure drops the connection and retries with
//! a doubling backoff capped at [`PushConfig::backoff_max`]; on reconnecting
//! the newest view goes out at once, so a restarted balancer has it within
//! the cap plus one round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dsf_common::call::{Connection, Failure, Signer};
use dsf_common::view::View;
use dsf_common::wire::keys::CLUSTER_APP;
use dsf_common::wire::Key;
use dsf_common::ErrorCode;
use dsf_proto::cluster::Applied;

use crate::cluster::{Cluster, Next};

/// Timeouts and backoff of the pushers.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Time allowed to connect to a balancer.
    pub connect_timeout: Duration,
    /// Time allowed for a balancer to answer a push.
    pub reply_timeout: Duration,
    /// First wait after a failure.
    pub backoff_min: Duration,
    /// Longest wait between attempts; bounds how long a restarted balancer
    /// waits for its view.
    pub backoff_max: Duration,
    /// Largest reply frame accepted.
    pub max_frame: usize,
    /// The certificates to trust when the balancers speak TLS.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            connect_timeout: Duration::from_secs(1),
            reply_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            max_frame: dsf_common::wire::DEFAULT_MAX_FRAME,
            tls: None,
        }
    }
}

/// Why one push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Lost(Failure),
    #[error("refused the view: {0}{hint}", hint = refusal_hint(.0))]
    Refused(dsf_common::Error),
    #[error(
        "unreadable reply: {0}{hint}",
        hint = " (do the collector and the balancer have the same DSF_CLUSTER_SECRET?)"
    )]
    BadReply(String),
}

fn refusal_hint(e: &dsf_common::Error) -> &'static str {
    match e.code() {
        ErrorCode::BadSignature | ErrorCode::Unauthorized => {
            " (do the collector and the balancer have the same DSF_CLUSTER_SECRET?)"
        }
        ErrorCode::StaleTimestamp => " (are the two hosts' clocks in sync?)",
        _ => "",
    }
}

/// How often an idle pusher looks whether its balancer hung up.
const PEER_CHECK: Duration = Duration::from_millis(100);

/// One balancer's connection.
struct Pusher {
    lb: String,
    signer: Signer,
    cfg: PushConfig,
    conn: Option<Connection>,
}

// === impl Pusher ===

impl Pusher {
    /// Whether the balancer closed the connection while we were idle (it
    /// never sends unasked, so readable means EOF or reset).
    fn peer_closed(&mut self) -> bool {
        self.conn.as_mut().is_some_and(Connection::is_closed)
    }

    /// Sends `view`; returns the version the balancer holds after it.
    fn push(&mut self, view: &View) -> Result<Applied, PushError> {
        if self.conn.is_none() {
            let conn = Connection::connect_tls(
                &self.lb,
                &self.lb,
                self.signer.clone(),
                self.cfg.connect_timeout,
                self.cfg.max_frame,
                self.cfg.tls.as_ref(),
            )
            .map_err(PushError::Connect)?;
            log::info!("connected to balancer {}", self.lb);
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let body = serde_json::to_string(view).expect("a view serialises");
        let deadline = Instant::now() + self.cfg.reply_timeout;
        let body = conn
            .round_trip(
                <dsf_proto::cluster::SetView as dsf_proto::Message>::TYPE.name,
                &body,
                None,
                deadline,
            )
            .map_err(|f| match f {
                Failure::Server(e) => PushError::Refused(e),
                Failure::BadReply(why) => PushError::BadReply(why),
                f => PushError::Lost(f),
            })?;
        let applied: Applied = serde_json::from_str(body.get())
            .map_err(|e| PushError::BadReply(format!("expected {{\"applied\": version}}: {e}")))?;
        Ok(applied)
    }
}

/// The loop of one `push` thread; returns when the cluster stops.
pub fn run_pusher(lb: String, cluster: Arc<Cluster>, key: Key, cfg: PushConfig) {
    let mut p = Pusher {
        lb,
        signer: Signer {
            app: CLUSTER_APP.into(),
            key,
        },
        cfg: cfg.clone(),
        conn: None,
    };
    let mut sent = 0;
    let mut backoff = cfg.backoff_min;
    let mut failing = false;
    loop {
        let (view, seq) = match cluster.next_view_within(sent, PEER_CHECK) {
            Next::Stop => return,
            Next::View(view, seq) => (view, seq),
            Next::Idle => {
                if p.peer_closed() {
                    // A restarted balancer holds no view: reconnect and
                    // send the current one now rather than at the next
                    // re-send.
                    log::info!("balancer {} closed the connection; reconnecting", p.lb);
                    p.conn = None;
                    sent = 0;
                }
                continue;
            }
        };
        match p.push(&view) {
            Ok(Applied {
                applied,
                same_membership,
                stats,
            }) => {
                if failing {
                    log::info!("balancer {} is reachable again", p.lb);
                    failing = false;
                }
                log::debug!(
                    "balancer {} applied {applied} (sent {})",
                    p.lb,
                    view.version
                );
                cluster.pushed(&p.lb, view.version, applied, same_membership, stats);
                sent = seq;
                backoff = cfg.backoff_min;
            }
            Err(e) => {
                p.conn = None;
                // Warn once per outage, not once per retry.
                if failing {
                    log::debug!("balancer {}: {e}", p.lb);
                } else {
                    log::warn!(
                        "cannot push views to balancer {}: {e}; retrying every {:?} at most",
                        p.lb,
                        cfg.backoff_max
                    );
                    failing = true;
                }
                cluster.push_failed(&p.lb, e.to_string());
                if cluster.wait_stop(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
    }
}
