//! What the server measures about itself for heartbeats: requests and error
//! replies counted, latency (frame received → reply ready) in an HDR
//! histogram, each read and reset once per heartbeat interval.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dsf_common::view::{NodeState, Stats};
use hdrhistogram::Histogram;

/// Highest latency tracked exactly, in microseconds (a minute); longer ones
/// are clamped to it rather than dropped.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Gauges read at the moment of a sample (they belong to the reactor and
/// the pool, not to this module).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Connections open.
    pub conns: u64,
    /// Requests a worker is running.
    pub inflight: u64,
    /// Requests waiting for a worker.
    pub queue: u64,
}

/// Counters and the latency histogram, shared by the reactor thread, the
/// workers and the heartbeat thread.
#[derive(Debug)]
pub struct Metrics {
    requests: AtomicU64,
    errors: AtomicU64,
    draining: AtomicBool,
    latency: Mutex<Histogram<u64>>,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    requests: u64,
    errors: u64,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Zeroed counters.
    pub fn new() -> Metrics {
        Metrics {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
            ),
            window: Mutex::new(Window {
                started: Instant::now(),
                requests: 0,
                errors: 0,
            }),
        }
    }

    /// Counts one reply: `ok` or an error, `since` the frame arrived.
    pub fn record(&self, since: Instant, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = (since.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(us);
    }

    /// Replies sent since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Error replies sent since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Marks the node as draining (reported in every later heartbeat).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown started: new requests are then refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// `draining` once shutdown started, else `up`.
    pub fn state(&self) -> NodeState {
        if self.draining.load(Ordering::Acquire) {
            NodeState::Draining
        } else {
            NodeState::Up
        }
    }

    /// The figures of the interval since the last sample, and starts a new
    /// interval.
    pub fn sample(&self, gauges: Gauges) -> Stats {
        let (p50, p99) = {
            let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
            let q = |q: f64| {
                if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(q) as f64 / 1000.0
                }
            };
            let out = (q(0.5), q(0.99));
            h.reset();
            out
        };
        let (requests, errors) = (self.requests(), self.errors());
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let secs = w
            .started
            .elapsed()
            .max(Duration::from_millis(1))
            .as_secs_f64();
        let rps = (requests - w.requests) as f64 / secs;
        let errors_per_s = (errors - w.errors) as f64 / secs;
        *w = Window {
            started: Instant::now(),
            requests,
            errors,
        };
        Stats {
            conns: gauges.conns,
            inflight: gauges.inflight,
            queue: gauges.queue,
            rps,
            errors_per_s,
            p50_ms: p50,
            p99_ms: p99,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reports_the_interval_and_resets_it() {
        let m = Metrics::new();
        let t = Instant::now();
        for i in 0..10 {
            m.record(t, i != 0);
        }
        let s = m.sample(Gauges {
            conns: 3,
            inflight: 1,
            queue: 2,
        });
        assert_eq!((s.conns, s.inflight, s.queue), (3, 1, 2));
        assert!(s.rps > 0.0 && s.errors_per_s > 0.0);
        assert!(s.p50_ms > 0.0 && s.p99_ms >= s.p50_ms);
        let s = m.sample(Gauges::default());
        assert_eq!((s.rps, s.errors_per_s, s.p99_ms), (0.0, 0.0, 0.0));
        assert_eq!(m.requests(), 10);
    }
}
