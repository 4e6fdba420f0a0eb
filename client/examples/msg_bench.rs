//! Cross-node messaging, for `client/benches/messages/run.sh`.
//!
//! Senders all send through one app server; every recipient's key is owned
//! by another one, where its subscription is, so each message crosses
//! nodes (stored, then `peer.notify`, then pushed). Sender k sends its
//! share of the messages, message i to recipient (k + i) mod R (with
//! `--pairs`, all of them to recipient k mod R), each send
//! awaited (stored) before the next, or with `--window N` sends in flight
//! ([`messages::send_many`]). Latency is send to receipt (one clock);
//! throughput is messages over first send to last receipt. Users are made
//! fresh for each run. One JSON object on stdout.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dsf_client::messages::{self, ListenOptions, Listener, To};
use dsf_client::{Client, ClientConfig};
use hdrhistogram::Histogram;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Cross-node messages: senders on one app server, recipients' subscriptions
/// on the others.
#[derive(Debug, clap::Parser)]
struct Args {
    /// A balancer of the cluster.
    #[arg(long, default_value = "127.0.0.1:6300")]
    lb: String,
    /// The app to sign as.
    #[arg(long, default_value = "cli")]
    app: String,
    /// A file holding the app's secret.
    #[arg(long, default_value = ".dsf/app.secret")]
    secret_file: String,
    #[arg(long, default_value_t = 16)]
    senders: usize,
    #[arg(long, default_value_t = 16)]
    recipients: usize,
    /// Messages measured.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Messages sent first and not measured.
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// Bytes of padding in each body.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Sends each sender keeps in flight (1: each awaited before the next).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Each subscription's credit.
    #[arg(long, default_value_t = 100)]
    credit: u32,
    /// Sender k sends only to recipient k mod R, instead of to every
    /// recipient in turn: with as many recipients as senders, no two
    /// senders' batches take the same recipient's counter, so none waits
    /// for another's commit (what the rate is without that wait).
    #[arg(long)]
    pairs: bool,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

const PASSWORD: &str = "bench-password";
/// The phase whose latencies are recorded (1 is the warm-up).
const MEASURED: u64 = 2;

/// Registers `name` (if new) and logs in; a client routed by `name`.
fn user(cfg: &ClientConfig, name: &str) -> Client {
    let mut c = Client::new(cfg.clone()).unwrap();
    c.set_routing_key(Some(name.to_string()));
    let creds = json!({"name": name, "password": PASSWORD});
    let _ = c.call("user.register", &creds);
    let r = c.call("user.login", &creds).unwrap();
    c.set_token(Some(r["token"].as_str().unwrap().to_string()));
    c
}

struct Received {
    latency: Mutex<Histogram<u64>>,
    count: AtomicU64,
    duplicates: AtomicU64,
    last_us: AtomicU64,
    /// Only messages of this phase count.
    phase: AtomicU64,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    let secret = std::fs::read_to_string(&args.secret_file).expect("--secret-file");
    let mut cfg = ClientConfig::new(vec![args.lb], args.app, secret.trim().as_bytes().to_vec());
    cfg.request_timeout = Duration::from_secs(15);
    let Args {
        senders,
        recipients,
        messages: n,
        warmup,
        size,
        credit,
        window,
        pairs,
        ..
    } = args;
    let tag = now_us() % 1_000_000_000;

    // The node the senders use, and recipients owned by the others.
    let mut c = Client::new(cfg.clone()).unwrap();
    let send_node = c.resolve(Some("bench-sender"), &[]).unwrap();
    let mut names = Vec::new();
    let mut j = 0;
    while names.len() < recipients {
        let name = format!("b{tag}-r{j}");
        if c.resolve(Some(&name), &[]).unwrap().node != send_node.node {
            names.push(name);
        }
        j += 1;
    }
    let mut send_cfg = cfg.clone();
    send_cfg.node = Some(send_node.addr.clone());

    let received = Arc::new(Received {
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
        count: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        last_us: AtomicU64::new(0),
        phase: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let listeners: Vec<_> = names
        .iter()
        .map(|name| {
            let client = user(&cfg, name);
            let (name, received, stop) = (name.clone(), received.clone(), stop.clone());
            std::thread::spawn(move || {
                let opts = ListenOptions {
                    credit,
                    ack_every: u64::from(credit / 4).max(1),
                    ..ListenOptions::default()
                };
                let mut l = Listener::new(&client, &name, opts).unwrap();
                let mut seen = HashSet::new();
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                while !stop.load(Ordering::Acquire) {
                    let Some(m) = l.next(Instant::now() + Duration::from_millis(50)).unwrap()
                    else {
                        continue;
                    };
                    let now = now_us();
                    let v: Value = serde_json::from_str(m.body.get()).unwrap();
                    l.handled(m.seq);
                    if v["p"].as_u64() != Some(received.phase.load(Ordering::Acquire)) {
                        continue;
                    }
                    if !seen.insert((v["p"].as_u64(), v["k"].as_u64(), v["i"].as_u64())) {
                        received.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if v["p"].as_u64() == Some(MEASURED) {
                        let t = v["t"].as_u64().unwrap();
                        hist.record(now.saturating_sub(t).max(1)).unwrap();
                    }
                    received.last_us.fetch_max(now, Ordering::AcqRel);
                    received.count.fetch_add(1, Ordering::AcqRel);
                }
                received.latency.lock().unwrap().add(&hist).unwrap();
                l.close();
            })
        })
        .collect();
    let mut clients: Vec<Client> = (0..senders)
        .map(|k| user(&send_cfg, &format!("b{tag}-s{k}")))
        .collect();
    let pad = "x".repeat(size);

    // Runs one phase of `total` messages; (first send, last receipt) in µs.
    let mut run = |phase: u64, total: u64| -> (u64, u64) {
        received.phase.store(phase, Ordering::Release);
        received.count.store(0, Ordering::Release);
        let t0 = now_us();
        std::thread::scope(|s| {
            for (k, c) in clients.iter_mut().enumerate() {
                let (names, pad) = (&names, &pad);
                let share = total / senders as u64 + u64::from((k as u64) < total % senders as u64);
                s.spawn(move || {
                    let sends = (0..share).map(|i| {
                        let to = &names[(k + if pairs { 0 } else { i as usize }) % names.len()];
                        let body = json!({"p": phase, "k": k, "i": i, "t": now_us(), "pad": pad});
                        (
                            To::User(to),
                            RawValue::from_string(body.to_string()).unwrap(),
                        )
                    });
                    messages::send_many(c, sends, window, |i, sent| {
                        if let Err(e) = sent {
                            panic!("sender {k}, message {i}: {e}");
                        }
                    })
                    .unwrap();
                });
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        while received.count.load(Ordering::Acquire) < total {
            assert!(
                Instant::now() < deadline,
                "only {} of {total} messages arrived",
                received.count.load(Ordering::Acquire)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        (t0, received.last_us.load(Ordering::Acquire))
    };
    run(1, warmup);
    let (t0, t1) = run(MEASURED, n);
    stop.store(true, Ordering::Release);
    for l in listeners {
        l.join().unwrap();
    }
    let h = received.latency.lock().unwrap();
    let seconds = (t1 - t0) as f64 / 1e6;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "system": "dsf",
            "senders": senders,
            "recipients": recipients,
            "messages": n,
            "size": size,
            "window": window,
            "pairs": pairs,
            "send_node": send_node.node,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "rate": (n as f64 / seconds).round(),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "max_ms": h.max() as f64 / 1000.0,
            "duplicates": received.duplicates.load(Ordering::Relaxed),
        })
    );
}
