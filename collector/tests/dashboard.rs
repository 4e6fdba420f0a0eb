//! The dashboard's JSON and page on the metrics port, over real sockets:
//! nodes with their ring shares, the history of changes (joined, draining,
//! evicted, left), jobs read from a real MariaDB with `--db`, the 404 that
//! says to pass `--db`, an unreachable database reported while `/metrics`
//! keeps answering, and the page itself.

mod support;

use std::time::Duration;

use dsf_common::view::NodeState;
use dsf_sql::tasks::{NewTask, Owner};
use serde_json::Value;
use support::*;

fn api(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let (code, body) = http_get(addr, path);
    (
        code,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

fn events(status: &Value) -> Vec<(String, String)> {
    status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["node"].as_str().unwrap().to_string(),
                c["event"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn status_carries_shares_and_every_change_of_membership() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let a = Node::start_with(col.listen_addr, "a", |hb| hb.weight = 3);
    let b = Node::start(col.listen_addr, "b");
    wait_until("both nodes in the view", WAIT, || {
        col.view().nodes.len() == 2
    });
    let (code, st) = api(col.metrics_addr, "/api/status");
    assert_eq!(code, 200);
    assert_eq!(st["view"].as_u64(), Some(col.view().version));
    let (sa, sb) = (
        st["shares"]["a"].as_f64().unwrap(),
        st["shares"]["b"].as_f64().unwrap(),
    );
    assert!((sa + sb - 1.0).abs() < 1e-9, "shares sum to 1: {sa} + {sb}");
    assert!(
        sa > 2.0 * sb,
        "weight 3 owns about three times weight 1: {sa} vs {sb}"
    );
    assert!(st["now_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(st["nodes"].as_array().unwrap().len(), 2);

    b.set(|hb| hb.state = NodeState::Draining);
    wait_until("b draining in the history", WAIT, || {
        events(&api(col.metrics_addr, "/api/status").1).contains(&("b".into(), "draining".into()))
    });
    // A silent node is evicted; a leaving one leaves.
    b.kill();
    wait_until("b evicted in the history", WAIT, || {
        events(&api(col.metrics_addr, "/api/status").1).contains(&("b".into(), "evicted".into()))
    });
    a.kill();
    Client::cluster(col.listen_addr)
        .call("node.leave", serde_json::json!({"id": "a"}))
        .unwrap();
    let st = api(col.metrics_addr, "/api/status").1;
    let ev = events(&st);
    let want: Vec<(String, String)> = [
        ("a", "joined"),
        ("b", "joined"),
        ("b", "draining"),
        ("b", "evicted"),
        ("a", "left"),
    ]
    .iter()
    .map(|(n, e)| (n.to_string(), e.to_string()))
    .collect();
    // The two joins may come in one view or two, in either order.
    let mut joins: Vec<_> = ev[..2].to_vec();
    joins.sort();
    assert_eq!(
        (joins.as_slice(), &ev[2..]),
        (&want[..2], &want[2..]),
        "{ev:?}"
    );
    // Versions grow with the changes, and the last is the view in force.
    let versions: Vec<u64> = st["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["version"].as_u64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    assert_eq!(versions.last().copied(), st["view"].as_u64());
}

#[test]
fn jobs_come_from_the_database_and_say_what_is_wrong_without_one() {
    // Without --db: a 404 that says what to pass.
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let (code, body) = api(col.metrics_addr, "/api/jobs");
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("--db"), "{body}");

    // With it: the jobs of every app, with their counts.
    let db = dsf_sql::testing::fresh();
    let owner = Owner {
        app: "cli",
        user: None,
        operator: false,
    };
    let payloads: Vec<String> = (0..3).map(|i| format!("{{\"n\":{i}}}")).collect();
    let tasks: Vec<NewTask<'_>> = payloads
        .iter()
        .map(|p| NewTask {
            payload: p,
            key: None,
            priority: 0,
        })
        .collect();
    let (job, _) = db
        .tasks()
        .submit(&owner, None, Some("night"), &tasks, 1)
        .unwrap();
    let held = db.tasks().claim("cli", "w", 1, 30_000).unwrap();
    db.tasks()
        .complete("cli", held[0].task, held[0].fence, "1")
        .unwrap();
    let mut s = collector_settings(&[lb.cluster_addr]);
    s.db = Some(db.config());
    let col = start_collector(s);
    let row = wait_until_some("the job on /api/jobs", || {
        let (code, body) = api(col.metrics_addr, "/api/jobs");
        assert_eq!(code, 200, "{body}");
        body["jobs"].as_array().unwrap().first().cloned()
    });
    assert_eq!(row["job"], job);
    assert_eq!(row["name"], "night");
    assert_eq!(
        (row["done"].as_u64(), row["total"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(row["state"], "running");
    // More done shows on the next read.
    let held = db.tasks().claim("cli", "w", 2, 30_000).unwrap();
    for c in &held {
        db.tasks().complete("cli", c.task, c.fence, "1").unwrap();
    }
    wait_until_some("the job done on /api/jobs", || {
        let body = api(col.metrics_addr, "/api/jobs").1;
        (body["jobs"][0]["state"] == "done").then_some(())
    });
}

#[test]
fn an_unreachable_database_is_reported_and_metrics_keep_answering() {
    let lb = start_lb();
    let mut s = collector_settings(&[lb.cluster_addr]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    s.db = Some(dsf_sql::DbConfig::new(format!(
        "mysql://dsf@{closed}/nowhere"
    )));
    let col = start_collector(s);
    let why = wait_until_some("the database's error on /api/jobs", || {
        let body = api(col.metrics_addr, "/api/jobs").1;
        body["error"].as_str().map(str::to_string)
    });
    assert!(why.contains("cannot reach the database"), "{why}");
    let (code, metrics) = http_get(col.metrics_addr, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("dsf_collector_view_version"), "{metrics}");
}

#[test]
fn the_page_is_served_from_the_binary() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let (code, page) = http_get(col.metrics_addr, "/");
    assert_eq!(code, 200);
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..60]);
    for needle in ["/api/status", "/api/jobs", "name=\"viewport\""] {
        assert!(page.contains(needle), "the page has {needle}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing fetched from elsewhere"
    );
    let (code, _) = http_get(col.metrics_addr, "/nope");
    assert_eq!(code, 404);
}

/// Waits until `f` gives something, failing after [`WAIT`].
fn wait_until_some<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
