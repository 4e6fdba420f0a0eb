//! The task service end to end, for `client/benches/tasks/run.sh`.
//!
//! ```text
//! task_bench throughput --lb HOST:PORT --app APP --secret-file F [--tasks 20000] [--threads 8] [--batch 1]
//!     submits TASKS no-op tasks (1,000 a call), then works them with an
//!     in-process no-op handler on THREADS threads until the job is done.
//! task_bench latency --lb HOST:PORT --app APP --secret-file F [--rate 100] [--seconds 10] [--threads 8]
//!     workers wait first (long polls); tasks are submitted one a call at
//!     RATE a second; each handler records when its task started.
//! ```
//!
//! One JSON object on stdout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dsf_client::tasks::{self, Submit, WorkerOptions};
use dsf_client::{Client, ClientConfig};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let secret = std::fs::read_to_string(arg(&args, "--secret-file", ".dsf/app.secret"))
        .expect("--secret-file");
    let mut cfg = ClientConfig::new(
        vec![arg(&args, "--lb", "127.0.0.1:6300")],
        arg(&args, "--app", "cli"),
        secret.trim().as_bytes().to_vec(),
    );
    cfg.request_timeout = Duration::from_secs(15);
    let threads: usize = arg(&args, "--threads", "8").parse().unwrap();
    let batch: u32 = arg(&args, "--batch", "1").parse().unwrap();
    let mut c = Client::new(cfg.clone()).unwrap();
    match mode.as_str() {
        "throughput" => {
            let n: usize = arg(&args, "--tasks", "20000").parse().unwrap();
            let payloads: Vec<String> = (0..n).map(|i| format!("{{\"i\":{i}}}")).collect();
            let t0 = Instant::now();
            let sub = tasks::submit(&mut c, &Submit::new(&payloads), |_| {}).unwrap();
            let submit_s = t0.elapsed().as_secs_f64();
            let stop = Arc::new(AtomicBool::new(false));
            let worked = AtomicU64::new(0);
            let t1 = Instant::now();
            let work_s = std::thread::scope(|s| {
                let worker = s.spawn(|| {
                    let mut opts = WorkerOptions::new("bench");
                    opts.concurrency = threads;
                    opts.batch = batch;
                    tasks::work(&cfg, &opts, &stop, |_| {
                        worked.fetch_add(1, Ordering::Relaxed);
                        Ok("null".into())
                    })
                    .unwrap()
                });
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    let st = tasks::status(&mut c, sub.job).unwrap();
                    if st.state == "done" {
                        break;
                    }
                }
                // Measured when the job is done, not when the idle
                // workers' last long polls return.
                let work_s = t1.elapsed().as_secs_f64();
                stop.store(true, Ordering::Release);
                worker.join().unwrap();
                work_s
            });
            println!(
                "{}",
                serde_json::json!({
                    "mode": "throughput", "tasks": n, "threads": threads, "batch": batch,
                    "submit_per_s": (n as f64 / submit_s).round(),
                    "work_per_s": (n as f64 / work_s).round(),
                    "end_to_end_per_s": (n as f64 / (submit_s + work_s)).round(),
                })
            );
        }
        "latency" => {
            let rate: f64 = arg(&args, "--rate", "100").parse().unwrap();
            let seconds: f64 = arg(&args, "--seconds", "10").parse().unwrap();
            let n = (rate * seconds) as usize;
            let stop = Arc::new(AtomicBool::new(false));
            let lat = Mutex::new(hdrhistogram::Histogram::<u64>::new(3).unwrap());
            let seen = AtomicU64::new(0);
            std::thread::scope(|s| {
                let worker = s.spawn(|| {
                    let mut opts = WorkerOptions::new("bench-lat");
                    opts.concurrency = threads;
                    tasks::work(&cfg, &opts, &stop, |payload| {
                        let v: serde_json::Value = serde_json::from_str(payload.get()).unwrap();
                        let sent = v["sent_us"].as_u64().unwrap();
                        lat.lock()
                            .unwrap()
                            .record(now_us().saturating_sub(sent))
                            .unwrap();
                        seen.fetch_add(1, Ordering::Relaxed);
                        Ok("null".into())
                    })
                    .unwrap()
                });
                // Workers are parked in their long polls before the first task.
                std::thread::sleep(Duration::from_millis(500));
                let start = Instant::now();
                for i in 0..n {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let p = vec![format!("{{\"sent_us\":{}}}", now_us())];
                    tasks::submit(&mut c, &Submit::new(&p), |_| {}).unwrap();
                }
                while seen.load(Ordering::Relaxed) < n as u64 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                stop.store(true, Ordering::Release);
                worker.join().unwrap();
            });
            let h = lat.lock().unwrap();
            println!(
                "{}",
                serde_json::json!({
                    "mode": "latency", "tasks": n, "rate": rate,
                    "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
                    "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
                })
            );
        }
        _ => {
            eprintln!("usage: task_bench throughput|latency --lb HOST:PORT --app APP --secret-file FILE [...]");
            std::process::exit(2);
        }
    }
}
