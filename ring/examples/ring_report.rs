//! How evenly and how stably the ring spreads keys, beside the usual
//! alternatives, in one run on one machine.
//!
//! `cargo run --release -p dsf-ring --example ring_report [-- KEYS]`
//!
//! For n ∈ {3, 10, 100, 1000} nodes it hashes KEYS random keys (default
//! 1,000,000) and prints a Markdown table row per scheme:
//!
//! - `ring`: this crate's ring at vnodes ∈ {10, 40, 160, 640}, node ids
//!   `127.0.0.1:{7000+i}`, points at MD5(`"{id}#{i}"`);
//! - `c++ (orig)`: the original C++ design, 10 vnodes, node key the address
//!   and the replica index concatenated with no separator
//!   (`"127.0.0.1:7000" + "1"` = `"127.0.0.1:70001"`), same 8-byte MD5
//!   positions and sorted-vector lookup (its own memory layout is not
//!   reproduced, so its memory and lookup columns are ours);
//! - `jump`: jump consistent hash (Lamping & Veach) over the key's MD5;
//! - `maglev`: Maglev hashing with a 65537-entry table, offsets and skips
//!   from the MD5 of the node id.
//!
//! Columns: max/mean and min/mean keys per node, relative standard
//! deviation, the fraction of keys that move when a node is added (ideal
//! 1/(n+1)) and when the last node is removed (ideal 1/n), each also as a
//! ratio to its ideal, build time, heap held by the structure, lookup time
//! per key including the key's MD5, and, for the ring, the max/mean after
//! assigning every key one at a time with bounded load c = 1.25.

use std::hint::black_box;
use std::time::{Duration, Instant};

use dsf_proto::cluster::{Load, NodeState, NodeView};
use dsf_ring::{key_position, BoundedLoad, LoadCounter, Loads, Ring, RingConfig, NO_EXCLUDE};
use md5::{Digest, Md5};
use rand::{Rng, SeedableRng};

const NODE_COUNTS: [usize; 4] = [3, 10, 100, 1000];
const VNODES: [u32; 4] = [10, 40, 160, 640];
const MAGLEV_TABLE: usize = 65537;
const BOUND: f64 = 1.25;
/// Timings take the best of this many runs: the machine is shared.
const RUNS: usize = 3;

fn main() {
    let key_count: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("KEYS must be a number"))
        .unwrap_or(1_000_000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0d5f);
    let keys: Vec<String> = (0..key_count)
        .map(|_| format!("user-{:016x}", rng.gen::<u64>()))
        .collect();
    let positions: Vec<u64> = keys.iter().map(|k| key_position(k.as_bytes())).collect();

    let md5_ns = best_ns(keys.len(), || {
        for k in &keys {
            black_box(key_position(black_box(k.as_bytes())));
        }
    });
    let started = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "keys: {key_count}; MD5 of one key alone: {md5_ns:.0} ns; lookups: best of {RUNS}, \
         on-CPU time per key; builds: best of {RUNS}, wall time; load average at start: {}\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "| n | scheme | vnodes | max/mean | min/mean | σ/mean | moved on add (×ideal) | moved on remove (×ideal) | moved between others | build | memory | lookup | bounded c=1.25 max/mean |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");

    for &n in &NODE_COUNTS {
        for &v in &VNODES {
            ring_row(n, v, &keys, &positions);
        }
        legacy_row(n, &keys, &positions);
        jump_row(n, &keys, &positions);
        maglev_row(n, &keys, &positions);
    }
    println!("\ntotal run time: {:.1} s", started.elapsed().as_secs_f64());
}

// --- common measurements ---

struct Row {
    /// Node of every key (global node numbers), then after adding node
    /// `n` and after removing node `n - 1`.
    base: Vec<u32>,
    grown: Vec<u32>,
    shrunk: Vec<u32>,
    build: Duration,
    memory: usize,
    lookup_ns: f64,
    bounded: Option<f64>,
}

fn print_row(n: usize, scheme: &str, vnodes: &str, r: &Row) {
    let counts = counts(&r.base, n);
    let (moved_add, moved_remove, churn) = movement(n, &r.base, &r.grown, &r.shrunk);
    let mean = counts.iter().sum::<u64>() as f64 / n as f64;
    let max = *counts.iter().max().unwrap() as f64;
    let min = *counts.iter().min().unwrap() as f64;
    let var = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    let ideal_add = 1.0 / (n + 1) as f64;
    let ideal_remove = 1.0 / n as f64;
    println!(
        "| {n} | {scheme} | {vnodes} | {:.3} | {:.3} | {:.3} | {:.4} ({:.2}×) | {:.4} ({:.2}×) | {:.4} | {} | {} | {:.0} ns | {} |",
        max / mean,
        min / mean,
        var.sqrt() / mean,
        moved_add,
        moved_add / ideal_add,
        moved_remove,
        moved_remove / ideal_remove,
        churn,
        fmt_duration(r.build),
        fmt_bytes(r.memory),
        r.lookup_ns,
        r.bounded.map_or("—".to_string(), |b| format!("{b:.3}")),
    );
}

fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

fn fmt_bytes(b: usize) -> String {
    if b < 1024 {
        format!("{b} B")
    } else if b < 1024 * 1024 {
        format!("{:.0} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    }
}

/// Best time per item of `RUNS` runs of `f` over `items` items, in ns of
/// this thread's time on a CPU: on a shared machine wall time mostly
/// measures the other processes.
fn best_ns(items: usize, mut f: impl FnMut()) -> f64 {
    (0..RUNS)
        .map(|_| {
            let (cpu, wall) = (thread_cpu_ns(), Instant::now());
            f();
            let ns = match (cpu, thread_cpu_ns()) {
                (Some(a), Some(b)) => (b - a) as f64,
                _ => wall.elapsed().as_secs_f64() * 1e9,
            };
            ns / items as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Nanoseconds this thread has run on a CPU (Linux; first field of
/// `/proc/thread-self/schedstat`, updated at least every scheduler tick,
/// so use it over runs of many milliseconds).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Best build time of `RUNS` builds, and the last build.
fn best_build<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        let built = f();
        best = best.min(t.elapsed());
        out = Some(built);
    }
    (best, out.unwrap())
}

/// Fraction of keys whose node (as a global node number) differs.
fn moved(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

/// Fraction of keys that moved from one surviving node to another when
/// node `changed` was added (`after`) or removed (`before`): the ideal is 0.
fn churn(before: &[u32], grown: &[u32], shrunk: &[u32], added: u32, removed: u32) -> f64 {
    let add = before
        .iter()
        .zip(grown)
        .filter(|(x, y)| x != y && **y != added)
        .count();
    let remove = before
        .iter()
        .zip(shrunk)
        .filter(|(x, y)| x != y && **x != removed)
        .count();
    (add + remove) as f64 / before.len() as f64
}

/// The row's movement figures from the owners before, after adding node
/// `n` and after removing node `n - 1`.
fn movement(n: usize, before: &[u32], grown: &[u32], shrunk: &[u32]) -> (f64, f64, f64) {
    (
        moved(before, grown),
        moved(before, shrunk),
        churn(before, grown, shrunk, n as u32, n as u32 - 1),
    )
}

fn counts(owners: &[u32], n: usize) -> Vec<u64> {
    let mut c = vec![0u64; n];
    for &o in owners {
        c[o as usize] += 1;
    }
    c
}

fn addr(i: usize) -> String {
    format!("127.0.0.1:{}", 7000 + i)
}

// --- this crate's ring ---

fn view_nodes(n: usize) -> Vec<NodeView> {
    (0..n)
        .map(|i| NodeView {
            id: addr(i),
            addr: addr(i),
            proxy_addr: None,
            weight: 1,
            state: NodeState::Up,
            load: Load::default(),
        })
        .collect()
}

/// Owner of every key as a global node number (the `i` of `addr(i)`):
/// ring indices follow id order, which differs between node sets.
fn ring_owners(ring: &Ring, positions: &[u64]) -> Vec<u32> {
    let global: Vec<u32> = ring
        .nodes()
        .iter()
        .map(|n| n.id.rsplit(':').next().unwrap().parse::<u32>().unwrap() - 7000)
        .collect();
    positions
        .iter()
        .map(|&p| global[ring.owner(p).unwrap()])
        .collect()
}

fn ring_row(n: usize, vnodes: u32, keys: &[String], positions: &[u64]) {
    let config = RingConfig {
        vnodes,
        bound: BoundedLoad::Off,
    };
    let nodes = view_nodes(n + 1);
    let (build, ring) = best_build(|| Ring::build(1, &nodes[..n], config).unwrap());
    let grown = Ring::build(2, &nodes, config).unwrap();
    let shrunk = Ring::build(3, &nodes[..n - 1], config).unwrap();
    let base = ring_owners(&ring, positions);
    let lookup_ns = best_ns(keys.len(), || {
        for k in keys {
            black_box(ring.route(black_box(k.as_bytes()), NO_EXCLUDE).unwrap());
        }
    });

    // Bounded load, caller-side counts: assign every key in turn.
    let bounded_ring = Ring::build(
        4,
        &nodes[..n],
        RingConfig {
            vnodes,
            bound: BoundedLoad::Factor(BOUND),
        },
    )
    .unwrap();
    let mut counter = LoadCounter::new(&bounded_ring);
    for &p in positions {
        let cap = BoundedLoad::Factor(BOUND).cap(counter.total(), n);
        let idx = bounded_ring
            .route_position(p, NO_EXCLUDE, &counter)
            .unwrap();
        counter.add(idx);
        assert!(counter.loads()[idx] <= cap, "bounded load exceeded its cap");
    }
    let mean = positions.len() as f64 / n as f64;
    let bounded = *counter.loads().iter().max().unwrap() as f64 / mean;

    print_row(
        n,
        "ring",
        &vnodes.to_string(),
        &Row {
            base,
            grown: ring_owners(&grown, positions),
            shrunk: ring_owners(&shrunk, positions),
            build,
            memory: ring.heap_bytes(),
            lookup_ns,
            bounded: Some(bounded),
        },
    );
}

// --- the original C++ ring ---

struct Legacy {
    positions: Vec<u64>,
    owners: Vec<u32>,
}

impl Legacy {
    const VNODES: usize = 10;

    fn build(n: usize) -> Legacy {
        let mut pairs: Vec<(u64, u32)> = (0..n)
            .flat_map(|i| {
                (0..Self::VNODES).map(move |r| {
                    // No separator: "127.0.0.1:7000" + "1".
                    (
                        key_position(format!("{}{}", addr(i), r).as_bytes()),
                        i as u32,
                    )
                })
            })
            .collect();
        pairs.sort_unstable();
        let (positions, owners) = pairs.into_iter().unzip();
        Legacy { positions, owners }
    }

    fn owner(&self, pos: u64) -> u32 {
        let j = self.positions.partition_point(|&p| p < pos);
        self.owners[if j == self.positions.len() { 0 } else { j }]
    }

    fn heap_bytes(&self) -> usize {
        self.positions.capacity() * 8 + self.owners.capacity() * 4
    }
}

fn legacy_row(n: usize, keys: &[String], positions: &[u64]) {
    let (build, ring) = best_build(|| Legacy::build(n));
    let grown = Legacy::build(n + 1);
    let shrunk = Legacy::build(n - 1);
    let base: Vec<u32> = positions.iter().map(|&p| ring.owner(p)).collect();
    let lookup_ns = best_ns(keys.len(), || {
        for k in keys {
            black_box(ring.owner(key_position(black_box(k.as_bytes()))));
        }
    });
    print_row(
        n,
        "c++ (orig)",
        "10",
        &Row {
            base,
            grown: positions.iter().map(|&p| grown.owner(p)).collect(),
            shrunk: positions.iter().map(|&p| shrunk.owner(p)).collect(),
            build,
            memory: ring.heap_bytes(),
            lookup_ns,
            bounded: None,
        },
    );
}

// --- jump consistent hash ---

/// Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm".
fn jump(mut key: u64, buckets: usize) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

fn jump_row(n: usize, keys: &[String], positions: &[u64]) {
    let base: Vec<u32> = positions.iter().map(|&p| jump(p, n)).collect();
    let lookup_ns = best_ns(keys.len(), || {
        for k in keys {
            black_box(jump(key_position(black_box(k.as_bytes())), n));
        }
    });
    print_row(
        n,
        "jump",
        "—",
        &Row {
            base,
            grown: positions.iter().map(|&p| jump(p, n + 1)).collect(),
            // Jump can only remove the last bucket.
            shrunk: positions.iter().map(|&p| jump(p, n - 1)).collect(),
            build: Duration::ZERO,
            memory: 0,
            lookup_ns,
            bounded: None,
        },
    );
}

// --- Maglev ---

struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
    /// Balancer", §3.4: each node fills its preferred free slots in turn.
    fn build(nodes: &[usize]) -> Maglev {
        let m = MAGLEV_TABLE as u64;
        let prefs: Vec<(u64, u64)> = nodes
            .iter()
            .map(|&i| {
                let d = Md5::digest(addr(i).as_bytes());
                let h1 = u64::from_be_bytes(d[..8].try_into().unwrap());
                let h2 = u64::from_be_bytes(d[8..].try_into().unwrap());
                (h1 % m, h2 % (m - 1) + 1)
            })
            .collect();
        let mut next = vec![0u64; nodes.len()];
        let mut table = vec![u32::MAX; MAGLEV_TABLE];
        let mut filled = 0;
        'fill: loop {
            for (k, &(offset, skip)) in prefs.iter().enumerate() {
                let mut c = (offset + next[k] * skip) % m;
                while table[c as usize] != u32::MAX {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m;
                }
                table[c as usize] = nodes[k] as u32;
                next[k] += 1;
                filled += 1;
                if filled == MAGLEV_TABLE {
                    break 'fill;
                }
            }
        }
        Maglev { table }
    }

    fn owner(&self, pos: u64) -> u32 {
        self.table[(pos % MAGLEV_TABLE as u64) as usize]
    }
}

fn maglev_row(n: usize, keys: &[String], positions: &[u64]) {
    let all: Vec<usize> = (0..=n).collect();
    let (build, table) = best_build(|| Maglev::build(&all[..n]));
    let grown = Maglev::build(&all);
    let shrunk = Maglev::build(&all[..n - 1]);
    let base: Vec<u32> = positions.iter().map(|&p| table.owner(p)).collect();
    let lookup_ns = best_ns(keys.len(), || {
        for k in keys {
            black_box(table.owner(key_position(black_box(k.as_bytes()))));
        }
    });
    print_row(
        n,
        "maglev",
        "65537",
        &Row {
            base,
            grown: positions.iter().map(|&p| grown.owner(p)).collect(),
            shrunk: positions.iter().map(|&p| shrunk.owner(p)).collect(),
            build,
            memory: table.table.capacity() * 4,
            lookup_ns,
            bounded: None,
        },
    );
}
