//! Messaging over real sockets on app servers sharing one real MariaDB:
//! a subscriber on one node gets what is sent on another (by peer.notify,
//! with the slow poll turned off, and by the poll alone with no peer
//! links); offline inboxes delivered in order at the next subscribe;
//! credit; acknowledgements; takeover by a newer subscription; and each
//! bad input with its error while a good client is served.

mod support;

use std::time::{Duration, Instant};

use app_server::Settings;
use dsf_common::call::{Connection, Failure, Signer, Streamed};
use dsf_common::wire::Key;
use dsf_common::ErrorCode;
use dsf_sql::testing::{self, TestDb};
use dsf_sql::Queryable;
use serde_json::{json, Value};
use support::{introduce, settings, Conn, Server, WAIT};

/// A server whose subscriptions poll their inboxes every `poll`.
fn server(db: &TestDb, poll: Duration) -> Server {
    Server::with(Settings {
        msg_poll: poll,
        ..settings(db.config(), None)
    })
}

/// Two app servers over one fresh database, polling every `poll` (told of
/// each other when `peers`), a connection to the first, and ann and bob
/// logged in on it. Hold `db` to the end: dropping it drops the database.
struct Two {
    db: TestDb,
    a: Server,
    b: Server,
    ca: Conn,
    ann: String,
    bob: String,
}

fn two(poll: Duration, peers: bool) -> Two {
    let db = testing::fresh();
    let (a, b) = (server(&db, poll), server(&db, poll));
    if peers {
        introduce(&[&a, &b]);
    }
    let mut ca = a.connect();
    let ann = ca.user("ann");
    let bob = ca.user("bob");
    Two {
        db,
        a,
        b,
        ca,
        ann,
        bob,
    }
}

/// An open `msg.subscribe` of one user.
struct Sub {
    conn: Connection,
    id: u64,
    token: String,
}

impl Sub {
    fn open(server: &Server, token: &str, credit: Option<u32>) -> Sub {
        let signer = Signer {
            app: support::APP.into(),
            key: Key::new(support::SECRET),
        };
        let addr = server.addr.to_string();
        let mut conn = Connection::connect(&addr, &addr, signer, WAIT, 1 << 20).unwrap();
        let body = match credit {
            Some(c) => json!({ "credit": c }),
            None => json!({}),
        };
        let id = conn
            .send("msg.subscribe", &body.to_string(), Some(token))
            .unwrap();
        Sub {
            conn,
            id,
            token: token.to_string(),
        }
    }

    /// The next message, within [`WAIT`].
    fn next(&mut self) -> Value {
        match self
            .conn
            .recv_stream(self.id, Instant::now() + WAIT)
            .unwrap()
        {
            Streamed::Event { event, body, .. } => {
                assert_eq!(event, "message");
                serde_json::from_str(body.get()).unwrap()
            }
            Streamed::Final(b) => panic!("the subscription ended: {}", b.get()),
        }
    }

    /// The next message if one comes within `within`.
    fn poll(&mut self, within: Duration) -> Option<Value> {
        match self
            .conn
            .poll_stream(self.id, Instant::now() + within)
            .unwrap()?
        {
            Streamed::Event { body, .. } => Some(serde_json::from_str(body.get()).unwrap()),
            Streamed::Final(b) => panic!("the subscription ended: {}", b.get()),
        }
    }

    /// How the subscription ended: its final error.
    fn ended(&mut self) -> dsf_common::Error {
        loop {
            match self.conn.recv_stream(self.id, Instant::now() + WAIT) {
                Ok(Streamed::Event { .. }) => continue,
                Ok(Streamed::Final(b)) => panic!("ended without an error: {}", b.get()),
                Err(Failure::Server(e)) => return e,
                Err(f) => panic!("the connection failed: {f}"),
            }
        }
    }

    /// `msg.ack` on this connection, its reply waited for (events that come
    /// meanwhile are kept for `next`).
    fn ack(&mut self, upto: u64) -> Result<Value, dsf_common::Error> {
        let body = json!({ "upto": upto }).to_string();
        let id = self.conn.send("msg.ack", &body, Some(&self.token)).unwrap();
        match self.conn.recv(id, Instant::now() + WAIT) {
            Ok(raw) => Ok(serde_json::from_str(raw.get()).unwrap()),
            Err(Failure::Server(e)) => Err(e),
            Err(f) => panic!("msg.ack: {f}"),
        }
    }
}

