//! The heartbeat threads: `node.heartbeat` to each collector every interval
//! (id, advertised address, weight, state, stats, the view version held),
//! signed with the cluster secret; `node.leave` at the end of a graceful
//! shutdown. A reply carries the view's nodes when they changed: the peer
//! links ([`crate::peers`]) are taken from them.
//!
//! With more than one collector (an active one and its standby, see the
//! collector's `--standby-for`) each gets every heartbeat over its own
//! connection, from its own thread: a collector whose host went silent
//! (each exchange waiting out [`EXCHANGE_TIMEOUT`]) does not slow the
//! heartbeats to the other, so the standby's table is whole, and nobody in
//! it is evicted, when it takes over. The stats are sampled once per
//! interval and the same figures go to each.
//!
//! A collector that is down is logged once and retried with backoff (from
//! [`FIRST_RETRY`] up to the heartbeat interval); serving never depends on
//! it, nor does the other collector. When it answers again, that is logged
//! too.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use dsf_common::call::{Connection, Signer};
use dsf_common::view::{Heartbeat, Leave, NodeView, Stats};
use dsf_common::wire::DEFAULT_MAX_FRAME;
use dsf_proto::cluster::HeartbeatReply;
use serde_json::value::RawValue;

use dsf_common::pipeline::{Gauges, Pipeline};
use dsf_common::view::NodeState;

use crate::node::Node;

/// First retry after a failed exchange; doubles up to the heartbeat
/// interval and never past it, so a collector that comes back (or restarts
/// and starts from an empty table) hears from every node within one
/// interval, well inside its `--dead-after`.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// How long one exchange with the collector may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);

/// Who this node is, as heartbeats say.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub addr: String,
    pub proxy_addr: Option<String>,
    pub weight: u32,
}

enum Command {
    /// Send a heartbeat with these stats now (the state changed); answer
    /// with the link's index and whether it went.
    Now(Stats, Sender<(usize, bool)>),
    /// Send `node.leave`, answer as above, and stop.
    Leave(Sender<(usize, bool)>),
}

/// The running heartbeat threads, one per collector.
pub struct Heartbeats {
    links: Vec<(Sender<Command>, JoinHandle<()>)>,
    shared: Arc<Shared>,
}

/// What every link's thread reads.
struct Shared {
    identity: Identity,
    every: Duration,
    pipeline: Arc<Pipeline<Node>>,
    gauges: Mutex<Box<dyn Fn() -> Gauges + Send>>,
    on_view: Mutex<OnView>,
    /// The stats of this interval and when the next sample is due.
    sampled: Mutex<(Stats, Instant)>,
}

impl Shared {
    /// This interval's stats, sampled anew once it is over (or when
    /// `fresh`): each sample starts a new window of rates and latencies,
    /// so they are sampled once per interval, whatever the number of
    /// collectors and retries.
    fn stats(&self, fresh: bool) -> Stats {
        let mut sampled = self.sampled.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if fresh || now >= sampled.1 {
            let gauges = (self.gauges.lock().unwrap_or_else(|p| p.into_inner()))();
            *sampled = (sample(&self.pipeline, gauges), now + self.every);
        }
        sampled.0
    }
}

/// Where heartbeats go and how they are signed.
pub struct Upstream {
    /// Each collector's app-server port, HOST:PORT; at least one.
    pub collectors: Vec<String>,
    pub signer: Signer,
    /// The certificates to trust when the collector speaks TLS.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

// === impl Heartbeats ===

impl Heartbeats {
    /// Starts a thread `heartbeat-N` for each collector, sending to it every
    /// `every`.
    /// `gauges` reads connections, in-flight and queue depth at each beat;
    /// `on_view` hears each new view the replies carry.
    pub fn start(
        to: Upstream,
        identity: Identity,
        every: Duration,
        pipeline: Arc<Pipeline<Node>>,
        gauges: Box<dyn Fn() -> Gauges + Send>,
        on_view: OnView,
    ) -> std::io::Result<Heartbeats> {
        assert!(!to.collectors.is_empty(), "heartbeats need a collector");
        let stats = sample(&pipeline, gauges());
        let shared = Arc::new(Shared {
            identity,
            every,
            pipeline,
            gauges: Mutex::new(gauges),
            on_view: Mutex::new(on_view),
            sampled: Mutex::new((stats, Instant::now() + every)),
        });
        let mut links = Vec::new();
        for (i, collector) in to.collectors.into_iter().enumerate() {
            let link = Link {
                collector,
                signer: to.signer.clone(),
                tls: to.tls.clone(),
                conn: None,
                failures: 0,
                known: 0,
                next: Instant::now(),
            };
            let (tx, rx) = bounded(4);
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("heartbeat-{i}"))
                .spawn(move || run(i, link, &shared, rx))?;
            links.push((tx, handle));
        }
        Ok(Heartbeats { links, shared })
    }

