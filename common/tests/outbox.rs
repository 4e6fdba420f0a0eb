//! Sending from other threads: pushes through an [`Outbox`], a stream of
//! events before a final reply, the output budget, and outbound framed
//! links opened from the reactor, over real sockets.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use dsf_common::reactor::{
    ConnId, Context, Dispatch, Handle, Origin, Outbox, Reactor, ReactorConfig, SendError, Service,
};
use dsf_common::stream::FramedStream;
use dsf_common::wire::{self, Admission, AppKeys, Key, ReplayGuard, Reply};
use support::*;

/// `sub` keeps the connection's outbox for the test to push on; `stream`
/// answers with five events from another thread, then a final reply.
/// Frames from outbound links are handed to the test as they are.
struct Hub {
    admission: Arc<Admission>,
    subs: Arc<Mutex<Vec<Outbox>>>,
    closed: Sender<ConnId>,
    from_links: Sender<Vec<u8>>,
}

impl Service for Hub {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        if cx.origin() == Origin::Outbound {
            let _ = self.from_links.send(payload.to_vec());
            return Dispatch::Done;
        }
        let a = match self.admission.admit(payload) {
            Ok(a) => a,
            Err(refused) => {
                cx.refuse(&refused);
                return Dispatch::Done;
            }
        };
        match a.request.kind.as_str() {
            "sub" => {
                self.subs.lock().unwrap().push(cx.outbox());
                a.ok("{}", cx.out());
            }
            "stream" => {
                let reply = cx.defer();
                std::thread::spawn(move || {
                    let r = &a.request;
                    for n in 1..=5 {
                        let mut ev = Vec::new();
                        let body = format!("{{\"n\":{n}}}");
                        wire::envelope::encode_event(
                            &a.key, r.id, &r.nonce, n, "tick", &body, &mut ev,
                        );
                        reply.event(ev).unwrap();
                    }
                    let mut fin = Vec::new();
                    a.ok("{\"done\":true}", &mut fin);
                    reply.send(fin);
                });
            }
            _ => cx.close(),
        }
        Dispatch::Done
    }

    fn on_close(&mut self, conn: ConnId) {
        let _ = self.closed.send(conn);
    }
}