fn send(c: &mut Conn, token: &str, to: &str, body: Value) -> Value {
    c.ok("msg.send", json!({"to": to, "body": body}), Some(token))
}

#[test]
fn a_message_sent_on_one_node_reaches_a_subscriber_on_another_by_peer_notify() {
    // No poll within the test: only the notification can deliver.
    let Two {
        a,
        b,
        mut ca,
        ann,
        bob,
        db: _db,
    } = two(Duration::from_secs(3600), true);
    let mut sub = Sub::open(&b, &bob, None);
    support::wait_until("bob's presence on b", || {
        b.running()
            .node()
            .state::<app_server::messaging::mailroom::Mailroom>()
            .len()
            == 1
    });
    use std::sync::atomic::Ordering::Relaxed;
    send(&mut ca, &ann, "bob", json!({"n": 0}));
    assert_eq!(sub.next()["body"], json!({"n": 0}));
    // From here on nothing else wakes b's mailroom: each message must come
    // whole with its notification, and go out without a read.
    let mail = b
        .running()
        .node()
        .state::<app_server::messaging::mailroom::Mailroom>()
        .counters();
    let (pushed, reads) = (mail.pushed.load(Relaxed), mail.reads.load(Relaxed));
    for n in 1..5 {
        let sent = send(&mut ca, &ann, "bob", json!({"n": n}));
        assert_eq!(sent["seq"], n + 1);
    }
    for n in 1..5u64 {
        let m = sub.next();
        assert_eq!(
            (m["seq"].as_u64(), m["from"].as_str()),
            (Some(n + 1), Some("ann"))
        );
        assert_eq!(m["body"], json!({"n": n}));
        assert!(m["sent_at"].as_u64().unwrap() > 1_700_000_000_000);
    }
    assert_eq!(mail.pushed.load(Relaxed) - pushed, 4);
    assert_eq!(mail.reads.load(Relaxed) - reads, 0, "no inbox read");
    let peers = &a.running().node().peers().counters;
    assert_eq!(peers.sent.load(Relaxed), 5);
    assert_eq!(peers.connects.load(Relaxed), 1, "one link, kept");
}

