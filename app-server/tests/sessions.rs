//! A session belongs to the app whose key logged in: its token with
//! another app's key is refused (a sniffed token is no use to another
//! app), while the app's own key keeps working; over real sockets.

mod support;

use std::time::Instant;

use dsf_common::call::{Connection, Failure, Signer};
use dsf_common::wire::Key;
use dsf_common::ErrorCode;
use dsf_sql::testing;
use support::{settings, Server, WAIT};

#[test]
fn a_token_works_only_with_the_key_of_the_app_that_logged_in() {
    let db = testing::fresh();
    let mut s = settings(db.config(), None);
    s.app_keys.insert("other", b"other-app-secret");
    let server = Server::with(s);
    let mut c = server.connect();
    let token = c.user("ann");
    assert_eq!(
        c.ok("user.me", serde_json::json!({}), Some(&token))["name"],
        "ann"
    );

    let signer = Signer {
        app: "other".into(),
        key: Key::new(b"other-app-secret"),
    };
    let addr = server.addr.to_string();
    let mut other = Connection::connect(&addr, &addr, signer, WAIT, 1 << 20).unwrap();
    match other.round_trip("user.me", "{}", Some(&token), Instant::now() + WAIT) {
        Err(Failure::Server(e)) => {
            assert_eq!(e.code(), ErrorCode::Unauthorized);
            assert!(e.to_string().contains("another app's key"), "{e}");
        }
        r => panic!("ann's token under app `other`: {r:?}"),
    }
    // The same for a stream's session check, and other's own login works.
    match other.round_trip("msg.history", "{}", Some(&token), Instant::now() + WAIT) {
        Err(Failure::Server(e)) => assert_eq!(e.code(), ErrorCode::Unauthorized),
        r => panic!("{r:?}"),
    }
    let body = r#"{"name":"ann","password":"password-123"}"#;
    let login = other
        .round_trip("user.login", body, None, Instant::now() + WAIT)
        .unwrap();
    let theirs: serde_json::Value = serde_json::from_str(login.get()).unwrap();
    let t = theirs["token"].as_str().unwrap();
    other
        .round_trip("user.me", "{}", Some(t), Instant::now() + WAIT)
        .unwrap();
    // And the first token still works with its own app.
    c.ok("user.me", serde_json::json!({}), Some(&token));
}

#[test]
fn a_scoped_key_sends_only_what_it_allows_while_a_full_key_is_served() {
    let db = testing::fresh();
    let mut s = settings(db.config(), None);
    s.app_keys
        .insert_scoped("gate-north", b"gate-secret", &["gate.check", "sys.ping"]);
    let server = Server::with(s);
    let mut good = server.connect();
    let signer = Signer {
        app: "gate-north".into(),
        key: Key::new(b"gate-secret"),
    };
    let addr = server.addr.to_string();
    let mut gate = Connection::connect(&addr, &addr, signer, WAIT, 1 << 20).unwrap();
    let check = r#"{"id_card":"X-1","name":"Li"}"#;
    let hit = gate
        .round_trip("gate.check", check, None, Instant::now() + WAIT)
        .unwrap();
    assert_eq!(hit.get(), r#"{"hit":false}"#);
    for (kind, body) in [
        ("blacklist.list", "{}"),
        ("user.register", r#"{"name":"x","password":"password-123"}"#),
        ("msg.history", "{}"),
    ] {
        match gate.round_trip(kind, body, None, Instant::now() + WAIT) {
            Err(Failure::Server(e)) => {
                assert_eq!(e.code(), ErrorCode::Forbidden, "{kind}");
                assert!(
                    e.to_string().contains("may send only gate.check, sys.ping"),
                    "{e}"
                );
            }
            r => panic!("{kind} under a scoped key: {r:?}"),
        }
        good.ok("sys.ping", serde_json::json!({}), None);
    }
    // The connection stays open for what the key may send.
    gate.round_trip("sys.ping", "{}", None, Instant::now() + WAIT)
        .unwrap();
}

#[test]
fn a_key_scoped_without_task_finish_cannot_finish_inside_a_claim() {
    let db = testing::fresh();
    let mut s = settings(db.config(), None);
    s.app_keys
        .insert_scoped("claimer", b"claim-secret", &["task.submit", "task.claim"]);
    let server = Server::with(s);
    let signer = Signer {
        app: "claimer".into(),
        key: Key::new(b"claim-secret"),
    };
    let addr = server.addr.to_string();
    let mut w = Connection::connect(&addr, &addr, signer, WAIT, 1 << 20).unwrap();
    let call = |w: &mut Connection, kind: &str, body: &str| {
        w.round_trip(kind, body, None, Instant::now() + WAIT)
    };
    call(&mut w, "task.submit", r#"{"tasks":[{"payload":1}]}"#).unwrap();
    let claimed: serde_json::Value = serde_json::from_str(
        call(&mut w, "task.claim", r#"{"n":1,"lease_ms":30000}"#)
            .unwrap()
            .get(),
    )
    .unwrap();
    let t = &claimed["tasks"][0];
    let body = serde_json::json!({
        "n": 1, "lease_ms": 30000,
        "finish": [{"task": t["task"], "fence": t["fence"], "result": 1}],
    });
    match call(&mut w, "task.claim", &body.to_string()) {
        Err(Failure::Server(e)) => {
            assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
            assert!(e.to_string().contains("need task.finish"), "{e}");
        }
        r => panic!("a claim finishing under a key without task.finish: {r:?}"),
    }
    // A client with a full key is served as ever.
    server.connect().ok("sys.ping", serde_json::json!({}), None);
    // Nothing was kept: the task still runs under its lease.
    let held: Option<(String, u64)> = db
        .with_conn_result("test", |c| {
            use mysql::prelude::Queryable;
            Ok(c.exec_first(
                "SELECT t.state, c.fence FROM tasks t JOIN claimed_tasks c ON c.task_id = t.id \
                 WHERE t.id = ?",
                (t["task"].as_u64().unwrap(),),
            )?)
        })
        .unwrap();
    assert_eq!(held, Some(("ready".into(), t["fence"].as_u64().unwrap())));
}
