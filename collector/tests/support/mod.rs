//! What the collector's tests share: real balancers (`lb_server`) and
//! collectors on 127.0.0.1:0, a signed client, a heartbeating node that can
//! be stopped dead, and polling with deadlines.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use collector::server::Settings;
use dsf_common::reactor::ReactorConfig;
use dsf_common::stream::FramedStream;
use dsf_common::view::{Heartbeat, NodeState, Stats};
use dsf_common::wire::{encode_request, AppKeys, Key, OutgoingRequest, Reply};
use dsf_common::Error;
use serde_json::{json, Value};

pub const APP: &str = "cli";
pub const APP_SECRET: &[u8] = b"collector-test-app-secret";
pub const CLUSTER_SECRET: &[u8] = b"collector-test-cluster-secret";
/// Upper bound for waits that have no requirement of their own.
pub const WAIT: Duration = Duration::from_secs(10);
/// The dead-after the tests run with (the default is 3 s).
pub const DEAD_AFTER: Duration = Duration::from_secs(1);
/// How often test nodes heartbeat.
pub const BEAT: Duration = Duration::from_millis(100);

pub fn app_keys() -> AppKeys {
    let mut k = AppKeys::new();
    k.insert(APP, APP_SECRET);
    k
}

pub fn init_logs() {
    dsf_common::logging::init("warn");
}

// --- balancers ---

pub fn lb_settings(cluster_listen: SocketAddr) -> lb_server::server::Settings {
    lb_server::server::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        cluster_listen,
        backends: Vec::new(),
        policy: dsf_ring::policy::PolicyKind::Ring,
        ring: dsf_ring::RingConfig::default(),
        app_keys: app_keys(),
        cluster_secret: dsf_common::config::Secret::new(CLUSTER_SECRET),
        reactor: ReactorConfig::default(),
        reactors: 1,
        proxy: None,
    }
}

/// A real balancer on free ports.
pub fn start_lb() -> lb_server::server::Running {
    init_logs();
    lb_server::server::start(lb_settings("127.0.0.1:0".parse().unwrap())).unwrap()
}

/// `lb.view` over the balancer's client port, as a client sees it.
pub fn lb_view(lb: &lb_server::server::Running) -> Value {
    Client::app(lb.client_addr)
        .call("lb.view", json!({}))
        .unwrap()
}

