//! App servers with two reactors on one port (`--reactors 2`): message
//! streams held by either reactor get their events, peer links (opened
//! from the first reactor) reach subscribers on whichever reactor holds
//! them, pool and inline requests are answered on every connection, and
//! shutdown stops every reactor.

mod support;

use std::time::{Duration, Instant};

use app_server::Settings;
use dsf_common::call::{Connection, Signer, Streamed};
use dsf_common::wire::Key;
use dsf_sql::testing;
use serde_json::{json, Value};
use support::{introduce, settings, wait_until, Server, WAIT};

/// One user's `msg.subscribe`, on its own connection.
struct Sub {
    conn: Connection,
    id: u64,
}

impl Sub {
    fn open(server: &Server, token: &str) -> Sub {
        let signer = Signer {
            app: support::APP.into(),
            key: Key::new(support::SECRET),
        };
        let addr = server.addr.to_string();
        let mut conn = Connection::connect(&addr, &addr, signer, WAIT, 1 << 20).unwrap();
        let id = conn.send("msg.subscribe", "{}", Some(token)).unwrap();
        Sub { conn, id }
    }

    fn next(&mut self) -> Value {
        match self
            .conn
            .recv_stream(self.id, Instant::now() + WAIT)
            .unwrap()
        {
            Streamed::Event { body, .. } => serde_json::from_str(body.get()).unwrap(),
            Streamed::Final(b) => panic!("the subscription ended: {}", b.get()),
        }
    }
}

#[test]
fn two_reactors_serve_streams_peer_links_and_requests_on_one_port() {
    let db = testing::fresh();
    // No inbox poll within the test: only peer.notify delivers to b.
    let node = || {
        Server::with(Settings {
            reactors: 2,
            msg_poll: Duration::from_secs(3600),
            ..settings(db.config(), None)
        })
    };
    let (mut a, mut b) = (node(), node());
    introduce(&[&a, &b]);
    let mut ca = a.connect();
    let ann = ca.user("ann");
    // Sixteen subscribers on b: the kernel spreads them over b's reactors.
    let names: Vec<String> = (0..16).map(|i| format!("user{i}")).collect();
    let mut subs: Vec<Sub> = names.iter().map(|n| Sub::open(&b, &ca.user(n))).collect();
    wait_until("every subscription's presence on b", || {
        b.running()
            .node()
            .state::<app_server::messaging::mailroom::Mailroom>()
            .len()
            == names.len()
    });
    for n in &names {
        ca.ok("msg.send", json!({"to": n, "body": {"for": n}}), Some(&ann));
    }
    for (sub, n) in subs.iter_mut().zip(&names) {
        let m = sub.next();
        assert_eq!(m["body"], json!({"for": n}), "{n}'s message");
        assert_eq!(m["from"], "ann");
    }
    // Inline and pool requests on new connections to both nodes.
    for server in [&a, &b] {
        for _ in 0..16 {
            let mut c = server.connect();
            c.ok("sys.ping", json!({}), None);
            assert!(!c.login("ann").is_empty());
        }
    }
    for server in [&mut a, &mut b] {
        let report = server.stop();
        assert!(report.workers_finished, "{report:?}");
    }
}
