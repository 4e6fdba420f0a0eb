//! An app server's whole wire path for one request, on one core: decode the
//! frame, parse the envelope, verify its HMAC-MD5, check the replay guard,
//! find the type's route in a pipeline's route table, then encode and sign
//! the reply. What is left out is the layers, the handler and the sockets.
//!
//! ```text
//! cargo bench -p app-server --bench request
//! ```
//!
//! Two requests: `sys.ping` as `client bench --op ping` sends it (body `{}`),
//! and a 200-byte `gate.check` answered `{"allowed":true}`.
//!
//! The replay guard starts full, as on a server under sustained load: its
//! default 1 Mi nonces per app held, so each request also forgets the
//! oldest (at 300,000 requests/s a minute's window is far more than that).
//! A guard this size lives in main memory, not in the caches, and its
//! misses are part of the price; an empty guard would hide them.
//!
//! The same loop runs a fixed number of times for callgrind's instruction
//! counts, which a shared machine cannot skew:
//!
//! ```text
//! cargo bench -p app-server --bench request --no-run
//! valgrind --tool=callgrind --toggle-collect='request::round' \
//!     target/release/deps/request-<hash> count ping 20000
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use dsf_common::pipeline::{Pipeline, Route};
use dsf_common::wire::envelope::{encode_request_at, OutgoingRequest};
use dsf_common::wire::{Admission, AppKeys, FrameDecoder, Key, ReplayGuard};

const SECRET: &[u8] = b"bench-secret";

/// Requests signed at a time, outside the clock.
const BATCH: usize = 100_000;

struct Case {
    name: &'static str,
    kind: &'static str,
    body: &'static str,
    reply: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "ping",
        kind: "sys.ping",
        body: "{}",
        reply: "{}",
    },
    Case {
        name: "gate.check/200B",
        kind: "gate.check",
        body: "{\"id_card\":\"110101199003077777\",\"name\":\"Lxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
        reply: "{\"allowed\":true}",
    },
];

/// `n` requests of `case`, signed now, with nonces from `first` on (never
/// one the guard has seen).
fn frames(case: &Case, first: u64, n: usize) -> Vec<Vec<u8>> {
    let key = Key::new(SECRET);
    let now = dsf_common::wire::envelope::now_ms();
    (first..first + n as u64)
        .map(|i| {
            let req = OutgoingRequest {
                id: i + 1,
                kind: case.kind,
                app: "bench",
                token: None,
                body: case.body,
            };
            let mut out = Vec::new();
            encode_request_at(&key, &req, now, &format!("{i:016x}"), &mut out);
            out
        })
        .collect()
}

struct Server {
    admission: Admission,
    routes: Arc<Pipeline<()>>,
}

/// A server whose guard is full: the default capacity of nonces, a moment
/// older than the requests to come, already remembered.
fn server() -> Server {
    let mut guard = ReplayGuard::default();
    let now = dsf_common::wire::envelope::now_ms();
    let mut nonce = String::with_capacity(20);
    for n in 0..dsf_common::wire::replay::DEFAULT_CAPACITY as u64 {
        use std::fmt::Write;
        nonce.clear();
        write!(nonce, "f{n:019x}").unwrap();
        guard.admit("bench", &nonce, now - 1, now).unwrap();
    }
    let mut keys = AppKeys::new();
    keys.insert("bench", SECRET);
    Server {
        admission: Admission::new(keys, guard),
        // The route table of a pipeline serving the app server's types
        // (the handlers are not run here).
        routes: Pipeline::builder()
            .routes(
                "bench",
                [
                    Route::unary::<dsf_proto::sys::Ping>(|_, _| unreachable!()),
                    Route::unary::<dsf_proto::gate::Check>(|_, _| unreachable!()),
                    Route::unary::<dsf_proto::blacklist::Add>(|_, _| unreachable!()),
                    Route::unary::<dsf_proto::task::Submit>(|_, _| unreachable!()),
                ],
            )
            .build((), AppKeys::new())
            .expect("a pipeline of four routes"),
    }
}

/// One round over `frames`: what the reactor does for each, as the server
/// does it, with the replies written to one buffer per turn.
#[inline(never)]
fn round(s: &Server, frames: &[Vec<u8>], reply: &str, out: &mut Vec<u8>) {
    let mut dec = FrameDecoder::new(dsf_common::wire::DEFAULT_MAX_FRAME);
    for f in frames {
        dec.push(f);
        let payload = dec.next_frame().unwrap().unwrap();
        let admitted = s
            .admission
            .admit_with(payload, |_| false)
            .unwrap_or_else(|r| panic!("refused: {}", r.rejection.error));
        let route = s.routes.route_of(&admitted.request.kind, Some(0)).unwrap();
        black_box(route);
        admitted.ok(reply, out);
        if out.len() > 64 << 10 {
            black_box(&out);
            out.clear();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("count") {
        let which = args.get(1).map(String::as_str).unwrap_or("ping");
        let n: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(20_000);
        let case = CASES
            .iter()
            .find(|c| c.name.starts_with(which))
            .expect("ping or gate");
        let (s, frames) = (server(), frames(case, 0, n));
        let mut out = Vec::with_capacity(80 << 10);
        round(&s, &frames, case.reply, &mut out);
        return;
    }
    let mut crit = Criterion::default().configure_from_args();
    let mut g = crit.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    for case in CASES {
        // One server for the whole run: its guard stays full.
        let s = server();
        let mut next = 0u64;
        g.bench_function(case.name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                let mut out = Vec::with_capacity(80 << 10);
                while left > 0 {
                    let n = left.min(BATCH);
                    let batch = frames(case, next, n);
                    next += n as u64;
                    let start = Instant::now();
                    round(&s, &batch, case.reply, &mut out);
                    total += start.elapsed();
                    left -= n;
                }
                total
            })
        });
    }
    g.finish();
    crit.final_summary();
}
