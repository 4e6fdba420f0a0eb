//! The baseline of the `gate.check` benchmark: the same two statements the
//! handler runs (the blacklist lookup and the audit insert), issued through
//! the raw `mysql` crate from N threads, each on its own connection, with no
//! wire, no JSON and no validation in between.
//!
//! ```text
//! cargo run --release -p app-server --example raw_gate -- URL THREADS SECONDS KEYS
//! ```
//! Prints one JSON line: `{"threads","checks","rps","p50_ms","p99_ms"}`.
//! A fifth argument `ping` adds a `COM_PING` before each statement, which is
//! what taking a connection from `dsf-sql`'s pool costs (its health check),
//! to show how much of the gap to the app server that accounts for.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mysql::prelude::Queryable;

type Row = (String, String, Option<String>, String, i64, String, i64);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(5..=6).contains(&args.len()) {
        eprintln!("usage: raw_gate URL THREADS SECONDS KEYS [ping]");
        std::process::exit(2);
    }
    let url = &args[1];
    let threads: usize = args[2].parse().expect("THREADS");
    let secs: u64 = args[3].parse().expect("SECONDS");
    let keys: u64 = args[4].parse().expect("KEYS");
    let ping = args.get(5).is_some_and(|a| a == "ping");
    let opts = mysql::Opts::from_url(url).expect("a mysql:// URL");
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let results: Vec<(u64, Histogram<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let opts = opts.clone();
                s.spawn(move || {
                    let mut conn = mysql::Conn::new(opts).expect("connect");
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    let mut n = 0u64;
                    let mut k = t as u64;
                    while Instant::now() < until {
                        k = (k + 7919) % keys;
                        let id_card = format!("{k:018}");
                        let name = format!("bench-{k}");
                        let t0 = Instant::now();
                        if ping {
                            conn.ping().expect("ping");
                        }
                        let row: Option<Row> = conn
                            .exec_first(
                                "SELECT id_card, name, reason, created_by, created_at, updated_by, updated_at \
                                 FROM blacklist WHERE id_card = ?",
                                (&id_card,),
                            )
                            .expect("lookup");
                        if ping {
                            conn.ping().expect("ping");
                        }
                        conn.exec_drop(
                            "INSERT INTO gate_checks (id_card, name, gate, node, hit, checked_at) \
                             VALUES (?, ?, ?, ?, ?, ?)",
                            (&id_card, &name, "bench", "raw", row.is_some(), dsf_sql::now_ms()),
                        )
                        .expect("insert");
                        let _ = conn.last_insert_id();
                        hist.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                        n += 1;
                    }
                    (n, hist)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut checks = 0;
    for (n, h) in results {
        checks += n;
        all.add(h).unwrap();
    }
    println!(
        "{{\"threads\":{threads},\"checks\":{checks},\"rps\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        checks as f64 / elapsed,
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0
    );
}
