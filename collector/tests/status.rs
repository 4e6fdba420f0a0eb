//! `cluster.status` and `GET /metrics`, read the way operators and
//! Prometheus read them.

mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::Duration;

use dsf_common::view::NodeState;
use dsf_common::ErrorCode;
use serde_json::json;
use support::*;

#[test]
fn cluster_status_returns_the_node_table() {
    let down = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = start_lb();
    let mut s = collector_settings(&[lb.cluster_addr]);
    s.targets = vec![format!("static={down}").parse().unwrap()];
    let col = start_collector(s);
    let _a = Node::start_with(col.listen_addr, "a", |hb| {
        hb.weight = 2;
        hb.stats.conns = 7;
        hb.stats.p99_ms = 12.5;
    });
    let _b = Node::start_with(col.listen_addr, "b", |hb| hb.state = NodeState::Draining);
    wait_until("both nodes in the collector's view", WAIT, || {
        col.view().nodes.len() == 2
    });

    let status = Client::app(col.listen_addr)
        .call("cluster.status", json!({}))
        .unwrap();
    assert_eq!(status["view"].as_u64(), Some(col.view().version));
    let nodes: HashMap<&str, &serde_json::Value> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    assert_eq!(nodes.len(), 3);
    let a = nodes["a"];
    assert_eq!(a["addr"], "127.0.0.1:17001");
    assert_eq!(a["state"], "up");
    assert_eq!(a["weight"], 2);
    assert_eq!(a["source"], "heartbeat");
    assert!(a["last_seen_ms"].as_u64().unwrap() < 1000, "{a}");
    assert_eq!(a["stats"]["conns"], 7);
    for k in ["conns", "inflight", "rps", "p99_ms"] {
        assert!(a["load"][k].is_number(), "load.{k}: {a}");
    }
    assert_eq!(nodes["b"]["state"], "draining");
    let s = nodes["static"];
    assert_eq!(
        (s["state"].as_str(), s["source"].as_str()),
        (Some("down"), Some("static"))
    );
    assert!(s["last_seen_ms"].is_null());
    assert_eq!(status["balancers"][0]["addr"], lb.cluster_addr.to_string());
    assert_eq!(status["dead_after_ms"], DEAD_AFTER.as_millis() as u64);
}

#[test]
fn cluster_status_needs_a_known_app_key() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let e = Client::connect(col.listen_addr, "stranger", b"x")
        .call("cluster.status", json!({}))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized);
    // The cluster secret is a key too.
    Client::cluster(col.listen_addr)
        .call("cluster.status", json!({}))
        .unwrap();
}

#[test]
fn metrics_parse_with_a_prometheus_parser_and_have_the_per_node_series() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let _a = Node::start_with(col.listen_addr, "a", |hb| {
        hb.stats.conns = 5;
        hb.stats.inflight = 2;
        hb.stats.rps = 120.5;
        hb.stats.errors_per_s = 0.5;
        hb.stats.p99_ms = 30.0;
    });
    // An id that needs escaping in a label value.
    let _b = Node::start(col.listen_addr, "b\"q\\");
    wait_for_first_push(&lb);
    wait_until("both nodes and a push", WAIT, || {
        col.view().nodes.len() == 2 && lb.view().nodes.len() == 2
    });
    wait_for_acks(&col);

    let (code, text) = http_get(col.metrics_addr, "/metrics");
    assert_eq!(code, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");

    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"));
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    let a = [("node", "a")];
    assert_eq!(value("dsf_node_up", &a), 1.0);
    assert_eq!(value("dsf_node_connections", &a), 5.0);
    assert_eq!(value("dsf_node_inflight", &a), 2.0);
    assert_eq!(value("dsf_node_requests_per_second", &a), 120.5);
    assert_eq!(value("dsf_node_errors_per_second", &a), 0.5);
    assert_eq!(value("dsf_node_latency_p99_seconds", &a), 0.03);
    // Escaped as the format says (the parser above does not unescape).
    assert!(
        text.contains("dsf_node_up{node=\"b\\\"q\\\\\"} 1\n"),
        "{text}"
    );
    assert_eq!(
        value("dsf_collector_view_version", &[]),
        col.view().version as f64
    );
    assert_eq!(value("dsf_collector_nodes", &[("state", "up")]), 2.0);
    assert!(value("dsf_collector_heartbeats_total", &[]) >= 2.0);
    let lb_label = lb.cluster_addr.to_string();
    assert_eq!(
        value("dsf_collector_balancer_connected", &[("lb", &lb_label)]),
        1.0
    );
    // Every family is announced with its type, as Prometheus wants.
    for name in ["dsf_node_up", "dsf_collector_pushes_total"] {
        assert!(scrape.docs.contains_key(name), "no HELP for {name}");
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}"
        );
    }
    dsf_common::testing::assert_promtool_accepts(&text);
}