#[test]
fn without_peer_links_the_poll_delivers_and_an_offline_inbox_comes_in_order_at_subscribe() {
    let Two {
        a,
        b,
        mut ca,
        ann,
        bob,
        db: _db,
    } = two(Duration::from_millis(200), false);
    // bob is offline: his inbox fills.
    for n in 1..=30 {
        send(&mut ca, &ann, "bob", json!(n));
    }
    let mut sub = Sub::open(&b, &bob, None);
    for n in 1..=30u64 {
        let m = sub.next();
        assert_eq!((m["seq"].as_u64(), m["body"].as_u64()), (Some(n), Some(n)));
    }
    // No view, so no notification: the poll finds the next one.
    send(&mut ca, &ann, "bob", json!("late"));
    assert_eq!(sub.next()["body"], "late");
    let peers = &a.running().node().peers().counters;
    assert_eq!(peers.sent.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn credit_bounds_what_is_unacknowledged_and_a_new_subscription_starts_after_the_ack() {
    let db = testing::fresh();
    // No poll: what credit held back comes by the ack's wake-up alone.
    let a = server(&db, Duration::from_secs(3600));
    let mut ca = a.connect();
    let ann = ca.user("ann");
    let bob = ca.user("bob");
    for n in 1..=10 {
        send(&mut ca, &ann, "bob", json!(n));
    }
    let mut sub = Sub::open(&a, &bob, Some(3));
    let got: Vec<u64> = (0..3)
        .map(|_| sub.next()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![1, 2, 3]);
    assert!(
        sub.poll(Duration::from_millis(600)).is_none(),
        "three unacknowledged: nothing more until an ack"
    );
    sub.ack(2).unwrap();
    assert_eq!(sub.next()["seq"], 4);
    assert_eq!(sub.next()["seq"], 5);
    assert!(sub.poll(Duration::from_millis(600)).is_none());
    // Acked up to 2, delivered up to 5: a new subscription starts at 3
    // (at least once on the wire) and takes over the old one.
    let mut again = Sub::open(&a, &bob, Some(100));
    let e = sub.ended();
    assert_eq!(e.code(), ErrorCode::Conflict, "{e}");
    assert!(e.to_string().contains("newer msg.subscribe"), "{e}");
    let seqs: Vec<u64> = (0..8)
        .map(|_| again.next()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (3..=10).collect::<Vec<u64>>());
    again.ack(10).unwrap();
    drop(again);
    assert_eq!(
        db.messages()
            .acked(db.users().get("bob").unwrap().unwrap().id)
            .unwrap(),
        10
    );
}

#[test]
fn a_subscription_on_another_node_takes_over_and_the_old_one_ends_with_conflict() {
    let Two {
        a,
        b,
        mut ca,
        ann,
        bob,
        db: _db,
    } = two(Duration::from_millis(200), true);
    let mut old = Sub::open(&a, &bob, None);
    send(&mut ca, &ann, "bob", json!(1));
    assert_eq!(old.next()["seq"], 1);
    let mut new = Sub::open(&b, &bob, None);
    // Not acknowledged: the new one gets it again.
    assert_eq!(new.next()["seq"], 1);
    let e = old.ended();
    assert_eq!(e.code(), ErrorCode::Conflict, "{e}");
    // Sends now go to b's subscription.
    send(&mut ca, &ann, "bob", json!(2));
    assert_eq!(new.next()["seq"], 2);
}

#[test]
fn rooms_fan_out_to_their_members_on_every_node() {
    let Two {
        a,
        b,
        mut ca,
        ann,
        bob,
        db: _db,
    } = two(Duration::from_secs(3600), true);
    let cy = ca.user("cy");
    for t in [&ann, &bob, &cy] {
        ca.ok("msg.join", json!({"room": "ops"}), Some(t));
    }
    let mut sb = Sub::open(&a, &bob, None);
    let mut sc = Sub::open(&b, &cy, None);
    support::wait_until("both subscribed", || {
        a.running()
            .node()
            .state::<app_server::messaging::mailroom::Mailroom>()
            .len()
            == 1
            && b.running()
                .node()
                .state::<app_server::messaging::mailroom::Mailroom>()
                .len()
                == 1
    });
    let sent = ca.ok(
        "msg.send",
        json!({"room": "ops", "body": {"deploy": "v2"}}),
        Some(&ann),
    );
    assert_eq!(sent["recipients"], 2);
    for m in [sb.next(), sc.next()] {
        assert_eq!(
            (m["room"].as_str(), m["from"].as_str()),
            (Some("ops"), Some("ann"))
        );
        assert_eq!(m["body"], json!({"deploy": "v2"}));
    }
    ca.ok("msg.leave", json!({"room": "ops"}), Some(&cy));
    let e = ca.err(
        "msg.send",
        json!({"room": "ops", "body": 1}),
        Some(&cy),
        ErrorCode::Forbidden,
    );
    assert!(e.contains("join it first"), "{e}");
}

/// A signed `msg.send` frame with `body`, under the session `token`: the
/// same bytes can go to any node again, as a client's resend does.
fn signed_send(token: &str, id: u64, body: Value) -> Vec<u8> {
    let mut frame = Vec::new();
    dsf_common::wire::envelope::encode_request(
        &Key::new(support::SECRET),
        &dsf_common::wire::OutgoingRequest {
            id,
            kind: "msg.send",
            app: support::APP,
            token: Some(token),
            body: &body.to_string(),
        },
        &mut frame,
    );
    frame
}

#[test]
fn a_send_resent_on_another_node_is_stored_once_with_the_same_reply() {
    let db = testing::fresh();
    let (a, b) = (Server::start(&db), Server::start(&db));
    let mut ca = a.connect();
    let ann = ca.user("ann");
    ca.user("bob");
    let frame = signed_send(&ann, 900, json!({"to": "bob", "body": "once"}));
    ca.send_bytes(&frame);
    let (_, first) = ca.recv();
    let mut cb = b.connect();
    cb.send_bytes(&frame);
    let (_, again) = cb.recv();
    assert_eq!(first.unwrap(), again.unwrap());
    let bob = db.users().get("bob").unwrap().unwrap().id;
    assert_eq!(db.messages().after(bob, 0, 10).unwrap().len(), 1);
}

#[test]
fn a_cancelled_subscription_frees_its_connection_for_the_next() {
    let Two {
        a,
        mut ca,
        ann,
        bob,
        db: _db,
        ..
    } = two(Duration::from_secs(3600), false);
    let mut sub = Sub::open(&a, &bob, None);
    send(&mut ca, &ann, "bob", json!(1));
    assert_eq!(sub.next()["seq"], 1);
    let cancel = json!({ "id": sub.id }).to_string();
    let id = sub.conn.send("sys.cancel", &cancel, None).unwrap();
    sub.conn.recv(id, Instant::now() + WAIT).unwrap();
    match sub.conn.recv_stream(sub.id, Instant::now() + WAIT).unwrap() {
        Streamed::Final(b) => assert_eq!(b.get(), r#"{"cancelled":true}"#),
        Streamed::Event { .. } => panic!("an event after the cancel"),
    }
    // The same connection subscribes again and gets what was not acked.
    let id = sub.conn.send("msg.subscribe", "{}", Some(&bob)).unwrap();
    sub.id = id;
    assert_eq!(sub.next()["seq"], 1);
    send(&mut ca, &ann, "bob", json!(2));
    assert_eq!(sub.next()["seq"], 2);
}

#[test]
fn an_ack_or_a_peer_type_under_the_wrong_credentials_is_forbidden() {
    let Two {
        a,
        mut ca,
        ann,
        bob,
        db: _db,
        ..
    } = two(Duration::from_secs(3600), false);
    let mut sub = Sub::open(&a, &bob, None);
    send(&mut ca, &ann, "bob", json!(1));
    assert_eq!(sub.next()["seq"], 1);
    // ann's token on bob's subscription's connection.
    let id = sub
        .conn
        .send("msg.ack", r#"{"upto":1}"#, Some(&ann))
        .unwrap();
    match sub.conn.recv(id, Instant::now() + WAIT) {
        Err(Failure::Server(e)) => {
            assert_eq!(e.code(), ErrorCode::Forbidden);
            assert!(e.to_string().contains("another user's"), "{e}");
        }
        other => panic!("ann acking bob's messages: {other:?}"),
    }
    // The cluster secret signs nothing on an app server (it signs
    // lb.set_view), and the peer secret signs peer.notify and nothing else.
    let addr = a.addr.to_string();
    let cluster = Signer {
        app: dsf_common::wire::keys::CLUSTER_APP.into(),
        key: Key::new(support::CLUSTER_SECRET),
    };
    let mut as_cluster = Connection::connect(&addr, &addr, cluster, WAIT, 1 << 20).unwrap();
    match as_cluster.round_trip(
        "peer.notify",
        r#"{"user":1,"seq":1}"#,
        None,
        Instant::now() + WAIT,
    ) {
        // Unsigned: the server has no key to sign a refusal of that app with.
        Err(Failure::BadReply(e)) => {
            assert!(
                e.contains("unauthorized") && e.contains("takes no cluster secret"),
                "{e}"
            );
        }
        other => panic!("peer.notify under the cluster secret: {other:?}"),
    }
    let signer = Signer {
        app: dsf_common::wire::keys::PEER_APP.into(),
        key: Key::new(support::CLUSTER_SECRET),
    };
    let mut peer = Connection::connect(&addr, &addr, signer, WAIT, 1 << 20).unwrap();
    match peer.round_trip("sys.ping", "{}", None, Instant::now() + WAIT) {
        Err(Failure::Server(e)) => {
            assert_eq!(e.code(), ErrorCode::Forbidden);
            assert!(e.to_string().contains("signs only peer.notify"), "{e}");
        }
        other => panic!("sys.ping under the peer secret: {other:?}"),
    }
    let notify = r#"{"user":1,"seq":1}"#;
    peer.round_trip("peer.notify", notify, None, Instant::now() + WAIT)
        .unwrap();
}

#[test]
fn bad_input_gets_its_error_and_a_good_client_is_served_meanwhile() {
    let db = testing::fresh();
    let a = server(&db, Duration::from_millis(200));
    let mut good = a.connect();
    let mut c = a.connect();
    let ann = c.user("ann");
    let bob = c.user("bob");
    let checks: Vec<(&str, Value, Option<&str>, ErrorCode, &str)> = vec![
        (
            "msg.send",
            json!({"to": "nobody", "body": 1}),
            Some(&ann),
            ErrorCode::NotFound,
            "no user named \"nobody\"",
        ),
        (
            "msg.send",
            json!({"to": "bob", "body": "x".repeat(70_000)}),
            Some(&ann),
            ErrorCode::BadRequest,
            "body: at most 65536 bytes",
        ),
        (
            "msg.send",
            json!({"to": "bob", "body": 1}),
            None,
            ErrorCode::Unauthorized,
            "needs a session token",
        ),
        (
            "msg.send",
            json!({"to": "bob", "room": "ops", "body": 1}),
            Some(&ann),
            ErrorCode::BadRequest,
            "not both",
        ),
        (
            "msg.send",
            json!({"body": 1}),
            Some(&ann),
            ErrorCode::BadRequest,
            "name one recipient",
        ),
        (
            "msg.send",
            json!({"room": "nowhere", "body": 1}),
            Some(&ann),
            ErrorCode::NotFound,
            "no room \"nowhere\"",
        ),
        (
            "msg.leave",
            json!({"room": "nowhere"}),
            Some(&ann),
            ErrorCode::NotFound,
            "no room",
        ),
        (
            "msg.join",
            json!({"room": "a b"}),
            Some(&ann),
            ErrorCode::BadRequest,
            "room: 1 to 64",
        ),
        (
            "msg.ack",
            json!({"upto": 1}),
            Some(&ann),
            ErrorCode::BadRequest,
            "no msg.subscribe is open on this connection",
        ),
        (
            "msg.history",
            json!({"with": "nobody"}),
            Some(&ann),
            ErrorCode::NotFound,
            "no user named",
        ),
        (
            "msg.history",
            json!({"limit": 0}),
            Some(&ann),
            ErrorCode::BadRequest,
            "limit: 1 to 500",
        ),
        (
            "peer.notify",
            json!({"user": 1, "seq": 1}),
            None,
            ErrorCode::Forbidden,
            "under the peer secret",
        ),
    ];
    for (kind, body, token, code, says) in checks {
        let e = c.err(kind, body, token, code);
        assert!(e.contains(says), "{kind}: {e}");
        good.ok("sys.ping", json!({}), None);
    }
    // On a subscription's connection: an ack past what it delivered, a
    // second subscribe, a credit out of range, no session.
    send(&mut c, &ann, "bob", json!(1));
    let mut sub = Sub::open(&a, &bob, None);
    assert_eq!(sub.next()["seq"], 1);
    let e = sub.ack(2).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert!(
        e.to_string()
            .contains("upto: 2 is beyond the last message this subscription delivered (1)"),
        "{e}"
    );
    sub.ack(1).unwrap();
    let id = sub.conn.send("msg.subscribe", "{}", Some(&bob)).unwrap();
    match sub.conn.recv(id, Instant::now() + WAIT) {
        Err(Failure::Server(e)) => {
            assert_eq!(e.code(), ErrorCode::BadRequest);
            assert!(e.to_string().contains("one a connection"), "{e}");
        }
        other => panic!("a second subscribe: {other:?}"),
    }
    // The first subscription still works.
    send(&mut c, &ann, "bob", json!(2));
    assert_eq!(sub.next()["seq"], 2);
    for (body, token, code, says) in [
        (
            json!({"credit": 0}),
            Some(bob.as_str()),
            ErrorCode::BadRequest,
            "credit: 1 to 1000",
        ),
        (
            json!({"credit": 5000}),
            Some(bob.as_str()),
            ErrorCode::BadRequest,
            "credit: 1 to 1000",
        ),
        (
            json!({}),
            None,
            ErrorCode::Unauthorized,
            "needs a session token",
        ),
    ] {
        let mut other = a.connect();
        let e = other.err("msg.subscribe", body.clone(), token, code);
        assert!(e.contains(says), "{body}: {e}");
        good.ok("sys.ping", json!({}), None);
    }
}

/// The page's value of the sample `name` (labels included), or 0.
fn metric(server: &Server, name: &str) -> f64 {
    let page = server.running().pipeline().metrics().render();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn sends_in_flight_on_one_connection_are_stored_in_order_and_committed_together() {
    let mut t = two(Duration::from_secs(3600), false);
    // Another user's connection, served while the window runs.
    let mut other = t.a.connect();
    let cid = other.user("cid");
    // 250 sends in flight on one connection, three in the middle bad: to
    // a user who does not exist, or naming both a user and a room. Each
    // breaks the group it is in (they are next to each other, so that
    // they are in one group of more than one unless three groups of one
    // came in a row). Fewer than a connection may have waiting to run
    // (`LANE_MAX`): more are refused `overloaded` at once when the server
    // falls behind, as it did with 300 on a loaded CI machine.
    const N: u64 = 250;
    const _: () = assert!(N < dsf_common::pipeline::LANE_MAX as u64);
    let bad = |n: u64| (150..153).contains(&n);
    let ids: Vec<u64> = (0..N)
        .map(|n| {
            let body = match (bad(n), n % 2) {
                (true, 0) => json!({"to": "nobody", "body": {"n": n}}),
                (true, _) => json!({"to": "bob", "room": "r", "body": {"n": n}}),
                (false, _) => json!({"to": "bob", "body": {"n": n}}),
            };
            t.ca.send("msg.send", &body, Some(&t.ann))
        })
        .collect();
    let mid = send(&mut other, &cid, "bob", json!({"from": "cid"}));
    assert!(mid["seq"].as_u64().is_some(), "{mid}");
    let mut seqs = Vec::new();
    for (n, id) in (0..N).zip(&ids) {
        let (got, reply) = t.ca.recv();
        assert_eq!(got, *id, "replies come in the order sent");
        match reply {
            Err(e) if bad(n) && n % 2 == 0 => assert_eq!(e.code(), ErrorCode::NotFound, "{e}"),
            Err(e) if bad(n) => assert_eq!(e.code(), ErrorCode::BadRequest, "{e}"),
            Ok(v) if !bad(n) => seqs.push(v["seq"].as_u64().expect("a direct send's seq")),
            other => panic!("send {n}: {other:?}"),
        }
    }
    let want: Vec<u64> = (0..N).filter(|n| !bad(*n)).collect();
    assert_eq!(seqs.len(), want.len());
    // Numbered in the order sent (cid's one message somewhere between).
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let committed = metric(&t.a, "dsf_grouped_requests_total");
    let rerun = metric(&t.a, "dsf_groups_total{outcome=\"rerun\"}");
    assert!(committed > 0.0, "some sends committed in groups");
    assert!(
        rerun >= 1.0,
        "the groups with a bad send ran again one by one"
    );
    // Bob's inbox holds each good one once, in order.
    let ns: Vec<u64> =
        t.db.with_conn("test", |c| {
            c.exec_map(
                "SELECT m.body FROM inbox i JOIN messages m ON m.id = i.message_id \
                 JOIN users u ON u.id = i.user_id WHERE u.name = 'bob' ORDER BY i.seq",
                (),
                |body: String| serde_json::from_str::<Value>(&body).unwrap()["n"].as_u64(),
            )
        })
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(ns, want);
}

#[test]
fn a_window_resent_to_another_node_is_answered_with_its_first_replies_and_stored_once() {
    let db = testing::fresh();
    let (a, b) = (Server::start(&db), Server::start(&db));
    let mut ca = a.connect();
    let ann = ca.user("ann");
    ca.user("bob");
    // 64 signed sends, written to a's connection at once: they run in
    // groups there. The same bytes go to b afterwards, as the SDK resends
    // a window whose replies it did not see.
    const N: u64 = 64;
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|n| signed_send(&ann, 1000 + n, json!({"to": "bob", "body": {"n": n}})))
        .collect();
    for f in &frames {
        ca.send_bytes(f);
    }
    let first: Vec<Value> = (0..N).map(|_| ca.recv().1.unwrap()).collect();
    let grouped = metric(&a, "dsf_grouped_requests_total") as u64;
    assert!(grouped > 0, "some sends committed in groups");
    let records = |only_early: bool| -> u64 {
        db.with_conn("test", |c| {
            c.exec_first(
                "SELECT COUNT(*) FROM wire_writes WHERE kind = 'msg.send' \
                 AND (? = 0 OR reply NOT LIKE '%seq%')",
                (only_early,),
            )
        })
        .unwrap()
        .unwrap()
    };
    // Every send recorded once; a grouped one before its number was known.
    assert_eq!(records(false), N);
    assert_eq!(records(true), grouped);

    let mut cb = b.connect();
    for f in &frames {
        cb.send_bytes(f);
    }
    let again: Vec<Value> = (0..N).map(|_| cb.recv().1.unwrap()).collect();
    assert_eq!(again, first, "each resend answered with its first reply");
    let bob = db.users().get("bob").unwrap().unwrap().id;
    let ns: Vec<u64> = db
        .messages()
        .after(bob, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|m| {
            serde_json::from_str::<Value>(&m.body).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns, (0..N).collect::<Vec<_>>(), "each stored once, in order");
    assert_eq!(records(false), N, "no refusal recorded for the resends");
}
