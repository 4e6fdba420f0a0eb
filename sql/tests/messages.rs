//! Messaging's tables against a real MariaDB (run through `scripts/test`):
//! numbers per inbox in commit order under concurrent senders, rooms,
//! presence epochs, acknowledgement marks, history.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};

use dsf_common::ErrorCode;
use dsf_sql::messages::{GroupSend, Sender};
use dsf_sql::writes::{Once, Stored};
use dsf_sql::Queryable;
use dsf_sql::{testing, Role};

fn user(db: &testing::TestDb, name: &str) -> u64 {
    db.users().create(name, "x", Role::Viewer).unwrap().id
}

fn from<'a>(id: u64, name: &'a str) -> Sender<'a> {
    Sender { id, name }
}

#[test]
fn concurrent_senders_give_each_inbox_numbers_from_one_without_gaps_in_send_order() {
    let db = Arc::new(testing::fresh());
    let bob = user(&db, "bob");
    let senders: Vec<(u64, String)> = (0..8)
        .map(|i| {
            let n = format!("s{i}");
            (user(&db, &n), n)
        })
        .collect();
    let start = Arc::new(Barrier::new(senders.len()));
    let threads: Vec<_> = senders
        .iter()
        .cloned()
        .map(|(id, name)| {
            let (db, start) = (db.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..50)
                    .map(|n| {
                        let body = format!("{{\"n\":{n}}}");
                        let s = db.messages().send(from(id, &name), "bob", &body).unwrap();
                        assert_eq!(s.listed.len(), 1);
                        assert_eq!(s.listed[0].user, bob);
                        s.listed[0].seq
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        let seqs = t.join().unwrap();
        // One sender's messages take increasing numbers.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    let got = db.messages().after(bob, 0, 1000).unwrap();
    assert_eq!(got.len(), 400);
    assert!(got.iter().zip(1..).all(|(m, n)| m.seq == n));
    // Each sender's messages read back in the order they were sent.
    let mut last: HashMap<&str, i64> = HashMap::new();
    for m in &got {
        let v: serde_json::Value = serde_json::from_str(&m.body).unwrap();
        let n = v["n"].as_i64().unwrap();
        let prev = last.insert(m.from.as_str(), n).unwrap_or(-1);
        assert!(n > prev, "{} sent {n} after {prev}", m.from);
    }
    // Paging by number.
    let page = db.messages().after(bob, 390, 5).unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![391, 392, 393, 394, 395]
    );
}

#[test]
fn an_unknown_recipient_and_a_body_over_the_cap_are_refused_and_nothing_is_stored() {
    let db = testing::fresh();
    let ann = user(&db, "ann");
    let e = db
        .messages()
        .send(from(ann, "ann"), "nobody", "1")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    assert!(e.to_string().contains("no user named \"nobody\""), "{e}");
    let big = format!("\"{}\"", "x".repeat(dsf_sql::messages::BODY_MAX));
    let e = db
        .messages()
        .send(from(ann, "ann"), "ann", &big)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert!(e.to_string().starts_with("body: at most"), "{e}");
    assert!(db.messages().after(ann, 0, 10).unwrap().is_empty());
}

#[test]
fn a_room_fans_out_to_its_members_but_the_sender_and_refuses_outsiders() {
    let db = testing::fresh();
    let [ann, bob, cy, dee] = ["ann", "bob", "cy", "dee"].map(|n| user(&db, n));
    let m = db.messages();
    let e = m.send_to_room(from(ann, "ann"), "ops", "1").unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
    assert_eq!(m.join(ann, "ops").unwrap(), 1);
    assert_eq!(m.join(bob, "ops").unwrap(), 2);
    assert_eq!(m.join(cy, "ops").unwrap(), 3);
    assert_eq!(m.join(cy, "ops").unwrap(), 3, "joining twice is harmless");
    // bob already has a direct message: the room's takes his next number.
    m.send(from(dee, "dee"), "bob", "\"hi\"").unwrap();
    let s = m
        .send_to_room(from(ann, "ann"), "ops", "{\"deploy\":1}")
        .unwrap();
    let mut listed: Vec<(u64, u64)> = s.listed.iter().map(|l| (l.user, l.seq)).collect();
    listed.sort_unstable();
    assert_eq!(listed, vec![(bob, 2), (cy, 1)]);
    let got = m.after(cy, 0, 10).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0].from.as_str(),
            got[0].room.as_deref(),
            got[0].body.as_str()
        ),
        ("ann", Some("ops"), "{\"deploy\":1}")
    );
    assert!(m.after(ann, 0, 10).unwrap().is_empty(), "not to the sender");
    let e = m.send_to_room(from(dee, "dee"), "ops", "1").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    m.leave(cy, "ops").unwrap();
    let e = m.leave(cy, "ops").unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
    let e = m.leave(cy, "nope").unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
    let e = m.join(cy, "bad room!").unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest, "{e}");
}

