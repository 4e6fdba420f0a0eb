//! End to end, real binaries: 30 users spread by key over three app
//! servers send 200 messages each to random others while some recipients
//! are offline for part of the run and one app server is SIGKILLed; every
//! message reaches its recipient's application exactly once, in order per
//! sender. Then `client msg send` and `client msg listen` from the command
//! line.

mod e2e;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsf_client::messages::{self, ListenOptions, Listener};
use dsf_client::{Client, Error};
use dsf_sql::password::{self, Cost};
use dsf_sql::{Queryable, Role};
use e2e::{wait_for, Cluster, Spec, WAIT};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const USERS: usize = 30;
const PER_USER: usize = 200;
const PASSWORD: &str = "message-password";

fn name(i: usize) -> String {
    format!("u{i:02}")
}

/// A client logged in as user `i`, routed by its name.
fn login(cluster: &Cluster, i: usize) -> Client {
    let mut c = cluster.client();
    c.set_routing_key(Some(name(i)));
    let r = c
        .call(
            "user.login",
            &json!({"name": name(i), "password": PASSWORD}),
        )
        .unwrap();
    c.set_token(Some(r["token"].as_str().unwrap().to_string()));
    c
}

/// What one recipient's application got: (sender, n) in arrival order.
type Inbox = Arc<Mutex<Vec<(usize, u64)>>>;

/// Listens as user `i` into `inbox` until `stop`; while `away` is set the
/// user is offline (the listener closed, acknowledging what it printed).
fn listener(
    cluster: &Cluster,
    i: usize,
    inbox: Inbox,
    away: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    subscriptions: Arc<AtomicUsize>,
) -> impl FnOnce() + Send + 'static {
    let c = login(cluster, i);
    move || {
        let opts = ListenOptions {
            credit: 50,
            ..ListenOptions::default()
        };
        while !stop.load(Ordering::Acquire) {
            if away.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let mut l = Listener::new(&c, &name(i), opts.clone()).unwrap();
            while !stop.load(Ordering::Acquire) && !away.load(Ordering::Acquire) {
                let Some(m) = l.next(Instant::now() + Duration::from_millis(100)).unwrap() else {
                    continue;
                };
                let from = m.from[1..].parse::<usize>().unwrap();
                let n = m.body.get().parse::<Value>().unwrap()["n"]
                    .as_u64()
                    .unwrap();
                inbox.lock().unwrap().push((from, n));
                l.handled(m.seq);
            }
            subscriptions.fetch_add(l.subscriptions as usize, Ordering::Relaxed);
            l.close();
        }
    }
}

