//! On a Galera cluster (`scripts/galera`, named by `DSF_TEST_GALERA_URLS`,
//! which `scripts/test` sets for its Galera run): the pool turns causal
//! reads on by itself, so a row written through one node is read at once
//! through another. Says so and passes without the cluster, unless
//! `DSF_NEED_GALERA` is set.

use std::sync::{Arc, Barrier};

use dsf_sql::messages::Sender;
use dsf_sql::migrate::{self, Migration};
use dsf_sql::{Db, DbConfig, Once, Role};
use mysql::prelude::Queryable;

/// A database made for one test on every node, dropped when it passes.
struct Shared {
    nodes: Vec<String>,
    name: String,
}

impl Shared {
    fn create(nodes: Vec<String>, prefix: &str) -> Shared {
        let name = format!("{prefix}_{}", std::process::id());
        let shared = Shared { nodes, name };
        dsf_sql::db::ensure_database(&shared.all()).unwrap();
        shared
    }

    /// Every node, as one `--db` list.
    fn all(&self) -> DbConfig {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{n}{}", self.name))
            .collect();
        DbConfig::new(list.join(","))
    }

    /// Node `i` alone (wrapping around the list).
    fn node(&self, i: usize) -> DbConfig {
        DbConfig::new(format!("{}{}", self.nodes[i % self.nodes.len()], self.name))
    }

    fn connect(&self, i: usize) -> Db {
        Db::connect(&self.node(i)).unwrap()
    }

    fn drop_it(self) {
        dsf_sql::db::drop_database(&self.all(), &self.name).unwrap();
    }
}

/// User `bob` and `n` senders `s0`.. on a migrated `db`: bob's id, and
/// each sender's id and name.
fn bob_and_senders(db: &Db, n: usize) -> (u64, Vec<(u64, String)>) {
    db.migrate().unwrap();
    let bob = db.users().create("bob", "x", Role::Viewer).unwrap().id;
    let senders = (0..n)
        .map(|i| {
            let name = format!("s{i}");
            (
                db.users().create(&name, "x", Role::Viewer).unwrap().id,
                name,
            )
        })
        .collect();
    (bob, senders)
}

#[test]
fn reads_through_one_node_see_writes_through_another() {
    let Some(nodes) = dsf_sql::testing::galera_or_skip() else {
        return;
    };
    let shared = Shared::create(nodes, "dsf_galera");
    // One pool on node 1, one on node 2: each is a list of one.
    let one = shared.connect(0);
    let two = shared.connect(1);
    for db in [&one, &two] {
        let wait: u64 = db
            .checkout()
            .unwrap()
            .query_first("SELECT @@session.wsrep_sync_wait")
            .unwrap()
            .unwrap();
        assert_eq!(wait, 1, "causal reads on {}", db.target());
    }
    let mut w = one.checkout().unwrap();
    w.query_drop("CREATE TABLE IF NOT EXISTS seen (id INT PRIMARY KEY)")
        .unwrap();
    let mut r = two.checkout().unwrap();
    for id in 0..200 {
        w.exec_drop("INSERT INTO seen (id) VALUES (?)", (id,))
            .unwrap();
        let found: Option<i32> = r
            .exec_first("SELECT id FROM seen WHERE id = ?", (id,))
            .unwrap();
        assert_eq!(
            found,
            Some(id),
            "row {id} written on node 1, read on node 2"
        );
    }
    drop((w, r));
    shared.drop_it();
}

/// `GET_LOCK` is local to one node, so migrations take a lease on a
/// replicated row instead: three processes migrating at once through three
/// nodes run each migration once. The migration sleeps and then adds a
/// column, which fails if it runs twice.
#[test]
fn migrations_through_three_nodes_at_once_run_once() {
    let Some(nodes) = dsf_sql::testing::galera_or_skip() else {
        return;
    };
    let shared = Shared::create(nodes, "dsf_galera_migrate");
    let set = [
        Migration {
            version: 1,
            name: "slow",
            sql: "CREATE TABLE twice (id INT PRIMARY KEY);\nDO SLEEP(1);\nALTER TABLE twice ADD COLUMN x INT;\n",
        },
        Migration {
            version: 2,
            name: "after",
            sql: "ALTER TABLE twice ADD COLUMN y INT;\n",
        },
    ];
    let barrier = Arc::new(Barrier::new(shared.nodes.len()));
    let runs: Vec<_> = (0..shared.nodes.len())
        .map(|i| {
            let cfg = shared.node(i);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let db = Db::connect(&cfg).unwrap();
                barrier.wait();
                migrate::apply(&db, "test", &set)
            })
        })
        .collect();
    let reports: Vec<_> = runs
        .into_iter()
        .map(|h| h.join().unwrap().expect("every node's migration succeeds"))
        .collect();

    let appliers: Vec<_> = reports.iter().filter(|r| !r.applied.is_empty()).collect();
    assert_eq!(appliers.len(), 1, "one process applies: {reports:?}");
    assert_eq!(appliers[0].applied, vec![1, 2]);
    assert!(reports.iter().all(|r| r.version == 2), "{reports:?}");
    let db = shared.connect(2);
    let versions: Vec<u32> = db
        .checkout()
        .unwrap()
        .query("SELECT version FROM schema_migrations WHERE namespace = 'test' ORDER BY version")
        .unwrap();
    assert_eq!(versions, vec![1, 2]);
    drop(db);
    shared.drop_it();
}

