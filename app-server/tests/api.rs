//! Every message type of the app server over real sockets against a real
//! MariaDB: the happy path and each documented error.

mod support;

use dsf_common::ErrorCode;
use dsf_sql::{testing, Role};
use serde_json::json;
use support::{Server, PASSWORD};

#[test]
fn sys_ping_names_the_node() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let v = c.ok("sys.ping", json!({}), None);
    assert_eq!(v["node"], server.addr.to_string());
    let e = c.err("sys.ping", json!({"x": 1}), None, ErrorCode::BadRequest);
    assert!(e.contains("unknown field `x`"), "{e}");
}

#[test]
fn sys_cancel_names_a_stream_of_this_connection() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let e = c.err("sys.cancel", json!({"id": 9}), None, ErrorCode::NotFound);
    assert!(e.contains("no stream 9 is open on this connection"), "{e}");
    let e = c.err("sys.cancel", json!({}), None, ErrorCode::BadRequest);
    assert!(e.contains("missing field `id`"), "{e}");
    c.ok("sys.ping", json!({}), None);
}

#[test]
fn register_login_me_logout() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let v = c.ok(
        "user.register",
        json!({"name": "ann", "password": PASSWORD}),
        None,
    );
    assert_eq!(v, json!({"name": "ann"}));

    let v = c.ok(
        "user.login",
        json!({"name": "ann", "password": PASSWORD}),
        None,
    );
    let token = v["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    assert!(v["expires_at"].as_i64().unwrap() > dsf_sql::now_ms());
    assert_eq!(v["user"]["name"], "ann");
    assert_eq!(v["user"]["role"], "viewer");

    let me = c.ok("user.me", json!({}), Some(&token));
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("ann"), Some("viewer"))
    );

    assert_eq!(c.ok("user.logout", json!({}), Some(&token)), json!({}));
    c.err("user.me", json!({}), Some(&token), ErrorCode::Unauthorized);
    c.err(
        "user.logout",
        json!({}),
        Some(&token),
        ErrorCode::Unauthorized,
    );
}

#[test]
fn register_answers_a_taken_name_as_a_free_one_and_changes_nothing() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let free = c.ok(
        "user.register",
        json!({"name": "bob", "password": PASSWORD}),
        None,
    );
    // Taken, in any case: the same answer, so it tells no one bob exists.
    for name in ["bob", "BOB"] {
        let taken = c.ok(
            "user.register",
            json!({"name": name, "password": "another-password"}),
            None,
        );
        assert_eq!(taken, json!({"name": name}));
    }
    assert_eq!(free, json!({"name": "bob"}));
    // bob's account and password are untouched.
    c.err(
        "user.login",
        json!({"name": "bob", "password": "another-password"}),
        None,
        ErrorCode::Unauthorized,
    );
    c.login("bob");
    assert_eq!(db.users().get("bob").unwrap().unwrap().role, Role::Viewer);
}