#[test]
fn every_message_reaches_its_recipient_once_and_in_order_through_offline_users_and_a_killed_node() {
    let mut cluster = Cluster::start(Spec {
        apps: 3,
        balancers: 1,
        ..Spec::default()
    });
    let hash = password::hash_with(PASSWORD, Cost::TEST).unwrap();
    for i in 0..USERS {
        cluster
            .db
            .users()
            .create(&name(i), &hash, Role::Viewer)
            .unwrap();
    }
    // Where each user's key lives, so the kill hits some subscriptions.
    let owners = cluster.owners(0, &(0..USERS).map(name).collect::<Vec<_>>());
    // Users 10-29 are online throughout: those on app-2 subscribe again.
    let on_killed = (10..USERS)
        .filter(|i| owners.get(&name(*i)).is_some_and(|n| n == "app-2"))
        .count();
    assert!(on_killed > 0, "some online users live on app-2: {owners:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let subscriptions = Arc::new(AtomicUsize::new(0));
    let inboxes: Vec<Inbox> = (0..USERS).map(|_| Inbox::default()).collect();
    // Users 0-4 are offline from the start until half the sends are done;
    // users 5-9 go offline at a third and come back at two thirds.
    let away: Vec<Arc<AtomicBool>> = (0..USERS)
        .map(|i| Arc::new(AtomicBool::new(i < 5)))
        .collect();
    let listeners: Vec<_> = (0..USERS)
        .map(|i| {
            let f = listener(
                &cluster,
                i,
                inboxes[i].clone(),
                away[i].clone(),
                stop.clone(),
                subscriptions.clone(),
            );
            std::thread::spawn(f)
        })
        .collect();

    let sent_total = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..USERS)
        .map(|i| {
            let mut c = login(&cluster, i);
            let sent_total = sent_total.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                let mut sent: Vec<(usize, u64)> = Vec::with_capacity(PER_USER);
                let mut unknown = 0usize;
                for n in 0..PER_USER {
                    let to = loop {
                        let t = rng.gen_range(0..USERS);
                        if t != i {
                            break t;
                        }
                    };
                    let body = json!({ "n": n }).to_string();
                    match messages::send(&mut c, &name(to), &body) {
                        Ok(_) => sent.push((to, n as u64)),
                        Err(Error::OutcomeUnknown { .. }) => unknown += 1,
                        Err(e) => panic!("{} → {}: {e}", name(i), name(to)),
                    }
                    sent_total.fetch_add(1, Ordering::Relaxed);
                }
                (sent, unknown)
            })
        })
        .collect();

    let total = USERS * PER_USER;
    let at = |fraction: f64| (total as f64 * fraction) as usize;
    wait_for("a third of the sends", WAIT * 2, || {
        (sent_total.load(Ordering::Relaxed) >= at(1.0 / 3.0)).then_some(())
    });
    for a in &away[5..10] {
        a.store(true, Ordering::Release);
    }
    wait_for("40% of the sends", WAIT * 2, || {
        (sent_total.load(Ordering::Relaxed) >= at(0.4)).then_some(())
    });
    cluster.app(2).kill();
    wait_for("half the sends", WAIT * 2, || {
        (sent_total.load(Ordering::Relaxed) >= at(0.5)).then_some(())
    });
    for a in &away[0..5] {
        a.store(false, Ordering::Release);
    }
    wait_for("two thirds of the sends", WAIT * 2, || {
        (sent_total.load(Ordering::Relaxed) >= at(2.0 / 3.0)).then_some(())
    });
    for a in &away[5..10] {
        a.store(false, Ordering::Release);
    }

    // What each recipient must get: (sender, n) in send order.
    let mut expected: Vec<Vec<(usize, u64)>> = vec![Vec::new(); USERS];
    let mut unknown = 0;
    for (i, s) in senders.into_iter().enumerate() {
        let (sent, u) = s.join().unwrap();
        unknown += u;
        for (to, n) in sent {
            expected[to].push((i, n));
        }
    }
    assert_eq!(
        unknown, 0,
        "no send's outcome is unknown: they are resent with their nonce"
    );
    let want: usize = expected.iter().map(Vec::len).sum();
    assert_eq!(want, total);
    wait_for("every message delivered", WAIT * 2, || {
        let got: usize = inboxes.iter().map(|b| b.lock().unwrap().len()).sum();
        (got >= want).then_some(())
    });
    stop.store(true, Ordering::Release);
    for l in listeners {
        l.join().unwrap();
    }

    for (to, inbox) in inboxes.iter().enumerate() {
        let got = inbox.lock().unwrap();
        // Exactly once.
        let mut count: HashMap<(usize, u64), usize> = HashMap::new();
        for m in got.iter() {
            *count.entry(*m).or_default() += 1;
        }
        let dups: Vec<_> = count.iter().filter(|(_, c)| **c > 1).collect();
        assert!(
            dups.is_empty(),
            "{} got these more than once: {dups:?}",
            name(to)
        );
        // Nothing lost, nothing extra.
        let mut want_sorted = expected[to].clone();
        want_sorted.sort_unstable();
        let mut got_sorted = got.clone();
        got_sorted.sort_unstable();
        assert_eq!(got_sorted, want_sorted, "{}'s messages", name(to));
        // In order per sender.
        let mut per_sender: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for (from, n) in got.iter() {
            per_sender.entry(*from).or_default().push(*n);
        }
        for (from, ns) in per_sender {
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "{} got {}'s messages out of order: {ns:?}",
                name(to),
                name(from)
            );
        }
    }
    // Offline users and the killed node's users subscribed more than once.
    let subs = subscriptions.load(Ordering::Relaxed);
    assert!(
        subs >= USERS + 5 + on_killed,
        "{subs} subscriptions: users 5-9 came back, and app-2's {on_killed} online users moved"
    );

    cli_send_and_listen(&cluster);
    cli_accounts(&cluster);
}

/// Registration is closed by default: `client register` is refused saying
/// who makes accounts, and an admin's `client user create` makes one.
fn cli_accounts(cluster: &Cluster) {
    let run =
        |session: &str, args: &[&str], stdin: &str| cli_with_stdin(cluster, session, args, stdin);
    let text = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    let refused = run(
        "eve.session",
        &["register", "eve", "--password-stdin"],
        "eve-password\n",
    );
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(
        text(&refused).contains("registration is closed")
            && text(&refused).contains("client user create"),
        "{}",
        text(&refused)
    );
    let admin = run(
        "root.session",
        &["login", e2e::ADMIN, "--password-stdin"],
        &format!("{}\n", e2e::ADMIN_PASSWORD),
    );
    assert!(admin.status.success(), "{}", text(&admin));
    let made = run(
        "root.session",
        &[
            "user",
            "create",
            "eve",
            "--role",
            "operator",
            "--password-stdin",
        ],
        "eve-password\n",
    );
    assert!(made.status.success(), "{}", text(&made));
    assert!(
        text(&made).starts_with("created eve (id "),
        "{}",
        text(&made)
    );
    assert!(text(&made).contains("role operator"), "{}", text(&made));
    let again = run(
        "root.session",
        &["user", "create", "EVE", "--password-stdin"],
        "eve-password\n",
    );
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert!(text(&again).contains("conflict"), "{}", text(&again));
    let eve = run(
        "eve.session",
        &["login", "eve", "--password-stdin"],
        "eve-password\n",
    );
    assert!(eve.status.success(), "{}", text(&eve));
    let me = run("eve.session", &["whoami"], "");
    assert!(text(&me).starts_with("eve (id "), "{}", text(&me));
}

