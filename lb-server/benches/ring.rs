//! Lookup cost of the ring at the default size (100 nodes × 160 vnodes),
//! including the key's MD5, as `lb.resolve` pays it.
//!
//! `cargo bench -p lb-server --bench ring`

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use dsf_common::view::{Load, NodeState, NodeView, View};
use lb_server::policy::{Policy, PolicyKind};
use lb_server::ring::{key_position, BoundedLoad, Ring, RingConfig, NO_EXCLUDE};

fn view(n: usize) -> View {
    View {
        version: 1,
        nodes: (0..n)
            .map(|i| NodeView {
                id: format!("10.0.{}.{}:7000", i / 256, i % 256),
                addr: format!("10.0.{}.{}:7000", i / 256, i % 256),
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

fn bench(c: &mut Criterion) {
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
    let mut g = c.benchmark_group("ring_100x160");

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

criterion_group!(benches, bench);
criterion_main!(benches);
