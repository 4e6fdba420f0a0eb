//! What a server pays per request on the wire: decode a 200-byte signed
//! request from a frame, verify its HMAC-MD5, parse the envelope, check the
//! replay guard — and, in the same run, the peers it is measured against.
//!
//! `cargo bench -p dsf-common --bench wire`
//!
//! Groups:
//! - `wire/admit`: the whole path, `FrameDecoder::push` + `next_frame` +
//!   `Admission::admit_at`, each iteration a fresh nonce (so the replay guard
//!   really inserts). The guard is sized to 1 Mi nonces and only forgets by
//!   capacity in the bench, as under sustained load.
//! - `wire/parts`: the same path taken apart: framing alone, `Request::parse`
//!   alone, parse + verify (no guard), and the guard's `admit` alone.
//! - `peer`: `serde_json::from_slice::<Value>` of the same payload, a bare
//!   HMAC-MD5 of it (`hmac` + `md-5`), and the two together.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dsf_common::wire::frame::HEADER_LEN;
use dsf_common::wire::{Admission, AppKeys, FrameDecoder, Key, ReplayGuard, Request};
use hmac::{Hmac, Mac};
use support::{framed_request, NOW, SECRET};

mod support;

/// Nonces the guard remembers: enough that a criterion run never evicts for
/// long, as on a server whose window holds a minute of traffic.
const GUARD_CAPACITY: usize = 1 << 20;

fn admission() -> Admission {
    let mut keys = AppKeys::new();
    keys.insert("gate", SECRET);
    Admission::new(
        keys,
        ReplayGuard::new(Duration::from_secs(60), GUARD_CAPACITY),
    )
}

/// Frames with distinct nonces, cycled through; more than the guard holds
/// would make it evict, fewer would make later rounds replays, so each
/// round of the bench gets a fresh admission (see `iter_batched`).
fn frames(key: &Key, count: u64) -> Vec<Vec<u8>> {
    (0..count).map(|n| framed_request(key, n, 200)).collect()
}

fn bench_admit(c: &mut Criterion) {
    let key = Key::new(SECRET);
    const BATCH: u64 = 100_000;
    let batch = frames(&key, BATCH);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    // Per op: one frame through decode, verify, parse and the guard.
    g.bench_function("admit/decode+verify+parse+guard/200B", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH);
                let adm = admission();
                let mut dec = FrameDecoder::new(dsf_common::wire::DEFAULT_MAX_FRAME);
                let start = std::time::Instant::now();
                for f in &batch[..n as usize] {
                    dec.push(f);
                    let payload = dec.next_frame().unwrap().unwrap();
                    let admitted = adm.admit_at(payload, NOW).unwrap();
                    black_box(&admitted);
                }
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });
    g.finish();
}

fn bench_parts(c: &mut Criterion) {
    let key = Key::new(SECRET);
    let frame = framed_request(&key, 1, 200);
    let payload = &frame[HEADER_LEN..];
    let mut g = c.benchmark_group("wire/parts");
    g.throughput(Throughput::Elements(1));
    g.bench_function("frame_decode", |b| {
        let mut dec = FrameDecoder::new(dsf_common::wire::DEFAULT_MAX_FRAME);
        b.iter(|| {
            dec.push(black_box(&frame));
            black_box(dec.next_frame().unwrap().unwrap().len())
        })
    });
    g.bench_function("parse", |b| {
        b.iter(|| black_box(Request::parse(black_box(payload)).unwrap()))
    });
    g.bench_function("parse+verify", |b| {
        b.iter(|| {
            let req = Request::parse(black_box(payload)).unwrap();
            key.verify_request(&req.signed_fields(), &req.sig).unwrap();
            black_box(req)
        })
    });
    g.bench_function("guard_admit", |b| {
        b.iter_custom(|iters| {
            let nonces: Vec<String> = (0..iters.min(1 << 20))
                .map(|n| format!("{n:016x}"))
                .collect();
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(nonces.len() as u64);
                let mut guard = ReplayGuard::new(Duration::from_secs(60), GUARD_CAPACITY);
                let start = std::time::Instant::now();
                for nonce in &nonces[..n as usize] {
                    guard.admit("gate", nonce, NOW, NOW).unwrap();
                }
                total += start.elapsed();
                black_box(&guard);
                left -= n;
            }
            total
        })
    });
    g.finish();
}

fn bench_peer(c: &mut Criterion) {
    let key = Key::new(SECRET);
    let frame = framed_request(&key, 1, 200);
    let payload = &frame[HEADER_LEN..];
    let mac = Hmac::<md5::Md5>::new_from_slice(SECRET).unwrap();
    let mut g = c.benchmark_group("peer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("serde_json_value", |b| {
        b.iter(|| {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(payload)).unwrap())
        })
    });
    g.bench_function("hmac_md5_prekeyed", |b| {
        b.iter(|| {
            let mut m = mac.clone();
            m.update(black_box(payload));
            black_box(m.finalize().into_bytes())
        })
    });
    g.bench_function("serde_json_value+hmac_md5", |b| {
        b.iter(|| {
            let v = serde_json::from_slice::<serde_json::Value>(black_box(payload)).unwrap();
            let mut m = mac.clone();
            m.update(payload);
            black_box((v, m.finalize().into_bytes()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_admit, bench_parts, bench_peer);
criterion_main!(benches);
