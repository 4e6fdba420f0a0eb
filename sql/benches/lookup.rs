//! Point lookup of a blacklist entry by id card: through the repository
//! (`db.blacklist().get`) against the same prepared query through the raw
//! `mysql` crate on the same pool, with 1 and 16 threads.
//!
//! Needs a MariaDB: `scripts/mariadb start` then
//! `DSF_TEST_DB_URL=$(scripts/mariadb url) cargo bench -p dsf-sql --bench lookup`.
//! With N threads, the figure is wall time / lookups, i.e. 1 / throughput.

use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use dsf_sql::{testing, Db};
use mysql::prelude::Queryable;

const ENTRIES: usize = 10_000;
const THREADS: [usize; 2] = [1, 16];

type Row = (String, String, Option<String>, String, i64, String, i64);

fn seed(db: &Db) -> Vec<String> {
    let ids: Vec<String> = (0..ENTRIES).map(|i| format!("B{i:08}")).collect();
    let mut conn = db.pool().get_conn().unwrap();
    let mut tx = conn.start_transaction(mysql::TxOpts::default()).unwrap();
    tx.exec_batch(
        "INSERT INTO blacklist (id_card, name, reason, created_by, created_at, updated_by, updated_at) \
         VALUES (?, ?, 'bench', 'bench', 0, 'bench', 0)",
        ids.iter().map(|id| (id, format!("name of {id}"))),
    )
    .unwrap();
    tx.commit().unwrap();
    ids
}

fn repo_get(db: &Db, id: &str) {
    let e = db.blacklist().get(id).unwrap();
    assert!(e.is_some());
}

fn raw_get(db: &Db, id: &str) {
    let mut conn = db.pool().get_conn().unwrap();
    let row: Option<Row> = conn
        .exec_first(
            "SELECT id_card, name, reason, created_by, created_at, updated_by, updated_at \
             FROM blacklist WHERE id_card = ?",
            (id,),
        )
        .unwrap();
    assert!(row.is_some());
}

/// Runs `iters` lookups spread over `threads` threads; returns wall time.
fn run(db: &Db, ids: &[String], threads: usize, iters: u64, f: fn(&Db, &str)) -> Duration {
    let per_thread = (iters as usize).div_ceil(threads);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..per_thread {
                    // A different stride per thread spreads the keys.
                    let k = (t * 7919 + i * 104_729) % ids.len();
                    f(db, &ids[k]);
                }
            });
        }
    });
    start.elapsed()
}

fn lookup(c: &mut Criterion) {
    let t = testing::fresh();
    let mut cfg = t.config();
    cfg.workers = 16;
    let db = Db::connect(&cfg).unwrap();
    let ids = seed(&db);

    let mut group = c.benchmark_group("blacklist_get");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for threads in THREADS {
        // Interleave the two variants so drift on a shared machine hits both.
        group.bench_with_input(BenchmarkId::new("raw", threads), &threads, |b, &n| {
            b.iter_custom(|iters| run(&db, &ids, n, iters, raw_get))
        });
        group.bench_with_input(
            BenchmarkId::new("repository", threads),
            &threads,
            |b, &n| b.iter_custom(|iters| run(&db, &ids, n, iters, repo_get)),
        );
    }
    group.finish();
    drop(db);
    drop(t);
}

/// Paired comparison, robust to a shared, noisy machine: rounds alternate
/// raw and repository blocks of the same size back to back, and the median
/// of the per-round ratios is reported next to criterion's figures.
fn paired() {
    const ROUNDS: usize = 21;
    let t = testing::fresh();
    let mut cfg = t.config();
    cfg.workers = 16;
    let db = Db::connect(&cfg).unwrap();
    let ids = seed(&db);
    for threads in THREADS {
        let block = 2_000 * threads as u64;
        run(&db, &ids, threads, block, raw_get); // warm both paths
        run(&db, &ids, threads, block, repo_get);
        let (mut raw_total, mut repo_total) = (Duration::ZERO, Duration::ZERO);
        let mut ratios = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            let (raw, repo) = if round % 2 == 0 {
                let raw = run(&db, &ids, threads, block, raw_get);
                (raw, run(&db, &ids, threads, block, repo_get))
            } else {
                let repo = run(&db, &ids, threads, block, repo_get);
                (run(&db, &ids, threads, block, raw_get), repo)
            };
            raw_total += raw;
            repo_total += repo;
            ratios.push(repo.as_secs_f64() / raw.as_secs_f64());
        }
        ratios.sort_by(f64::total_cmp);
        let n = (ROUNDS as u64) * block;
        println!(
            "paired/{threads:>2} threads: raw {:.1} µs/lookup, repository {:.1} µs/lookup, \
             median ratio repository/raw {:.3} (rounds {ROUNDS}, {block} lookups each)",
            raw_total.as_secs_f64() * 1e6 / n as f64,
            repo_total.as_secs_f64() * 1e6 / n as f64,
            ratios[ROUNDS / 2],
        );
    }
}

criterion_group!(benches, lookup);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` runs bench binaries in test mode: skip the
    // long paired run there.
    if !std::env::args().any(|a| a == "--test") {
        paired();
    }
}
