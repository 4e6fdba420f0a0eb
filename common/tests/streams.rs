//! Streamed replies over real sockets: events in order with their MACs,
//! `sys.cancel`, a closed connection, a slow reader (updates coalesce,
//! other events end the stream with `overloaded`), and the per-connection
//! cap, each with another client served at the same time.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use dsf_common::reactor::{
    ConnId, Context, Dispatch, Handle, Reactor, ReactorConfig, ReactorStats, Service,
};
use dsf_common::stream::FramedStream;
use dsf_common::wire::streams::{Ended, Streams, CANCELLED};
use dsf_common::wire::{Admission, AppKeys, ReplayGuard};
use dsf_common::ErrorCode;
use serde::Deserialize;
use support::*;

#[derive(Deserialize)]
struct Tick {
    /// Events to send; 0 sends until the stream ends.
    n: u64,
    every_ms: u64,
    #[serde(default)]
    progress: bool,
}

/// `tick` streams `n` events from a thread of its own; `sys.cancel` ends
/// one. Each producer reports how its stream ended.
struct Ticker {
    admission: Arc<Admission>,
    streams: Arc<Streams>,
    ended: Sender<(u64, Result<u64, Ended>)>,
}

impl Service for Ticker {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        let a = match self.admission.admit(payload) {
            Ok(a) => a,
            Err(r) => {
                cx.refuse(&r);
                return Dispatch::Done;
            }
        };
        match a.request.kind.as_str() {
            "sys.cancel" => {
                let id: u64 = serde_json::from_str::<serde_json::Value>(a.request.body.get())
                    .unwrap()["id"]
                    .as_u64()
                    .unwrap();
                if self.streams.cancel(cx.conn(), id) {
                    a.ok("{}", cx.out());
                } else {
                    let e = dsf_common::Error::NotFound(format!("no stream {id} is open"));
                    a.error(&e, cx.out());
                }
            }
            "tick" => {
                let t: Tick = a.request.body().unwrap();
                let reply = cx.defer();
                let Ok(mut stream) = self.streams.open(&a, reply) else {
                    return Dispatch::Done;
                };
                let ended = self.ended.clone();
                std::thread::spawn(move || {
                    let id = stream.id();
                    let mut i = 0;
                    let result = loop {
                        if t.n > 0 && i == t.n {
                            break stream.finish(&format!("{{\"done\":{i}}}")).map(|_| i);
                        }
                        i += 1;
                        let body = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(512));
                        let sent = if t.progress {
                            stream.update("progress", &body)
                        } else {
                            stream.event("tick", &body)
                        };
                        if let Err(e) = sent {
                            break Err(e);
                        }
                        std::thread::sleep(Duration::from_millis(t.every_ms));
                    };
                    let _ = ended.send((id, result));
                });
            }
            _ => cx.close(),
        }
        Dispatch::Done
    }

    fn on_close(&mut self, conn: ConnId) {
        self.streams.close_conn(conn);
    }
}

