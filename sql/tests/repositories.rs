//! Every repository against a real MariaDB (run through `scripts/test`).

use std::time::Duration;

use dsf_common::ErrorCode;
use dsf_sql::password::{self, Cost};
use dsf_sql::{testing, EntryChange, Error, HistoryQuery, ListQuery, NewCheck, NewEntry, Role};

const HOSTILE: [&str; 9] = [
    "x' OR '1'='1",
    "; DROP TABLE users; --",
    "\"double\" and 'single' quotes",
    "back\\slash \\' \\\\",
    "emoji 😀🎉👩‍👩‍👧 𝄞",
    "percent % under _ bang !",
    "NULL",
    "  leading and trailing  ",
    "日本語の名前",
];

fn add(db: &dsf_sql::Db, id_card: &str, name: &str) -> dsf_sql::Entry {
    db.blacklist()
        .add(
            &NewEntry {
                id_card,
                name,
                reason: None,
            },
            "op",
        )
        .unwrap()
}

// --- users ---

#[test]
fn user_round_trip_with_password_and_role() {
    let db = testing::fresh();
    let hash = password::hash_with("s3cret-pass", Cost::TEST).unwrap();

    let created = db.users().create("alice", &hash, Role::Viewer).unwrap();
    let got = db.users().get("alice").unwrap().unwrap();
    let by_id = db.users().get_by_id(created.id).unwrap().unwrap();
    let (cred_user, stored) = db.users().credentials("alice").unwrap().unwrap();

    assert_eq!(got, created);
    assert_eq!(by_id, created);
    assert_eq!(cred_user, created);
    assert!(password::verify("s3cret-pass", &stored).unwrap());
    assert!(!password::verify("wrong", &stored).unwrap());

    let promoted = db.users().set_role("alice", Role::Admin).unwrap();
    assert_eq!(promoted.role, Role::Admin);
    assert_eq!(db.users().count_with_role(Role::Admin).unwrap(), 1);

    let new_hash = password::hash_with("another-pass", Cost::TEST).unwrap();
    db.users().set_password_hash("alice", &new_hash).unwrap();
    let (_, stored) = db.users().credentials("alice").unwrap().unwrap();
    assert!(password::verify("another-pass", &stored).unwrap());
}

#[test]
fn duplicate_user_name_is_a_conflict_case_insensitively() {
    let db = testing::fresh();
    db.users().create("Bob", "h", Role::Viewer).unwrap();

    let err = db.users().create("bob", "h", Role::Viewer).unwrap_err();

    assert_eq!(err.code(), ErrorCode::Conflict);
    assert_eq!(err.to_string(), "user name \"bob\" is taken");
}

#[test]
fn unknown_user_is_none_or_not_found() {
    let db = testing::fresh();
    assert_eq!(db.users().get("nobody").unwrap(), None);
    assert_eq!(db.users().credentials("nobody").unwrap(), None);
    let err = db.users().set_role("nobody", Role::Admin).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
}

// --- sessions ---

#[test]
fn session_made_by_one_pool_is_valid_in_another() {
    let t = testing::fresh();
    let user = t.users().create("carol", "h", Role::Operator).unwrap();
    let other_server = dsf_sql::Db::connect(&t.config()).unwrap();

    let new = t
        .sessions()
        .create(user.id, "cli", Duration::from_secs(3600))
        .unwrap();
    let found = other_server.sessions().get(&new.token).unwrap().unwrap();

    assert_eq!(found.user, user);
    assert_eq!(found.expires_at, new.expires_at);
    assert!(other_server.sessions().delete(&new.token).unwrap());
    assert_eq!(t.sessions().get(&new.token).unwrap(), None);
    assert!(!t.sessions().delete(&new.token).unwrap());
}

#[test]
fn session_stores_only_the_hash_of_its_token() {
    let db = testing::fresh();
    let user = db.users().create("dave", "h", Role::Viewer).unwrap();
    let new = db
        .sessions()
        .create(user.id, "cli", Duration::from_secs(60))
        .unwrap();

    use mysql::prelude::Queryable;
    let stored: Vec<Vec<u8>> = db
        .pool()
        .get_conn()
        .unwrap()
        .query("SELECT token_hash FROM sessions")
        .unwrap();
    assert_eq!(stored, vec![dsf_sql::token::hash(&new.token).to_vec()]);
    assert!(!stored[0]
        .windows(8)
        .any(|w| new.token.as_bytes().windows(8).any(|t| t == w)));
}

