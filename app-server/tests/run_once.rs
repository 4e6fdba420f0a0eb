//! Writes run once, on any node: the same signed write arriving again (a
//! replay, or the SDK resending after a lost connection), on the same app
//! server or another one over the same database, gets the reply stored the
//! first time and does not run again.

mod support;

use dsf_common::wire::envelope::encode_request_at;
use dsf_common::wire::{new_nonce, now_ms, Key, OutgoingRequest};
use dsf_common::ErrorCode;
use dsf_sql::{testing, Role};
use serde_json::json;
use support::{Conn, Server, APP, SECRET};

fn signed(kind: &str, body: &str, token: &str, nonce: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let req = OutgoingRequest {
        id: 5,
        kind,
        app: APP,
        token: Some(token),
        body,
    };
    encode_request_at(&Key::new(SECRET), &req, now_ms(), nonce, &mut out);
    out
}

fn answer(c: &mut Conn, frame: &[u8]) -> Result<serde_json::Value, dsf_common::Error> {
    c.send_bytes(frame);
    let (id, r) = c.recv();
    assert_eq!(id, 5);
    r
}

#[test]
fn a_signed_write_sent_again_to_any_server_gets_the_stored_reply_and_runs_once() {
    let db = testing::fresh();
    let (a, b) = (Server::start(&db), Server::start(&db));
    let mut ca = a.connect();
    let token = ca.user_with_role(&db, "op", Role::Operator);
    let write = signed(
        "blacklist.add",
        r#"{"id_card":"R1","name":"Li"}"#,
        &token,
        &new_nonce(),
    );

    let first = answer(&mut ca, &write).unwrap();
    assert_eq!(first["id_card"], "R1");
    // Run again, it would be refused: the id card is listed now.
    let mut cb = b.connect();
    assert_eq!(answer(&mut cb, &write).unwrap(), first, "on another server");
    let mut ca2 = a.connect();
    assert_eq!(
        answer(&mut ca2, &write).unwrap(),
        first,
        "on the same server"
    );
    assert_eq!(
        db.blacklist()
            .list(&Default::default())
            .unwrap()
            .entries
            .len(),
        1
    );

    // A new request for the same card is a new write: it runs, and is refused.
    let again = signed(
        "blacklist.add",
        r#"{"id_card":"R1","name":"Li"}"#,
        &token,
        &new_nonce(),
    );
    let e = answer(&mut cb, &again).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
    // And that refusal is what its resend gets too.
    let e = answer(&mut ca2, &again).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
}

#[test]
fn a_write_refused_with_try_again_runs_when_sent_again_to_the_same_server() {
    let db = testing::fresh();
    let a = Server::start(&db);
    let mut c = a.connect();
    let token = c.user_with_role(&db, "op", Role::Operator);
    let nonce = new_nonce();
    let write = signed(
        "blacklist.add",
        r#"{"id_card":"T1","name":"Li"}"#,
        &token,
        &nonce,
    );
    // Another transaction holds the record's key, uncommitted: the write
    // waits for it, gives up after the lock wait (5 s), and is refused
    // `unavailable`, which is not recorded.
    let mut blocker = db.pool().get_conn().unwrap();
    use mysql::prelude::Queryable;
    blocker.query_drop("START TRANSACTION").unwrap();
    blocker
        .exec_drop(
            "INSERT INTO wire_writes (app, nonce, kind, ok, reply, created_at) VALUES (?, ?, 'x', 0, '', 0)",
            (APP, nonce.as_str()),
        )
        .unwrap();
    let e = answer(&mut c, &write).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    blocker.query_drop("ROLLBACK").unwrap();
    // The same bytes again, to the node that has seen the nonce: it runs.
    let mut c2 = a.connect();
    let entry = answer(&mut c2, &write).unwrap();
    assert_eq!(entry["id_card"], "T1");
    assert!(db.blacklist().get("T1").unwrap().is_some());
}

#[test]
fn a_read_sent_again_is_a_replayed_nonce_as_ever() {
    let db = testing::fresh();
    let a = Server::start(&db);
    let mut c = a.connect();
    let token = c.user("viewer");
    let read = signed("user.me", "{}", &token, &new_nonce());
    answer(&mut c, &read).unwrap();
    let e = answer(&mut c, &read).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ReplayedNonce);
    c.ok("sys.ping", json!({}), None);
}