/// `client ARGS` with `stdin` as its input, under session file `session`.
fn cli_with_stdin(
    cluster: &Cluster,
    session: &str,
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    use std::io::Write;
    let mut child = cluster
        .cli(session)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// `client login`, `client msg send`, `client msg listen --json`.
fn cli_send_and_listen(cluster: &Cluster) {
    let cli = |user: &str| cluster.cli(&format!("{user}.session"));
    let run = |user: &str, args: &[&str], stdin: &str| {
        let out = cli_with_stdin(cluster, &format!("{user}.session"), args, stdin);
        assert!(
            out.status.success(),
            "client {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The texts `user` is delivered in 3 s of `msg listen`, in order.
    let texts_for = |user: &str| -> Vec<String> {
        run(user, &["msg", "listen", "--for", "3s", "--json"], "")
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["body"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    run("u00", &["login", "u00", "--password-stdin"], PASSWORD);
    run("u01", &["login", "u01", "--password-stdin"], PASSWORD);
    let sent: Value = serde_json::from_str(&run(
        "u00",
        &["msg", "send", "u01", "hello from the CLI", "--json"],
        "",
    ))
    .unwrap();
    assert!(sent["seq"].as_u64().unwrap() > 0, "{sent}");
    let out = run("u01", &["msg", "listen", "--for", "3s", "--json"], "");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(
        (lines[0]["from"].as_str(), lines[0]["body"].as_str()),
        (Some("u00"), Some("hello from the CLI"))
    );
    assert_eq!(lines[0]["seq"], sent["seq"]);
    // Printed, so acknowledged: a second listen prints nothing.
    let again = run("u01", &["msg", "listen", "--for", "2s", "--json"], "");
    assert_eq!(again, "", "acknowledged once printed");
    let history = run(
        "u01",
        &["msg", "history", "--with", "u00", "--limit", "1", "--json"],
        "",
    );
    let h: Value = serde_json::from_str(history.trim()).unwrap();
    assert_eq!(h["body"], "hello from the CLI");
    // A room, from the command line.
    run("u00", &["msg", "join", "e2e-room"], "");
    run("u01", &["msg", "join", "e2e-room"], "");
    run(
        "u00",
        &["msg", "send", "--room", "e2e-room", "to the room"],
        "",
    );
    let out = run("u01", &["msg", "listen", "--for", "3s", "--json"], "");
    let m: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (m["room"].as_str(), m["body"].as_str()),
        (Some("e2e-room"), Some("to the room"))
    );
    // Each line of stdin a message, a window in flight: all arrive, in
    // order.
    let texts: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
    let sent: Value = serde_json::from_str(&run(
        "u00",
        &["msg", "send", "u01", "--lines", "--window", "16", "--json"],
        &(texts.join("\n") + "\n"),
    ))
    .unwrap();
    assert_eq!(
        (sent["sent"].as_u64(), sent["failed"].as_u64()),
        (Some(200), Some(0)),
        "{sent}"
    );
    assert_eq!(texts_for("u01"), texts, "every line once, in order");
    // A recipient that does not exist: refused, exit 3, with the reason.
    let out = cli("u00")
        .args(["msg", "send", "nobody", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no user named \"nobody\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An empty TEXT: refused before sending, a usage error.
    let out = cli("u00")
        .args(["msg", "send", "u01", ""])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("the TEXT is empty"), "{err}");
    // A room not joined: refused, and told how to join, not to ask an
    // admin (rooms are open).
    run("u00", &["msg", "join", "e2e-other"], "");
    let out = cli("u01")
        .args(["msg", "send", "--room", "e2e-other", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("client msg join e2e-other"), "{err}");
    assert!(!err.contains("admin"), "{err}");
    // --lines with one line too big: that line is named, the others go,
    // and the exit code is the server's refusal (3), not a usage error.
    let big = "a".repeat(70_000);
    let out = cli_with_stdin(
        cluster,
        "u00.session",
        &["msg", "send", "u01", "--lines"],
        &format!("before\n{big}\nafter\n"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("line 2: not sent"), "{err}");
    assert!(err.contains("1 of 3 lines not sent"), "{err}");
    // The words after the recipient are one TEXT, no quotes needed.
    run("u00", &["msg", "send", "u01", "two", "words"], "");
    assert_eq!(texts_for("u01"), ["before", "after", "two words"]);
}

/// A window of sends in flight from one client, its node SIGKILLed in
/// the middle: the sends are committed in groups (counted on the node's
/// metrics before the kill), the window in flight is resent elsewhere
/// with its stamps, and every recipient's inbox holds each message once,
/// in the order it was sent.
#[test]
fn a_window_of_sends_is_stored_once_and_in_order_when_its_node_dies_mid_batch() {
    const SENDS: u64 = 3_000;
    const RECIPIENTS: usize = 3;
    const WINDOW: usize = 64;
    let mut cluster = Cluster::start(Spec {
        apps: 3,
        balancers: 1,
        ..Spec::default()
    });
    let hash = password::hash_with(PASSWORD, Cost::TEST).unwrap();
    let names: Vec<String> = (0..=RECIPIENTS).map(|i| format!("w{i}")).collect();
    for n in &names {
        cluster.db.users().create(n, &hash, Role::Viewer).unwrap();
    }
    let owner = &cluster.owners(0, &names[..1])[&names[0]];
    let at = cluster
        .apps
        .iter()
        .position(|(id, _, _)| id == owner)
        .expect("the sender's node is one of the cluster's");
    let mut c = cluster.client();
    c.set_routing_key(Some(names[0].clone()));
    let r = c
        .call(
            "user.login",
            &json!({"name": names[0], "password": PASSWORD}),
        )
        .unwrap();
    c.set_token(Some(r["token"].as_str().unwrap().to_string()));

    let (acked, submitted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sender = {
        let (acked, submitted, names) = (acked.clone(), submitted.clone(), names.clone());
        std::thread::spawn(move || {
            let sends = (0..SENDS).map(|n| {
                submitted.fetch_add(1, Ordering::Relaxed);
                let to = &names[1 + n as usize % RECIPIENTS];
                let body = serde_json::value::to_raw_value(&json!({ "n": n })).unwrap();
                (messages::To::User(to), body)
            });
            let mut failed = Vec::new();
            messages::send_many(&mut c, sends, WINDOW, |i, sent| {
                acked.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = sent {
                    failed.push(format!("send {i}: {e}"));
                }
            })
            .unwrap();
            failed
        })
    };
    wait_for("a third of the sends acknowledged", WAIT * 2, || {
        (acked.load(Ordering::Relaxed) as u64 >= SENDS / 3).then_some(())
    });
    let grouped = cluster
        .app_metric(at, "dsf_grouped_requests_total")
        .unwrap_or(0.0);
    cluster.app(at).kill();
    let in_flight = submitted.load(Ordering::Relaxed) - acked.load(Ordering::Relaxed);
    let failed = sender.join().unwrap();
    assert!(failed.is_empty(), "every send stored: {failed:?}");
    assert!(
        grouped > 0.0,
        "the node committed sends in groups before the kill"
    );
    // Taken into the window and not yet acknowledged: written to the
    // node's connection, or about to be.
    assert!(
        in_flight > 1,
        "sends were in the window when the node died ({in_flight})"
    );

    // Each recipient's inbox, in its numbering: every message once, in
    // the order sent.
    for (r, name) in names[1..].iter().enumerate() {
        let ns: Vec<u64> = cluster
            .db
            .with_conn("test", |c| {
                c.exec_map(
                    "SELECT m.body FROM inbox i JOIN messages m ON m.id = i.message_id \
                     JOIN users u ON u.id = i.user_id WHERE u.name = ? ORDER BY i.seq",
                    (name,),
                    |body: String| {
                        serde_json::from_str::<Value>(&body).unwrap()["n"]
                            .as_u64()
                            .unwrap()
                    },
                )
            })
            .unwrap();
        let want: Vec<u64> = (0..SENDS)
            .filter(|n| *n as usize % RECIPIENTS == r)
            .collect();
        if let Some(at) = (0..ns.len().max(want.len())).find(|&i| ns.get(i) != want.get(i)) {
            let around = |v: &[u64]| v[at.saturating_sub(3)..(at + 4).min(v.len())].to_vec();
            panic!(
                "{name}'s inbox ({} messages, {} sent) differs from the sends at #{at}: {:?} where {:?} was sent",
                ns.len(),
                want.len(),
                around(&ns),
                around(&want)
            );
        }
    }
}
