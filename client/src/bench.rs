//! `client bench`: a load generator in the manner of `redis-benchmark`.
//!
//! Connections are opened up front (through the balancer, one `lb.resolve`
//! per routing key, or straight to `--target`), then split over a few
//! threads, each running one mio loop over many connections. Each
//! connection keeps up to `--pipeline` requests in flight: when replies
//! free room, the missing requests are signed back to back into the
//! connection's reused output buffer and written with one `write`.
//! Latency is measured from signing to the verified reply, per request id
//! (a server may answer out of order), into an `hdrhistogram` per thread,
//! merged at the end. Every reply is parsed and its signature checked, so
//! the figures are those of a real client, and errors are counted by wire
//! code.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, ErrorKind, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use dsf_common::wire::{encode_request, FrameDecoder, Key, OutgoingRequest, Reply};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::cli::parse_duration;
use crate::client::{Client, ClientConfig};
use crate::error::{Error, Result};

/// Requests sent when neither `--requests` nor `--duration` is given.
pub const DEFAULT_REQUESTS: u64 = 100_000;
/// Password of the accounts `--op login --setup` registers.
pub const BENCH_PASSWORD: &str = "bench-password";
/// How long replies still in flight are awaited once sending stopped.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Room offered to each read.
const READ_CHUNK: usize = 64 << 10;

/// What each request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `sys.ping`, answered by app servers.
    Ping,
    /// `lb.resolve` of a key, answered by lb-server.
    Resolve,
    /// `gate.check` of an id card (recorded by the app server).
    Check,
    /// `user.login` of bench-user-N (create them with --setup).
    Login,
    /// `blacklist.add` of a new id card each request (a write, run once);
    /// needs an operator's session (`client login`).
    Add,
}

// === impl Op ===

impl Op {
    /// The message type sent.
    pub fn kind(self) -> &'static str {
        match self {
            Op::Ping => "sys.ping",
            Op::Resolve => "lb.resolve",
            Op::Check => "gate.check",
            Op::Login => "user.login",
            Op::Add => "blacklist.add",
        }
    }

    /// Writes the body for key number `k` into `out`.
    fn body(self, k: u64, out: &mut String) {
        out.clear();
        let _ = match self {
            Op::Ping => write!(out, "{{}}"),
            Op::Resolve => write!(out, "{{\"key\":\"key-{k}\"}}"),
            Op::Check => write!(
                out,
                "{{\"id_card\":\"{k:018}\",\"name\":\"bench-{k}\",\"gate\":\"bench\"}}"
            ),
            Op::Login => write!(
                out,
                "{{\"name\":\"bench-user-{k}\",\"password\":\"{BENCH_PASSWORD}\"}}"
            ),
            Op::Add => write!(
                out,
                "{{\"id_card\":\"B{k:x}\",\"name\":\"bench-{k}\",\"reason\":\"bench\"}}"
            ),
        };
    }
}

/// `client bench` flags.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  client bench --op ping --conns 50 --pipeline 16 --duration 10s
  client bench --op ping --target 127.0.0.1:7000 --requests 200000 --json
  client bench --op resolve --target 127.0.0.1:6300 --conns 8 --pipeline 32 --keys 100000
  client bench --op login --setup --keys 100 --conns 10 --requests 2000
  client login op && client bench --op add --conns 16 --duration 5s

Without --target, each connection resolves its own key (bench-0, bench-1, ...)
through the balancer, so load spreads as real clients' would; --op resolve
talks to the balancers themselves.")]
pub struct BenchArgs {
    /// What to send.
    #[arg(long, value_enum, default_value = "ping")]
    pub op: Op,
    /// Connections held open.
    #[arg(long, default_value_t = 50)]
    pub conns: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Threads driving the connections (default: one per core, at most --conns).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Send for this long, e.g. 10s (instead of --requests).
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Send exactly this many requests [default: 100000].
    #[arg(long)]
    pub requests: Option<u64>,
    /// Distinct keys (routing keys, id cards, resolve keys, bench users) to spread over.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Send everything to this server, skipping lb.resolve.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,
    /// With --op login: first register bench-user-0..--keys (existing ones are fine).
    #[arg(long)]
    pub setup: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// The result of a run; `ok` plus every count in `errors` is `requests`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub op: Op,
    /// `direct` (--target) or `balancer`.
    pub via: &'static str,
    /// Distinct servers the connections went to.
    pub servers: Vec<String>,
    pub conns: usize,
    pub pipeline: usize,
    pub threads: usize,
    /// Requests sent and accounted for.
    pub requests: u64,
    /// Requests answered `ok:true`.
    pub ok: u64,
    /// Failed requests by wire code, or `io` (connection lost), `timeout`
    /// (no reply by the end), `bad_reply` (signature or envelope).
    pub errors: BTreeMap<String, u64>,
    /// Requests of the quota that could not be sent (their connection died).
    pub unsent: u64,
    /// From the first request to the last reply.
    pub elapsed_s: f64,
    /// Answered requests (ok or error) per second.
    pub rps: f64,
    pub latency_ms: Latency,
    /// Cores this process may run on (its CPU affinity).
    pub cores: usize,
    /// CPU time this process used during the run, all threads.
    pub cpu_s: f64,
    /// `cpu_s` over the time of the run on the cores the threads could
    /// use (`min(threads, cores)`): near 1, the load generator and not the
    /// server may be what limits the run.
    pub busy: f64,
}