#[test]
fn closed_registration_refuses_and_an_admin_creates_accounts() {
    let db = testing::fresh();
    let mut s = support::settings(db.config(), None);
    s.registration = app_server::accounts::Registration::Closed;
    let server = Server::with(s);
    let mut c = server.connect();
    let e = c.err(
        "user.register",
        json!({"name": "eve", "password": PASSWORD}),
        None,
        ErrorCode::Forbidden,
    );
    assert!(
        e.contains("registration is closed") && e.contains("client user create"),
        "{e}"
    );
    assert!(db.users().get("eve").unwrap().is_none());

    let hash = dsf_sql::password::hash_with(PASSWORD, dsf_sql::password::Cost::TEST).unwrap();
    db.users().create("root", &hash, Role::Admin).unwrap();
    let admin = c.login("root");
    let ann = c.ok(
        "user.create",
        json!({"name": "ann", "password": PASSWORD, "role": "operator"}),
        Some(&admin),
    );
    assert_eq!(
        (ann["name"].as_str(), ann["role"].as_str()),
        (Some("ann"), Some("operator"))
    );
    let bob = c.ok(
        "user.create",
        json!({"name": "bob", "password": PASSWORD}),
        Some(&admin),
    );
    assert_eq!(bob["role"], "viewer");
    let token = c.login("ann");
    // Only admins create; an admin is told a name is taken.
    let e = c.err(
        "user.create",
        json!({"name": "cy", "password": PASSWORD}),
        Some(&token),
        ErrorCode::Forbidden,
    );
    assert!(e.contains("admin"), "{e}");
    c.err(
        "user.create",
        json!({"name": "Ann", "password": PASSWORD}),
        Some(&admin),
        ErrorCode::Conflict,
    );
    for (body, want) in [
        (
            json!({"name": "cy", "password": "short"}),
            "password: 8 to 128",
        ),
        (
            json!({"name": "cy", "password": PASSWORD, "role": "god"}),
            "role",
        ),
        (json!({"name": "", "password": PASSWORD}), "name: 1 to 64"),
    ] {
        let e = c.err(
            "user.create",
            body.clone(),
            Some(&admin),
            ErrorCode::BadRequest,
        );
        assert!(e.contains(want), "{body}: {e}");
    }
    assert!(db.users().get("cy").unwrap().is_none());
    // Recorded, with the admin who did it.
    let audit = c.ok("audit.list", json!({"subject": "ann"}), Some(&admin));
    let made = &audit["entries"][0];
    assert_eq!(
        (made["action"].as_str(), made["actor"].as_str()),
        (Some("user.create"), Some("root"))
    );
    assert_eq!(made["detail"], json!({"role": "operator"}));
}

#[test]
fn logins_past_a_names_or_an_addresss_rate_are_refused_saying_when_to_retry() {
    let db = testing::fresh();
    let mut s = support::settings(db.config(), None);
    s.auth_rate_name = "3/1m".parse().unwrap();
    s.auth_rate_addr = "8/1m".parse().unwrap();
    let server = Server::with(s);
    let mut c = server.connect();
    let hash = dsf_sql::password::hash_with(PASSWORD, dsf_sql::password::Cost::TEST).unwrap();
    for name in ["ann", "bob", "cy"] {
        db.users().create(name, &hash, Role::Viewer).unwrap();
    }
    let bad = |name: &str| json!({"name": name, "password": "wrong-password"});
    c.err("user.login", bad("ann"), None, ErrorCode::Unauthorized);
    c.err("user.login", bad("ann"), None, ErrorCode::Unauthorized);
    let token = c.login("ann");
    // ann's bucket is empty: even her right password waits, and the
    // refusal is the same for a name that does not exist.
    for name in ["ann", "ANN"] {
        let e = c.err("user.login", bad(name), None, ErrorCode::Overloaded);
        assert!(e.contains("for this name") && e.contains("retry in"), "{e}");
    }
    let e = c.err(
        "user.login",
        json!({"name": "ann", "password": PASSWORD}),
        None,
        ErrorCode::Overloaded,
    );
    assert!(e.contains("retry in"), "{e}");
    // Meanwhile the same connection is served, ann's session works, and
    // another name logs in.
    c.ok("sys.ping", json!({}), None);
    c.ok("user.me", json!({}), Some(&token));
    c.login("bob");
    // The address's bucket holds 8: ann's 3, the 3 refused by name (they
    // count against the address too), bob's, and now cy's.
    c.login("cy");
    let e = c.err("user.login", bad("nobody"), None, ErrorCode::Overloaded);
    assert!(
        e.contains("from 127.0.0.1") && e.contains("retry in"),
        "{e}"
    );
    // Registrations share the address's bucket.
    let e = c.err(
        "user.register",
        json!({"name": "dee", "password": PASSWORD}),
        None,
        ErrorCode::Overloaded,
    );
    assert!(e.contains("registration attempts from 127.0.0.1"), "{e}");
    c.ok("sys.ping", json!({}), None);
}

