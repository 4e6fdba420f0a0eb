//! Stand-in servers for the client's tests: real dsf reactors on
//! 127.0.0.1:0 with real admission (signature, replay guard), whose
//! handler a test chooses: answer, refuse, forge, close mid-request, or
//! hold replies to release them out of order. [`fake_lb`] answers
//! `lb.resolve` and `lb.view` the way the design says a balancer does.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dsf_common::reactor::{Context, Dispatch, Reactor, ReactorConfig, ReplyTo, Service, Shutdown};
use dsf_common::wire::{self, Admission, AppKeys, Key, ReplayGuard, Request};
use dsf_common::Error;
use serde_json::{json, Value};

pub const APP: &str = "cli";
pub const SECRET: &[u8] = b"client-test-secret";
pub const WAIT: Duration = Duration::from_secs(10);

/// What a stand-in does with one admitted request.
pub enum Action {
    Ok(String),
    Err(Error),
    /// Close the connection without answering (after reading the request).
    Close,
    /// Answer, signed with the wrong key.
    Forge(String),
    /// Answer with an unsigned error under the request's id, as an
    /// attacker on the path could inject.
    Unsigned(Error),
    /// Answer with these frames as they are (a recorded reply replayed).
    Raw(Vec<u8>),
    /// Keep the request; [`TestServer::release_reversed`] answers it later.
    Hold,
}

type Handler = Arc<dyn Fn(&Request) -> Action + Send + Sync>;

struct Held {
    reply: ReplyTo,
    key: Key,
    id: u64,
    nonce: String,
    body: String,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<String>>,
    /// The nonce of every request, in arrival order.
    nonces: Mutex<Vec<String>>,
    /// The frames last sent in answer, as bytes on the wire.
    last: Mutex<Option<Vec<u8>>>,
    held: Mutex<Vec<Held>>,
}

struct Svc {
    admission: Arc<Admission>,
    handler: Handler,
    shared: Arc<Shared>,
}

impl Service for Svc {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        let a = match self.admission.admit(payload) {
            Ok(a) => a,
            Err(refused) => {
                cx.refuse(&refused);
                return Dispatch::Done;
            }
        };
        let r = &a.request;
        self.shared.seen.lock().unwrap().push(r.kind.clone());
        if r.kind != "lb.resolve" {
            self.shared.nonces.lock().unwrap().push(r.nonce.clone());
        }
        let before = cx.out().len();
        self.answer(&a, cx);
        if cx.out().len() > before {
            *self.shared.last.lock().unwrap() = Some(cx.out()[before..].to_vec());
        }
        Dispatch::Done
    }
}

impl Svc {
    fn answer(&self, a: &dsf_common::wire::Admitted, cx: &mut Context<'_>) {
        let r = &a.request;
        match (self.handler)(r) {
            Action::Ok(body) => a.ok(&body, cx.out()),
            Action::Err(e) => a.error(&e, cx.out()),
            Action::Close => cx.close(),
            Action::Forge(body) => wire::encode_ok(
                Some(&Key::new(b"not-the-secret")),
                r.id,
                &r.nonce,
                &body,
                cx.out(),
            ),
            Action::Unsigned(e) => wire::encode_error(None, r.id, "", &e, cx.out()),
            Action::Raw(bytes) => cx.out().extend_from_slice(&bytes),
            Action::Hold => {
                let reply = cx.defer();
                self.shared.held.lock().unwrap().push(Held {
                    reply,
                    key: a.key.clone(),
                    id: r.id,
                    nonce: r.nonce.clone(),
                    body: r.body.get().to_string(),
                });
            }
        }
    }
}

/// A running stand-in server.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    reactor: Option<JoinHandle<std::io::Result<()>>>,
    shared: Arc<Shared>,
}

impl TestServer {
    /// Starts a server whose handler is `handler`.
    pub fn start(handler: impl Fn(&Request) -> Action + Send + Sync + 'static) -> TestServer {
        let mut keys = AppKeys::new();
        keys.insert(APP, SECRET);
        let shared = Arc::new(Shared::default());
        let svc = Svc {
            admission: Arc::new(Admission::new(keys, ReplayGuard::default())),
            handler: Arc::new(handler),
            shared: shared.clone(),
        };
        let cfg = ReactorConfig {
            shutdown_grace: Duration::from_millis(200),
            ..ReactorConfig::default()
        };
        let reactor = Reactor::bind(cfg, &["127.0.0.1:0".parse().unwrap()], svc).unwrap();
        let addr = reactor.local_addrs()[0];
        let shutdown = reactor.shutdown_handle();
        TestServer {
            addr,
            shutdown,
            reactor: Some(reactor.spawn().unwrap()),
            shared,
        }
    }

