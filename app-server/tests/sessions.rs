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
