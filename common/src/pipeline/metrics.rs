//! The metrics layer: every request counted by message type, with its
//! errors and latency (frame received → reply ready), for `GET /metrics`:
//!
//! - `dsf_requests_total{type}`: requests answered;
//! - `dsf_request_errors_total{type,code}`: those answered with an error;
//! - `dsf_request_duration_seconds{type}`: a histogram of their latency;
//! - `dsf_frames_refused_total`: frames refused before they reached a
//!   route (bad signature, stale, replayed, unknown type, draining);
//! - `dsf_groups_total{outcome}`: batches of batched requests run in one
//!   group (`committed`, or `rerun` one by one after it broke), and
//!   `dsf_grouped_requests_total`: the requests of those committed;
//! - `dsf_shared_commits_total{outcome}`: commits that one thread sent for
//!   the run-once writes of several connections (`committed`, or `failed`
//!   and each write sent alone), and `dsf_shared_commit_writes_total`:
//!   the writes of those committed.
//!
//! The families are `prometheus-client`'s; each route's counters are
//! looked up once, when the server is built, so a request costs two
//! atomic adds and one histogram observation. An app server also keeps
//! [`Load`]: the figures its heartbeats report (requests and errors per
//! second, p50 and p99 latency in an HDR histogram).
//!
//! [`serve`] answers `GET /metrics` on a port of its own, in OpenMetrics
//! to a scraper that asks for it (Prometheus does), otherwise in the
//! Prometheus text format 0.0.4 that curl shows and promtool checks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram as Hdr;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{Call, Layer, Next, Outcome};
use crate::error::ErrorCode;
use crate::view::Stats;

/// Highest latency the load histogram tracks exactly, in microseconds (a
/// minute); longer ones are clamped to it rather than dropped.
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    r#type: String,
    code: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 6.5 s, doubling.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// The per-type families, and a server's totals.
pub struct Metrics {
    requests: Family<TypeLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    latency: Family<TypeLabel, Histogram, fn() -> Histogram>,
    refused: Counter,
    parked: Gauge,
    groups: Family<OutcomeLabel, Counter>,
    grouped: Counter,
    /// Shared commits: committed, their writes, failed (sampled).
    shared: [AtomicU64; 3],
    load: Option<Load>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("refused", &self.refused.get())
            .finish()
    }
}

/// One route's counters, looked up once.
pub(super) struct RouteMetrics {
    name: String,
    requests: Counter,
    latency: Histogram,
}

// === impl Metrics ===

impl Metrics {
    /// Empty families; with `load`, the heartbeat figures too.
    pub fn new(load: bool) -> Metrics {
        Metrics {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            refused: Counter::default(),
            parked: Gauge::default(),
            groups: Family::default(),
            grouped: Counter::default(),
            shared: Default::default(),
            load: load.then(Load::new),
        }
    }

    pub(super) fn route(&self, name: &str) -> RouteMetrics {
        let label = TypeLabel {
            r#type: name.to_string(),
        };
        RouteMetrics {
            name: name.to_string(),
            requests: self.requests.get_or_create(&label).clone(),
            latency: self.latency.get_or_create(&label).clone(),
        }
    }

    /// Sets how many long polls are parked now (sampled by the server as
    /// a page is rendered).
    pub fn set_parked(&self, n: usize) {
        self.parked.set(n as i64);
    }

    /// Sets the totals of the commits shared across connections
    /// (`dsf_sql::writes::SharedCommits`, sampled by the server as a page
    /// is rendered): committed, the writes in them, failed.
    pub fn set_shared_commits(&self, committed: u64, writes: u64, failed: u64) {
        for (at, v) in self.shared.iter().zip([committed, writes, failed]) {
            at.store(v, Ordering::Relaxed);
        }
    }

    /// Counts a batch of `n` requests run in one group: committed, or
    /// run again one by one.
    pub(super) fn group(&self, n: usize, committed: bool) {
        let outcome = if committed { "committed" } else { "rerun" };
        self.groups.get_or_create(&OutcomeLabel { outcome }).inc();
        if committed {
            self.grouped.inc_by(n as u64);
        }
    }