    /// Sends a heartbeat to every collector at once (used to report
    /// `draining`), waiting at most `wait` for one to take it; whether one
    /// did.
    pub fn beat_now(&self, wait: Duration) -> bool {
        let stats = self.shared.stats(true);
        self.each(wait, false, |ack| Command::Now(stats, ack)).0
    }

    /// Sends `node.leave` to every collector and stops the threads, waiting
    /// at most `wait` for them all; whether a collector took it.
    pub fn leave(self, wait: Duration) -> bool {
        let (took, answered) = self.each(wait, true, Command::Leave);
        for ((_, handle), answered) in self.links.into_iter().zip(answered) {
            if answered {
                // It answered, so it has returned: the join is immediate.
                let _ = handle.join();
            }
        }
        took
    }

    /// Sends `command` to each link's thread and waits until `wait` has
    /// passed for every answer, or only for the first that went unless
    /// `all`; whether one went, and which links answered.
    fn each(
        &self,
        wait: Duration,
        all: bool,
        command: impl Fn(Sender<(usize, bool)>) -> Command,
    ) -> (bool, Vec<bool>) {
        let until = Instant::now() + wait;
        let (ack, done) = bounded(self.links.len());
        let mut asked = 0;
        for (tx, _) in &self.links {
            let wait = until.saturating_duration_since(Instant::now());
            if tx.send_timeout(command(ack.clone()), wait).is_ok() {
                asked += 1;
            }
        }
        let (mut took, mut answered) = (false, vec![false; self.links.len()]);
        for _ in 0..asked {
            let Ok((i, went)) = done.recv_deadline(until) else {
                break;
            };
            answered[i] = true;
            took |= went;
            if took && !all {
                break;
            }
        }
        (took, answered)
    }
}

/// The connection to one collector and what is needed to sign for it.
struct Link {
    collector: String,
    signer: Signer,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    conn: Option<Connection>,
    failures: u32,
    /// The view version this collector last sent the nodes of.
    known: u64,
    /// When its next heartbeat is due.
    next: Instant,
}