// === impl Report ===

impl Report {
    /// The report as a few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let errors: u64 = self.errors.values().sum();
        let _ = writeln!(
            s,
            "{} ({}): {} requests over {} conns x pipeline {} on {} threads, {} to {}",
            self.op.kind(),
            match self.op {
                Op::Ping => "ping",
                Op::Resolve => "resolve",
                Op::Check => "check",
                Op::Login => "login",
                Op::Add => "add",
            },
            self.requests,
            self.conns,
            self.pipeline,
            self.threads,
            self.via,
            self.servers.join(", ")
        );
        let _ = writeln!(
            s,
            "  throughput  {:.0} requests/s in {:.3} s",
            self.rps, self.elapsed_s
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "  latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        let _ = writeln!(
            s,
            "  load gen    {:.0}% busy on {} of {} cores ({:.2} s of CPU, {:.2} µs per request){}",
            self.busy * 100.0,
            self.threads.min(self.cores),
            self.cores,
            self.cpu_s,
            self.cpu_s * 1e6 / self.requests.max(1) as f64,
            if self.busy >= BUSY_WARN {
                "\n  warning     the load generator was near its limit: the server may be faster than this shows (give it more --threads, or cores)"
            } else {
                ""
            }
        );
        let _ = write!(s, "  outcome     {} ok, {} errors", self.ok, errors);
        if self.unsent > 0 {
            let _ = write!(s, ", {} unsent", self.unsent);
        }
        for (code, n) in &self.errors {
            let _ = write!(s, "\n    {code:<16}{n}");
        }
        s
    }
}

/// One connection's state.
struct Conn {
    stream: TcpStream,
    dec: FrameDecoder,
    out: Vec<u8>,
    written: usize,
    /// Send instant of each request in flight, by id.
    /// Sent and unanswered: when, and the nonce its reply is signed over.
    inflight: HashMap<u64, (Instant, String)>,
    next_id: u64,
    /// Requests still to send; `None` until told to stop (duration mode).
    quota: Option<u64>,
    next_key: u64,
    key_step: u64,
    /// This connection's number, which makes `--op add`'s id cards unique.
    no: u64,
    dead: bool,
}

/// What one thread counted.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    unsent: u64,
    last_reply: Option<Instant>,
}

// === impl Tally ===

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ok: 0,
            errors: BTreeMap::new(),
            unsent: 0,
            last_reply: None,
        }
    }

    fn error(&mut self, code: &str, n: u64) {
        if n > 0 {
            *self.errors.entry(code.to_string()).or_default() += n;
        }
    }
}

/// Shared, read-only settings of a run.
struct Plan {
    op: Op,
    app: String,
    key: Key,
    pipeline: usize,
    keys: u64,
    stop_at: Option<Instant>,
    reply_timeout: Duration,
    /// The session token sent with every request (`--op add` needs one).
    token: Option<String>,
    /// Random bits that keep `--op add`'s id cards apart between runs.
    run_tag: u64,
}

