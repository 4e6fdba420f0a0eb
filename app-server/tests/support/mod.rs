//! Shared by the app-server tests: a server on 127.0.0.1:0 over a fresh
//! database, a raw signed connection, users of each role, a stand-in
//! collector, and waiting on conditions with deadlines.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use app_server::config::MAX_SESSION_CACHE;
use app_server::{Running, Settings};
use dsf_common::reactor::{Context, Dispatch, Reactor, ReactorConfig, Service, Shutdown};
use dsf_common::stream::FramedStream;
use dsf_common::wire::{
    encode_request, Admission, AppKeys, Key, OutgoingRequest, ReplayGuard, Reply,
};
use dsf_common::{Error, ErrorCode};
use dsf_sql::password::Cost;
use dsf_sql::testing::TestDb;
use dsf_sql::{DbConfig, Role};
use serde_json::{json, Value};

pub const APP: &str = "test";
pub const SECRET: &[u8] = b"app-test-secret";
pub const CLUSTER_SECRET: &[u8] = b"cluster-test-secret";
pub const WAIT: Duration = Duration::from_secs(20);
pub const PASSWORD: &str = "password-123";

/// Settings for a test server over `db`.
pub fn settings(db: DbConfig, collector: Option<String>) -> Settings {
    let mut keys = AppKeys::new();
    keys.insert(APP, SECRET);
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        proxy_advertise: None,
        node_id: None,
        weight: 1,
        db: db.workers(4),
        collectors: collector.into_iter().collect(),
        workers: 4,
        reactors: 1,
        queue: 64,
        app_keys: keys,
        heartbeat_key: Some(app_server::server::HeartbeatKey::Cluster(
            dsf_common::config::Secret::new(CLUSTER_SECRET),
        )),
        peer_secret: dsf_common::config::Secret::new(CLUSTER_SECRET),
        tls_ca: None,
        reactor: ReactorConfig {
            shutdown_grace: app_server::config::SHUTDOWN_DEADLINE,
            ..ReactorConfig::default()
        },
        session_cache: MAX_SESSION_CACHE,
        session_ttl: Duration::from_secs(3600),
        heartbeat_every: Duration::from_millis(200),
        password_cost: Cost::TEST,
        msg_poll: app_server::messaging::mailroom::POLL,
        reap_every: app_server::server::REAP_EVERY,
        claim_poll: app_server::tasks::CLAIM_POLL,
        registration: app_server::accounts::Registration::Open,
        auth_rate_name: dsf_common::pipeline::Rate::Off,
        auth_rate_addr: dsf_common::pipeline::Rate::Off,
        metrics_listen: None,
    }
}

/// A server over `db`, stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub node: String,
    running: Option<Running>,
}

impl Server {
    pub fn start(db: &TestDb) -> Server {
        Server::with(settings(db.config(), None))
    }

    pub fn with(s: Settings) -> Server {
        let running = app_server::start(s).expect("app server starts");
        Server {
            addr: running.addr(),
            node: running.node_id().to_string(),
            running: Some(running),
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// Graceful shutdown, as SIGTERM does it.
    pub fn stop(&mut self) -> app_server::server::ShutdownReport {
        self.running.take().expect("running").stop().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop();
        }
    }
}

/// Tells each server of the others, as the collector's heartbeat reply does.
pub fn introduce(servers: &[&Server]) {
    let nodes: Vec<dsf_common::view::NodeView> = servers
        .iter()
        .map(|s| dsf_common::view::NodeView {
            id: s.node.clone(),
            addr: s.addr.to_string(),
            proxy_addr: None,
            weight: 1,
            state: Default::default(),
            load: Default::default(),
        })
        .collect();
    for s in servers {
        s.running().node().peers().set_view(1, &nodes);
    }
}

/// A raw signed connection.
pub struct Conn {
    pub stream: FramedStream,
    next_id: u64,
    /// The nonce each request was sent with: its reply is signed over it.
    nonces: std::collections::HashMap<u64, String>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn {
            stream: FramedStream::connect(addr, WAIT, 1 << 20).unwrap(),
            next_id: 1,
            nonces: Default::default(),
        }
    }

    /// Signs and sends one request; returns its id.
    pub fn send(&mut self, kind: &str, body: &Value, token: Option<&str>) -> u64 {
        let body = body.to_string();
        self.send_raw_body(kind, &body, token)
    }

    /// Like [`Conn::send`] with the body's exact text.
    pub fn send_raw_body(&mut self, kind: &str, body: &str, token: Option<&str>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        let req = OutgoingRequest {
            id,
            kind,
            app: APP,
            token,
            body,
        };
        let nonce = encode_request(&Key::new(SECRET), &req, &mut out);
        self.nonces.insert(id, nonce);
        self.stream.send(&out).unwrap();
        id
    }