impl Link {
    /// One signed exchange, its reply's body; on any failure the connection
    /// is dropped so the next attempt starts afresh.
    fn exchange(&mut self, kind: &str, body: &str) -> Result<Box<RawValue>, String> {
        let result = self.try_exchange(kind, body);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn try_exchange(&mut self, kind: &str, body: &str) -> Result<Box<RawValue>, String> {
        if self.conn.as_mut().is_some_and(Connection::is_closed) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let c = Connection::connect_tls(
                &self.collector,
                &self.collector,
                self.signer.clone(),
                EXCHANGE_TIMEOUT,
                DEFAULT_MAX_FRAME,
                self.tls.as_ref(),
            )
            .map_err(|e| format!("cannot connect: {e}"))?;
            self.conn = Some(c);
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.round_trip(kind, body, None, Instant::now() + EXCHANGE_TIMEOUT)
            .map_err(|f| match f {
                dsf_common::call::Failure::BadReply(why) => format!(
                    "{why} (is this node's key the collector's --node-keys entry for it, or, without node keys, do both have the same DSF_CLUSTER_SECRET?)"
                ),
                f => f.to_string(),
            })
    }

    /// Sends and logs the way an operator wants: the first failure and the
    /// recovery at `warn`/`info`, the ones in between at `debug`.
    fn send_logged(&mut self, kind: &str, body: &str) -> Option<Box<RawValue>> {
        match self.exchange(kind, body) {
            Ok(reply) => {
                if self.failures > 0 {
                    log::info!(
                        "collector {} reachable again after {} failed attempts",
                        self.collector,
                        self.failures
                    );
                }
                self.failures = 0;
                Some(reply)
            }
            Err(e) => {
                if self.failures == 0 {
                    log::warn!(
                        "{kind} to collector {} failed: {e}; still serving, retrying with backoff (logged again when it answers)",
                        self.collector
                    );
                } else {
                    log::debug!("{kind} to collector {} failed again: {e}", self.collector);
                }
                self.failures += 1;
                None
            }
        }
    }

    /// Schedules the next heartbeat after one just sent.
    fn schedule(&mut self, every: Duration) {
        self.next = Instant::now() + retry_wait(self.failures, every);
    }
}

/// The figures of the interval since the last sample.
fn sample(pipeline: &Pipeline<Node>, gauges: Gauges) -> Stats {
    match pipeline.metrics().load() {
        Some(load) => load.sample(gauges),
        None => Stats::default(),
    }
}

fn heartbeat_body(
    identity: &Identity,
    pipeline: &Pipeline<Node>,
    stats: Stats,
    known: u64,
) -> String {
    serde_json::to_string(&Heartbeat {
        id: identity.id.clone(),
        addr: identity.addr.clone(),
        proxy_addr: identity.proxy_addr.clone(),
        weight: identity.weight,
        state: if pipeline.drain().is_draining() {
            NodeState::Draining
        } else if !pipeline.server().db().answers() {
            NodeState::Degraded
        } else {
            NodeState::Up
        },
        stats,
        known_view: (known > 0).then_some(known),
    })
    .expect("a heartbeat serialises")
}

/// What a view in a heartbeat's reply is handed to: its version and nodes.
pub type OnView = Box<dyn Fn(u64, &[NodeView]) + Send>;

/// Sends one heartbeat with `stats`; whether the collector took it. A
/// reply carrying the view's nodes goes to `on_view`.
fn beat(link: &mut Link, shared: &Shared, stats: Stats) -> bool {
    let body = heartbeat_body(&shared.identity, &shared.pipeline, stats, link.known);
    let Some(reply) = link.send_logged(
        <dsf_proto::cluster::NodeHeartbeat as dsf_proto::Message>::TYPE.name,
        &body,
    ) else {
        return false;
    };
    match serde_json::from_str::<HeartbeatReply>(reply.get()) {
        Ok(HeartbeatReply {
            view,
            nodes: Some(nodes),
        }) => {
            link.known = view;
            (shared.on_view.lock().unwrap_or_else(|p| p.into_inner()))(view, &nodes);
        }
        Ok(_) => {}
        Err(e) => log::warn!("the collector's heartbeat reply does not read: {e}"),
    }
    true
}

/// Link `index`'s thread: a heartbeat whenever one is due, and the
/// commands of [`Heartbeats`].
fn run(index: usize, mut link: Link, shared: &Shared, rx: Receiver<Command>) {
    loop {
        match rx.recv_timeout(link.next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {
                beat(&mut link, shared, shared.stats(false));
                link.schedule(shared.every);
            }
            Ok(Command::Now(stats, ack)) => {
                let took = beat(&mut link, shared, stats);
                link.schedule(shared.every);
                let _ = ack.send((index, took));
            }
            Ok(Command::Leave(ack)) => {
                let body = serde_json::to_string(&Leave {
                    id: shared.identity.id.clone(),
                })
                .expect("a leave serialises");
                let took = link
                    .send_logged(
                        <dsf_proto::cluster::NodeLeave as dsf_proto::Message>::TYPE.name,
                        &body,
                    )
                    .is_some();
                if took {
                    log::info!(
                        "left collector {} as {}",
                        link.collector,
                        shared.identity.id
                    );
                }
                let _ = ack.send((index, took));
                return;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The pause before the next attempt after `failures` failed ones in a row:
/// the interval when all is well, else [`FIRST_RETRY`] doubling up to the
/// interval.
fn retry_wait(failures: u32, every: Duration) -> Duration {
    if failures == 0 {
        return every;
    }
    FIRST_RETRY
        .saturating_mul(1 << (failures - 1).min(8))
        .min(every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_a_quarter_second_to_the_interval_and_no_further() {
        let every = Duration::from_secs(1);
        let waits: Vec<u128> = (0..6).map(|f| retry_wait(f, every).as_millis()).collect();
        assert_eq!(waits, vec![1000, 250, 500, 1000, 1000, 1000]);
        assert_eq!(retry_wait(1000, every), every);
    }
}