#[test]
fn register_validation_names_the_field_and_rule() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let cases = [
        (
            json!({"name": "x".repeat(65), "password": PASSWORD}),
            "name: 1 to 64 characters",
        ),
        (
            json!({"name": "", "password": PASSWORD}),
            "name: 1 to 64 characters",
        ),
        (
            json!({"name": "ok", "password": "short"}),
            "password: 8 to 128 characters",
        ),
        (json!({"name": "ok"}), "missing field `password`"),
        (
            json!({"name": 5, "password": PASSWORD}),
            "name: invalid type: integer `5`",
        ),
        (
            json!({"name": "ok", "password": ["x"]}),
            "password: invalid type: sequence",
        ),
    ];
    for (body, want) in cases {
        let e = c.err("user.register", body.clone(), None, ErrorCode::BadRequest);
        assert!(e.starts_with(want) || e.contains(want), "{body}: {e}");
    }
    // None of those created anyone.
    assert!(db.users().get("ok").unwrap().is_none());
}

#[test]
fn login_says_the_same_for_unknown_name_and_wrong_password() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    c.user("cy");
    let wrong = c.err(
        "user.login",
        json!({"name": "cy", "password": "not-the-password"}),
        None,
        ErrorCode::Unauthorized,
    );
    let unknown = c.err(
        "user.login",
        json!({"name": "nobody", "password": PASSWORD}),
        None,
        ErrorCode::Unauthorized,
    );
    assert_eq!(wrong, unknown);
    // A password too short to be anyone's is wrong too, not a lesson in
    // the rules (those are for register and create).
    let short = c.err(
        "user.login",
        json!({"name": "cy", "password": "short"}),
        None,
        ErrorCode::Unauthorized,
    );
    assert_eq!(short, wrong);
}

#[test]
fn set_role_is_for_admins() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let admin = c.user_with_role(&db, "root", Role::Admin);
    let operator = c.user_with_role(&db, "op", Role::Operator);
    let viewer = c.user("dee");

    let v = c.ok(
        "user.set_role",
        json!({"name": "dee", "role": "operator"}),
        Some(&admin),
    );
    assert_eq!(
        (v["name"].as_str(), v["role"].as_str()),
        (Some("dee"), Some("operator"))
    );
    // The change applies at once on this node, cache or not.
    assert_eq!(
        c.ok("user.me", json!({}), Some(&viewer))["role"],
        "operator"
    );

    c.err(
        "user.set_role",
        json!({"name": "dee", "role": "admin"}),
        Some(&operator),
        ErrorCode::Forbidden,
    );
    c.err(
        "user.set_role",
        json!({"name": "dee", "role": "admin"}),
        None,
        ErrorCode::Unauthorized,
    );
    let e = c.err(
        "user.set_role",
        json!({"name": "ghost", "role": "admin"}),
        Some(&admin),
        ErrorCode::NotFound,
    );
    assert!(e.contains("ghost"), "{e}");
    let e = c.err(
        "user.set_role",
        json!({"name": "dee", "role": "king"}),
        Some(&admin),
        ErrorCode::BadRequest,
    );
    assert_eq!(e, "role: one of viewer, operator, admin");
}