    /// Adds the families to `registry` (a page being rendered).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "dsf_requests",
            "Requests answered, by message type",
            self.requests.clone(),
        );
        registry.register(
            "dsf_request_errors",
            "Requests answered with an error, by message type and error code",
            self.errors.clone(),
        );
        registry.register(
            "dsf_request_duration_seconds",
            "Time from a request's frame received to its reply ready, by message type",
            self.latency.clone(),
        );
        registry.register(
            "dsf_frames_refused",
            "Frames refused before they reached a route (bad signature, stale, replayed, unknown type, draining)",
            self.refused.clone(),
        );
        registry.register(
            "dsf_groups",
            "Batches of batched requests run in one group: committed together, or rerun one by one",
            self.groups.clone(),
        );
        registry.register(
            "dsf_grouped_requests",
            "Requests of the batches committed together",
            self.grouped.clone(),
        );
        let outcomes = Family::<OutcomeLabel, Counter>::default();
        outcomes
            .get_or_create(&OutcomeLabel {
                outcome: "committed",
            })
            .inc_by(self.shared[0].load(Ordering::Relaxed));
        outcomes
            .get_or_create(&OutcomeLabel { outcome: "failed" })
            .inc_by(self.shared[2].load(Ordering::Relaxed));
        registry.register(
            "dsf_shared_commits",
            "Commits one thread sent for the run-once writes of several connections: committed, or failed and each write sent alone",
            outcomes,
        );
        registry.register(
            "dsf_shared_commit_writes",
            "Run-once writes of the shared commits that committed",
            prometheus_client::metrics::counter::ConstCounter::new(
                self.shared[1].load(Ordering::Relaxed),
            ),
        );
        registry.register(
            "dsf_long_polls_parked",
            "Long polls parked now, off the workers, until a wake-up or their wait runs out",
            self.parked.clone(),
        );
    }

    /// The page: these families alone, in OpenMetrics.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts one answered request of a route.
    pub(super) fn record(&self, route: &RouteMetrics, since: Instant, outcome: &Outcome) {
        let elapsed = since.elapsed();
        route.requests.inc();
        route.latency.observe(elapsed.as_secs_f64());
        let ok = outcome.is_ok();
        if !ok {
            let code = match outcome {
                Outcome::Reply(Err(e)) => e.code().as_str(),
                Outcome::Stored { payload, .. } => stored_code(payload),
                _ => "error",
            };
            self.errors
                .get_or_create(&ErrorLabel {
                    r#type: route.name.clone(),
                    code: code.to_string(),
                })
                .inc();
        }
        if let Some(load) = &self.load {
            load.record(elapsed, ok);
        }
    }

    /// Counts a frame refused before it reached a route.
    pub fn refused(&self, since: Instant) {
        self.refused.inc();
        if let Some(load) = &self.load {
            load.record(since.elapsed(), false);
        }
    }

    /// Frames refused before they reached a route, since start.
    pub fn refused_count(&self) -> u64 {
        self.refused.get()
    }

    /// The heartbeat figures, when kept.
    pub fn load(&self) -> Option<&Load> {
        self.load.as_ref()
    }
}

/// The code of a stored error reply (`{"code":…,"message":…}`).
fn stored_code(payload: &str) -> &'static str {
    stored_error(payload).map_or("error", ErrorCode::as_str)
}

/// The code of a stored error object, if it names one this version knows.
pub(super) fn stored_error(payload: &str) -> Option<ErrorCode> {
    #[derive(serde::Deserialize)]
    struct Code<'a> {
        code: &'a str,
    }
    serde_json::from_str::<Code<'_>>(payload)
        .ok()
        .and_then(|c| ErrorCode::parse(c.code))
}

/// The metrics layer: the outermost, so it times and counts everything a
/// route answers, refusals of the layers inside it included.
pub struct MetricsLayer;

impl<S: Send + Sync + 'static> Layer<S> for MetricsLayer {
    fn call(&self, call: &mut Call<S>, next: Next<'_, S>) -> Outcome {
        let outcome = next.run(call);
        // A parked long poll is counted when it runs; a request in a group
        // once the group is settled (committed, or run again).
        if !matches!(outcome, Outcome::Park(_)) && call.batch.is_none() {
            let route = &call.pipe.route_metrics[call.route];
            call.pipe.metrics.record(route, call.received, &outcome);
        }
        outcome
    }
}

/// Gauges read at the moment of a sample (they belong to the reactor and
/// the pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Connections open.
    pub conns: u64,
    /// Requests a worker is running.
    pub inflight: u64,
    /// Requests waiting for a worker.
    pub queue: u64,
}