#[test]
fn expired_session_is_not_found_and_is_purged() {
    let db = testing::fresh();
    let user = db.users().create("erin", "h", Role::Viewer).unwrap();
    let new = db
        .sessions()
        .create(user.id, "cli", Duration::ZERO)
        .unwrap();

    assert_eq!(db.sessions().get(&new.token).unwrap(), None);
    assert_eq!(db.sessions().delete_expired(100).unwrap(), 1);
}

#[test]
fn session_for_unknown_user_is_not_found_and_role_changes_apply_at_once() {
    let db = testing::fresh();
    let err = db
        .sessions()
        .create(424242, "cli", Duration::from_secs(60))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");

    let user = db.users().create("frank", "h", Role::Viewer).unwrap();
    let s = db
        .sessions()
        .create(user.id, "cli", Duration::from_secs(60))
        .unwrap();
    db.users().set_role("frank", Role::Operator).unwrap();
    assert_eq!(
        db.sessions().get(&s.token).unwrap().unwrap().user.role,
        Role::Operator
    );
    assert_eq!(db.sessions().delete_for_user(user.id).unwrap(), 1);
}

// --- blacklist ---

#[test]
fn blacklist_round_trip() {
    let db = testing::fresh();
    let bl = db.blacklist();

    let added = bl
        .add(
            &NewEntry {
                id_card: "11010119900307451X",
                name: "Zhang San",
                reason: Some("fraud"),
            },
            "op1",
        )
        .unwrap();
    assert_eq!(bl.get("11010119900307451X").unwrap(), Some(added.clone()));
    // Case-insensitive id card lookup: a lower-case x finds the same entry.
    assert_eq!(bl.get("11010119900307451x").unwrap(), Some(added.clone()));

    let changed = bl
        .update(
            "11010119900307451X",
            &EntryChange {
                name: Some("Zhang S."),
                reason: None,
            },
            "op2",
        )
        .unwrap();
    assert_eq!(changed.name, "Zhang S.");
    assert_eq!(changed.reason.as_deref(), Some("fraud"));
    assert_eq!(changed.created_by, "op1");
    assert_eq!(changed.updated_by, "op2");
    assert!(changed.updated_at >= added.updated_at);

    let cleared = bl
        .update(
            "11010119900307451X",
            &EntryChange {
                name: None,
                reason: Some(""),
            },
            "op2",
        )
        .unwrap();
    assert_eq!(cleared.reason, None);
    assert_eq!(cleared.name, "Zhang S.");

    bl.remove("11010119900307451X").unwrap();
    assert_eq!(bl.get("11010119900307451X").unwrap(), None);
    assert_eq!(
        bl.remove("11010119900307451X").unwrap_err().code(),
        ErrorCode::NotFound
    );
    let err = bl
        .update("11010119900307451X", &EntryChange::default(), "op")
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert_eq!(err.to_string(), "no entry for id card 11010119900307451X");
}

#[test]
fn listing_an_id_card_twice_is_a_conflict() {
    let db = testing::fresh();
    add(&db, "A-1", "first");

    let err = db
        .blacklist()
        .add(
            &NewEntry {
                id_card: "a-1",
                name: "second",
                reason: None,
            },
            "op",
        )
        .unwrap_err();

    assert!(matches!(err, Error::Conflict { .. }));
    assert_eq!(err.code(), ErrorCode::Conflict);
    assert_eq!(err.to_string(), "id card a-1 is already listed");
}

#[test]
fn keyset_listing_walks_every_entry_once() {
    let db = testing::fresh();
    for i in 0..23 {
        add(&db, &format!("ID{i:03}"), &format!("name {i}"));
    }

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = db
            .blacklist()
            .list(&ListQuery {
                after: after.as_deref(),
                limit: Some(5),
                name_prefix: None,
            })
            .unwrap();
        assert!(page.entries.len() <= 5);
        seen.extend(page.entries.into_iter().map(|e| e.id_card));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }

    let expected: Vec<String> = (0..23).map(|i| format!("ID{i:03}")).collect();
    assert_eq!(seen, expected);
}