#[test]
fn blacklist_add_get_update_remove_list() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let op = c.user_with_role(&db, "op", Role::Operator);
    let viewer = c.user("vi");

    let e = c.ok(
        "blacklist.add",
        json!({"id_card": "1101-A", "name": "Li Lei", "reason": "fraud"}),
        Some(&op),
    );
    assert_eq!(e["id_card"], "1101-A");
    assert_eq!(e["created_by"], "op");
    assert_eq!(e["reason"], "fraud");
    c.ok(
        "blacklist.add",
        json!({"id_card": "1102-B", "name": "Han Mei"}),
        Some(&op),
    );
    let e = c.err(
        "blacklist.add",
        json!({"id_card": "1101-A", "name": "Li Lei"}),
        Some(&op),
        ErrorCode::Conflict,
    );
    assert!(e.contains("1101-A"), "{e}");

    let got = c.ok("blacklist.get", json!({"id_card": "1101-A"}), Some(&viewer));
    assert_eq!(got["name"], "Li Lei");
    let e = c.err(
        "blacklist.get",
        json!({"id_card": "9999"}),
        Some(&viewer),
        ErrorCode::NotFound,
    );
    assert_eq!(e, "no entry for id card 9999");

    let u = c.ok(
        "blacklist.update",
        json!({"id_card": "1101-A", "reason": ""}),
        Some(&op),
    );
    assert_eq!(u["reason"], json!(null));
    assert_eq!(u["name"], "Li Lei");
    c.err(
        "blacklist.update",
        json!({"id_card": "9999", "name": "x"}),
        Some(&op),
        ErrorCode::NotFound,
    );

    let page = c.ok("blacklist.list", json!({"limit": 1}), Some(&viewer));
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["next"], "1101-A");
    let page = c.ok("blacklist.list", json!({"after": "1101-A"}), Some(&viewer));
    assert_eq!(page["entries"][0]["id_card"], "1102-B");
    assert_eq!(page["next"], json!(null));
    let page = c.ok(
        "blacklist.list",
        json!({"name_prefix": "han"}),
        Some(&viewer),
    );
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);

    assert_eq!(
        c.ok("blacklist.remove", json!({"id_card": "1102-B"}), Some(&op)),
        json!({})
    );
    c.err(
        "blacklist.remove",
        json!({"id_card": "1102-B"}),
        Some(&op),
        ErrorCode::NotFound,
    );
    c.err(
        "blacklist.get",
        json!({"id_card": "1102-B"}),
        Some(&viewer),
        ErrorCode::NotFound,
    );
}

#[test]
fn a_viewer_cannot_write_the_blacklist_and_nobody_reads_it_without_a_token() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let viewer = c.user("vi");
    for (kind, body) in [
        ("blacklist.add", json!({"id_card": "1", "name": "x"})),
        ("blacklist.update", json!({"id_card": "1", "name": "x"})),
        ("blacklist.remove", json!({"id_card": "1"})),
    ] {
        let e = c.err(kind, body.clone(), Some(&viewer), ErrorCode::Forbidden);
        assert!(e.contains("operator") && e.contains("viewer"), "{e}");
        c.err(kind, body, None, ErrorCode::Unauthorized);
    }
    for (kind, body) in [
        ("blacklist.get", json!({"id_card": "1"})),
        ("blacklist.list", json!({})),
        ("gate.history", json!({})),
        ("user.me", json!({})),
        ("user.logout", json!({})),
    ] {
        let e = c.err(kind, body, None, ErrorCode::Unauthorized);
        assert!(e.contains("user.login"), "{e}");
    }
    assert!(db.blacklist().get("1").unwrap().is_none());
}

#[test]
fn blacklist_validation_names_the_field() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let op = c.user_with_role(&db, "op", Role::Operator);
    let cases = [
        (
            "blacklist.add",
            json!({"id_card": "a b", "name": "x"}),
            "id_card: ",
        ),
        (
            "blacklist.add",
            json!({"id_card": "1", "name": "x".repeat(65)}),
            "name: 1 to 64",
        ),
        (
            "blacklist.add",
            json!({"id_card": "1", "name": "x", "reason": "r".repeat(513)}),
            "reason: ",
        ),
        (
            "blacklist.add",
            json!({"id_card": 1, "name": "x"}),
            "id_card: invalid type",
        ),
        ("blacklist.get", json!({}), "missing field `id_card`"),
        ("blacklist.list", json!({"limit": 501}), "limit: 1 to 500"),
        (
            "blacklist.list",
            json!({"limit": "ten"}),
            "limit: invalid type",
        ),
        (
            "blacklist.list",
            json!({"limit": -1}),
            "limit: invalid value",
        ),
        (
            "blacklist.update",
            json!({"id_card": "1", "name": false}),
            "name: invalid type",
        ),
    ];
    for (kind, body, want) in cases {
        let e = c.err(kind, body.clone(), Some(&op), ErrorCode::BadRequest);
        assert!(
            e.starts_with(want) || e.contains(want),
            "{kind} {body}: {e}"
        );
    }
}

