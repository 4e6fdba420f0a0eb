//! The echo server the reactor tests share, built the way every dsf server
//! is: admission on the reactor thread, work on a worker pool, replies back
//! through the waker; and the client helpers they use.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use dsf_common::pool::{Submitter, WorkerPool};
use dsf_common::reactor::{
    Context, Dispatch, Reactor, ReactorConfig, ReactorStats, ReplyTo, Service, Shutdown,
};
use dsf_common::stream::FramedStream;
use dsf_common::wire::{
    self, encode_request, Admission, Admitted, AppKeys, Key, OutgoingRequest, ReplayGuard, Reply,
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
struct Echo {
    admission: Arc<Admission>,
    pool: Submitter<Job>,
}

impl Service for Echo {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        // Before admission, which remembers the nonce: a Busy frame comes back.
        if self.pool.is_full() {
            return Dispatch::Busy;
        }
        let admitted = match self.admission.admit(payload) {
            Ok(a) => a,
            Err(refused) => {
                cx.refuse(&refused);
                return Dispatch::Done;
            }
        };
        if admitted.request.kind == "echo.inline" {
            let r = &admitted.request;
            wire::encode_ok(Some(&admitted.key), r.id, r.body.get(), cx.out());
            return Dispatch::Done;
        }
        let reply = cx.defer();
        match self.pool.try_submit(Job { admitted, reply }) {
            Ok(()) => Dispatch::Done,
            Err(job) => {
                // Only this thread submits, so the queue had room: the pool
                // is shutting down.
                let id = job.admitted.request.id;
                cx.cancel(job.reply);
                let e = dsf_common::Error::Unavailable("server is shutting down".into());
                wire::encode_error(Some(&job.admitted.key), id, &e, cx.out());
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
    reactor: Option<JoinHandle<std::io::Result<()>>>,
    pool: Option<WorkerPool<Job>>,
}

impl Server {
    pub fn start(cfg: ReactorConfig, workers: usize, queue: usize) -> Server {
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
            wire::encode_ok(Some(&job.admitted.key), r.id, r.body.get(), &mut out);
            job.reply.send(out);
        });
        let service = Echo {
            admission,
            pool: pool.submitter(),
        };
        let reactor = Reactor::bind(cfg, &["127.0.0.1:0".parse().unwrap()], service).unwrap();
        let addr = reactor.local_addrs()[0];
        let shutdown = reactor.shutdown_handle();
        let stats = reactor.stats();
        let reactor = Some(reactor.spawn().unwrap());
        Server {
            addr,
            shutdown,
            stats,
            gate,
            reactor,
            pool: Some(pool),
        }
    }

    pub fn connect(&self) -> FramedStream {
        FramedStream::connect(self.addr, WAIT, 1 << 20).unwrap()
    }

    pub fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(r) = self.reactor.take() {
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
    encode_request(&Key::new(SECRET), &req, &mut out);
    out
}

pub fn recv_reply(s: &mut FramedStream) -> Reply {
    let payload = s
        .recv(Instant::now() + WAIT)
        .unwrap()
        .expect("a reply, not EOF");
    let reply = Reply::parse(&payload).unwrap();
    reply.verify(&Key::new(SECRET)).unwrap();
    reply
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
