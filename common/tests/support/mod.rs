//! The echo server the reactor tests share, built the way every dsf server
//! is: admission on the reactor thread, work on a worker pool, replies back
//! through the waker; and the client helpers they use.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use dsf_common::pool::{Submitter, WorkerPool};
use dsf_common::reactor::{
    Accept, ConnId, Context, Dispatch, Reactor, ReactorConfig, ReactorStats, ReplyTo, Service,
    Shutdown,
};
use dsf_common::stream::FramedStream;
use dsf_common::wire::{
    encode_request, Admission, Admitted, AppKeys, Key, OutgoingRequest, ReplayGuard, Reply,
};
use dsf_common::ErrorCode;

pub const SECRET: &[u8] = b"echo-secret";
pub const WAIT: Duration = Duration::from_secs(10);

struct Job {
    admitted: Admitted,
    reply: ReplyTo,
}

/// Echoes the body. `echo.inline` answers on the reactor thread; `echo`
/// goes through the pool; `echo.gated` waits for the test to open the gate.
/// Every connection accepted is noted with the reactor thread that took it.
struct Echo {
    admission: Arc<Admission>,
    pool: Submitter<Job>,
    accepted: Arc<Mutex<Vec<(ConnId, String)>>>,
}

impl Service for Echo {
    fn on_accept(&mut self, cx: &mut Context<'_>) -> Accept {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.accepted.lock().unwrap().push((cx.conn(), thread));
        Accept::Framed
    }

    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        // Before admission, which remembers the nonce: a Busy frame comes back.
        let Some(slot) = self.pool.try_reserve() else {
            return Dispatch::Busy;
        };
        let admitted = match self.admission.admit(payload) {
            Ok(a) => a,
            Err(refused) => {
                cx.refuse(&refused);
                return Dispatch::Done;
            }
        };
        if admitted.request.kind == "echo.inline" {
            admitted.ok(admitted.request.body.get(), cx.out());
            return Dispatch::Done;
        }
        let reply = cx.defer();
        match slot.submit(Job { admitted, reply }) {
            Ok(()) => Dispatch::Done,
            Err(job) => {
                // The place was reserved: the pool is shutting down.
                cx.cancel(job.reply);
                let e = dsf_common::Error::Unavailable("server is shutting down".into());
                job.admitted.error(&e, cx.out());
                Dispatch::Done
            }
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub stats: Arc<ReactorStats>,
    pub gate: Sender<()>,
    /// Connections accepted, with the reactor thread that took each.
    pub accepted: Arc<Mutex<Vec<(ConnId, String)>>>,
    reactors: Vec<JoinHandle<std::io::Result<()>>>,
    pool: Option<WorkerPool<Job>>,
}

impl Server {
    pub fn start(cfg: ReactorConfig, workers: usize, queue: usize) -> Server {
        Server::start_group(cfg, workers, queue, 1)
    }

    /// `reactors` reactors on one port, sharing one pool; the first is
    /// thread `reactor-0`.
    pub fn start_group(
        mut cfg: ReactorConfig,
        workers: usize,
        queue: usize,
        reactors: usize,
    ) -> Server {
        let mut keys = AppKeys::new();
        keys.insert("test", SECRET);
        let admission = Arc::new(Admission::new(keys, ReplayGuard::default()));
        let (gate, gate_rx): (Sender<()>, Receiver<()>) = bounded(1024);
        let pool = WorkerPool::new("echo", workers, queue, move |job: Job| {
            let r = &job.admitted.request;
            if r.kind == "echo.gated" {
                let _ = gate_rx.recv();
            }
            let mut out = Vec::new();
            job.admitted.ok(r.body.get(), &mut out);
            job.reply.send(out);
        });
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let service = || Echo {
            admission: admission.clone(),
            pool: pool.submitter(),
            accepted: accepted.clone(),
        };
        cfg.reuse_port = reactors > 1;
        let first = Reactor::bind(cfg, &["127.0.0.1:0".parse().unwrap()], service()).unwrap();
        let siblings: Vec<_> = (1..reactors)
            .map(|_| first.sibling(&[0], service()).unwrap())
            .collect();
        let addr = first.local_addrs()[0];
        let shutdown = first.shutdown_handle();
        let stats = first.stats();
        let mut threads = vec![first.spawn_as("reactor-0").unwrap()];
        for (i, r) in siblings.into_iter().enumerate() {
            threads.push(r.spawn_as(&format!("reactor-{}", i + 1)).unwrap());
        }
        Server {
            addr,
            shutdown,
            stats,
            gate,
            accepted,
            reactors: threads,
            pool: Some(pool),
        }
    }

