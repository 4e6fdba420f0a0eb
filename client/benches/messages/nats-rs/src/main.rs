//! NATS JetStream in the workload of dsf's messaging bench, on the Rust
//! client `async-nats`: the same run as `../nats_bench.py --mode jetstream`,
//! without Python in the measurement.
//!
//! S senders, each on its own connection to `--send-url`; sender k sends
//! its share, message i to recipient (k + i) % R as JSON
//! `{"t": unix ns at send, "k": k, "i": i, "pad": "x" * size}`, with up to
//! `--window` PubAcks outstanding (every PubAck awaited: stored on disk).
//! Stream BENCH (`inbox.>`, file, one replica, recreated each run); one
//! durable pull consumer per recipient (`inbox.<r>`, at most 100 unacked,
//! dsf's credit), each on its own connection to `--recv-url`, read as a
//! continuous pull in batches of `--batch`. `--ack explicit` acks every
//! message; `--ack all` (AckAll) acks every 25th, as dsf's recipients do.
//! A warm-up phase first, awaited in full; then rate = N / (first measured
//! send .. last measured receipt), latency = receipt - "t" (one machine),
//! and every message checked to arrive once and in order per sender. One
//! JSON line on stdout, progress on stderr; exits 1 if any is missing.
//!
//! ```text
//! cargo run --release --manifest-path client/benches/messages/nats-rs/Cargo.toml -- \
//!     --send-url nats://127.0.0.1:14222 --recv-url nats://127.0.0.1:14223 --window 64
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use serde_json::{json, Value};

/// Gives up when nothing arrives for this long.
const STALL: Duration = Duration::from_secs(15);
/// Unacked messages a consumer may hold: the credit of dsf's recipients.
const CREDIT: i64 = 100;

#[derive(Clone, Copy, ValueEnum)]
enum Ack {
    /// Every message acked on its own.
    Explicit,
    /// AckAll, every 25th message (a quarter of the credit).
    All,
}

#[derive(Parser)]
#[command(about = "JetStream on async-nats in dsf's messaging bench workload")]
struct Args {
    #[arg(long)]
    send_url: String,
    #[arg(long)]
    recv_url: String,
    #[arg(long, default_value_t = 16)]
    senders: usize,
    #[arg(long, default_value_t = 16)]
    recipients: usize,
    #[arg(long, default_value_t = 20000)]
    messages: u64,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 1000)]
    warmup: u64,
    /// PubAcks outstanding per sender.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Messages a consumer pulls at once.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    #[arg(long, value_enum, default_value_t = Ack::Explicit)]
    ack: Ack,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn shares(total: u64, parts: usize) -> Vec<u64> {
    let p = parts as u64;
    (0..p)
        .map(|k| total / p + u64::from(k < total % p))
        .collect()
}

/// Receipts of every (k, i); latencies of the measured first receipts.
struct Tally {
    warm: Vec<u64>,
    counts: Vec<Vec<u8>>,
    last_i: Vec<Vec<i64>>,
    warm_left: u64,
    meas_left: u64,
    lat_ns: Vec<u64>,
    last_recv_ns: u64,
    dups: u64,
    redelivered: u64,
    out_of_order: u64,
    stray: u64,
}

impl Tally {
    fn new(warm: Vec<u64>, meas: &[u64], recipients: usize) -> Tally {
        let counts = warm
            .iter()
            .zip(meas)
            .map(|(w, m)| vec![0; (w + m) as usize])
            .collect();
        Tally {
            last_i: vec![vec![-1; warm.len()]; recipients],
            warm_left: warm.iter().sum(),
            meas_left: meas.iter().sum(),
            warm,
            counts,
            lat_ns: Vec::new(),
            last_recv_ns: 0,
            dups: 0,
            redelivered: 0,
            out_of_order: 0,
            stray: 0,
        }
    }