struct HubServer {
    addr: SocketAddr,
    handle: Handle,
    subs: Arc<Mutex<Vec<Outbox>>>,
    closed: Receiver<ConnId>,
    from_links: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl HubServer {
    fn start(cfg: ReactorConfig) -> HubServer {
        let mut keys = AppKeys::new();
        keys.insert("test", SECRET);
        let (closed_tx, closed) = unbounded();
        let (links_tx, from_links) = unbounded();
        let subs = Arc::new(Mutex::new(Vec::new()));
        let hub = Hub {
            admission: Arc::new(Admission::new(keys, ReplayGuard::default())),
            subs: subs.clone(),
            closed: closed_tx,
            from_links: links_tx,
        };
        let reactor = Reactor::bind(cfg, &["127.0.0.1:0".parse().unwrap()], hub).unwrap();
        HubServer {
            addr: reactor.local_addrs()[0],
            handle: reactor.handle(),
            subs,
            closed,
            from_links,
            thread: Some(reactor.spawn().unwrap()),
        }
    }

    fn subscribe(&self) -> (FramedStream, Outbox) {
        let mut s = FramedStream::connect(self.addr, WAIT, 1 << 20).unwrap();
        let before = self.subs.lock().unwrap().len();
        s.send(&request(1, "sub", "{}")).unwrap();
        assert!(recv_reply(&mut s).ok);
        let outbox = self.subs.lock().unwrap()[before].clone();
        (s, outbox)
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.handle.trigger();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

/// Pushes are signed as replies over this nonce here; the receiving test
/// thread expects it.
const PUSH_NONCE: &str = "00000000000000ff";

fn push_frame(n: u64, pad: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let body = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(pad));
    wire::encode_ok(Some(&Key::new(SECRET)), n, PUSH_NONCE, &body, &mut out);
    out
}

/// The next push, checked.
fn recv_push(s: &mut FramedStream, n: u64) {
    expect_reply(n, PUSH_NONCE.into());
    assert_eq!(recv_reply(s).id, n);
}

#[test]
fn pushes_from_another_thread_arrive_in_order() {
    let hub = HubServer::start(ReactorConfig::default());
    let (mut client, outbox) = hub.subscribe();
    let pusher = std::thread::spawn(move || {
        for n in 1..=500 {
            outbox.send(push_frame(n, 10)).unwrap();
        }
    });
    for n in 1..=500 {
        recv_push(&mut client, n);
    }
    pusher.join().unwrap();
}

#[test]
fn a_push_to_a_closed_connection_is_refused_and_the_service_is_told() {
    let hub = HubServer::start(ReactorConfig::default());
    let (client, outbox) = hub.subscribe();
    let (mut other, other_box) = hub.subscribe();
    drop(client);
    let gone = hub.closed.recv_timeout(WAIT).unwrap();
    assert_eq!(gone, outbox.conn());
    assert!(outbox.is_closed());
    assert_eq!(outbox.send(push_frame(1, 0)), Err(SendError::Closed));
    // The other subscriber still gets its pushes.
    other_box.send(push_frame(7, 0)).unwrap();
    recv_push(&mut other, 7);
}

#[test]
fn pushes_past_the_output_budget_are_refused_not_queued() {
    let cfg = ReactorConfig {
        out_cap: 256 << 10,
        ..Default::default()
    };
    let hub = HubServer::start(cfg);
    let (_deaf, outbox) = hub.subscribe();
    let (mut good, good_box) = hub.subscribe();
    // A subscriber that never reads: the kernel's buffers fill, then the
    // connection's own budget, then sends are refused.
    let deadline = Instant::now() + WAIT;
    let mut sent = 0usize;
    let full = loop {
        assert!(
            Instant::now() < deadline,
            "never refused after {sent} bytes"
        );
        match outbox.send(push_frame(1, 16 << 10)) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    match full {
        SendError::Full { cap, unsent } => {
            assert_eq!(cap, 256 << 10);
            assert!(unsent <= cap, "{unsent} unsent above the budget");
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(
        !outbox.is_closed(),
        "a full outbox does not close the connection"
    );
    good_box.send(push_frame(9, 0)).unwrap();
    recv_push(&mut good, 9);
}

#[test]
fn a_streaming_request_gets_its_events_then_its_final_reply() {
    let hub = HubServer::start(ReactorConfig::default());
    let mut s = FramedStream::connect(hub.addr, WAIT, 1 << 20).unwrap();
    s.send(&request(42, "stream", "{}")).unwrap();
    for n in 1..=5 {
        let r = recv_reply(&mut s);
        assert_eq!(
            (r.id, r.seq, r.event.as_deref()),
            (42, Some(n), Some("tick"))
        );
        assert_eq!(r.body.unwrap().get(), format!("{{\"n\":{n}}}"));
    }
    let fin = recv_reply(&mut s);
    assert_eq!(fin.into_result().unwrap().get(), "{\"done\":true}");
}

#[test]
fn an_outbound_link_carries_requests_and_its_replies_reach_the_service() {
    let hub = HubServer::start(ReactorConfig::default());
    let echo = Server::start(ReactorConfig::default(), 2, 16);
    // Sent at once: written when the connect completes.
    let link = hub
        .handle
        .connect_host(&echo.addr.to_string(), Duration::from_secs(2))
        .unwrap();
    for id in 1..=20u64 {
        link.send(request(id, "echo", &format!("{{\"i\":{id}}}")))
            .unwrap();
    }
    let mut ids = Vec::new();
    for _ in 0..20 {
        let payload = hub.from_links.recv_timeout(WAIT).unwrap();
        let reply = Reply::parse(&payload).unwrap();
        verify_sent(&reply);
        let id = reply.id;
        assert_eq!(
            reply.into_result().unwrap().get(),
            format!("{{\"i\":{id}}}")
        );
        ids.push(id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>());
    assert_eq!(echo.stats.accepted.load(Ordering::Relaxed), 1);
    // The hub still serves its own clients.
    let (_c, outbox) = hub.subscribe();
    assert!(!outbox.is_closed());
}

#[test]
fn a_link_that_cannot_connect_is_closed_and_the_service_is_told() {
    let hub = HubServer::start(ReactorConfig::default());
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let link = hub.handle.connect(dead, Duration::from_secs(2));
    let gone = hub.closed.recv_timeout(WAIT).unwrap();
    assert_eq!(gone, link.conn());
    assert!(link.is_closed());
    assert_eq!(link.send(request(1, "echo", "{}")), Err(SendError::Closed));
}

#[test]
fn a_subscriber_that_stops_reading_is_closed_when_its_output_fills_the_budget() {
    // A peer that only ever subscribed, and never reads: it never asks to
    // read, so only its stalled output shows that it holds the budget.
    let cfg = ReactorConfig {
        memory_budget: 2 << 20,
        max_frame: 64 << 10,
        ..Default::default()
    };
    let hub = HubServer::start(cfg);
    let (_deaf, outbox) = hub.subscribe();
    // Pushes keep coming, as a publisher's would, and keep 3 MiB unsent:
    // the kernel's socket buffers on loopback can take that much again
    // (they grow as the connection runs), so a pile pushed once may drain
    // into them and leave nothing held.
    let deadline = Instant::now() + WAIT;
    let gone = loop {
        if let Ok(gone) = hub.closed.try_recv() {
            break gone;
        }
        assert!(
            Instant::now() < deadline,
            "not closed; {} bytes unsent",
            outbox.unsent()
        );
        if outbox.unsent() >= (3 << 20) || outbox.send(push_frame(1, 16 << 10)).is_err() {
            if let Ok(gone) = hub.closed.recv_timeout(Duration::from_millis(20)) {
                break gone;
            }
        }
    };
    assert_eq!(gone, outbox.conn());
    // With the budget free again, others are served.
    let (mut good, good_box) = hub.subscribe();
    good_box.send(push_frame(9, 0)).unwrap();
    recv_push(&mut good, 9);
}
