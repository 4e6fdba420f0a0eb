//! `GET /metrics` on the metrics port, in the Prometheus text format
//! (version 0.0.4), served by `tiny_http` on a thread named `metrics`.
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

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cluster::{BalancerStatus, Cluster, Counters, Snapshot};
use crate::members::{MemberState, Source};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes one metric family at a time: `# HELP`, `# TYPE`, then samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn start<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_value(self.out, value);
        self.out.push('\n');
    }
}

/// Label values escape backslash, double quote and newline; node ids are
/// whatever a node chose.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// The page for one snapshot.
pub fn render(snap: &Snapshot, counters: &Counters) -> String {
    let mut out = String::with_capacity(4096);
    let members: Vec<_> = snap.members.iter().collect();

    let mut f = Family::start(
        &mut out,
        "dsf_collector_view_version",
        "gauge",
        "Version of the view last published to the balancers.",
    );
    f.sample("dsf_collector_view_version", &[], snap.view.version as f64);

    let mut f = Family::start(
        &mut out,
        "dsf_collector_nodes",
        "gauge",
        "Members known, by state (down: static targets failing their checks).",
    );
    for state in [MemberState::Up, MemberState::Draining, MemberState::Down] {
        let n = members.iter().filter(|m| m.state == state).count();
        f.sample(
            "dsf_collector_nodes",
            &[("state", state.as_str())],
            n as f64,
        );
    }

    for (name, help, counter) in [
        ("dsf_collector_heartbeats_total", "Heartbeats accepted.", &counters.heartbeats),
        ("dsf_collector_leaves_total", "Nodes removed by node.leave.", &counters.leaves),
        ("dsf_collector_evictions_total", "Nodes evicted for missing heartbeats.", &counters.evictions),
        (
            "dsf_collector_refused_total",
            "Frames refused before any handler ran (bad signature, stale timestamp, replayed nonce, malformed).",
            &counters.refused,
        ),
    ] {
        let mut f = Family::start(&mut out, name, "counter", help);
        f.sample(name, &[], counter.load(Ordering::Relaxed) as f64);
    }

    type LbGet = fn(&BalancerStatus) -> Option<f64>;
    let lb_families: [(&str, &str, &str, LbGet); 4] = [
        (
            "dsf_collector_balancer_connected",
            "gauge",
            "1 while the connection to the balancer is up.",
            |b| Some(if b.connected { 1.0 } else { 0.0 }),
        ),
        (
            "dsf_collector_balancer_applied_version",
            "gauge",
            "View version the balancer said it holds after the last push.",
            |b| b.applied.map(|v| v as f64),
        ),
        (
            "dsf_collector_pushes_total",
            "counter",
            "Views the balancer acknowledged.",
            |b| Some(b.pushes as f64),
        ),
        (
            "dsf_collector_push_failures_total",
            "counter",
            "Pushes to the balancer that failed.",
            |b| Some(b.failures as f64),
        ),
    ];
    for (name, kind, help, get) in lb_families {
        let mut f = Family::start(&mut out, name, kind, help);
        for b in &snap.balancers {
            if let Some(v) = get(b) {
                f.sample(name, &[("lb", b.addr.as_str())], v);
            }
        }
    }

    proxy_families(&mut out, &snap.balancers);

    let mut f = Family::start(
        &mut out,
        "dsf_node_info",
        "gauge",
        "Always 1; where the node is and how it is known (heartbeat or static).",
    );
    for m in &members {
        let source = match m.source {
            Source::Heartbeat => "heartbeat",
            Source::Static => "static",
        };
        f.sample(
            "dsf_node_info",
            &[
                ("node", m.id.as_str()),
                ("addr", m.addr.as_str()),
                ("source", source),
            ],
            1.0,
        );
    }

    type Get = fn(&crate::members::Member) -> f64;
    let node_families: [(&str, &str, Get); 10] = [
        (
            "dsf_node_up",
            "1 if the node is in the view (up or draining), 0 if down.",
            |m| f64::from(u8::from(m.state != MemberState::Down)),
        ),
        (
            "dsf_node_draining",
            "1 while the node is draining (gets no new keys).",
            |m| f64::from(u8::from(m.state == MemberState::Draining)),
        ),
        ("dsf_node_weight", "Relative share of keys.", |m| {
            f64::from(m.weight)
        }),
        (
            "dsf_node_connections",
            "Connections open on the node, as it last reported.",
            |m| m.stats.conns as f64,
        ),
        (
            "dsf_node_inflight",
            "Requests being handled on the node, as it last reported.",
            |m| m.stats.inflight as f64,
        ),
        (
            "dsf_node_queue",
            "Requests waiting for a worker on the node, as it last reported.",
            |m| m.stats.queue as f64,
        ),
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
    for (name, help, get) in node_families {
        let mut f = Family::start(&mut out, name, "gauge", help);
        for m in &members {
            f.sample(name, &[("node", m.id.as_str())], get(m));
        }
    }

    let mut f = Family::start(
        &mut out,
        "dsf_node_last_seen_age_seconds",
        "gauge",
        "Seconds since the node's last heartbeat or good health check.",
    );
    for m in &members {
        if let Some(t) = m.last_seen {
            let age = snap.taken.saturating_duration_since(t).as_secs_f64();
            f.sample(
                "dsf_node_last_seen_age_seconds",
                &[("node", m.id.as_str())],
                age,
            );
        }
    }
    out
}

/// Proxy mode's counters, per balancer that has proxy listeners.
fn proxy_families(out: &mut String, balancers: &[BalancerStatus]) {
    use dsf_proto::lb::ProxyStats;
    let with: Vec<(&str, &ProxyStats)> = balancers
        .iter()
        .filter_map(|b| b.proxy.as_ref().map(|p| (b.addr.as_str(), p)))
        .collect();
    if with.is_empty() {
        return;
    }
    type Get = fn(&ProxyStats) -> u64;
    let counters: [(&str, &str, Get); 6] = [
        (
            "dsf_collector_balancer_proxy_accepted_total",
            "Connections accepted on the balancer's proxy listeners.",
            |p| p.accepted,
        ),
        (
            "dsf_collector_balancer_proxy_piped_total",
            "Connections the balancer spliced to a backend (a failover counts again).",
            |p| p.piped,
        ),
        (
            "dsf_collector_balancer_proxy_bytes_total",
            "Bytes the balancer's pipes carried, both ways.",
            |p| p.bytes,
        ),
        (
            "dsf_collector_balancer_proxy_incomplete_total",
            "Connections closed before their first packet was complete.",
            |p| p.incomplete,
        ),
        (
            "dsf_collector_balancer_proxy_unavailable_total",
            "Connections turned away because no backend could take them.",
            |p| p.unavailable,
        ),
        (
            "dsf_collector_balancer_proxy_backend_failures_total",
            "Backends that refused or did not answer a connect, each followed by a failover.",
            |p| p.backend_failures,
        ),
    ];
    for (name, help, get) in counters {
        let mut f = Family::start(out, name, "counter", help);
        for (lb, p) in &with {
            f.sample(name, &[("lb", lb)], get(p) as f64);
        }
    }
    let name = "dsf_collector_balancer_proxy_refused_total";
    let mut f = Family::start(
        out,
        name,
        "counter",
        "First packets refused, by reason (not_connect, too_large, malformed, protocol_name, protocol_level, client_id).",
    );
    for (lb, p) in &with {
        for (reason, n) in &p.refused {
            f.sample(name, &[("lb", lb), ("reason", reason)], *n as f64);
        }
    }
    let name = "dsf_collector_balancer_pin_events_total";
    let mut f = Family::start(
        out,
        name,
        "counter",
        "Pin events: created, moved (the node left or refused), expired, dropped (by an operator), full (not stored: at the cap), db_error.",
    );
    for (lb, p) in &with {
        let s = &p.pins;
        for (event, n) in [
            ("created", s.created),
            ("moved", s.moved),
            ("expired", s.expired),
            ("dropped", s.dropped),
            ("full", s.full),
            ("db_error", s.db_errors),
        ] {
            f.sample(name, &[("lb", lb), ("event", event)], n as f64);
        }
    }
    let name = "dsf_collector_balancer_pins";
    let mut f = Family::start(
        out,
        name,
        "gauge",
        "Pins the balancer holds (with --pins-db: the shared table, as last counted).",
    );
    for (lb, p) in &with {
        f.sample(name, &[("lb", lb)], p.pins.held as f64);
    }
}

/// The loop of the `metrics` thread: answers until `server.unblock()`.
pub fn serve(server: Arc<tiny_http::Server>, cluster: Arc<Cluster>) {
    for req in server.incoming_requests() {
        let response = match (req.method(), req.url().split('?').next().unwrap_or("")) {
            (tiny_http::Method::Get, "/metrics") => {
                let body = render(&cluster.snapshot(), &cluster.counters);
                tiny_http::Response::from_string(body)
                    .with_header(header("Content-Type", CONTENT_TYPE))
            }
            (tiny_http::Method::Get, _) => {
                tiny_http::Response::from_string("not found: the collector serves GET /metrics\n")
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
        let mut s = String::new();
        escape_label(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn values_are_written_as_the_format_wants() {
        for (v, want) in [
            (1.0, "1"),
            (0.25, "0.25"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
        ] {
            let mut s = String::new();
            push_value(&mut s, v);
            assert_eq!(s, want);
        }
    }
}