#[test]
fn gate_check_answers_hit_or_clear_and_records_every_check() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let op = c.user_with_role(&db, "op", Role::Operator);
    c.ok(
        "blacklist.add",
        json!({"id_card": "X-1", "name": "Bad", "reason": "r"}),
        Some(&op),
    );

    let hit = c.ok(
        "gate.check",
        json!({"id_card": "X-1", "name": "Bad", "gate": "north"}),
        None,
    );
    // A key alone learns hit or miss; the entry is for a session's user.
    assert_eq!(hit, json!({"hit": true}));
    let with_session = c.ok(
        "gate.check",
        json!({"id_card": "X-1", "name": "Bad", "gate": "north"}),
        Some(&op),
    );
    assert_eq!(with_session["entry"]["reason"], "r");
    let clear = c.ok(
        "gate.check",
        json!({"id_card": "Y-2", "name": "Good"}),
        None,
    );
    assert_eq!(clear, json!({"hit": false}));

    let viewer = c.user("vi");
    let h = c.ok("gate.history", json!({}), Some(&viewer));
    let checks = h["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 3);
    assert_eq!(checks[0]["id_card"], "Y-2", "newest first");
    assert_eq!(checks[1]["hit"], true);
    assert_eq!(checks[1]["node"], server.node.as_str());
    let h = c.ok("gate.history", json!({"gate": "north"}), Some(&viewer));
    assert_eq!(h["checks"].as_array().unwrap().len(), 2);
    let h = c.ok(
        "gate.history",
        json!({"id_card": "Y-2", "limit": 1}),
        Some(&viewer),
    );
    assert_eq!(h["checks"][0]["name"], "Good");

    for (kind, body, want) in [
        (
            "gate.check",
            json!({"id_card": "Y-2"}),
            "missing field `name`",
        ),
        (
            "gate.check",
            json!({"id_card": "Y-2", "name": "x", "gate": ""}),
            "gate: 1 to 64",
        ),
        (
            "gate.check",
            json!({"id_card": "", "name": "x"}),
            "id_card: ",
        ),
        ("gate.history", json!({"limit": 0}), "limit: 1 to 500"),
        ("gate.history", json!({"gate": 3}), "gate: invalid type"),
    ] {
        let e = c.err(kind, body.clone(), Some(&viewer), ErrorCode::BadRequest);
        assert!(e.contains(want), "{kind} {body}: {e}");
    }
    // Refused checks are not recorded.
    let h = c.ok("gate.history", json!({}), Some(&viewer));
    assert_eq!(h["checks"].as_array().unwrap().len(), 3);
}

#[test]
fn create_admin_makes_an_admin_who_can_log_in() {
    let db = testing::fresh();
    let u = app_server::admin::create_admin(&db, "root", PASSWORD, dsf_sql::password::Cost::TEST)
        .unwrap();
    assert_eq!(u.role, Role::Admin);
    let e = app_server::admin::create_admin(&db, "root", PASSWORD, dsf_sql::password::Cost::TEST)
        .unwrap_err();
    assert!(e.to_string().contains("taken"), "{e}");
    let server = Server::start(&db);
    let mut c = server.connect();
    let token = c.login("root");
    assert_eq!(c.ok("user.me", json!({}), Some(&token))["role"], "admin");
}
