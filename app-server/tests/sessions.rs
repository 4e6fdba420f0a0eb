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
