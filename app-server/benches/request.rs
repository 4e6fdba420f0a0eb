//! An app server's whole wire path for one request, on one core: decode the
//! frame, parse the envelope, verify its HMAC-MD5, check the replay guard,
//! route the type through the real route table, then encode and sign the
//! reply. What is left out is the handler and the sockets.
//!
//! ```text
//! cargo bench -p app-server --bench request
//! ```
//!
//! Two requests: `sys.ping` as `client bench --op ping` sends it (body `{}`),
//! and a 200-byte `gate.check` answered `{"allowed":true}`.
//!
//! The same loop runs a fixed number of times for callgrind's instruction
//! counts, which a shared machine cannot skew:
//!
//! ```text
//! cargo bench -p app-server --bench request --no-run
//! valgrind --tool=callgrind --toggle-collect='request::round' \
//!     target/release/deps/request-<hash> count ping 20000
//! ```

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use app_server::controller::Route;
use criterion::{Criterion, Throughput};
use dsf_common::wire::envelope::{encode_request_at, OutgoingRequest};
use dsf_common::wire::{Admission, AppKeys, FrameDecoder, Key, ReplayGuard};

const SECRET: &[u8] = b"bench-secret";
/// Nonces the guard holds: a criterion round never evicts.
const GUARD: usize = 1 << 20;
/// Requests per fresh admission, so every nonce is new to its guard.
const BATCH: usize = 100_000;

struct Case {
    name: &'static str,
    frames: Vec<Vec<u8>>,
    reply: &'static str,
}

fn case(name: &'static str, kind: &str, body: &str, reply: &'static str) -> Case {
    let key = Key::new(SECRET);
    let now = dsf_common::wire::envelope::now_ms();
    let frames = (0..BATCH as u64)
        .map(|n| {
            let req = OutgoingRequest {
                id: n + 1,
                kind,
                app: "bench",
                token: None,
                body,
            };
            let mut out = Vec::new();
            encode_request_at(&key, &req, now, &format!("{n:016x}"), &mut out);
            out
        })
        .collect();
    Case {
        name,
        frames,
        reply,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("ping", "sys.ping", "{}", "{}"),
        case(
            "gate.check/200B",
            "gate.check",
            "{\"id_card\":\"110101199003077777\",\"name\":\"Lxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
            "{\"allowed\":true}",
        ),
    ]
}

struct Server {
    admission: Admission,
    routes: HashMap<&'static str, &'static Route, foldhash::fast::RandomState>,
}

fn server() -> Server {
    let mut keys = AppKeys::new();
    keys.insert("bench", SECRET);
    Server {
        admission: Admission::new(keys, ReplayGuard::new(Duration::from_secs(60), GUARD)),
        routes: app_server::handlers::routes()
            .map(|r| (r.kind, r))
            .collect(),
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
        let route = s.routes.get(admitted.request.kind.as_str()).unwrap();
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
        let c = cases()
            .into_iter()
            .find(|c| c.name.starts_with(which))
            .expect("ping or gate");
        let mut out = Vec::with_capacity(80 << 10);
        round(&server(), &c.frames[..n.min(BATCH)], c.reply, &mut out);
        return;
    }
    let mut crit = Criterion::default().configure_from_args();
    let mut g = crit.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    for c in cases() {
        g.bench_function(c.name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                let mut out = Vec::with_capacity(80 << 10);
                while left > 0 {
                    let n = left.min(BATCH);
                    let s = server();
                    let start = Instant::now();
                    round(&s, &c.frames[..n], c.reply, &mut out);
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
