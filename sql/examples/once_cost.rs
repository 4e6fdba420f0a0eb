//! What the run-once record costs a write: `blacklist.add` on its own (one
//! autocommitted `INSERT`) against the same add inside
//! [`dsf_sql::Writes::run_once`] (its transaction and its record), on one
//! pool of one MariaDB, with 1 and 16 threads. Rounds alternate the two, so
//! that both see the same machine; each prints adds/s and the ratio.
//!
//! ```text
//! scripts/mariadb start
//! DSF_TEST_DB_URL=$(scripts/mariadb url) cargo run --release -p dsf-sql --example once_cost [SECONDS] [ROUNDS]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dsf_sql::{testing, Db, NewEntry};

/// One add of a fresh id card; `once` wraps it in its run-once record.
fn add(db: &Db, n: u64, once: bool) {
    let id = format!("C{n:010}");
    let new = NewEntry {
        id_card: &id,
        name: "Li",
        reason: None,
    };
    if !once {
        db.blacklist().add(&new, "bench").unwrap();
        return;
    }
    let nonce = format!("{n:016x}");
    let ran = db
        .writes()
        .run_once("bench", &nonce, "blacklist.add", || {
            match db.blacklist().add(&new, "bench") {
                Ok(e) => (true, format!("{{\"id_card\":\"{}\"}}", e.id_card), false),
                Err(e) => (false, e.to_string(), true),
            }
        })
        .unwrap();
    assert!(matches!(
        ran,
        dsf_sql::Once::Ran(dsf_sql::Stored { ok: true, .. })
    ));
}

/// Adds/s with `threads` threads for `secs`.
fn rate(db: &Db, next: &AtomicU64, threads: usize, secs: Duration, once: bool) -> f64 {
    let done = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while start.elapsed() < secs {
                    add(db, next.fetch_add(1, Ordering::Relaxed), once);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs = Duration::from_secs(args.next().map_or(5, |a| a.parse().expect("SECONDS")));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));
    let db = testing::fresh();
    let next = AtomicU64::new(0);
    let flush: Option<(String, String)> = db
        .with_conn("bench", |c| {
            use mysql::prelude::Queryable;
            c.query_first("SHOW VARIABLES LIKE 'innodb_flush_log_at_trx_commit'")
        })
        .unwrap();
    println!(
        "# blacklist.add without and with its run-once record, {secs:?} a round, {} cores; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        flush.map_or(String::new(), |(k, v)| format!("{k}={v}"))
    );
    println!("threads\tround\twithout/s\twith/s\twith/without");
    for threads in [1, 16] {
        // A warm-up of each, not printed.
        rate(&db, &next, threads, Duration::from_secs(1), false);
        rate(&db, &next, threads, Duration::from_secs(1), true);
        for round in 1..=rounds {
            // Alternate which goes first.
            let (without, with) = if round % 2 == 1 {
                let w = rate(&db, &next, threads, secs, false);
                (w, rate(&db, &next, threads, secs, true))
            } else {
                let o = rate(&db, &next, threads, secs, true);
                (rate(&db, &next, threads, secs, false), o)
            };
            println!(
                "{threads}\t{round}\t{without:.0}\t{with:.0}\t{:.2}",
                with / without
            );
        }
    }
    let shared = db.writes().shared_commits();
    println!(
        "# writes committed together across threads: {} in {} shared commits ({} failed, {} merged)",
        shared.writes, shared.commits, shared.failed, shared.merged
    );
}