/// Runs the benchmark `args` with the client settings `cfg` (balancers,
/// app, secret, reply timeout).
pub fn run(cfg: &ClientConfig, args: &BenchArgs, token: Option<String>) -> Result<Report> {
    if args.conns == 0 || args.pipeline == 0 || args.keys == 0 {
        return Err(Error::Config(
            "--conns, --pipeline and --keys must be at least 1".into(),
        ));
    }
    let requests = match args.duration {
        Some(_) => None,
        None => Some(args.requests.unwrap_or(DEFAULT_REQUESTS)),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores).clamp(1, args.conns);

    if args.op == Op::Login && args.setup {
        setup_users(cfg, args)?;
    }
    let (addrs, via) = targets(cfg, args)?;
    let mut servers: Vec<String> = addrs.clone();
    servers.sort();
    servers.dedup();

    // Connect everything before the clock starts.
    let mut per_thread: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, addr) in addrs.iter().enumerate() {
        let stream = connect(addr, cfg.connect_timeout).map_err(|e| Error::NoNode {
            kind: args.op.kind().into(),
            deadline: cfg.connect_timeout,
            last: format!("bench connection {i} cannot connect to {addr}: {e}"),
        })?;
        let quota =
            requests.map(|n| n / args.conns as u64 + u64::from((i as u64) < n % args.conns as u64));
        per_thread[i % threads].push(Conn {
            stream,
            dec: FrameDecoder::new(cfg.max_frame),
            out: Vec::with_capacity(256 * args.pipeline),
            written: 0,
            inflight: HashMap::with_capacity(args.pipeline * 2),
            next_id: 1,
            quota: quota.or(Some(u64::MAX)),
            next_key: i as u64 % args.keys,
            key_step: args.conns as u64,
            no: i as u64,
            dead: false,
        });
    }
    let start = Instant::now();
    let cpu_start = cpu_time();
    let plan = std::sync::Arc::new(Plan {
        op: args.op,
        app: cfg.app.clone(),
        key: Key::new(&cfg.secret),
        pipeline: args.pipeline,
        keys: args.keys,
        stop_at: args.duration.map(|d| start + d),
        reply_timeout: cfg.request_timeout,
        token,
        run_tag: rand::random::<u64>() & 0xffff_ffff_ffff,
    });
    let handles: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(t, conns)| {
            let plan = plan.clone();
            std::thread::Builder::new()
                .name(format!("bench-{t}"))
                .spawn(move || drive(&plan, conns))
                .map_err(|e| Error::io("cannot start a bench thread", e))
        })
        .collect::<Result<_>>()?;
    let mut total = Tally::new();
    for h in handles {
        let t = h
            .join()
            .map_err(|_| Error::Config("a bench thread panicked".into()))?
            .map_err(|e| Error::io("bench event loop failed", e))?;
        total.hist.add(&t.hist).expect("same bounds");
        total.ok += t.ok;
        for (k, v) in t.errors {
            total.error(&k, v);
        }
        total.unsent += t.unsent;
        total.last_reply = total.last_reply.max(t.last_reply);
    }
    let cpu_s = (cpu_time() - cpu_start).as_secs_f64();
    let elapsed = total
        .last_reply
        .map_or(Duration::ZERO, |t| t.duration_since(start))
        .max(Duration::from_micros(1));
    let answered = total.ok + total.errors.values().sum::<u64>();
    let h = &total.hist;
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    Ok(Report {
        op: args.op,
        via,
        servers,
        conns: args.conns,
        pipeline: args.pipeline,
        threads,
        requests: answered,
        ok: total.ok,
        errors: total.errors,
        unsent: total.unsent,
        elapsed_s: elapsed.as_secs_f64(),
        rps: answered as f64 / elapsed.as_secs_f64(),
        latency_ms: Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 / 1000.0,
            mean: h.mean() / 1000.0,
        },
        cores,
        cpu_s,
        busy: cpu_s / (start.elapsed().as_secs_f64() * threads.min(cores) as f64),
    })
}

/// Past this share of its cores busy, the report warns that the load
/// generator may be what limits the run.
const BUSY_WARN: f64 = 0.9;

