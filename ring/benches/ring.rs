//! Lookup cost of the ring at the default size (100 nodes × 160 vnodes),
//! including the key's MD5, as `lb.resolve` pays it.
//!
//! `cargo bench -p dsf-ring --bench ring`
//!
//! Each case runs twice: `wall/…` with criterion's usual wall clock, and
//! `cpu/…` with the time this thread spent on a CPU (Linux
//! `/proc/thread-self/schedstat`), which on a shared, overloaded machine
//! measures the code rather than the other processes. That counter moves
//! in scheduler ticks (a few ms), so the `cpu` group takes flat 50 ms+
//! samples where a tick is a small, unbiased error.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use dsf_proto::cluster::{Load, NodeState, NodeView, View};
use dsf_ring::policy::{Policy, PolicyKind};
use dsf_ring::{key_position, BoundedLoad, Ring, RingConfig, NO_EXCLUDE};

fn view(n: usize) -> View {
    View {
        version: 1,
        nodes: (0..n)
            .map(|i| NodeView {
                id: format!("10.0.{}.{}:7000", i / 256, i % 256),
                addr: format!("10.0.{}.{}:7000", i / 256, i % 256),
                proxy_addr: None,
                weight: 1,
                state: NodeState::Up,
                // Uneven loads so bounded load does real work.
                load: Load {
                    conns: (i as u64 * 7) % 13,
                    ..Load::default()
                },
            })
            .collect(),
    }
}

fn keys() -> Vec<String> {
    (0..4096)
        .map(|i| format!("client-{i}.example:{}", 40000 + i))
        .collect()
}

/// On-CPU nanoseconds of the calling thread.
struct ThreadCpu;

fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("the cpu group needs Linux /proc/thread-self/schedstat");
    s.split_whitespace().next().unwrap().parse().unwrap()
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Same unit (ns) as the wall clock, so its formatter fits.
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn bench_wall(c: &mut Criterion) {
    cases(c, "wall");
}

fn bench_cpu(c: &mut Criterion<ThreadCpu>) {
    cases(c, "cpu");
}

fn cases<M: Measurement>(c: &mut Criterion<M>, clock: &str) {
    let v = view(100);
    let bounded = Ring::from_view(&v, RingConfig::default()).unwrap();
    let plain = Ring::from_view(
        &v,
        RingConfig {
            bound: BoundedLoad::Off,
            ..RingConfig::default()
        },
    )
    .unwrap();
    let ks = keys();
    let mut g = c.benchmark_group(format!("{clock}/ring_100x160"));
    if clock == "cpu" {
        g.sampling_mode(SamplingMode::Flat)
            .measurement_time(Duration::from_secs(8));
    }

    let mut i = 0;
    g.bench_function("key_md5_only", |b| {
        b.iter(|| {
            i = (i + 1) % ks.len();
            black_box(key_position(black_box(ks[i].as_bytes())))
        })
    });
    let mut i = 0;
    g.bench_function("route_md5_plain", |b| {
        b.iter(|| {
            i = (i + 1) % ks.len();
            black_box(
                plain
                    .route(black_box(ks[i].as_bytes()), NO_EXCLUDE)
                    .unwrap(),
            )
        })
    });
    let mut i = 0;
    g.bench_function("route_md5_bounded_1.25", |b| {
        b.iter(|| {
            i = (i + 1) % ks.len();
            black_box(
                bounded
                    .route(black_box(ks[i].as_bytes()), NO_EXCLUDE)
                    .unwrap(),
            )
        })
    });
    let policy = Policy::new(PolicyKind::Ring, bounded.clone());
    let exclude = ["10.0.0.3:7000", "10.0.0.42:7000"];
    let mut i = 0;
    g.bench_function("policy_ring_exclude_2", |b| {
        b.iter(|| {
            i = (i + 1) % ks.len();
            black_box(policy.pick(black_box(ks[i].as_bytes()), &exclude).unwrap());
        })
    });
    g.bench_function("build", |b| {
        b.iter_batched(
            || v.clone(),
            |v| Ring::from_view(&v, RingConfig::default()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(wall, bench_wall);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_cpu
}
criterion_main!(wall, cpu);