/// The sum over the nodes of a `wsrep_*` status counter.
fn wsrep_counter(dbs: &[Db], name: &str) -> u64 {
    dbs.iter()
        .map(|db| {
            let v: Option<u64> = db
                .checkout()
                .unwrap()
                .exec_first(
                    "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = ?",
                    (name.to_uppercase(),),
                )
                .unwrap();
            v.unwrap_or(0)
        })
        .sum()
}

/// Senders on all three nodes write to one inbox at once: every send takes
/// the inbox's counter row, so transactions through different nodes
/// conflict and fail certification at commit (error 1213). Each is run
/// again, and the inbox ends numbered 1..n without a gap or a double.
#[test]
fn certification_failures_are_retried_and_lose_nothing() {
    let Some(nodes) = dsf_sql::testing::galera_or_skip() else {
        return;
    };
    let shared = Shared::create(nodes, "dsf_galera_cert");
    let dbs: Vec<Db> = (0..shared.nodes.len()).map(|i| shared.connect(i)).collect();
    const SENDERS: usize = 6;
    const EACH: u64 = 40;
    let (bob, senders) = bob_and_senders(&dbs[0], SENDERS);
    let failures = || {
        wsrep_counter(&dbs, "wsrep_local_cert_failures")
            + wsrep_counter(&dbs, "wsrep_local_bf_aborts")
    };
    let before = failures();
    let start = Arc::new(Barrier::new(SENDERS));
    let threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, (id, sender))| {
            let cfg = shared.node(i);
            let start = start.clone();
            std::thread::spawn(move || {
                let db = Db::connect(&cfg).unwrap();
                start.wait();
                (0..EACH)
                    .map(|n| {
                        let body = format!("{{\"n\":{n}}}");
                        let from = Sender { id, name: &sender };
                        db.messages()
                            .send(from, "bob", &body)
                            .unwrap_or_else(|e| {
                                panic!("send {n} from {sender} on {}: {e}", db.target())
                            })
                            .listed[0]
                            .seq
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let conflicts = failures() - before;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=SENDERS as u64 * EACH).collect::<Vec<u64>>());
    let got = dbs[2].messages().after(bob, 0, 1000).unwrap();
    assert_eq!(got.len(), SENDERS * EACH as usize);
    eprintln!("{conflicts} transactions failed certification or were aborted by a replicated write, and were run again");
    assert!(
        conflicts > 0,
        "no transaction conflicted across nodes, so this test tested nothing"
    );
    drop(dbs);
    shared.drop_it();
}

/// The same through run-once writes, as app servers on three nodes run
/// `msg.send`: each send runs under its nonce, and one answered
/// `unavailable` (a certification failure inside the write) is sent again
/// under the same nonce, as the SDK does. Every send acknowledged is in the
/// inbox once, numbered 1..n.
#[test]
fn run_once_writes_through_three_nodes_lose_nothing() {
    let Some(nodes) = dsf_sql::testing::galera_or_skip() else {
        return;
    };
    let shared = Shared::create(nodes, "dsf_galera_once");
    let first = shared.connect(0);
    const SENDERS: usize = 6;
    const EACH: u64 = 30;
    let (bob, senders) = bob_and_senders(&first, SENDERS);
    let start = Arc::new(Barrier::new(SENDERS));
    let threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, (id, sender))| {
            let cfg = shared.node(i);
            let start = start.clone();
            std::thread::spawn(move || {
                let db = Db::connect(&cfg).unwrap();
                start.wait();
                let mut seqs = Vec::new();
                for n in 0..EACH {
                    let nonce = format!("{sender}-{n}");
                    let body = format!("{{\"n\":{n}}}");
                    let stored = loop {
                        let run = db.writes().run_once("app", &nonce, "msg.send", || {
                            let from = Sender { id, name: &sender };
                            match db.messages().send(from, "bob", &body) {
                                Ok(s) => (true, s.listed[0].seq.to_string(), false),
                                Err(e) => (false, e.to_string(), false),
                            }
                        });
                        match run {
                            Ok(Once::Ran(s) | Once::Replayed(s)) if s.ok => break s,
                            Ok(Once::Ran(s)) => {
                                assert!(s.reply.contains("unavailable"), "{}", s.reply)
                            }
                            Ok(Once::Replayed(s)) => panic!("a refusal was stored: {}", s.reply),
                            Err(e) => assert!(e.to_string().contains("unavailable"), "{e}"),
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    };
                    seqs.push(stored.reply.parse::<u64>().unwrap());
                }
                seqs
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=SENDERS as u64 * EACH).collect::<Vec<u64>>());
    let got = first.messages().after(bob, 0, 1000).unwrap();
    assert_eq!(got.len(), SENDERS * EACH as usize);
    drop(first);
    shared.drop_it();
}