#[test]
fn presence_epochs_grow_per_subscription_and_only_the_current_one_clears_it() {
    let db = testing::fresh();
    let ann = user(&db, "ann");
    let bob = user(&db, "bob");
    let m = db.messages();
    let first = m.subscribe(bob, "node-a").unwrap();
    assert_eq!(first.acked, 0);
    // A send sees where bob is.
    let s = m.send(from(ann, "ann"), "bob", "1").unwrap();
    assert_eq!(s.listed[0].node.as_deref(), Some("node-a"));
    let second = m.subscribe(bob, "node-b").unwrap();
    assert!(second.epoch > first.epoch);
    let heads = m.heads(&[bob, ann]).unwrap();
    let h = heads.iter().find(|h| h.user == bob).unwrap();
    assert_eq!(
        (h.last_seq, h.presence.clone()),
        (1, Some(("node-b".to_string(), second.epoch)))
    );
    let h = heads.iter().find(|h| h.user == ann).unwrap();
    assert_eq!((h.last_seq, h.presence.clone()), (0, None));
    // The older subscription ending leaves the newer one's presence.
    m.unsubscribe(bob, first.epoch).unwrap();
    let s = m.send(from(ann, "ann"), "bob", "2").unwrap();
    assert_eq!(s.listed[0].node.as_deref(), Some("node-b"));
    m.unsubscribe(bob, second.epoch).unwrap();
    let s = m.send(from(ann, "ann"), "bob", "3").unwrap();
    assert_eq!(s.listed[0].node, None);
    // A node that starts clears what it held.
    m.subscribe(bob, "node-c").unwrap();
    assert_eq!(m.clear_node("node-c").unwrap(), 1);
}

#[test]
fn acknowledgement_marks_only_grow_and_never_pass_the_inbox() {
    let db = testing::fresh();
    let ann = user(&db, "ann");
    let bob = user(&db, "bob");
    let m = db.messages();
    for n in 0..5 {
        m.send(from(ann, "ann"), "bob", &n.to_string()).unwrap();
    }
    m.ack(bob, 3).unwrap();
    assert_eq!(m.acked(bob).unwrap(), 3);
    m.ack(bob, 2).unwrap();
    assert_eq!(m.acked(bob).unwrap(), 3, "a mark never goes back");
    m.ack(bob, 9).unwrap();
    assert_eq!(m.acked(bob).unwrap(), 3, "not past the last number");
    assert_eq!(m.subscribe(bob, "n").unwrap().acked, 3);
}

#[test]
fn history_lists_sent_and_received_newest_first_and_pages() {
    let db = testing::fresh();
    let ann = user(&db, "ann");
    let bob = user(&db, "bob");
    let cy = user(&db, "cy");
    let m = db.messages();
    m.send(from(ann, "ann"), "bob", "1").unwrap();
    m.send(from(bob, "bob"), "ann", "2").unwrap();
    m.send(from(cy, "cy"), "ann", "3").unwrap();
    m.send(from(ann, "ann"), "cy", "4").unwrap();
    let all = m.history(ann, None, None, 10).unwrap();
    let bodies: Vec<&str> = all.iter().map(|e| e.body.as_str()).collect();
    assert_eq!(bodies, vec!["4", "3", "2", "1"]);
    assert_eq!(all[0].to.as_deref(), Some("cy"));
    assert_eq!(all[1].seq, Some(2), "received: its number in ann's inbox");
    let with_bob = m.history(ann, Some("bob"), None, 10).unwrap();
    let bodies: Vec<&str> = with_bob.iter().map(|e| e.body.as_str()).collect();
    assert_eq!(bodies, vec!["2", "1"]);
    let page = m.history(ann, None, None, 2).unwrap();
    assert_eq!(page.len(), 2);
    let older = m.history(ann, None, Some(page[1].id), 2).unwrap();
    let bodies: Vec<&str> = older.iter().map(|e| e.body.as_str()).collect();
    assert_eq!(bodies, vec!["2", "1"]);
    let e = m.history(ann, Some("zed"), None, 10).unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
}

