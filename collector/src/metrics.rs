//! `GET /metrics` on the metrics port, rendered by the `prometheus-client`
//! crate and served by `tiny_http` on a thread named `metrics`: in the
//! OpenMetrics text format to a scraper that asks for it in `Accept` (as
//! Prometheus does), and otherwise in the Prometheus text format 0.0.4
//! ([`prometheus_client::encoding::text`]), which curl shows and promtool checks.
//!
//! Per node, labelled `node="<id>"`: `dsf_node_up`, `dsf_node_draining`,
//! `dsf_node_weight`, `dsf_node_connections`, `dsf_node_inflight`,
//! `dsf_node_queue`, `dsf_node_requests_per_second`,
//! `dsf_node_errors_per_second`, `dsf_node_latency_p50_seconds`,
//! `dsf_node_latency_p99_seconds`, `dsf_node_last_seen_age_seconds`, and
//! `dsf_node_info{node,addr,source} 1`. These are the figures the node last
//! sent, unsmoothed: Prometheus does its own averaging.
//!
//! The collector's own: `dsf_collector_view_version`,
//! `dsf_collector_nodes{state}`, counters of heartbeats, leaves, evictions
//! and refused frames, and per balancer (`lb="<addr>"`) whether it is
//! connected, the version it holds, pushes and failed pushes; and, for a
//! balancer with proxy listeners, its proxy counters as of the last push:
//! `dsf_collector_balancer_proxy_{accepted,piped,bytes,incomplete,
//! unavailable,backend_failures}_total`,
//! `dsf_collector_balancer_proxy_refused_total{reason}`,
//! `dsf_collector_balancer_pin_events_total{event}` and
//! `dsf_collector_balancer_pins`.
//!
//! A counter's samples end in `_total`; in OpenMetrics its `# HELP` and
//! `# TYPE` lines name the family without the suffix.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cluster::{BalancerStatus, Cluster, Counters, Snapshot};
use crate::members::{Member, MemberState, Source};

use dsf_common::pipeline::metrics::{respond, Metrics};

/// The page for one snapshot, with the requests of every message type
/// (`requests`: the pipeline's families).
pub fn render(snap: Snapshot, counters: &Counters, requests: &Metrics) -> String {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let page = Page {
        snap,
        heartbeats: load(&counters.heartbeats),
        leaves: load(&counters.leaves),
        evictions: load(&counters.evictions),
        refused: requests.refused_count(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(page));
    requests.register(&mut registry);
    let mut out = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// What one scrape shows, read once so every family agrees.
struct Page {
    snap: Snapshot,
    heartbeats: u64,
    leaves: u64,
    evictions: u64,
    refused: u64,
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page")
            .field("version", &self.snap.view.version)
            .finish_non_exhaustive()
    }
}

/// A label value escaped as the format wants (backslash, double quote and
/// newline); node ids and addresses are whatever a node chose, and the
/// crate writes values as given.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, out: &mut LabelValueEncoder) -> fmt::Result {
        use fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\\' => out.write_str("\\\\")?,
                '"' => out.write_str("\\\"")?,
                '\n' => out.write_str("\\n")?,
                c => out.write_char(c)?,
            }
        }
        Ok(())
    }
}

type Labels<'a> = Vec<(&'static str, Escaped<'a>)>;

/// One family: its samples, each a label set and a value.
fn family<'a, N: EncodeGaugeValue + fmt::Debug + Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    kind: MetricType,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, N)>,
) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
    ConstCounter<N>: EncodeMetric,
{
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let sample = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(sample)?,
            _ => ConstGauge::new(v).encode(sample)?,
        }
    }
    Ok(())
}

/// One family of one unlabelled sample.
fn single<N: EncodeGaugeValue + fmt::Debug + Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    kind: MetricType,
    help: &str,
    v: N,
) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
    ConstCounter<N>: EncodeMetric,
{
    let m = enc.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(v).encode(m),
        _ => ConstGauge::new(v).encode(m),
    }
}

fn node(m: &Member) -> Labels<'_> {
    vec![("node", Escaped(&m.id))]
}

fn lb(addr: &str) -> Labels<'_> {
    vec![("lb", Escaped(addr))]
}

