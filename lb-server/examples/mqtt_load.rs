//! Load for an MQTT endpoint (a broker, or a proxy in front of brokers), for
//! the side-by-side proxy benchmark (`lb-server/benches/proxy/run.sh`).
//!
//! ```text
//! mqtt_load connect --target HOST:PORT [--threads 16] [--duration 5]
//!     each thread: connect, CONNECT (a fresh client id), read the CONNACK,
//!     DISCONNECT, close; again. Prints CONNECT→CONNACK per second and the
//!     latency of one whole cycle (p50, p99).
//! mqtt_load publish --target HOST:PORT [--conns 4] [--size 1024] [--duration 5]
//!     each connection: CONNECT, then QoS 0 PUBLISH packets of SIZE bytes of
//!     payload as fast as the path takes them. Prints MB/s of MQTT bytes
//!     written (the path's backpressure bounds it) and messages per second.
//! ```
//!
//! Output is one JSON object on stdout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut v = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    v.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    v.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10];
    varint(&mut p, v.len());
    p.extend_from_slice(&v);
    p
}

fn publish_packet(topic: &str, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size + topic.len() + 2);
    v.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    v.extend_from_slice(topic.as_bytes());
    v.resize(v.len() + size, b'x');
    let mut p = vec![0x30];
    varint(&mut p, v.len());
    p.extend_from_slice(&v);
    p
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// Connects and completes the MQTT handshake.
fn session(target: &str, id: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(target)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&connect_packet(id))?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(std::io::Error::other(format!("CONNACK {ack:?}")));
    }
    Ok(s)
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let target = arg(&args, "--target", "127.0.0.1:1883");
    let duration = Duration::from_secs_f64(
        arg(&args, "--duration", "5")
            .parse()
            .expect("--duration SECONDS"),
    );
    let tag = format!("{:x}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    match mode.as_str() {
        "connect" => {
            let threads: usize = arg(&args, "--threads", "16").parse().expect("--threads N");
            let started = Instant::now();
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (target, stop, tag) = (target.clone(), stop.clone(), tag.clone());
                    std::thread::spawn(move || {
                        let mut lat = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                        let mut errors = 0u64;
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let t0 = Instant::now();
                            match session(&target, &format!("load-{tag}-{t}-{n}")) {
                                Ok(mut s) => {
                                    let _ = s.write_all(&[0xe0, 0x00]);
                                    lat.record(t0.elapsed().as_micros() as u64).unwrap();
                                }
                                Err(_) => errors += 1,
                            }
                            n += 1;
                        }
                        (lat, errors)
                    })
                })
                .collect();
            std::thread::sleep(duration);
            stop.store(true, Ordering::Relaxed);
            let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let mut errors = 0;
            for w in workers {
                let (h, e) = w.join().unwrap();
                all.add(h).unwrap();
                errors += e;
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "mode": "connect",
                    "target": target,
                    "connects_per_s": (all.len() as f64 / secs).round(),
                    "p50_ms": all.value_at_quantile(0.5) as f64 / 1000.0,
                    "p99_ms": all.value_at_quantile(0.99) as f64 / 1000.0,
                    "errors": errors,
                })
            );
        }
        "publish" => {
            let conns: usize = arg(&args, "--conns", "4").parse().expect("--conns N");
            let size: usize = arg(&args, "--size", "1024").parse().expect("--size BYTES");
            let packet = publish_packet("load/bench", size);
            // Several packets per write, as a busy client's buffer would.
            let batch: Vec<u8> = packet.repeat((64 * 1024 / packet.len()).max(1));
            let per_batch = batch.len() / packet.len();
            let started = Instant::now();
            let workers: Vec<_> = (0..conns)
                .map(|c| {
                    let (target, stop, tag, batch) =
                        (target.clone(), stop.clone(), tag.clone(), batch.clone());
                    std::thread::spawn(move || {
                        let mut s =
                            session(&target, &format!("pub-{tag}-{c}")).expect("publisher session");
                        let mut sent = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            if s.write_all(&batch).is_err() {
                                break;
                            }
                            sent += 1;
                        }
                        let _ = s.write_all(&[0xe0, 0x00]);
                        sent
                    })
                })
                .collect();
            std::thread::sleep(duration);
            stop.store(true, Ordering::Relaxed);
            let batches: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
            let secs = started.elapsed().as_secs_f64();
            let bytes = batches as f64 * batch.len() as f64;
            println!(
                "{}",
                serde_json::json!({
                    "mode": "publish",
                    "target": target,
                    "mb_per_s": (bytes / secs / 1e6 * 10.0).round() / 10.0,
                    "msgs_per_s": (batches as f64 * per_batch as f64 / secs).round(),
                })
            );
        }
        _ => {
            eprintln!("usage: mqtt_load connect|publish --target HOST:PORT [--threads N | --conns N --size BYTES] [--duration SECONDS]");
            std::process::exit(2);
        }
    }
}
