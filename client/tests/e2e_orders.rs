//! End to end, real binaries: the orders example (`examples/orders`,
//! `orders-server`: dsf's accounts and the orders service, composed on
//! dsf's public API) behind the balancer and the collector. Its wire
//! contract, a customer routed by the balancer, run-once across nodes,
//! the watch across nodes and through a failover, and `client call` /
//! `client stream` from the command line.

mod e2e;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dsf_client::{Client, ClientConfig, Error, StreamItem};
use dsf_common::call::{Connection, Signer, Stamp};
use dsf_common::wire::Key;
use dsf_common::ErrorCode;
use dsf_sql::password::{self, Cost};
use dsf_sql::Role;
use e2e::{wait_for, Cluster, Spec, APP, APP_SECRET, WAIT};
use orders::{Advance, Get, List, NewOrder, OrderRef, Place, Watch};
use serde_json::{json, Value};

const PASSWORD: &str = "orders-password";

fn orders_cluster(apps: usize) -> Cluster {
    let cluster = Cluster::start(Spec {
        apps,
        balancers: 1,
        server: "orders-server",
        ..Spec::default()
    });
    let hash = password::hash_with(PASSWORD, Cost::TEST).unwrap();
    for name in ["alice", "bob"] {
        cluster
            .db
            .users()
            .create(name, &hash, Role::Viewer)
            .unwrap();
    }
    cluster
}

/// A client logged in as `name`, routed by the balancer by that name.
fn customer(cluster: &Cluster, name: &str) -> Client {
    let mut c = cluster.client();
    c.set_routing_key(Some(name.into()));
    let r = c
        .call("user.login", &json!({"name": name, "password": PASSWORD}))
        .unwrap();
    c.set_token(Some(r["token"].as_str().unwrap().to_string()));
    c
}

/// A client that talks to app server `i` only, with `token`.
fn at_node(cluster: &Cluster, i: usize, token: Option<&str>) -> Client {
    let mut cfg = ClientConfig::new(cluster.lb_addrs(), APP, APP_SECRET.as_bytes().to_vec());
    cfg.node = Some(cluster.apps[i].1.clone());
    let mut c = Client::new(cfg).unwrap();
    c.set_token(token.map(str::to_string));
    c
}

fn index_of(cluster: &Cluster, node: &str) -> usize {
    cluster.apps.iter().position(|a| a.0 == node).unwrap()
}

fn place(c: &mut Client, item: &str, qty: u32) -> u64 {
    let r = c
        .send::<Place>(&NewOrder {
            item: item.into(),
            qty,
        })
        .unwrap();
    assert_eq!(r.status, "placed");
    r.id
}

fn refused(r: Result<Value, Error>) -> ErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("not a refusal: {e}")),
        Ok(v) => panic!("served: {v}"),
    }
}

/// The next item of a watch, within [`WAIT`].
fn next_status(events: &mut dsf_client::Events<Watch>) -> StreamItem<Watch> {
    events
        .next_until(Instant::now() + WAIT)
        .unwrap()
        .expect("the watch sends within the wait")
}