/// The ids in a view (`lb.view` or `View` as JSON).
pub fn ids(view: &Value) -> Vec<String> {
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

// --- collectors ---

/// A collector on free ports pushing to `lbs`, with a short warm-up.
pub fn collector_settings(lbs: &[SocketAddr]) -> Settings {
    let mut s = Settings::new(
        lbs.iter().map(|a| a.to_string()).collect(),
        CLUSTER_SECRET.to_vec(),
    );
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.metrics_listen = "127.0.0.1:0".parse().unwrap();
    s.dead_after = DEAD_AFTER;
    s.warmup = Duration::from_millis(100);
    s.app_keys = app_keys();
    s
}

/// The `collector` binary, without any of the caller's `DSF_*` settings.
pub fn collector_binary() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_collector"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DSF_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

pub fn start_collector(s: Settings) -> collector::server::Running {
    init_logs();
    collector::server::start(s).unwrap()
}

/// Waits until `lb` holds a view from the collector (version > 0): the
/// collector has warmed up and its pusher is connected.
pub fn wait_for_first_push(lb: &lb_server::server::Running) {
    wait_until("the first view from the collector", WAIT, || {
        lb.view().version > 0
    });
}

/// Waits until the collector has recorded an acknowledged push to every
/// balancer.
pub fn wait_for_acks(col: &collector::server::Running) {
    wait_until("every balancer acknowledged a push", WAIT, || {
        col.cluster()
            .snapshot()
            .balancers
            .iter()
            .all(|b| b.connected && b.pushes > 0)
    });
}

// --- polling ---

/// Polls `cond` until it holds; panics naming `what` after `within`.
/// Returns how long it took.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Checks `cond` holds for the whole of `span`.
pub fn holds_for(what: &str, span: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < span {
        assert!(
            cond(),
            "{what}: stopped holding after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- a signed client ---

pub struct Client {
    stream: FramedStream,
    app: &'static str,
    key: Key,
    next_id: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr, app: &'static str, secret: &[u8]) -> Client {
        Client {
            stream: FramedStream::connect(addr, WAIT, 1 << 20).unwrap(),
            app,
            key: Key::new(secret),
            next_id: 1,
        }
    }

    pub fn app(addr: SocketAddr) -> Client {
        Client::connect(addr, APP, APP_SECRET)
    }

    pub fn cluster(addr: SocketAddr) -> Client {
        Client::connect(addr, "cluster", CLUSTER_SECRET)
    }

    /// One request and its verified reply.
    pub fn call(&mut self, kind: &str, body: Value) -> Result<Value, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let body = body.to_string();
        let mut out = Vec::new();
        let req = OutgoingRequest {
            id,
            kind,
            app: self.app,
            token: None,
            body: &body,
        };
        let nonce = encode_request(&self.key, &req, &mut out);
        self.stream.send(&out).unwrap();
        let frame = self.stream.recv(Instant::now() + WAIT).unwrap().unwrap();
        let reply = Reply::parse(&frame).unwrap();
        assert_eq!(reply.id, id);
        // A forged request's refusal is signed with the real key, which a
        // forger cannot check: compare the error, not the signature.
        if reply.ok {
            reply.verify(&self.key, &nonce)?;
        }
        let raw = reply.into_result()?;
        Ok(serde_json::from_str(raw.get()).unwrap())
    }

    pub fn heartbeat(&mut self, hb: &Heartbeat) -> Result<Value, Error> {
        self.call("node.heartbeat", serde_json::to_value(hb).unwrap())
    }
}

pub fn heartbeat(id: &str, addr: &str) -> Heartbeat {
    Heartbeat {
        id: id.into(),
        addr: addr.into(),
        proxy_addr: None,
        weight: 1,
        state: NodeState::Up,
        stats: Stats::default(),
        known_view: None,
    }
}

// --- a heartbeating node ---

/// A node sending heartbeats every [`BEAT`] on its own thread, reconnecting
/// if the collector goes away. [`Node::kill`] stops it dead, without a
/// `node.leave`: what SIGKILL does to an app server.
pub struct Node {
    pub hb: Arc<Mutex<Heartbeat>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Node {
    pub fn start(collector: SocketAddr, id: &str) -> Node {
        Node::start_with(collector, id, |_| {})
    }

    /// A node whose heartbeats, from the first, are changed by `f`.
    pub fn start_with(collector: SocketAddr, id: &str, f: impl FnOnce(&mut Heartbeat)) -> Node {
        Node::start_to(&[collector], id, f)
    }

    /// A node heartbeating to each of `collectors` (an active collector
    /// and its standby), over one connection each.
    pub fn start_to(collectors: &[SocketAddr], id: &str, f: impl FnOnce(&mut Heartbeat)) -> Node {
        let mut first = heartbeat(id, &format!("127.0.0.1:{}", 17000 + id.len()));
        f(&mut first);
        let hb = Arc::new(Mutex::new(first));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = collectors
            .iter()
            .map(|&collector| {
                let (hb, stop) = (hb.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("node-{id}"))
                    .spawn(move || beat(collector, hb, stop))
                    .unwrap()
            })
            .collect();
        Node { hb, stop, threads }
    }

    pub fn set(&self, f: impl FnOnce(&mut Heartbeat)) {
        f(&mut self.hb.lock().unwrap());
    }

    /// Stops sending at once; the connection just goes away.
    pub fn kill(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The heartbeat loop of a test node (also run by a child process).
pub fn beat(collector: SocketAddr, hb: Arc<Mutex<Heartbeat>>, stop: Arc<AtomicBool>) {
    let mut conn: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            if let Ok(s) = FramedStream::connect(collector, Duration::from_millis(200), 1 << 20) {
                conn = Some(Client {
                    stream: s,
                    app: "cluster",
                    key: Key::new(CLUSTER_SECRET),
                    next_id: 1,
                });
            }
        }
        if let Some(c) = conn.as_mut() {
            let hb = hb.lock().unwrap().clone();
            if !try_call(c, &hb) {
                conn = None;
            }
        }
        std::thread::sleep(BEAT);
    }
}

fn try_call(c: &mut Client, hb: &Heartbeat) -> bool {
    let body = serde_json::to_string(hb).unwrap();
    let id = c.next_id;
    c.next_id += 1;
    let mut out = Vec::new();
    let req = OutgoingRequest {
        id,
        kind: "node.heartbeat",
        app: c.app,
        token: None,
        body: &body,
    };
    encode_request(&c.key, &req, &mut out);
    if c.stream.send(&out).is_err() {
        return false;
    }
    matches!(
        c.stream.recv(Instant::now() + Duration::from_secs(2)),
        Ok(Some(_))
    )
}

// --- metrics over HTTP ---

/// `GET path` on the metrics port: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = http_get_with(addr, path, "");
    (code, body)
}

/// [`http_get`] with extra header lines (each ending in `\r\n`); gives the
/// status, the head and the body.
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}