struct TickServer {
    addr: SocketAddr,
    stats: Arc<ReactorStats>,
    handle: Handle,
    ended: Receiver<(u64, Result<u64, Ended>)>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl TickServer {
    fn start(cfg: ReactorConfig, per_conn: usize) -> TickServer {
        let mut keys = AppKeys::new();
        keys.insert("test", SECRET);
        let (tx, ended) = unbounded();
        let svc = Ticker {
            admission: Arc::new(Admission::new(keys, ReplayGuard::default())),
            streams: Streams::new(per_conn),
            ended: tx,
        };
        let reactor = Reactor::bind(cfg, &["127.0.0.1:0".parse().unwrap()], svc).unwrap();
        TickServer {
            addr: reactor.local_addrs()[0],
            stats: reactor.stats(),
            handle: reactor.handle(),
            ended,
            thread: Some(reactor.spawn().unwrap()),
        }
    }

    fn connect(&self) -> FramedStream {
        FramedStream::connect(self.addr, WAIT, 1 << 20).unwrap()
    }

    fn ended(&self) -> (u64, Result<u64, Ended>) {
        self.ended.recv_timeout(WAIT).expect("a producer to stop")
    }
}

impl Drop for TickServer {
    fn drop(&mut self) {
        self.handle.trigger();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

fn tick(s: &mut FramedStream, id: u64, n: u64, every_ms: u64, progress: bool) {
    let body = format!("{{\"n\":{n},\"every_ms\":{every_ms},\"progress\":{progress}}}");
    s.send(&request(id, "tick", &body)).unwrap();
}

fn body_i(r: &dsf_common::wire::Reply) -> u64 {
    let v: serde_json::Value = serde_json::from_str(r.body.as_ref().unwrap().get()).unwrap();
    v["i"].as_u64().unwrap()
}

#[test]
fn events_arrive_in_order_then_the_final_reply() {
    let server = TickServer::start(ReactorConfig::default(), 4);
    let mut s = server.connect();
    tick(&mut s, 7, 20, 0, false);
    for seq in 1..=20 {
        let r = recv_reply(&mut s);
        assert_eq!(
            (r.id, r.seq, r.event.as_deref()),
            (7, Some(seq), Some("tick"))
        );
        assert_eq!(body_i(&r), seq);
    }
    let fin = recv_reply(&mut s);
    assert!(!fin.is_event());
    assert_eq!(fin.into_result().unwrap().get(), "{\"done\":20}");
    assert_eq!(server.ended(), (7, Ok(20)));
}

#[test]
fn cancel_ends_a_stream_with_its_final_reply_and_stops_the_producer() {
    let server = TickServer::start(ReactorConfig::default(), 4);
    let mut s = server.connect();
    tick(&mut s, 1, 0, 2, false);
    // A few events, then cancel.
    for _ in 0..3 {
        assert!(recv_reply(&mut s).is_event());
    }
    s.send(&request(2, "sys.cancel", "{\"id\":1}")).unwrap();
    let mut cancel_ok = false;
    let mut stream_end = None;
    while !(cancel_ok && stream_end.is_some()) {
        let r = recv_reply(&mut s);
        match (r.id, r.is_event()) {
            (1, true) => {}
            (1, false) => stream_end = Some(r.into_result().unwrap().get().to_string()),
            (2, false) => {
                assert_eq!(r.into_result().unwrap().get(), "{}");
                cancel_ok = true;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(stream_end.as_deref(), Some(CANCELLED));
    assert_eq!(server.ended(), (1, Err(Ended::Cancelled)));
    // Cancelling it again: it is not open.
    s.send(&request(3, "sys.cancel", "{\"id\":1}")).unwrap();
    let r = recv_reply(&mut s);
    assert_eq!(r.into_result().unwrap_err().code(), ErrorCode::NotFound);
}

#[test]
fn closing_the_connection_ends_its_streams() {
    let server = TickServer::start(ReactorConfig::default(), 4);
    let mut s = server.connect();
    tick(&mut s, 1, 0, 2, false);
    tick(&mut s, 2, 0, 2, true);
    assert!(recv_reply(&mut s).is_event());
    drop(s);
    let mut ends = vec![server.ended(), server.ended()];
    ends.sort_by_key(|e| e.0);
    assert!(
        ends.iter().all(|(_, r)| *r == Err(Ended::Closed)),
        "{ends:?}"
    );
    // Others are served.
    let mut other = server.connect();
    tick(&mut other, 9, 1, 0, false);
    assert!(recv_reply(&mut other).is_event());
}

#[test]
fn a_slow_reader_holds_updates_to_the_budget_and_gets_the_latest() {
    let cfg = ReactorConfig {
        out_cap: 64 << 10,
        ..Default::default()
    };
    let server = TickServer::start(cfg, 4);
    let mut s = server.connect();
    // 20,000 progress updates of 600 bytes, as fast as they come, to a
    // reader that does not read: 12 MB offered (more than the kernel
    // buffers of a loopback socket), 64 KiB budget.
    tick(&mut s, 1, 20_000, 0, true);
    assert_eq!(server.ended(), (1, Ok(20_000)));
    let held = server.stats.buffered.load(Ordering::Relaxed);
    assert!(
        held < 512 << 10,
        "the server holds {held} bytes for a slow reader"
    );
    // Now read: fewer events than updates, in order, and the end.
    let mut seen = Vec::new();
    loop {
        let r = recv_reply(&mut s);
        if !r.is_event() {
            assert_eq!(r.into_result().unwrap().get(), "{\"done\":20000}");
            break;
        }
        seen.push(body_i(&r));
    }
    assert!(
        seen.len() < 20_000,
        "every update was sent: nothing coalesced"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "out of order");
}

#[test]
fn a_slow_reader_of_events_that_cannot_be_dropped_ends_with_overloaded() {
    let cfg = ReactorConfig {
        out_cap: 64 << 10,
        ..Default::default()
    };
    let server = TickServer::start(cfg, 4);
    let mut s = server.connect();
    tick(&mut s, 1, 0, 0, false);
    assert_eq!(server.ended(), (1, Err(Ended::Overloaded)));
    let mut events = 0;
    loop {
        let r = recv_reply(&mut s);
        if !r.is_event() {
            let e = r.into_result().unwrap_err();
            assert_eq!(e.code(), ErrorCode::Overloaded);
            assert!(e.to_string().contains("reader fell behind"), "{e}");
            break;
        }
        events += 1;
    }
    assert!(events > 0);
    // The connection itself stays usable.
    tick(&mut s, 2, 1, 0, false);
    assert!(recv_reply(&mut s).is_event());
}

#[test]
fn a_connection_may_hold_only_so_many_streams() {
    let server = TickServer::start(ReactorConfig::default(), 2);
    let mut s = server.connect();
    tick(&mut s, 1, 0, 5, false);
    tick(&mut s, 2, 0, 5, false);
    tick(&mut s, 3, 0, 5, false);
    let refusal = loop {
        let r = recv_reply(&mut s);
        if r.id == 3 {
            break r;
        }
    };
    let e = refusal.into_result().unwrap_err();
    assert_eq!(e.code(), ErrorCode::Overloaded);
    assert!(e.to_string().contains("2 streams open"), "{e}");
    // Another connection has its own allowance.
    let mut other = server.connect();
    tick(&mut other, 1, 1, 0, false);
    assert!(recv_reply(&mut other).is_event());
}

#[test]
fn a_second_stream_under_an_open_streams_id_is_refused() {
    let server = TickServer::start(ReactorConfig::default(), 4);
    let mut s = server.connect();
    tick(&mut s, 1, 0, 5, false);
    tick(&mut s, 1, 0, 5, false);
    let refusal = loop {
        let r = recv_reply(&mut s);
        if !r.is_event() {
            break r;
        }
    };
    let e = refusal.into_result().unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert!(e.to_string().contains("open under that id"), "{e}");
    // The first stream goes on, and cancelling it works.
    s.send(&request(2, "sys.cancel", "{\"id\":1}")).unwrap();
    assert_eq!(server.ended(), (1, Err(Ended::Cancelled)));
}