impl Collector for Page {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let snap = &self.snap;
        let members: Vec<&Member> = snap.members.iter().collect();
        single(
            &mut enc,
            "dsf_collector_view_version",
            Gauge,
            "Version of the view last published to the balancers.",
            snap.view.version,
        )?;
        family(
            &mut enc,
            "dsf_collector_nodes",
            Gauge,
            "Members known, by state (degraded: cannot reach the database; down: static targets failing their checks).",
            [
                MemberState::Up,
                MemberState::Draining,
                MemberState::Degraded,
                MemberState::Down,
            ]
            .map(|state| {
                let n = members.iter().filter(|m| m.state == state).count() as u64;
                (vec![("state", Escaped(state.as_str()))], n)
            }),
        )?;
        for (name, help, n) in [
            ("dsf_collector_heartbeats", "Heartbeats accepted.", self.heartbeats),
            ("dsf_collector_leaves", "Nodes removed by node.leave.", self.leaves),
            ("dsf_collector_evictions", "Nodes evicted for missing heartbeats.", self.evictions),
            (
                "dsf_collector_refused",
                "Frames refused before any handler ran (bad signature, stale timestamp, replayed nonce, malformed).",
                self.refused,
            ),
        ] {
            single(&mut enc, name, Counter, help, n)?;
        }

        let lbs = &snap.balancers;
        family(
            &mut enc,
            "dsf_collector_balancer_connected",
            Gauge,
            "1 while the connection to the balancer is up.",
            lbs.iter().map(|b| (lb(&b.addr), u64::from(b.connected))),
        )?;
        family(
            &mut enc,
            "dsf_collector_balancer_applied_version",
            Gauge,
            "View version the balancer said it holds after the last push.",
            lbs.iter()
                .filter_map(|b| b.applied.map(|v| (lb(&b.addr), v))),
        )?;
        family(
            &mut enc,
            "dsf_collector_pushes",
            Counter,
            "Views the balancer acknowledged.",
            lbs.iter().map(|b| (lb(&b.addr), b.pushes)),
        )?;
        family(
            &mut enc,
            "dsf_collector_push_failures",
            Counter,
            "Pushes to the balancer that failed.",
            lbs.iter().map(|b| (lb(&b.addr), b.failures)),
        )?;
        proxy_families(&mut enc, lbs)?;

        family(
            &mut enc,
            "dsf_node_info",
            Gauge,
            "Always 1; where the node is and how it is known (heartbeat or static).",
            members.iter().map(|m| {
                let source = match m.source {
                    Source::Heartbeat => "heartbeat",
                    Source::Static => "static",
                };
                let labels = vec![
                    ("node", Escaped(&m.id)),
                    ("addr", Escaped(&m.addr)),
                    ("source", Escaped(source)),
                ];
                (labels, 1u64)
            }),
        )?;
        type Count = fn(&Member) -> u64;
        let counts: [(&str, &str, Count); 6] = [
            (
                "dsf_node_up",
                "1 if the node is in the view (up, draining or degraded), 0 if down.",
                |m| u64::from(m.state != MemberState::Down),
            ),
            (
                "dsf_node_draining",
                "1 while the node is draining (gets no new keys).",
                |m| u64::from(m.state == MemberState::Draining),
            ),
            ("dsf_node_weight", "Relative share of keys.", |m| {
                u64::from(m.weight)
            }),
            (
                "dsf_node_connections",
                "Connections open on the node, as it last reported.",
                |m| m.stats.conns,
            ),
            (
                "dsf_node_inflight",
                "Requests being handled on the node, as it last reported.",
                |m| m.stats.inflight,
            ),
            (
                "dsf_node_queue",
                "Requests waiting for a worker on the node, as it last reported.",
                |m| m.stats.queue,
            ),
        ];
        for (name, help, get) in counts {
            let samples = members.iter().map(|m| (node(m), get(m)));
            family(&mut enc, name, Gauge, help, samples)?;
        }
        type Rate = fn(&Member) -> f64;
        let rates: [(&str, &str, Rate); 4] = [
            (
                "dsf_node_requests_per_second",
                "Requests answered per second, as the node last reported.",
                |m| m.stats.rps,
            ),
            (
                "dsf_node_errors_per_second",
                "Error replies per second, as the node last reported.",
                |m| m.stats.errors_per_s,
            ),
            (
                "dsf_node_latency_p50_seconds",
                "Median request latency, as the node last reported.",
                |m| m.stats.p50_ms / 1000.0,
            ),
            (
                "dsf_node_latency_p99_seconds",
                "99th percentile request latency, as the node last reported.",
                |m| m.stats.p99_ms / 1000.0,
            ),
        ];
        for (name, help, get) in rates {
            let samples = members.iter().map(|m| (node(m), get(m)));
            family(&mut enc, name, Gauge, help, samples)?;
        }
        family(
            &mut enc,
            "dsf_node_last_seen_age_seconds",
            Gauge,
            "Seconds since the node's last heartbeat or good health check.",
            members.iter().filter_map(|m| {
                let t = m.last_seen?;
                Some((
                    node(m),
                    snap.taken.saturating_duration_since(t).as_secs_f64(),
                ))
            }),
        )
    }
}