#[test]
fn concurrent_joins_of_a_new_room_all_land_without_deadlocks() {
    let db = Arc::new(testing::fresh());
    let users: Vec<u64> = (0..8).map(|i| user(&db, &format!("j{i}"))).collect();
    let start = Arc::new(Barrier::new(users.len()));
    let joins: Vec<_> = users
        .iter()
        .map(|&u| {
            let (db, start) = (db.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                db.messages().join(u, "lobby")
            })
        })
        .collect();
    let mut counts: Vec<u64> = joins
        .into_iter()
        .map(|j| j.join().unwrap().expect("no join fails"))
        .collect();
    counts.sort_unstable();
    // Each join saw the ones before it: 1, 2, ... 8.
    assert_eq!(counts, (1..=8).collect::<Vec<u64>>());
}

/// Sends `to` (user ids) in one group commit made ready for the sends to
/// `ready`, each under its own nonce, its body its place; the commit's
/// result and each send's (number, message id).
fn group_sends(
    db: &testing::TestDb,
    ann: u64,
    ready: &[u64],
    to: &[u64],
    tag: &str,
) -> (Result<(), String>, Vec<(u64, u64)>) {
    let bodies: Vec<String> = (0..to.len()).map(|i| i.to_string()).collect();
    let nonces: Vec<String> = (0..to.len()).map(|i| format!("{tag}{i:015}")).collect();
    let sends: Vec<GroupSend> = to
        .iter()
        .enumerate()
        .filter(|(_, t)| ready.contains(t))
        .map(|(index, t)| GroupSend {
            index,
            to: *t,
            body: &bodies[index],
            key: ("cli", &nonces[index]),
        })
        .collect();
    db.writes().begin_group().unwrap();
    let sent = to
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut sent = (0, 0);
            db.writes()
                .run_once("cli", &nonces[i], "msg.send", || {
                    let m = db.messages();
                    // The group's first send makes it ready, as msg.send does.
                    if i == 0 {
                        m.prepare_group(from(ann, "ann"), &sends).unwrap();
                    }
                    let s = match m.send_in_group(i, from(ann, "ann"), *t, &bodies[i]) {
                        Some(s) => s.unwrap(),
                        None => m.send_to_id(from(ann, "ann"), *t, &bodies[i]).unwrap(),
                    };
                    sent = (s.listed[0].seq, s.id);
                    (true, String::new(), false)
                })
                .unwrap();
            sent
        })
        .collect();
    (db.writes().commit_group(), sent)
}

/// How many messages are stored, of anyone's.
fn stored_messages(db: &testing::TestDb) -> u64 {
    db.with_conn("test", |c| c.query_first("SELECT COUNT(*) FROM messages"))
        .unwrap()
        .unwrap()
}

/// Runs `f` as a write of the group open on this thread (its handler).
fn in_group(db: &testing::TestDb, nonce: &str, f: impl FnOnce()) {
    let mut f = Some(f);
    db.writes()
        .run_once("cli", nonce, "msg.send", || {
            (f.take().expect("runs once"))();
            (true, String::new(), false)
        })
        .unwrap();
}