#[test]
fn orders_contract_routing_run_once_and_the_watch_across_nodes() {
    let cluster = orders_cluster(3);
    let mut alice = customer(&cluster, "alice");
    let mut bob = customer(&cluster, "bob");

    // Routed by the balancer: alice is served by the node owning her name.
    let first = place(&mut alice, "tea", 2);
    let owner = cluster.owners(0, &["alice".to_string()])["alice"].clone();
    assert_eq!(alice.node_id(), Some(owner.as_str()));

    // order.get: the caller's own; anyone else's is not found.
    let got = alice.send::<Get>(&OrderRef { id: first }).unwrap();
    assert_eq!(
        (got.id, got.item.as_str(), got.qty, got.status.as_str()),
        (first, "tea", 2, "placed")
    );
    assert_eq!(got.owner, "alice");
    let e = bob.send::<Get>(&OrderRef { id: first }).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");

    // order.list: the caller's, newest first; bob has none.
    let second = place(&mut alice, "cups, blue", 6);
    let list = alice.send::<List>(&dsf_proto::Empty {}).unwrap();
    let ids: Vec<u64> = list.orders.iter().map(|o| o.id).collect();
    assert_eq!(ids, vec![second, first]);
    assert_eq!(list.orders[0].item, "cups, blue");
    assert!(bob
        .send::<List>(&dsf_proto::Empty {})
        .unwrap()
        .orders
        .is_empty());

    // Bad bodies: bad_request, and the server goes on serving.
    let long = "x".repeat(101);
    for body in [
        json!({"item": "", "qty": 1}),
        json!({"item": long, "qty": 1}),
        json!({"item": "tea", "qty": 0}),
        json!({"item": "tea", "qty": 1001}),
        json!({"item": "tea"}),
        json!({"item": "tea", "qty": 1, "colour": "red"}),
        json!({"item": 7, "qty": 1}),
    ] {
        assert_eq!(
            refused(alice.call("order.place", &body)),
            ErrorCode::BadRequest,
            "{body}"
        );
    }
    assert_eq!(
        refused(alice.call("order.get", &json!({"id": "one"}))),
        ErrorCode::BadRequest
    );
    // 100 characters (not bytes) is the most an item may have.
    let hundred = "é".repeat(100);
    place(&mut alice, &hundred, 1000);

    // A session is needed where the type says so; an app key is enough
    // for the back office's order.advance.
    let mut anonymous = cluster.client();
    for (kind, body) in [
        ("order.place", json!({"item": "tea", "qty": 1})),
        ("order.get", json!({"id": first})),
        ("order.list", json!({})),
    ] {
        assert_eq!(
            refused(anonymous.call(kind, &body)),
            ErrorCode::Unauthorized,
            "{kind}"
        );
    }
    let advanced = anonymous.send::<Advance>(&OrderRef { id: first }).unwrap();
    assert_eq!(advanced.status, "shipped");
    assert_eq!(
        anonymous
            .send::<Advance>(&OrderRef { id: first })
            .unwrap()
            .status,
        "delivered"
    );
    let e = anonymous
        .send::<Advance>(&OrderRef { id: first })
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Conflict), "{e}");
    let e = anonymous
        .send::<Advance>(&OrderRef { id: 999_999 })
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");

    // dsf's services are opt-in: orders-server runs accounts and orders only.
    for (kind, body) in [
        ("gate.check", json!({"id_card": "1", "name": "x"})),
        ("task.submit", json!({"tasks": []})),
        ("msg.send", json!({"to": "bob", "body": "hi"})),
        ("blacklist.list", json!({})),
    ] {
        assert_eq!(
            refused(alice.call(kind, &body)),
            ErrorCode::UnknownType,
            "{kind}"
        );
    }

    // Run once across nodes: one signed order.place, sent to two nodes
    // with the same stamp, places one order; both get its reply.
    let before = alice
        .send::<List>(&dsf_proto::Empty {})
        .unwrap()
        .orders
        .len();
    let stamp = Stamp::fresh();
    let token = alice.token().unwrap().to_string();
    let body = json!({"item": "once", "qty": 1}).to_string();
    let replies: Vec<Value> = [0, 1]
        .iter()
        .map(|&i| {
            let (id, addr) = (&cluster.apps[i].0, &cluster.apps[i].1);
            let signer = Signer {
                app: APP.into(),
                key: Key::new(APP_SECRET.as_bytes()),
            };
            let mut conn =
                Connection::connect(addr, id, signer, Duration::from_secs(5), 1 << 20).unwrap();
            let deadline = Instant::now() + WAIT;
            let raw = conn
                .round_trip_stamped("order.place", &body, Some(&token), &stamp, deadline)
                .unwrap();
            serde_json::from_str(raw.get()).unwrap()
        })
        .collect();
    assert_eq!(replies[0], replies[1]);
    let after = alice.send::<List>(&dsf_proto::Empty {}).unwrap().orders;
    assert_eq!(after.len(), before + 1);
    assert_eq!(after.iter().filter(|o| o.item == "once").count(), 1);

    // The watch across nodes: opened on alice's node, the order advanced
    // on another; the current status comes first, then each change, and
    // the final reply after `delivered`.
    let mut events = alice.stream::<Watch>(&OrderRef { id: second }).unwrap();
    match next_status(&mut events) {
        StreamItem::Event(s) => assert_eq!(s.status, "placed"),
        StreamItem::Done(r) => panic!("ended at once: {r:?}"),
    }
    let watched_on = events.node().unwrap().to_string();
    let other = (index_of(&cluster, &watched_on) + 1) % cluster.apps.len();
    let mut back_office = at_node(&cluster, other, None);
    for status in ["shipped", "delivered"] {
        let t = Instant::now();
        let r = back_office
            .send::<Advance>(&OrderRef { id: second })
            .unwrap();
        assert_eq!(r.status, status);
        match next_status(&mut events) {
            StreamItem::Event(s) => assert_eq!(s.status, status),
            StreamItem::Done(r) => panic!("ended early: {r:?}"),
        }
        eprintln!(
            "{status}: committed on {} seen on {watched_on} after {:?}",
            cluster.apps[other].0,
            t.elapsed()
        );
    }
    match next_status(&mut events) {
        StreamItem::Done(r) => assert_eq!((r.id, r.status.as_str()), (second, "delivered")),
        StreamItem::Event(s) => panic!("an event after delivered: {s:?}"),
    }
    assert!(events.next().is_none(), "nothing after the final reply");

    // Watching an order that is not yours: not_found, as its first item.
    let mut theirs = bob.stream::<Watch>(&OrderRef { id: second }).unwrap();
    let e = theirs.next().unwrap().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
}