    fn on(&mut self, r: usize, data: &[u8], redelivered: bool) {
        let now = now_ns();
        self.redelivered += u64::from(redelivered);
        let d: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
        let (Some(k), Some(i), Some(t)) = (d["k"].as_u64(), d["i"].as_u64(), d["t"].as_u64())
        else {
            self.stray += 1;
            return;
        };
        let (k, i) = (k as usize, i as usize);
        let Some(c) = self.counts.get_mut(k).and_then(|row| row.get_mut(i)) else {
            self.stray += 1;
            return;
        };
        let seen = *c;
        *c = c.saturating_add(1);
        if seen > 0 {
            self.dups += 1;
            return;
        }
        let last = &mut self.last_i[r][k];
        if (i as i64) < *last {
            self.out_of_order += 1;
        }
        *last = (*last).max(i as i64);
        if (i as u64) < self.warm[k] {
            self.warm_left -= 1;
        } else {
            self.lat_ns.push(now.saturating_sub(t));
            self.last_recv_ns = now;
            self.meas_left -= 1;
        }
    }

    fn missing(&self) -> usize {
        self.counts
            .iter()
            .map(|row| row.iter().filter(|&&c| c == 0).count())
            .sum()
    }
}

/// Waits until `left` says none are left, while receipts keep coming; false
/// after a stall.
async fn wait_all(
    tally: &Mutex<Tally>,
    received: &AtomicU64,
    left: fn(&Tally) -> u64,
    what: &str,
) -> bool {
    let (mut seen, mut since) = (received.load(Ordering::Relaxed), Instant::now());
    while left(&tally.lock().unwrap()) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = received.load(Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() > STALL {
            eprintln!("{what}: nothing received for {STALL:?}, giving up");
            return false;
        }
    }
    true
}