#[test]
fn sends_staged_in_a_group_are_numbered_in_order_and_written_at_its_commit() {
    let db = testing::fresh();
    let mode: Option<u32> = db
        .with_conn("test", |c| {
            c.query_first("SELECT @@innodb_autoinc_lock_mode")
        })
        .unwrap();
    assert_ne!(
        mode,
        Some(2),
        "the project's MariaDB numbers a statement's rows consecutively"
    );
    let (ann, bob, cid) = (user(&db, "ann"), user(&db, "bob"), user(&db, "cid"));
    let m = db.messages();
    m.send(from(ann, "ann"), "bob", "0").unwrap();
    // Bob's sends made ready, cid's not: cid's take their row on their own.
    let (done, sent) = group_sends(&db, ann, &[bob], &[bob, cid, bob, bob, cid], "a");
    done.unwrap();
    let seqs: Vec<u64> = sent.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, [2, 1, 3, 4, 2]);
    // Bob's messages were stored ahead, in one statement, before cid's.
    let ids: Vec<u64> = sent.iter().map(|(_, id)| *id).collect();
    assert!(
        ids[0] < ids[2] && ids[2] < ids[3] && ids[3] < ids[1],
        "{ids:?}"
    );
    let bodies = |u| -> Vec<(u64, String)> {
        m.after(u, 0, 100)
            .unwrap()
            .into_iter()
            .map(|m| (m.seq, m.body))
            .collect()
    };
    let want = |v: &[(u64, &str)]| {
        v.iter()
            .map(|(s, b)| (*s, b.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(bob), want(&[(1, "0"), (2, "0"), (3, "2"), (4, "3")]));
    assert_eq!(bodies(cid), want(&[(1, "1"), (2, "4")]));
    // The counter was written with the rows: the next send follows on.
    assert_eq!(
        m.send(from(ann, "ann"), "bob", "5").unwrap().listed[0].seq,
        5
    );

    // A group that breaks leaves neither messages, rows nor numbers.
    let count = || stored_messages(&db);
    let before = count();
    db.writes().begin_group().unwrap();
    in_group(&db, "b000000000000000", || {
        let lost = GroupSend {
            index: 0,
            to: bob,
            body: "\"lost\"",
            key: ("cli", "b000000000000000"),
        };
        m.prepare_group(from(ann, "ann"), &[lost]).unwrap();
        m.send_in_group(0, from(ann, "ann"), bob, "\"lost\"")
            .unwrap()
            .unwrap();
    });
    dsf_sql::writes::break_group("a test");
    assert_eq!(db.writes().commit_group().unwrap_err(), "a test");
    assert_eq!(count(), before);
    assert_eq!(
        m.send(from(ann, "ann"), "bob", "6").unwrap().listed[0].seq,
        6
    );

    // A message stored ahead whose send never ran fails the commit.
    db.writes().begin_group().unwrap();
    in_group(&db, "c000000000000000", || {
        let unsent = GroupSend {
            index: 1,
            to: bob,
            body: "7",
            key: ("cli", "c000000000000001"),
        };
        m.prepare_group(from(ann, "ann"), &[unsent]).unwrap();
    });
    let e = db.writes().commit_group().unwrap_err();
    assert!(e.contains("not sent"), "{e}");
    assert_eq!(count(), before + 1);
    assert_eq!(
        m.send(from(ann, "ann"), "bob", "8").unwrap().listed[0].seq,
        7
    );
}

#[test]
fn a_grouped_send_is_recorded_before_its_number_and_its_reply_completed_when_read() {
    let db = testing::fresh();
    db.writes()
        .complete_replies("msg.send", dsf_sql::messages::sent_reply);
    let (ann, bob, cid) = (user(&db, "ann"), user(&db, "bob"), user(&db, "cid"));
    let m = db.messages();
    // Bob's sends made ready (stored ahead and recorded with the group's
    // first), cid's not.
    let (done, sent) = group_sends(&db, ann, &[bob], &[bob, cid, bob], "k");
    done.unwrap();
    let recorded = |nonce: &str| -> Option<String> {
        db.with_conn("test", |c| {
            c.exec_first(
                "SELECT reply FROM wire_writes WHERE app = 'cli' AND nonce = ?",
                (nonce,),
            )
        })
        .unwrap()
    };
    let reply = |id: u64, seq: u64| format!(r#"{{"id":{id},"seq":{seq}}}"#);
    // Recorded before its number was known; cid's as its handler replied
    // (the helper's handlers reply "").
    let nonce = "k000000000000002";
    assert_eq!(recorded(nonce), Some(format!(r#"{{"id":{}}}"#, sent[2].1)));
    assert_eq!(recorded("k000000000000001").as_deref(), Some(""));
    let theirs = Stored {
        ok: true,
        reply: reply(sent[2].1, sent[2].0),
    };
    assert_eq!(
        db.writes().stored_as("msg.send", "cli", nonce).unwrap(),
        Some(theirs.clone())
    );
    // Another kind's reply is read as recorded.
    assert_eq!(
        db.writes()
            .stored_as("blacklist.add", "cli", nonce)
            .unwrap()
            .map(|s| s.reply),
        recorded(nonce)
    );

    // The same request run again in a group (on another node, say) meets
    // its record: the group breaks, and the send run alone is answered
    // with the completed reply, its message stored once.
    let count = || stored_messages(&db);
    let before = count();
    db.writes().begin_group().unwrap();
    let again = GroupSend {
        index: 0,
        to: bob,
        body: "2",
        key: ("cli", nonce),
    };
    let mut met = None;
    db.writes()
        .run_once("cli", nonce, "msg.send", || {
            let e = m
                .prepare_group(from(ann, "ann"), std::slice::from_ref(&again))
                .unwrap_err();
            met = Some(e.code());
            (false, e.to_string(), true)
        })
        .unwrap();
    assert!(db.writes().commit_group().is_err());
    assert_eq!(met, Some(ErrorCode::Conflict));
    let alone = db
        .writes()
        .run_once("cli", nonce, "msg.send", || {
            match m.send_to_id(from(ann, "ann"), bob, "2") {
                Ok(s) => (true, reply(s.id, s.listed[0].seq), false),
                Err(e) => (false, e.to_string(), true),
            }
        })
        .unwrap();
    assert_eq!(alone, Once::Replayed(theirs));
    assert_eq!(count(), before);
    // Nothing was numbered twice: bob's next number follows on.
    assert_eq!(
        m.send(from(ann, "ann"), "bob", "3").unwrap().listed[0].seq,
        3
    );
}