/// What a server reports about itself in heartbeats: requests and errors
/// counted, latency in an HDR histogram, read and reset once per interval.
#[derive(Debug)]
pub struct Load {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Mutex<Hdr<u64>>,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    requests: u64,
    errors: u64,
}

// === impl Load ===

impl Load {
    fn new() -> Load {
        Load {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Mutex::new(
                Hdr::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
            ),
            window: Mutex::new(Window {
                started: Instant::now(),
                requests: 0,
                errors: 0,
            }),
        }
    }

    fn record(&self, elapsed: Duration, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = (elapsed.as_micros() as u64).clamp(1, MAX_LATENCY_US);
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

/// The content type of the page for a scraper that asks for OpenMetrics.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the page for everyone else (curl, promtool).
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The page in the Prometheus text format 0.0.4, from its OpenMetrics form.
/// The two differ here only in a counter family's name (OpenMetrics drops
/// the `_total` its samples carry), the histogram's `_created`-free
/// samples being the same, and the closing `# EOF`. The crate writes
/// OpenMetrics alone, and promtool lints only the older format.
pub fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match comment {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The response to `GET /metrics` for a page in OpenMetrics, in the format
/// the request asks for.
pub fn respond(
    req: &tiny_http::Request,
    openmetrics: String,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let accept = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Accept"))
        .map(|h| h.value.as_str());
    let (body, kind) = if wants_openmetrics(accept) {
        (openmetrics, OPENMETRICS)
    } else {
        (text_format(&openmetrics), TEXT_FORMAT)
    };
    tiny_http::Response::from_string(body).with_header(header("Content-Type", kind))
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("static header is valid")
}

/// `GET /metrics` on `addr`, on a thread named `metrics`, rendering
/// `page()` for each scrape, until the returned handle is dropped.
pub fn serve(
    addr: SocketAddr,
    page: impl Fn() -> String + Send + 'static,
) -> std::io::Result<MetricsServer> {
    let server = Arc::new(tiny_http::Server::http(addr).map_err(std::io::Error::other)?);
    let local = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("the metrics listener has no IP address"))?;
    let serving = server.clone();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for req in serving.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or("");
                let response = match (req.method(), path) {
                    (tiny_http::Method::Get, "/metrics") => respond(&req, page()),
                    (tiny_http::Method::Get, _) => tiny_http::Response::from_string(
                        "not found: this port serves GET /metrics\n",
                    )
                    .with_status_code(404),
                    _ => tiny_http::Response::from_string("method not allowed: use GET /metrics\n")
                        .with_status_code(405)
                        .with_header(header("Allow", "GET")),
                };
                if let Err(e) = req.respond(response) {
                    log::debug!("metrics: cannot answer: {e}");
                }
            }
        })?;
    Ok(MetricsServer {
        server,
        addr: local,
        thread: Some(thread),
    })
}

/// A running `/metrics` endpoint; stops when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Where it listens (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reports_the_interval_and_resets_it() {
        let m = Load::new();
        for i in 0..10 {
            m.record(Duration::from_micros(100 + i), i != 0);
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

    #[test]
    fn the_text_format_names_counter_families_with_their_suffix() {
        let m = Metrics::new(false);
        let r = m.route("sys.ping");
        m.record(&r, Instant::now(), &Outcome::Reply(Ok("{}".into())));
        m.record(
            &r,
            Instant::now(),
            &Outcome::Stored {
                ok: false,
                payload: r#"{"code":"conflict","message":"x"}"#.into(),
            },
        );
        let page = text_format(&m.render());
        assert!(page.contains("# TYPE dsf_requests_total counter"), "{page}");
        assert!(
            page.contains("dsf_requests_total{type=\"sys.ping\"} 2"),
            "{page}"
        );
        assert!(
            page.contains("dsf_request_errors_total{type=\"sys.ping\",code=\"conflict\"} 1"),
            "{page}"
        );
        assert!(
            page.contains("dsf_request_duration_seconds_count{type=\"sys.ping\"} 2"),
            "{page}"
        );
        assert!(!page.contains("# EOF"), "{page}");
    }

    #[test]
    fn the_text_format_of_a_page_names_counter_families_with_their_suffix() {
        let om = "# HELP a_x Things.\n# TYPE a_x counter\na_x_total{l=\"v\"} 3\n\
                  # HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            text_format(om),
            "# HELP a_x_total Things.\n# TYPE a_x_total counter\na_x_total{l=\"v\"} 3\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")) && !wants_openmetrics(None));
    }
}