    /// Sends bytes as they are; a whole request among them is remembered,
    /// so its reply can be verified.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        if bytes.len() > 4 {
            if let Ok(r) = dsf_common::wire::Request::parse(&bytes[4..]) {
                self.nonces.insert(r.id, r.nonce);
            }
        }
        self.stream.send(bytes).unwrap();
    }

    /// A fresh id for hand-made frames.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The next reply, its signature checked: (id, body or error).
    pub fn recv(&mut self) -> (u64, Result<Value, Error>) {
        let payload = self
            .stream
            .recv(Instant::now() + WAIT)
            .unwrap()
            .expect("a reply, not EOF");
        let reply = Reply::parse(&payload).unwrap();
        let nonce = self.nonces.get(&reply.id).cloned().unwrap_or_default();
        if reply.sig.is_some() || reply.ok {
            reply
                .verify(&Key::new(SECRET), &nonce)
                .expect("replies are signed with the app's key over the request's nonce");
        }
        let id = reply.id;
        let result = reply
            .into_result()
            .map(|raw| serde_json::from_str(raw.get()).unwrap());
        (id, result)
    }

    /// One round trip.
    pub fn call(&mut self, kind: &str, body: Value, token: Option<&str>) -> Result<Value, Error> {
        let id = self.send(kind, &body, token);
        let (got, result) = self.recv();
        assert_eq!(got, id, "reply to the request sent");
        result
    }

    /// One round trip that must succeed.
    pub fn ok(&mut self, kind: &str, body: Value, token: Option<&str>) -> Value {
        self.call(kind, body, token)
            .unwrap_or_else(|e| panic!("{kind}: {}: {e}", e.code()))
    }

    /// One round trip that must fail with `code`; returns the message.
    pub fn err(&mut self, kind: &str, body: Value, token: Option<&str>, code: ErrorCode) -> String {
        match self.call(kind, body, token) {
            Ok(v) => panic!("{kind}: expected {code}, got ok {v}"),
            Err(e) => {
                assert_eq!(e.code(), code, "{kind}: {e}");
                e.to_string()
            }
        }
    }

    /// Registers `name` and logs in; returns the token.
    pub fn user(&mut self, name: &str) -> String {
        self.ok(
            "user.register",
            json!({"name": name, "password": PASSWORD}),
            None,
        );
        self.login(name)
    }

    pub fn login(&mut self, name: &str) -> String {
        let v = self.ok(
            "user.login",
            json!({"name": name, "password": PASSWORD}),
            None,
        );
        v["token"].as_str().unwrap().to_string()
    }

    /// A user of `role` logged in; returns the token.
    pub fn user_with_role(&mut self, db: &TestDb, name: &str, role: Role) -> String {
        self.ok(
            "user.register",
            json!({"name": name, "password": PASSWORD}),
            None,
        );
        db.users().set_role(name, role).unwrap();
        self.login(name)
    }
}

/// Waits until `cond` holds, failing the test after [`WAIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a stand-in collector received: (type, body) in order.
pub type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A collector stand-in: a real reactor that admits under the cluster secret
/// only, records `node.heartbeat` and `node.leave` bodies, and answers them.
pub struct Collector {
    pub addr: SocketAddr,
    pub received: Received,
    shutdown: Shutdown,
    reactor: Option<JoinHandle<std::io::Result<()>>>,
}

struct Recorder {
    admission: Admission,
    received: Received,
}

impl Service for Recorder {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        let a = match self.admission.admit(payload) {
            Ok(a) => a,
            Err(refused) => {
                cx.refuse(&refused);
                return Dispatch::Done;
            }
        };
        let r = &a.request;
        let body: Value = serde_json::from_str(r.body.get()).unwrap();
        let reply = match r.kind.as_str() {
            "node.heartbeat" => r#"{"view":1}"#,
            "node.leave" => "{}",
            other => {
                let e = Error::UnknownType(format!("stand-in collector: no {other}"));
                a.error(&e, cx.out());
                return Dispatch::Done;
            }
        };
        self.received.lock().unwrap().push((r.kind.clone(), body));
        a.ok(reply, cx.out());
        Dispatch::Done
    }
}

impl Collector {
    /// Listens on `addr` (port 0 for a free one).
    pub fn start(addr: SocketAddr, received: Received) -> Collector {
        let keys = AppKeys::new().with_cluster_secret(CLUSTER_SECRET);
        let service = Recorder {
            admission: Admission::new(keys, ReplayGuard::default()),
            received: received.clone(),
        };
        let reactor = Reactor::bind(ReactorConfig::default(), &[addr], service).unwrap();
        let addr = reactor.local_addrs()[0];
        let shutdown = reactor.shutdown_handle();
        let reactor = Some(reactor.spawn().unwrap());
        Collector {
            addr,
            received,
            shutdown,
            reactor,
        }
    }

    /// Bodies of `kind` received so far.
    pub fn bodies(&self, kind: &str) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, b)| b.clone())
            .collect()
    }

    pub fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(r) = self.reactor.take() {
            r.join().unwrap().unwrap();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}
