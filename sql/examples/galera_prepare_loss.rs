//! Shows, without dsf, the Galera behaviour `dsf-sql` works around: six
//! clients on three nodes take numbers from one counter row, each in a
//! transaction of prepared statements, running it again on a deadlock
//! (1213). With statements prepared inside the transaction (`cold`, the
//! first transaction of each client), a commit now and then answers OK and
//! is gone; with them prepared beforehand (`warm`), none is lost.
//!
//! ```text
//! scripts/galera start
//! DSF_TEST_GALERA_URLS=$(scripts/galera urls | paste -sd,) \
//!     cargo run -p dsf-sql --example galera_prepare_loss -- 20
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts};

const CLIENTS: usize = 6;
const EACH: usize = 60;
const STATEMENTS: [&str; 3] = [
    "INSERT INTO counter (id, last) VALUES (?, LAST_INSERT_ID(1)) \
     ON DUPLICATE KEY UPDATE last = LAST_INSERT_ID(last + 1)",
    "INSERT INTO items (seq, who) VALUES (?, ?)",
    "SELECT who FROM items WHERE seq = ?",
];

fn connect(url: &str) -> Conn {
    Conn::new(Opts::from_url(url).expect("a mysql:// URL")).expect("the node answers")
}

/// One round: the acknowledged numbers missing afterwards.
fn round(nodes: &[String], warm: bool) -> usize {
    let mut c = connect(&format!("{}/", nodes[0]));
    c.query_drop("DROP DATABASE IF EXISTS prepare_loss")
        .unwrap();
    c.query_drop("CREATE DATABASE prepare_loss").unwrap();
    c.query_drop("CREATE TABLE prepare_loss.counter (id INT PRIMARY KEY, last BIGINT NOT NULL)")
        .unwrap();
    c.query_drop(
        "CREATE TABLE prepare_loss.items (seq BIGINT PRIMARY KEY, who VARCHAR(20) NOT NULL)",
    )
    .unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let url = format!("{}/prepare_loss", nodes[w % nodes.len()]);
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut c = connect(&url);
                if warm {
                    for s in STATEMENTS {
                        c.prep(s).unwrap();
                    }
                }
                for i in 0..EACH {
                    let who = format!("c{w}-{i}");
                    loop {
                        let run = (|| -> mysql::Result<u64> {
                            c.query_drop("START TRANSACTION")?;
                            c.exec_drop(STATEMENTS[0], (1,))?;
                            let seq = c.last_insert_id();
                            c.exec_drop(STATEMENTS[1], (seq, &who))?;
                            let _: Vec<String> = c.exec(STATEMENTS[2], (seq,))?;
                            c.query_drop("COMMIT")?;
                            Ok(seq)
                        })();
                        match run {
                            Ok(seq) => {
                                acked.lock().unwrap().push((seq, who));
                                break;
                            }
                            Err(mysql::Error::MySqlError(e)) if e.code == 1213 => {
                                let _ = c.query_drop("ROLLBACK");
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in clients {
        t.join().unwrap();
    }
    c.query_drop("SET SESSION wsrep_sync_wait = 1").unwrap();
    let stored: HashSet<(u64, String)> = c
        .query("SELECT seq, who FROM prepare_loss.items")
        .unwrap()
        .into_iter()
        .collect();
    let acked = acked.lock().unwrap();
    acked.iter().filter(|a| !stored.contains(*a)).count()
}

fn main() {
    let urls = std::env::var("DSF_TEST_GALERA_URLS")
        .expect("set DSF_TEST_GALERA_URLS to the nodes' URLs (scripts/galera urls | paste -sd,)");
    let nodes: Vec<String> = urls
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .collect();
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(10, |n| n.parse().expect("rounds: a number"));
    for warm in [false, true] {
        let lost: Vec<usize> = (0..rounds).map(|_| round(&nodes, warm)).collect();
        println!(
            "{}: {} of {rounds} rounds lost an acknowledged commit ({} commits lost of {})",
            if warm { "warm" } else { "cold" },
            lost.iter().filter(|&&n| n > 0).count(),
            lost.iter().sum::<usize>(),
            rounds * CLIENTS * EACH
        );
    }
}