/// A JetStream context on a connection of its own to `url`.
async fn connect(url: &str, name: String) -> Result<jetstream::Context, async_nats::Error> {
    let nc = async_nats::ConnectOptions::new()
        .name(name)
        .connect(url)
        .await?;
    Ok(jetstream::new(nc))
}

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let a = Args::parse();
    let (s, r) = (a.senders, a.recipients);
    let pad = "x".repeat(a.size);
    let (warm, meas) = (shares(a.warmup, s), shares(a.messages, s));
    let tally = Arc::new(Mutex::new(Tally::new(warm.clone(), &meas, r)));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let send_errors = Arc::new(AtomicU64::new(0));

    eprintln!(
        "connecting {s} senders to {}, {r} recipients to {}",
        a.send_url, a.recv_url
    );
    let mut send_js = Vec::new();
    for k in 0..s {
        send_js.push(connect(&a.send_url, format!("s{k}")).await?);
    }
    let _ = send_js[0].delete_stream("BENCH").await;
    let mut bench = send_js[0]
        .create_stream(stream::Config {
            name: "BENCH".into(),
            subjects: vec!["inbox.>".into()],
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await?;
    let leader = bench
        .info()
        .await?
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone());
    eprintln!("stream BENCH on {}", leader.as_deref().unwrap_or("?"));

    let mut pullers = Vec::new();
    for rr in 0..r {
        let js = connect(&a.recv_url, format!("r{rr}")).await?;
        let consumer: jetstream::consumer::Consumer<pull::Config> = js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(format!("r{rr}")),
                    filter_subject: format!("inbox.{rr}"),
                    ack_policy: match a.ack {
                        Ack::Explicit => AckPolicy::Explicit,
                        Ack::All => AckPolicy::All,
                    },
                    max_ack_pending: CREDIT,
                    ..Default::default()
                },
                "BENCH",
            )
            .await?;
        let mut msgs = consumer
            .stream()
            .max_messages_per_batch(a.batch)
            .messages()
            .await?;
        let (tally, received, stop, ack) = (tally.clone(), received.clone(), stop.clone(), a.ack);
        pullers.push(tokio::spawn(async move {
            let every = (CREDIT / 4) as u64;
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let m = match tokio::time::timeout(Duration::from_millis(200), msgs.next()).await {
                    Err(_) => continue,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        eprintln!("recipient {rr}: {e}");
                        continue;
                    }
                    Ok(Some(Ok(m))) => m,
                };
                let again = m.info().map(|i| i.delivered > 1).unwrap_or(false);
                tally.lock().unwrap().on(rr, &m.payload, again);
                received.fetch_add(1, Ordering::Relaxed);
                n += 1;
                if matches!(ack, Ack::Explicit) || n.is_multiple_of(every) {
                    if let Err(e) = m.ack().await {
                        eprintln!("recipient {rr}: ack: {e}");
                    }
                }
            }
        }));
    }

    // One phase: each sender from its first index, its count; the first
    // send's time of each.
    let run = |first: Vec<u64>, count: Vec<u64>| {
        let senders = send_js.iter().cloned().enumerate().map(|(k, js)| {
            let (first, count, pad, errors) =
                (first[k], count[k], pad.clone(), send_errors.clone());
            let window = a.window.max(1);
            tokio::spawn(async move {
                let mut acks = VecDeque::with_capacity(window);
                let mut t0 = None;
                let fail = |e: &dyn std::fmt::Display| {
                    if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("sender {k}: {e}");
                    }
                };
                for i in first..first + count {
                    let t = now_ns();
                    t0.get_or_insert(t);
                    let body = json!({"t": t, "k": k, "i": i, "pad": pad}).to_string();
                    let subject = format!("inbox.{}", (k as u64 + i) % r as u64);
                    match js.publish(subject, body.into()).await {
                        Ok(ack) => acks.push_back(ack),
                        Err(e) => fail(&e),
                    }
                    if acks.len() >= window {
                        if let Err(e) = acks.pop_front().unwrap().await {
                            fail(&e);
                        }
                    }
                }
                for ack in acks {
                    if let Err(e) = ack.await {
                        fail(&e);
                    }
                }
                t0
            })
        });
        futures::future::join_all(senders)
    };

    let mut ok = true;
    if a.warmup > 0 {
        eprintln!("warmup: {} messages", a.warmup);
        run(vec![0; s], warm.clone()).await;
        ok = wait_all(&tally, &received, |t| t.warm_left, "warmup").await;
    }
    let mut firsts = Vec::new();
    if ok {
        eprintln!("measured: {} messages", a.messages);
        for t0 in run(warm.clone(), meas.clone()).await {
            firsts.extend(t0?);
        }
        eprintln!("all sent, waiting for receipts");
        if wait_all(&tally, &received, |t| t.meas_left, "measured").await {
            tokio::time::sleep(Duration::from_secs(1)).await; // late duplicates
        }
    }
    stop.store(true, Ordering::Release);
    for p in pullers {
        p.await?;
    }

    let t = tally.lock().unwrap();
    let mut lat = t.lat_ns.clone();
    lat.sort_unstable();
    let n = lat.len();
    let pct = |q: f64| {
        let i = ((q * n as f64).ceil() as usize).clamp(1, n.max(1)) - 1;
        lat.get(i).map(|&v| (v as f64 / 1e4).round() / 100.0)
    };
    let seconds = firsts
        .iter()
        .min()
        .filter(|_| n > 0)
        .map(|&f| t.last_recv_ns.saturating_sub(f) as f64 / 1e9);
    let missing = t.missing();
    if t.stray > 0 {
        eprintln!("{} messages not of this run", t.stray);
    }
    eprintln!(
        "{n}/{} measured received, {missing} missing (warmup included), {} duplicates, \
         {} redelivered, {} out of order",
        a.messages, t.dups, t.redelivered, t.out_of_order
    );
    println!(
        "{}",
        json!({
            "system": "nats-jetstream",
            "client": "async-nats",
            "ack": match a.ack { Ack::Explicit => "explicit", Ack::All => "all" },
            "senders": s,
            "recipients": r,
            "messages": a.messages,
            "size": a.size,
            "window": a.window,
            "batch": a.batch,
            "seconds": seconds.map(|x| (x * 1000.0).round() / 1000.0),
            "rate": seconds.map(|x| (n as f64 / x * 10.0).round() / 10.0),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": lat.last().map(|&v| (v as f64 / 1e4).round() / 100.0),
            "missing": missing,
            "duplicates": t.dups,
            "redelivered": t.redelivered,
            "out_of_order": t.out_of_order,
            "send_errors": send_errors.load(Ordering::Relaxed),
        })
    );
    std::process::exit(i32::from(missing > 0));
}