#[test]
fn orders_fail_over_and_the_watch_opens_again_on_another_node() {
    let mut cluster = orders_cluster(3);
    let mut alice = customer(&cluster, "alice");
    let id = place(&mut alice, "kettle", 1);
    let home = alice.node_id().unwrap().to_string();

    let mut events = alice.stream::<Watch>(&OrderRef { id }).unwrap();
    match next_status(&mut events) {
        StreamItem::Event(s) => assert_eq!(s.status, "placed"),
        StreamItem::Done(r) => panic!("ended at once: {r:?}"),
    }
    assert_eq!(events.node(), Some(home.as_str()));

    // alice's node dies.
    let victim = index_of(&cluster, &home);
    cluster.app(victim).kill();

    // Her reads and writes go on, on another node.
    let got = alice.send::<Get>(&OrderRef { id }).unwrap();
    assert_eq!(got.status, "placed");
    let again = place(&mut alice, "mugs", 4);
    assert_ne!(alice.node_id(), Some(home.as_str()));
    let ids: Vec<u64> = alice
        .send::<List>(&dsf_proto::Empty {})
        .unwrap()
        .orders
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, vec![again, id]);

    // The watch opens again elsewhere and starts from the status now.
    match next_status(&mut events) {
        StreamItem::Event(s) => assert_eq!(s.status, "placed"),
        StreamItem::Done(r) => panic!("ended: {r:?}"),
    }
    assert_eq!(events.opened(), 2);
    let now_on = events.node().unwrap().to_string();
    assert_ne!(now_on, home);
    let survivor = (0..cluster.apps.len())
        .find(|&i| i != victim && cluster.apps[i].0 != now_on)
        .unwrap();
    let mut back_office = at_node(&cluster, survivor, None);
    back_office.send::<Advance>(&OrderRef { id }).unwrap();
    match next_status(&mut events) {
        StreamItem::Event(s) => assert_eq!(s.status, "shipped"),
        StreamItem::Done(r) => panic!("ended: {r:?}"),
    }
}

#[test]
fn client_call_and_client_stream_speak_any_type() {
    let cluster = orders_cluster(2);
    let login = cluster
        .cli("alice.session")
        .args(["login", "alice", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut p| {
            writeln!(p.stdin.take().unwrap(), "{PASSWORD}")?;
            p.wait_with_output()
        })
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let call = |args: &[&str]| {
        cluster
            .cli("alice.session")
            .arg("call")
            .args(args)
            .output()
            .unwrap()
    };

    // A write of the user's own service, then a read of it.
    let out = call(&["order.place", r#"{"item": "tea", "qty": 3}"#, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let placed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(placed["status"], "placed");
    let id = placed["id"].as_u64().unwrap();
    let out = call(&["order.get", &format!(r#"{{"id": {id}}}"#), "--read"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (got["item"].as_str(), got["qty"].as_u64()),
        (Some("tea"), Some(3))
    );
    assert!(text.lines().count() > 1, "indented for people: {text}");

    // A refusal: exit 3 with the server's code; a body that is not JSON:
    // a usage error (2) that says how to quote it.
    let out = call(&["order.place", r#"{"item": "", "qty": 3}"#]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad_request") && err.contains("item"), "{err}");
    let out = call(&["order.place", "{item: tea}"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not JSON"), "{err}");
    let out = call(&["gate.check", r#"{"id_card": "1", "name": "x"}"#]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_type"));

    // client stream: events one JSON line each as they come, then the
    // final reply, and exit 0.
    let mut watch = cluster
        .cli("alice.session")
        .args([
            "stream",
            "order.watch",
            &format!(r#"{{"id": {id}}}"#),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let _ = tx.send(serde_json::from_str::<Value>(&line).unwrap());
        }
    });
    let next = || {
        rx.recv_timeout(WAIT)
            .expect("client stream prints within the wait")
    };
    assert_eq!(
        next(),
        json!({"event": "status", "body": {"status": "placed"}})
    );
    for status in ["shipped", "delivered"] {
        let out = cluster
            .cli("no.session")
            .args(["call", "order.advance", &format!(r#"{{"id": {id}}}"#)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            next(),
            json!({"event": "status", "body": {"status": status}})
        );
    }
    assert_eq!(next(), json!({"done": {"id": id, "status": "delivered"}}));
    let status = wait_for("client stream to exit", WAIT, || watch.try_wait().unwrap());
    assert!(status.success());
    reader.join().unwrap();

    // A stream of a type the server does not have: exit 3, unknown_type.
    let out = cluster
        .cli("alice.session")
        .args(["stream", "job.watch", r#"{"job": 1}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_type"));
}