/// CPU time used by this process so far, every thread.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Registers bench-user-0.. so that `--op login` has accounts to log in.
fn setup_users(cfg: &ClientConfig, args: &BenchArgs) -> Result<()> {
    let mut cfg = cfg.clone();
    cfg.node = args.target.clone();
    let mut c = Client::new(cfg)?;
    for k in 0..args.keys {
        let body =
            serde_json::json!({"name": format!("bench-user-{k}"), "password": BENCH_PASSWORD});
        match c.call("user.register", &body) {
            Ok(_) => {}
            Err(e) if e.code() == Some(dsf_common::ErrorCode::Conflict) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where each connection goes, and whether that is direct or through the
/// balancer.
fn targets(cfg: &ClientConfig, args: &BenchArgs) -> Result<(Vec<String>, &'static str)> {
    if let Some(t) = &args.target {
        return Ok((vec![t.clone(); args.conns], "direct"));
    }
    if args.op == Op::Resolve {
        if cfg.balancers.is_empty() {
            return Err(Error::Config("no balancer: pass --lb or --target".into()));
        }
        let lbs = (0..args.conns)
            .map(|i| cfg.balancers[i % cfg.balancers.len()].clone())
            .collect();
        return Ok((lbs, "balancer"));
    }
    let mut c = Client::new(cfg.clone())?;
    let mut by_key: HashMap<u64, String> = HashMap::new();
    let mut out = Vec::with_capacity(args.conns);
    for i in 0..args.conns as u64 {
        let k = i % args.keys;
        if let Some(a) = by_key.get(&k) {
            out.push(a.clone());
            continue;
        }
        let r = c.resolve(Some(&format!("bench-{k}")), &[])?;
        by_key.insert(k, r.addr.clone());
        out.push(r.addr);
    }
    Ok((out, "balancer"))
}

fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(ErrorKind::InvalidInput, "address resolved to nothing");
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                return Ok(TcpStream::from_std(s));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One thread's event loop over its connections.
fn drive(plan: &Plan, mut conns: Vec<Conn>) -> io::Result<Tally> {
    let mut tally = Tally::new();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut body = String::with_capacity(128);
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry().register(
            &mut c.stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
    }
    for c in conns.iter_mut() {
        fill(plan, c, &mut body);
        flush(c, &mut tally);
    }
    let mut stopped_at: Option<Instant> = None;
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        if stopped_at.is_none() && plan.stop_at.is_some_and(|t| now >= t) {
            stopped_at = Some(now);
            for c in conns.iter_mut() {
                c.quota = Some(0);
            }
        }
        let busy = conns
            .iter()
            .any(|c| !c.dead && (!c.inflight.is_empty() || c.quota != Some(0)));
        let gave_up = stopped_at.is_some_and(|t| now >= t + DRAIN_GRACE)
            || now >= last_progress + plan.reply_timeout;
        if !busy || gave_up {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if c.dead {
                continue;
            }
            if ev.is_readable() && read(plan, c, &mut tally) {
                last_progress = Instant::now();
            }
            if !c.dead {
                fill(plan, c, &mut body);
                flush(c, &mut tally);
            }
        }
    }
    for c in conns.iter_mut() {
        tally.error("timeout", c.inflight.len() as u64);
        c.inflight.clear();
        if plan.stop_at.is_none() {
            tally.unsent += c.quota.unwrap_or(0);
        }
    }
    Ok(tally)
}

/// Signs requests until the pipeline is full or the quota is spent.
fn fill(plan: &Plan, c: &mut Conn, body: &mut String) {
    let kind = plan.op.kind();
    while c.inflight.len() < plan.pipeline && c.quota.is_some_and(|q| q > 0) {
        let id = c.next_id;
        c.next_id += 1;
        let k = if plan.op == Op::Add {
            // A new id card every time, across connections and runs.
            (c.no << 40 | id) ^ plan.run_tag
        } else {
            c.next_key % plan.keys
        };
        c.next_key = c.next_key.wrapping_add(c.key_step);
        plan.op.body(k, body);
        let req = OutgoingRequest {
            id,
            kind,
            app: &plan.app,
            token: plan.token.as_deref(),
            body,
        };
        let nonce = encode_request(&plan.key, &req, &mut c.out);
        c.inflight.insert(id, (Instant::now(), nonce));
        c.quota = c.quota.map(|q| q - 1);
    }
}

/// Writes what the socket takes; the rest waits for a writable event.
fn flush(c: &mut Conn, tally: &mut Tally) {
    while c.written < c.out.len() {
        match c.stream.write(&c.out[c.written..]) {
            Ok(0) => return kill(c, tally, "io"),
            Ok(n) => c.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return kill(c, tally, "io"),
        }
    }
    c.out.clear();
    c.written = 0;
}

/// Reads and accounts every reply available; whether any came.
fn read(plan: &Plan, c: &mut Conn, tally: &mut Tally) -> bool {
    let mut progress = false;
    loop {
        match c.dec.read_from(&mut c.stream, READ_CHUNK) {
            Ok(0) => {
                kill(c, tally, "io");
                return progress;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return progress,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                kill(c, tally, "io");
                return progress;
            }
        }
        loop {
            let frame = match c.dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    kill(c, tally, "bad_reply");
                    return progress;
                }
            };
            let now = Instant::now();
            let Ok(reply) = Reply::parse(frame) else {
                kill(c, tally, "bad_reply");
                return progress;
            };
            let Some((sent, nonce)) = c.inflight.remove(&reply.id) else {
                // An error about the whole connection (id 0), or a stray id.
                let code = match reply.into_result() {
                    Err(e) => e.code().as_str().to_string(),
                    Ok(_) => "bad_reply".to_string(),
                };
                kill(c, tally, &code);
                return progress;
            };
            progress = true;
            tally.last_reply = Some(now);
            let micros = now.duration_since(sent).as_micros().max(1) as u64;
            tally.hist.saturating_record(micros);
            if reply.verify(&plan.key, &nonce).is_err() {
                tally.error("bad_reply", 1);
                continue;
            }
            if reply.ok {
                tally.ok += 1;
            } else {
                match reply.into_result() {
                    Err(e) => tally.error(e.code().as_str(), 1),
                    Ok(_) => tally.error("bad_reply", 1),
                }
            }
        }
    }
}

/// Gives up on a connection: what it had in flight counts as `code`.
fn kill(c: &mut Conn, tally: &mut Tally, code: &str) {
    tally.error(code, c.inflight.len() as u64);
    c.inflight.clear();
    c.dead = true;
}