/// Proxy mode's counters, per balancer that has proxy listeners.
fn proxy_families(enc: &mut DescriptorEncoder, balancers: &[BalancerStatus]) -> fmt::Result {
    use dsf_proto::lb::ProxyStats;
    use MetricType::{Counter, Gauge};
    let with: Vec<(&str, &ProxyStats)> = balancers
        .iter()
        .filter_map(|b| b.proxy.as_ref().map(|p| (b.addr.as_str(), p)))
        .collect();
    if with.is_empty() {
        return Ok(());
    }
    type Get = fn(&ProxyStats) -> u64;
    let counters: [(&str, &str, Get); 6] = [
        (
            "dsf_collector_balancer_proxy_accepted",
            "Connections accepted on the balancer's proxy listeners.",
            |p| p.accepted,
        ),
        (
            "dsf_collector_balancer_proxy_piped",
            "Connections the balancer spliced to a backend (a failover counts again).",
            |p| p.piped,
        ),
        (
            "dsf_collector_balancer_proxy_bytes",
            "Bytes the balancer's pipes carried, both ways.",
            |p| p.bytes,
        ),
        (
            "dsf_collector_balancer_proxy_incomplete",
            "Connections closed before their first packet was complete.",
            |p| p.incomplete,
        ),
        (
            "dsf_collector_balancer_proxy_unavailable",
            "Connections turned away because no backend could take them.",
            |p| p.unavailable,
        ),
        (
            "dsf_collector_balancer_proxy_backend_failures",
            "Backends that refused or did not answer a connect, each followed by a failover.",
            |p| p.backend_failures,
        ),
    ];
    for (name, help, get) in counters {
        family(
            enc,
            name,
            Counter,
            help,
            with.iter().map(|(a, p)| (lb(a), get(p))),
        )?;
    }
    family(
        enc,
        "dsf_collector_balancer_proxy_refused",
        Counter,
        "First packets refused, by reason (not_connect, too_large, malformed, protocol_name, protocol_level, client_id).",
        with.iter().flat_map(|(a, p)| {
            p.refused.iter().map(move |(reason, n)| {
                (vec![("lb", Escaped(a)), ("reason", Escaped(reason))], *n)
            })
        }),
    )?;
    family(
        enc,
        "dsf_collector_balancer_pin_events",
        Counter,
        "Pin events: created, moved (the node left or refused), expired, dropped (by an operator), full (not stored: at the cap), db_error.",
        with.iter().flat_map(|(a, p)| {
            let s = &p.pins;
            [
                ("created", s.created),
                ("moved", s.moved),
                ("expired", s.expired),
                ("dropped", s.dropped),
                ("full", s.full),
                ("db_error", s.db_errors),
            ]
            .map(|(event, n)| (vec![("lb", Escaped(a)), ("event", Escaped(event))], n))
        }),
    )?;
    family(
        enc,
        "dsf_collector_balancer_pins",
        Gauge,
        "Pins the balancer holds (with --pins-db: the shared table, as last counted).",
        with.iter().map(|(a, p)| (lb(a), p.pins.held)),
    )
}

/// The loop of the `metrics` thread: answers until `server.unblock()`.
pub fn serve(
    server: Arc<tiny_http::Server>,
    cluster: Arc<Cluster>,
    jobs: Option<Arc<crate::dashboard::Jobs>>,
    pipeline: Arc<dsf_common::pipeline::Pipeline<crate::service::State>>,
) {
    for req in server.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or("");
        if req.method() == &tiny_http::Method::Get {
            if let Some(page) = crate::dashboard::route(path, &cluster, jobs.as_deref()) {
                let response = tiny_http::Response::from_data(page.body)
                    .with_status_code(page.status)
                    .with_header(header("Content-Type", page.kind))
                    .with_header(header("Cache-Control", "no-store"));
                if let Err(e) = req.respond(response) {
                    log::debug!("dashboard: cannot answer: {e}");
                }
                continue;
            }
        }
        let response = match (req.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                let page = render(cluster.snapshot(), &cluster.counters, pipeline.metrics());
                respond(&req, page)
            }
            (tiny_http::Method::Get, _) => {
                tiny_http::Response::from_string("not found: the collector serves GET /metrics, the dashboard at /, and /api/status and /api/jobs\n")
                    .with_status_code(404)
            }
            _ => tiny_http::Response::from_string("method not allowed: use GET /metrics\n")
                .with_status_code(405)
                .with_header(header("Allow", "GET")),
        };
        if let Err(e) = req.respond(response) {
            log::debug!("metrics: cannot answer: {e}");
        }
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("static header is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut registry = Registry::default();
        #[derive(Debug)]
        struct One;
        impl Collector for One {
            fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
                let labels = vec![("node", Escaped("a\"b\\c\nd"))];
                family(&mut enc, "x", MetricType::Gauge, "x.", [(labels, 1u64)])
            }
        }
        registry.register_collector(Box::new(One));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("x{node=\"a\\\"b\\\\c\\nd\"} 1\n"), "{out}");
    }
}