    pub fn connect(&self) -> FramedStream {
        FramedStream::connect(self.addr, WAIT, 1 << 20).unwrap()
    }

    pub fn stop(&mut self) {
        self.shutdown.trigger();
        for r in self.reactors.drain(..) {
            r.join().unwrap().unwrap();
        }
        if let Some(p) = self.pool.take() {
            for _ in 0..p.workers() * 4 {
                let _ = self.gate.try_send(());
            }
            p.shutdown(WAIT);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn request(id: u64, kind: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let req = OutgoingRequest {
        id,
        kind,
        app: "test",
        token: None,
        body,
    };
    let nonce = encode_request(&Key::new(SECRET), &req, &mut out);
    expect_reply(id, nonce);
    out
}

thread_local! {
    /// The nonces of requests this thread sent, by id: a reply is signed
    /// over its request's nonce, and the same id is used on many
    /// connections.
    static SENT: std::cell::RefCell<std::collections::HashMap<u64, Vec<String>>> =
        Default::default();
}

/// Lets [`recv_reply`] verify a reply to `id` signed over `nonce`.
pub fn expect_reply(id: u64, nonce: String) {
    SENT.with(|m| m.borrow_mut().entry(id).or_default().push(nonce));
}

/// The next reply, verified against the nonce of a request this thread sent
/// with its id.
pub fn recv_reply(s: &mut FramedStream) -> Reply {
    let payload = s
        .recv(Instant::now() + WAIT)
        .unwrap()
        .expect("a reply, not EOF");
    let reply = Reply::parse(&payload).unwrap();
    verify_sent(&reply);
    reply
}

/// Checks a reply (or event) against the nonces of the requests this thread
/// sent with its id; a final reply uses its nonce up.
pub fn verify_sent(reply: &Reply) {
    if reply.sig.is_none() {
        // Unsigned: only ever an error about a frame that could not be read.
        assert!(!reply.ok, "an unsigned success");
        return;
    }
    let key = Key::new(SECRET);
    let verified = SENT.with(|m| {
        let mut m = m.borrow_mut();
        let nonces = m.get_mut(&reply.id)?;
        let i = nonces.iter().position(|n| reply.verify(&key, n).is_ok())?;
        if !reply.is_event() {
            nonces.swap_remove(i);
        }
        Some(())
    });
    assert!(
        verified.is_some(),
        "reply {} does not verify against any request sent with that id",
        reply.id
    );
}

/// One round trip that must succeed.
pub fn ping(s: &mut FramedStream, id: u64) {
    s.send(&request(id, "echo", "{\"n\":1}")).unwrap();
    let r = recv_reply(s);
    assert_eq!(r.id, id);
    assert_eq!(r.into_result().unwrap().get(), "{\"n\":1}");
}

/// Sends raw bytes and expects one error reply with `code`, then EOF.
pub fn expect_error_then_close(server: &Server, raw: &[u8], code: ErrorCode) {
    let mut good = server.connect();
    ping(&mut good, 1);
    let mut bad = server.connect();
    bad.send(raw).unwrap();
    let r = recv_reply(&mut bad);
    assert!(
        r.sig.is_none(),
        "replies to frames that could not be read are unsigned"
    );
    assert_eq!(r.into_result().unwrap_err().code(), code);
    let rest = bad.read_to_end_until(Instant::now() + WAIT).unwrap();
    assert!(
        rest.is_empty(),
        "nothing follows the error before the close"
    );
    ping(&mut good, 2);
}

pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