#[test]
fn name_prefix_listing_pages_in_name_order_and_matches_literally() {
    let db = testing::fresh();
    add(&db, "P1", "smith anna");
    add(&db, "P2", "Smith bob");
    add(&db, "P3", "smithers");
    add(&db, "P4", "smith anna"); // same name, different card
    add(&db, "P5", "jones");
    add(&db, "P6", "50% off");
    add(&db, "P7", "50 percent");

    let mut names = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = db
            .blacklist()
            .list(&ListQuery {
                after: after.as_deref(),
                limit: Some(2),
                name_prefix: Some("smith"),
            })
            .unwrap();
        names.extend(page.entries.into_iter().map(|e| (e.name, e.id_card)));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let ids: Vec<&str> = names.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, ["P1", "P4", "P2", "P3"]);

    let pct = db
        .blacklist()
        .list(&ListQuery {
            name_prefix: Some("50%"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(pct.entries.len(), 1);
    assert_eq!(pct.entries[0].id_card, "P6");
}

#[test]
fn listing_limit_and_cursor_are_validated() {
    let db = testing::fresh();
    let bl = db.blacklist();
    let err = bl
        .list(&ListQuery {
            limit: Some(501),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert_eq!(err.to_string(), "limit: 1 to 500");
    let err = bl
        .list(&ListQuery {
            after: Some("garbage"),
            name_prefix: Some("a"),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert!(err.to_string().starts_with("after: "));
}

// --- gate checks ---

#[test]
fn check_and_record_answers_hit_or_miss_and_records_both() {
    let db = testing::fresh();
    add(&db, "C1", "Listed Person");
    let gc = db.gate_checks();

    let (entry, hit) = gc
        .check_and_record("C1", "Listed Person", Some("north"), "n1")
        .unwrap();
    assert_eq!(entry.unwrap().name, "Listed Person");
    assert!(hit.hit);
    let (entry, miss) = gc.check_and_record("C2", "Someone", None, "n1").unwrap();
    assert!(entry.is_none());
    assert!(!miss.hit);

    let trail = gc.history(&HistoryQuery::default()).unwrap();
    let seen: Vec<(u64, &str, bool)> = trail
        .iter()
        .map(|c| (c.id, c.id_card.as_str(), c.hit))
        .collect();
    assert_eq!(seen, vec![(miss.id, "C2", false), (hit.id, "C1", true)]);
    assert_eq!(trail[1].gate.as_deref(), Some("north"));

    // Bad input is refused before anything is recorded.
    let e = gc
        .check_and_record("x' OR '1'='1", "n", None, "n1")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert_eq!(gc.history(&HistoryQuery::default()).unwrap().len(), 2);
}

#[test]
fn gate_checks_come_back_newest_first_filtered_and_limited() {
    let db = testing::fresh();
    let gc = db.gate_checks();
    let mut ids = Vec::new();
    for (card, gate, hit) in [
        ("C1", Some("north"), false),
        ("C2", Some("north"), true),
        ("C1", Some("south"), false),
        ("C1", None, false),
        ("C2", Some("south"), true),
    ] {
        let c = gc
            .record(&NewCheck {
                id_card: card,
                name: "n",
                gate,
                node: "10.0.0.1:7000",
                hit,
            })
            .unwrap();
        ids.push(c.id);
    }

    let all = gc.history(&HistoryQuery::default()).unwrap();
    let all_ids: Vec<u64> = all.iter().map(|c| c.id).collect();
    assert_eq!(all_ids, ids.iter().rev().copied().collect::<Vec<_>>());

    let c1 = gc
        .history(&HistoryQuery {
            id_card: Some("C1"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        c1.iter().map(|c| c.id).collect::<Vec<_>>(),
        [ids[3], ids[2], ids[0]]
    );
    assert_eq!(c1[0].gate, None);

    let north = gc
        .history(&HistoryQuery {
            gate: Some("north"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        north.iter().map(|c| c.id).collect::<Vec<_>>(),
        [ids[1], ids[0]]
    );
    assert!(north[0].hit);

    let both = gc
        .history(&HistoryQuery {
            id_card: Some("C1"),
            gate: Some("south"),
            limit: Some(10),
        })
        .unwrap();
    assert_eq!(both.len(), 1);
    assert_eq!(both[0].id, ids[2]);

    let one = gc
        .history(&HistoryQuery {
            limit: Some(1),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, ids[4]);
    assert_eq!(one[0].node, "10.0.0.1:7000");
}

// --- hostile input ---

#[test]
fn hostile_strings_are_stored_and_found_literally() {
    let db = testing::fresh();
    for (i, s) in HOSTILE.iter().enumerate() {
        let card = format!("H{i}");
        let entry = db
            .blacklist()
            .add(
                &NewEntry {
                    id_card: &card,
                    name: s,
                    reason: Some(s),
                },
                s,
            )
            .unwrap();
        let got = db.blacklist().get(&card).unwrap().unwrap();
        assert_eq!(got, entry);
        assert_eq!(got.name, *s);
        assert_eq!(got.reason.as_deref(), Some(*s));
        assert_eq!(got.created_by, *s);

        let user = db.users().create(s, "h", Role::Viewer).unwrap();
        assert_eq!(db.users().get(s).unwrap().unwrap(), user);

        let check = db
            .gate_checks()
            .record(&NewCheck {
                id_card: &card,
                name: s,
                gate: Some(s),
                node: s,
                hit: true,
            })
            .unwrap();
        let hist = db
            .gate_checks()
            .history(&HistoryQuery {
                gate: Some(s),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(hist, vec![check]);

        let page = db
            .blacklist()
            .list(&ListQuery {
                name_prefix: Some(s),
                ..Default::default()
            })
            .unwrap();
        assert!(
            page.entries.iter().any(|e| e.id_card == card),
            "prefix {s:?} missed"
        );
        assert!(page
            .entries
            .iter()
            .all(|e| e.name.to_lowercase().starts_with(&s.to_lowercase())));
    }
    // The tables are all still there and hold exactly what was written.
    assert_eq!(
        db.blacklist()
            .list(&ListQuery::default())
            .unwrap()
            .entries
            .len(),
        HOSTILE.len()
    );
    assert_eq!(
        db.users().count_with_role(Role::Viewer).unwrap(),
        HOSTILE.len() as u64
    );
}

#[test]
fn hostile_id_cards_and_oversized_fields_are_refused_with_the_rule() {
    let db = testing::fresh();
    let bl = db.blacklist();
    for bad in ["x' OR '1'='1", "; DROP TABLE users; --", "😀", "a\\b", ""] {
        let err = bl.get(bad).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest);
        assert_eq!(
            err.to_string(),
            "id_card: 1 to 32 characters, ASCII letters, digits or '-'"
        );
    }

    let ten_kb = "n".repeat(10 * 1024);
    let err = bl
        .add(
            &NewEntry {
                id_card: "OK1",
                name: &ten_kb,
                reason: None,
            },
            "op",
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "name: 1 to 64 characters, not blank, no control characters"
    );
    let wire: dsf_common::Error = err.into();
    assert_eq!(wire.code(), ErrorCode::BadRequest);

    let err = bl
        .add(
            &NewEntry {
                id_card: "OK1",
                name: "ok",
                reason: Some(&ten_kb),
            },
            "op",
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("reason: at most 512 characters"),
        "{err}"
    );

    let err = db
        .users()
        .create(&"😀".repeat(65), "h", Role::Viewer)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    let err = db
        .gate_checks()
        .record(&NewCheck {
            id_card: "OK1",
            name: "n",
            gate: Some(&ten_kb),
            node: "x",
            hit: false,
        })
        .unwrap_err();
    assert!(
        err.to_string().starts_with("gate: 1 to 64 characters"),
        "{err}"
    );

    // At the limit, 4-byte characters fit: the columns count characters.
    let max = "😀".repeat(64);
    let e = bl
        .add(
            &NewEntry {
                id_card: "OK2",
                name: &max,
                reason: None,
            },
            "op",
        )
        .unwrap();
    assert_eq!(bl.get("OK2").unwrap().unwrap().name, e.name);
}
