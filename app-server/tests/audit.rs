//! The audit trail over real sockets and a real MariaDB: role changes,
//! users made and blacklist changes recorded with who, when and which
//! node, in the change's own transaction (a refused change leaves none);
//! the last admin kept, also when two admins demote each other at once;
//! `audit.list` for admins only.

mod support;

use std::sync::{Arc, Barrier};

use dsf_common::ErrorCode;
use dsf_sql::{testing, Role};
use serde_json::{json, Value};
use support::Server;

fn entries(c: &mut support::Conn, admin: &str, body: Value) -> Vec<Value> {
    c.ok("audit.list", body, Some(admin))["entries"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn changes_are_recorded_with_who_when_and_where_and_refusals_are_not() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let admin = c.user_with_role(&db, "root", Role::Admin);
    let ann = c.user("ann");
    c.ok(
        "user.set_role",
        json!({"name": "ann", "role": "operator"}),
        Some(&admin),
    );
    // The role applies at once on the node that changed it: ann's token now
    // acts as an operator.
    let add = json!({"id_card": "110101199001011234", "name": "Li Lei", "reason": "fraud"});
    c.ok("blacklist.add", add.clone(), Some(&ann));
    // Refused: nothing recorded.
    c.err("blacklist.add", add, Some(&ann), ErrorCode::Conflict);
    c.ok(
        "blacklist.update",
        json!({"id_card": "110101199001011234", "reason": "fraud, twice"}),
        Some(&ann),
    );
    c.ok(
        "blacklist.remove",
        json!({"id_card": "110101199001011234"}),
        Some(&ann),
    );
    c.err(
        "blacklist.remove",
        json!({"id_card": "110101199001011234"}),
        Some(&ann),
        ErrorCode::NotFound,
    );

    let got = entries(&mut c, &admin, json!({}));
    let actions: Vec<(&str, &str, Option<&str>)> = got
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["subject"].as_str().unwrap(),
                e["actor"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("blacklist.remove", "110101199001011234", Some("ann")),
            ("blacklist.update", "110101199001011234", Some("ann")),
            ("blacklist.add", "110101199001011234", Some("ann")),
            ("user.set_role", "ann", Some("root")),
            ("user.create", "ann", None),
            ("user.create", "root", None),
        ]
    );
    let role = &got[3];
    assert_eq!(role["detail"], json!({"from": "viewer", "to": "operator"}));
    assert_eq!(role["node"], server.node.as_str());
    assert!(role["at"].as_u64().unwrap() > 1_700_000_000_000);
    // Paging and a subject.
    let page = c.ok("audit.list", json!({"limit": 2}), Some(&admin));
    let next = page["next"].as_u64().unwrap();
    let older = entries(&mut c, &admin, json!({"before": next, "limit": 2}));
    assert_eq!(older[0]["action"], "blacklist.add");
    let about_ann = entries(&mut c, &admin, json!({"subject": "ann"}));
    assert_eq!(about_ann.len(), 2);
    // Admins only.
    let e = c.err("audit.list", json!({}), Some(&ann), ErrorCode::Forbidden);
    assert!(e.contains("needs role admin"), "{e}");
}

#[test]
fn the_last_admin_cannot_be_demoted_even_by_two_admins_at_once() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let root = c.user_with_role(&db, "root", Role::Admin);
    let e = c.err(
        "user.set_role",
        json!({"name": "root", "role": "operator"}),
        Some(&root),
        ErrorCode::Conflict,
    );
    assert!(e.contains("root is the last admin"), "{e}");
    // Two admins demote each other at once: one is refused.
    let other = c.user_with_role(&db, "other", Role::Admin);
    let start = Arc::new(Barrier::new(2));
    let demotions: Vec<_> = [(root.clone(), "other"), (other.clone(), "root")]
        .into_iter()
        .map(|(token, target)| {
            let (server_addr, start) = (server.addr, start.clone());
            std::thread::spawn(move || {
                let mut c = support::Conn::connect(server_addr);
                start.wait();
                c.call(
                    "user.set_role",
                    json!({"name": target, "role": "viewer"}),
                    Some(&token),
                )
            })
        })
        .collect();
    let results: Vec<_> = demotions.into_iter().map(|d| d.join().unwrap()).collect();
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "{results:?}");
    // The last admin's `conflict`, or `forbidden` if the other's demotion
    // was in before this one's session was checked.
    assert!(
        matches!(
            refused[0].code(),
            ErrorCode::Conflict | ErrorCode::Forbidden
        ),
        "{results:?}"
    );
    assert_eq!(db.users().count_with_role(Role::Admin).unwrap(), 1);
}