#[test]
fn a_scraper_asking_for_openmetrics_gets_it() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let _a = Node::start(col.listen_addr, "a");
    wait_for_first_push(&lb);
    wait_for_acks(&col);
    // What Prometheus sends.
    let accept =
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n";
    let (code, head, om) = http_get_with(col.metrics_addr, "/metrics", accept);
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE dsf_collector_pushes counter\n"), "{om}");
    assert!(om.contains("dsf_node_up{node=\"a\"} 1\n"), "{om}");
    // Without asking: the text format, which names the family as its samples.
    let (_, head, text) = http_get_with(col.metrics_addr, "/metrics", "");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        text.contains("# TYPE dsf_collector_pushes_total counter\n"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
}

#[test]
fn other_paths_and_methods_get_http_errors() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    // "/" is the dashboard (tests/dashboard.rs); anything else is not.
    assert_eq!(http_get(col.metrics_addr, "/").0, 200);
    let (code, body) = http_get(col.metrics_addr, "/metrics/x");
    assert_eq!(code, 404);
    assert!(
        body.contains("/api/status"),
        "the 404 names what is served: {body}"
    );
    assert_eq!(http_get(col.metrics_addr, "/metrics?x=1").0, 200);
}

#[test]
fn a_collector_stops_on_its_shutdown_handle() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let addr = col.listen_addr;
    let metrics = col.metrics_addr;
    col.shutdown_handle().trigger();
    col.wait().unwrap();
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    // tiny_http closes its listener from its own accept thread, just after.
    wait_until("the metrics port closed", WAIT, || {
        std::net::TcpStream::connect_timeout(&metrics, Duration::from_secs(1)).is_err()
    });
}

#[test]
fn a_balancers_proxy_counters_reach_the_metrics() {
    // A balancer in tcp proxy mode in front of a plain listener.
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = lb_settings("127.0.0.1:0".parse().unwrap());
    s.backends = vec![format!("plain={}", backend.local_addr().unwrap())
        .parse()
        .unwrap()];
    s.proxy = Some(lb_server::proxy::ProxySettings {
        listeners: vec![(
            "127.0.0.1:0".parse().unwrap(),
            lb_server::proxy::Protocol::Tcp,
        )],
        ..Default::default()
    });
    let lb = lb_server::server::start(s).unwrap();
    // Through the proxy before the collector's first (empty) view replaces
    // the static backend.
    {
        use std::io::{Read, Write};
        let mut through = std::net::TcpStream::connect(lb.proxy_addrs[0]).unwrap();
        let (mut far, _) = backend.accept().unwrap();
        through.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        far.read_exact(&mut got).unwrap();
    }
    let mut cs = collector_settings(&[lb.cluster_addr]);
    cs.resend = Duration::from_millis(100);
    let col = start_collector(cs);
    wait_until("the proxy counters in a push reply", WAIT, || {
        col.cluster().snapshot().balancers[0]
            .proxy
            .as_ref()
            .is_some_and(|p| p.bytes >= 4)
    });
    let (code, text) = http_get(col.metrics_addr, "/metrics");
    assert_eq!(code, 200);
    let lb_label = lb.cluster_addr.to_string();
    for (series, want) in [
        ("dsf_collector_balancer_proxy_accepted_total", " 1\n"),
        ("dsf_collector_balancer_proxy_piped_total", " 1\n"),
        ("dsf_collector_balancer_pins", " 1\n"),
    ] {
        let line = format!("{series}{{lb=\"{lb_label}\"}}{want}");
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
    let created = format!(
        "dsf_collector_balancer_pin_events_total{{lb=\"{lb_label}\",event=\"created\"}} 1\n"
    );
    assert!(text.contains(&created), "{text}");
    let refused = format!(
        "dsf_collector_balancer_proxy_refused_total{{lb=\"{lb_label}\",reason=\"not_connect\"}} 0\n"
    );
    assert!(text.contains(&refused), "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    dsf_common::testing::assert_promtool_accepts(&text);
}