    /// An app server named `name` with the standard stand-in handlers.
    pub fn app(name: &'static str) -> TestServer {
        TestServer::start(move |r| app_handler(name, r))
    }

    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// How many admitted requests of type `kind` it has seen.
    pub fn seen(&self, kind: &str) -> usize {
        self.shared
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|k| *k == kind)
            .count()
    }

    /// The nonces of the requests received (but `lb.resolve`), in order.
    pub fn nonces(&self) -> Vec<String> {
        self.shared.nonces.lock().unwrap().clone()
    }

    /// The frames last sent in answer to a request.
    pub fn last_reply(&self) -> Option<Vec<u8>> {
        self.shared.last.lock().unwrap().clone()
    }

    pub fn held(&self) -> usize {
        self.shared.held.lock().unwrap().len()
    }

    /// Answers every held request, last received first, echoing its body.
    pub fn release_reversed(&self) {
        let held: Vec<Held> = std::mem::take(&mut *self.shared.held.lock().unwrap());
        for h in held.into_iter().rev() {
            let mut out = Vec::new();
            wire::encode_ok(Some(&h.key), h.id, &h.nonce, &h.body, &mut out);
            h.reply.send(out);
        }
    }

    /// Stops the reactor and waits until its port refuses connections.
    pub fn stop(&mut self) {
        self.shared.held.lock().unwrap().clear();
        self.shutdown.trigger();
        if let Some(r) = self.reactor.take() {
            r.join().unwrap().unwrap();
        }
        let addr = self.addr;
        wait_until("the stopped server's port to refuse", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
        });
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.reactor.is_some() {
            self.shutdown.trigger();
            if let Some(r) = self.reactor.take() {
                let _ = r.join();
            }
        }
    }
}

/// The standard app-server stand-in: `sys.ping`, `gate.check` (ids ending
/// in 7 are listed), `blacklist.get` (nothing is listed), `blacklist.add`,
/// `user.register` (answered alike for every name, as the servers do),
/// `user.login` / `user.me` for ann (password pw-ann), `echo`.
pub fn app_handler(name: &str, r: &Request) -> Action {
    let body: Value = serde_json::from_str(r.body.get()).unwrap();
    match r.kind.as_str() {
        "sys.ping" => Action::Ok(json!({ "node": name }).to_string()),
        "gate.check" => {
            let id = body["id_card"].as_str().unwrap_or("");
            if id.ends_with('7') {
                Action::Ok(
                    json!({"hit": true, "entry": {"id_card": id, "name": body["name"], "reason": "test"}})
                        .to_string(),
                )
            } else {
                Action::Ok(json!({"hit": false}).to_string())
            }
        }
        "blacklist.get" => Action::Err(Error::NotFound(format!(
            "no entry for id card {}",
            body["id_card"].as_str().unwrap_or("")
        ))),
        "blacklist.add" => Action::Ok(
            json!({"id_card": body["id_card"], "name": body["name"], "reason": null, "node": name,
                   "created_by": name, "created_at": 1_796_454_825_554u64,
                   "updated_by": name, "updated_at": 1_796_454_825_554u64})
            .to_string(),
        ),
        "user.register" => Action::Ok(json!({ "name": body["name"] }).to_string()),
        "user.login" if body["name"] == "ann" && body["password"] == "pw-ann" => Action::Ok(
            json!({"token": "tok-ann", "expires_at": 1_900_000_000_000u64,
                   "user": {"id": 1, "name": "ann", "role": "viewer"}})
            .to_string(),
        ),
        "user.login" => Action::Err(Error::Unauthorized("wrong name or password".into())),
        "user.me" if r.token.as_deref() == Some("tok-ann") => {
            Action::Ok(json!({"id": 1, "name": "ann", "role": "viewer"}).to_string())
        }
        "user.me" if r.token.is_some() => Action::Err(Error::Unauthorized(
            "session token is unknown, expired or logged out: log in again with user.login".into(),
        )),
        "user.me" => Action::Err(Error::Unauthorized("log in first".into())),
        "echo" => Action::Ok(r.body.get().to_string()),
        other => Action::Err(Error::UnknownType(format!("no handler for {other}"))),
    }
}

/// The nodes a fake balancer hands out, in order of preference.
pub type Nodes = Arc<Mutex<Vec<(String, String)>>>;

/// A balancer stand-in: `lb.resolve` gives the first node not excluded
/// (`unavailable` if none), `lb.view` lists every node with an equal share.
pub fn fake_lb(nodes: Vec<(&str, String)>) -> (TestServer, Nodes) {
    let nodes: Nodes = Arc::new(Mutex::new(
        nodes
            .into_iter()
            .map(|(id, a)| (id.to_string(), a))
            .collect(),
    ));
    let n = nodes.clone();
    let server = TestServer::start(move |r| {
        let body: Value = serde_json::from_str(r.body.get()).unwrap();
        let nodes = n.lock().unwrap();
        match r.kind.as_str() {
            "lb.resolve" => {
                let exclude: Vec<&str> = body["exclude"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match nodes.iter().find(|(id, _)| !exclude.contains(&id.as_str())) {
                    Some((id, addr)) => {
                        Action::Ok(json!({"node": id, "addr": addr, "view": 7}).to_string())
                    }
                    None => Action::Err(Error::Unavailable("no node is up".into())),
                }
            }
            "lb.view" => {
                let share = 1.0 / nodes.len().max(1) as f64;
                let list: Vec<Value> = nodes
                    .iter()
                    .map(|(id, addr)| json!({"id": id, "addr": addr, "weight": 1, "state": "up", "share": share}))
                    .collect();
                Action::Ok(json!({"version": 7, "nodes": list}).to_string())
            }
            other => Action::Err(Error::UnknownType(format!(
                "a balancer does not answer {other}"
            ))),
        }
    });
    (server, nodes)
}

/// An address nothing listens on.
pub fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}

pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
