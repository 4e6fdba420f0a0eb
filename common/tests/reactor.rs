//! The reactor over real sockets on 127.0.0.1, through a small echo service
//! built the way every dsf server is: admission on the reactor thread, work
//! on a worker pool, replies back through the waker.
//!
//! Every bad-input test also keeps a well-behaved client connected and
//! checks it is still answered.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use dsf_common::pool::{Submitter, WorkerPool};
use dsf_common::reactor::{
    Context, Dispatch, ReactorConfig, ReactorStats, ReplyTo, Service, Shutdown,
};
use dsf_common::stream::FramedStream;
use dsf_common::wire::{
    self, encode_request, Admission, Admitted, AppKeys, Key, OutgoingRequest, ReplayGuard, Reply,
};
use dsf_common::{reactor::Reactor, ErrorCode};

const SECRET: &[u8] = b"echo-secret";
const WAIT: Duration = Duration::from_secs(10);

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

struct Server {
    addr: SocketAddr,
    shutdown: Shutdown,
    stats: Arc<ReactorStats>,
    gate: Sender<()>,
    reactor: Option<JoinHandle<std::io::Result<()>>>,
    pool: Option<WorkerPool<Job>>,
}

impl Server {
    fn start(cfg: ReactorConfig, workers: usize, queue: usize) -> Server {
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

    fn connect(&self) -> FramedStream {
        FramedStream::connect(self.addr, WAIT, 1 << 20).unwrap()
    }

    fn stop(&mut self) {
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

fn request(id: u64, kind: &str, body: &str) -> Vec<u8> {
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

fn recv_reply(s: &mut FramedStream) -> Reply {
    let payload = s
        .recv(Instant::now() + WAIT)
        .unwrap()
        .expect("a reply, not EOF");
    let reply = Reply::parse(&payload).unwrap();
    reply.verify(&Key::new(SECRET)).unwrap();
    reply
}

/// One round trip that must succeed.
fn ping(s: &mut FramedStream, id: u64) {
    s.send(&request(id, "echo", "{\"n\":1}")).unwrap();
    let r = recv_reply(s);
    assert_eq!(r.id, id);
    assert_eq!(r.into_result().unwrap().get(), "{\"n\":1}");
}

/// Sends raw bytes and expects one error reply with `code`, then EOF.
fn expect_error_then_close(server: &Server, raw: &[u8], code: ErrorCode) {
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

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn zero_length_frame_is_a_bad_frame_and_closes() {
    let server = Server::start(ReactorConfig::default(), 2, 64);
    expect_error_then_close(&server, &[0, 0, 0, 0], ErrorCode::BadFrame);
}

#[test]
fn frame_above_the_cap_is_refused_and_closes() {
    let cfg = ReactorConfig {
        max_frame: 1024,
        ..Default::default()
    };
    let server = Server::start(cfg, 2, 64);
    expect_error_then_close(&server, &2048u32.to_be_bytes(), ErrorCode::FrameTooLarge);
}

#[test]
fn truncated_frame_then_eof_is_a_bad_frame() {
    let server = Server::start(ReactorConfig::default(), 2, 64);
    let mut good = server.connect();
    let mut bad = server.connect();
    let whole = request(1, "echo", "{}");
    bad.send(&whole[..whole.len() - 5]).unwrap();
    bad.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    let r = recv_reply(&mut bad);
    assert_eq!(r.into_result().unwrap_err().code(), ErrorCode::BadFrame);
    assert!(bad
        .read_to_end_until(Instant::now() + WAIT)
        .unwrap()
        .is_empty());
    ping(&mut good, 2);
}

#[test]
fn invalid_utf8_is_bad_json_and_closes() {
    let server = Server::start(ReactorConfig::default(), 2, 64);
    let mut raw = Vec::new();
    wire::frame::encode(b"{\"v\":\xff}", &mut raw);
    expect_error_then_close(&server, &raw, ErrorCode::BadJson);
}

#[test]
fn invalid_json_is_bad_json_and_closes() {
    let server = Server::start(ReactorConfig::default(), 2, 64);
    let mut raw = Vec::new();
    wire::frame::encode(b"{\"v\":1,,}", &mut raw);
    expect_error_then_close(&server, &raw, ErrorCode::BadJson);
}

#[test]
fn json_that_is_not_an_object_is_a_bad_request_and_the_connection_stays_open() {
    let server = Server::start(ReactorConfig::default(), 2, 64);
    let mut s = server.connect();
    let mut raw = Vec::new();
    wire::frame::encode(b"[1,2,3]", &mut raw);
    s.send(&raw).unwrap();
    let r = recv_reply(&mut s);
    let e = r.into_result().unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert!(e.to_string().contains("JSON object"), "{e}");
    ping(&mut s, 7);
}

#[test]
fn bad_signature_is_refused_and_the_connection_stays_open() {
    let server = Server::start(ReactorConfig::default(), 2, 64);
    let mut s = server.connect();
    let mut forged = Vec::new();
    let req = OutgoingRequest {
        id: 3,
        kind: "echo",
        app: "test",
        token: None,
        body: "{}",
    };
    encode_request(&Key::new(b"not the secret"), &req, &mut forged);
    s.send(&forged).unwrap();
    let r = recv_reply(&mut s);
    assert_eq!(r.id, 3);
    assert_eq!(r.into_result().unwrap_err().code(), ErrorCode::BadSignature);
    ping(&mut s, 4);
}

#[test]
fn three_bytes_then_silence_is_closed_by_the_idle_timeout() {
    let cfg = ReactorConfig {
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let server = Server::start(cfg, 2, 64);
    let mut silent = server.connect();
    silent.send(&[0, 0, 0]).unwrap();
    // The server closes it without a reply.
    let rest = silent.read_to_end_until(Instant::now() + WAIT).unwrap();
    assert!(rest.is_empty());
    assert_eq!(server.stats.closed_idle.load(Ordering::Relaxed), 1);
    // A client that talks is not closed: ping for longer than the timeout.
    let mut good = server.connect();
    let until = Instant::now() + Duration::from_millis(600);
    let mut id = 1;
    while Instant::now() < until {
        ping(&mut good, id);
        id += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_thousand_pipelined_requests_in_one_write_are_all_answered() {
    let server = Server::start(ReactorConfig::default(), 2, 64);
    let mut s = server.connect();
    let mut batch = Vec::new();
    for id in 1..=1000u64 {
        let body = format!("{{\"i\":{id}}}");
        let kind = if id % 2 == 0 { "echo" } else { "echo.inline" };
        batch.extend(request(id, kind, &body));
    }
    s.send(&batch).unwrap();
    let mut seen = vec![false; 1001];
    for _ in 0..1000 {
        let r = recv_reply(&mut s);
        let id = r.id;
        assert!(!seen[id as usize], "id {id} answered twice");
        seen[id as usize] = true;
        assert_eq!(r.into_result().unwrap().get(), format!("{{\"i\":{id}}}"));
    }
    assert!(seen[1..].iter().all(|s| *s));
}

#[test]
fn a_peer_that_never_reads_is_disconnected_at_the_output_cap() {
    let cfg = ReactorConfig {
        out_cap: 64 << 10,
        ..Default::default()
    };
    let server = Server::start(cfg, 2, 64);
    let mut good = server.connect();
    let hog = TcpStream::connect(server.addr).unwrap();
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(16 << 10));
    let writer = {
        let mut hog = hog.try_clone().unwrap();
        std::thread::spawn(move || {
            // Inline echoes: the replies pile up because nobody reads them.
            for id in 1..=20_000u64 {
                if hog.write_all(&request(id, "echo.inline", &body)).is_err() {
                    return id;
                }
            }
            u64::MAX
        })
    };
    wait_until("the hog to be disconnected", || {
        server.stats.closed_slow.load(Ordering::Relaxed) == 1
    });
    let stopped_at = writer.join().unwrap();
    assert!(
        stopped_at < u64::MAX,
        "the server kept accepting writes from a peer it closed"
    );
    assert_eq!(server.stats.conns.load(Ordering::Relaxed), 1);
    ping(&mut good, 1);
}

#[test]
fn connections_beyond_the_cap_are_refused_with_overloaded() {
    let cfg = ReactorConfig {
        max_conns: 2,
        ..Default::default()
    };
    let server = Server::start(cfg, 2, 64);
    let mut a = server.connect();
    ping(&mut a, 1);
    let mut b = server.connect();
    ping(&mut b, 1);
    let mut c = server.connect();
    let r = Reply::parse(&c.recv(Instant::now() + WAIT).unwrap().unwrap()).unwrap();
    let e = r.into_result().unwrap_err();
    assert_eq!(e.code(), ErrorCode::Overloaded);
    assert!(e.to_string().contains("limit of 2 connections"), "{e}");
    assert!(c
        .read_to_end_until(Instant::now() + WAIT)
        .unwrap()
        .is_empty());
    assert_eq!(server.stats.refused.load(Ordering::Relaxed), 1);
    ping(&mut a, 2);
    // A freed slot is taken again.
    drop(b);
    wait_until("the closed connection to be counted", || {
        server.stats.conns.load(Ordering::Relaxed) == 1
    });
    let mut d = server.connect();
    ping(&mut d, 1);
}

#[test]
fn a_full_worker_queue_stops_reading_instead_of_queueing() {
    // One worker, a queue of one: at most two requests in flight at once.
    let server = Server::start(ReactorConfig::default(), 1, 1);
    let mut s = server.connect();
    let mut batch = Vec::new();
    for id in 1..=50u64 {
        batch.extend(request(id, "echo.gated", "{}"));
    }
    s.send(&batch).unwrap();
    wait_until("the pool to fill", || server.shutdown.in_flight() == 2);
    // The third frame was decoded and is held back, not queued.
    wait_until("the third frame to be read", || {
        server.stats.frames.load(Ordering::Relaxed) == 3
    });
    // Another connection's request is held too: nothing more is taken.
    let mut other = server.connect();
    other.send(&request(99, "echo.inline", "{}")).unwrap();
    wait_until("the other frame to be read", || {
        server.stats.frames.load(Ordering::Relaxed) == 4
    });
    assert_eq!(server.shutdown.in_flight(), 2);
    for _ in 0..50 {
        server.gate.send(()).unwrap();
    }
    assert_eq!(recv_reply(&mut other).id, 99);
    let mut ids: Vec<u64> = (0..50).map(|_| recv_reply(&mut s).id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
}

#[test]
fn shutdown_stops_accepting_and_delivers_in_flight_replies() {
    let mut server = Server::start(ReactorConfig::default(), 2, 8);
    let mut s = server.connect();
    s.send(&request(1, "echo.gated", "{}")).unwrap();
    s.send(&request(2, "echo.gated", "{}")).unwrap();
    wait_until("both requests in flight", || {
        server.shutdown.in_flight() == 2
    });
    server.shutdown.trigger();
    wait_until("the listener to close", || {
        TcpStream::connect(server.addr).is_err()
    });
    server.gate.send(()).unwrap();
    server.gate.send(()).unwrap();
    let mut ids = vec![recv_reply(&mut s).id, recv_reply(&mut s).id];
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    // Then the server closes the connection and the reactor returns.
    assert!(s
        .read_to_end_until(Instant::now() + WAIT)
        .unwrap()
        .is_empty());
    server.stop();
}
