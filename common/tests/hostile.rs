//! Hostile peers against the reactor's limits, over real sockets, each with
//! a good client served at the same time: a trickled frame and the frame
//! deadline, a run of refused frames, many junk pipeliners, and fair turns
//! for connections waiting on a full worker queue. (The memory budget has a
//! process of its own: `memory_budget.rs`.)

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dsf_common::reactor::ReactorConfig;
use dsf_common::stream::FramedStream;
use dsf_common::wire::{encode_request, Key, OutgoingRequest, Reply};
use dsf_common::ErrorCode;
use support::*;

fn forged(id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let req = OutgoingRequest {
        id,
        kind: "echo",
        app: "test",
        token: None,
        body: "{}",
    };
    encode_request(&Key::new(b"not the secret"), &req, &mut out);
    out
}

/// The next reply, whether signed or not.
fn next_reply(s: &mut FramedStream) -> Reply {
    let payload = s
        .recv(Instant::now() + WAIT)
        .unwrap()
        .expect("a reply, not EOF");
    Reply::parse(&payload).unwrap()
}

#[test]
fn a_trickled_frame_is_closed_at_the_frame_deadline_though_each_byte_resets_the_idle_clock() {
    let cfg = ReactorConfig {
        idle_timeout: Duration::from_secs(30),
        frame_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let server = Server::start(cfg, 2, 64);
    let mut good = server.connect();
    let mut slow = server.connect();
    let whole = request(
        1,
        "echo",
        "{\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
    );
    let started = Instant::now();
    let mut sent = 0;
    // One byte every 20 ms: far inside the idle timeout each time, and the
    // frame would take over a second to finish.
    let mut raw = slow.get_ref().try_clone().unwrap();
    while sent < whole.len() - 1 {
        if raw.write_all(&whole[sent..sent + 1]).is_err() {
            break;
        }
        sent += 1;
        if server.stats.closed_frame_timeout.load(Ordering::Relaxed) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        ping(&mut good, sent as u64);
    }
    assert!(
        sent < whole.len() - 1,
        "the trickled frame was never cut off"
    );
    let r = next_reply(&mut slow);
    let e = r.into_result().unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadFrame);
    assert!(
        e.to_string().contains("within 400ms of its first byte"),
        "{e}"
    );
    assert!(slow
        .read_to_end_until(Instant::now() + WAIT)
        .unwrap()
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(server.stats.closed_idle.load(Ordering::Relaxed), 0);
    ping(&mut good, 9999);
}

#[test]
fn a_run_of_refused_frames_closes_the_connection_and_good_frames_reset_the_run() {
    let cfg = ReactorConfig {
        max_refused: 4,
        ..Default::default()
    };
    let server = Server::start(cfg, 2, 64);
    let mut good = server.connect();

    // Refused frames between good ones never make a run.
    let mut mixed = server.connect();
    for id in 1..=10u64 {
        mixed.send(&forged(id * 2)).unwrap();
        let r = next_reply(&mut mixed);
        assert_eq!(r.into_result().unwrap_err().code(), ErrorCode::BadSignature);
        ping(&mut mixed, id * 2 + 1);
    }

    // Four in a row: each answered, then a last word and the close.
    let mut bad = server.connect();
    let mut junk = Vec::new();
    for id in 1..=10u64 {
        junk.extend(forged(id));
    }
    bad.send(&junk).unwrap();
    for id in 1..=4u64 {
        let r = next_reply(&mut bad);
        assert_eq!(r.id, id);
        assert_eq!(r.into_result().unwrap_err().code(), ErrorCode::BadSignature);
    }
    let last = next_reply(&mut bad).into_result().unwrap_err();
    assert_eq!(last.code(), ErrorCode::BadRequest);
    assert!(
        last.to_string().contains("4 refused frames in a row"),
        "{last}"
    );
    assert!(bad
        .read_to_end_until(Instant::now() + WAIT)
        .unwrap()
        .is_empty());
    assert_eq!(server.stats.closed_refused.load(Ordering::Relaxed), 1);
    ping(&mut good, 1);
    ping(&mut mixed, 100);
}

#[test]
fn junk_pipeliners_that_never_read_are_closed_and_a_new_client_is_served() {
    let server = Server::start(ReactorConfig::default(), 2, 64);
    let mut junk = Vec::new();
    for id in 1..=2_000u64 {
        junk.extend(forged(id));
    }
    let peers: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            // Closed mid-write is what we want: ignore the error.
            let _ = s.write_all(&junk);
            s
        })
        .collect();
    let mut fresh = server.connect();
    ping(&mut fresh, 1);
    wait_until("every junk peer to be closed", || {
        server.stats.closed_refused.load(Ordering::Relaxed) == 50
    });
    // Each junk peer had 16 frames parsed, not 2,000.
    assert!(server.stats.frames.load(Ordering::Relaxed) < 50 * 100);
    ping(&mut fresh, 2);
    drop(peers);
}

#[test]
fn connections_waiting_on_a_full_worker_queue_take_freed_capacity_in_turn() {
    // One worker, a queue of one: two requests in flight at most.
    let server = Server::start(ReactorConfig::default(), 1, 1);
    let mut hog = server.connect();
    let mut batch = Vec::new();
    for id in 1..=30u64 {
        batch.extend(request(id, "echo.gated", "{}"));
    }
    hog.send(&batch).unwrap();
    wait_until("the hog to fill the pool and park", || {
        server.stats.frames.load(Ordering::Relaxed) == 3
    });
    let mut b = server.connect();
    b.send(&request(1, "echo.gated", "{}")).unwrap();
    wait_until("b to park", || {
        server.stats.frames.load(Ordering::Relaxed) == 4
    });
    let mut c = server.connect();
    c.send(&request(1, "echo.gated", "{}")).unwrap();
    wait_until("c to park", || {
        server.stats.frames.load(Ordering::Relaxed) == 5
    });
    // Five jobs done: the hog's two in the pool, its parked one, then b's
    // and c's, which parked behind it (and ahead of the hog's next). A
    // reactor that gives freed room to the lowest connection id would run
    // the hog's 30 first.
    for _ in 0..5 {
        server.gate.send(()).unwrap();
    }
    assert_eq!(recv_reply(&mut b).id, 1);
    assert_eq!(recv_reply(&mut c).id, 1);
    for _ in 0..30 {
        server.gate.send(()).unwrap();
    }
    let mut ids: Vec<u64> = (0..30).map(|_| recv_reply(&mut hog).id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=30).collect::<Vec<_>>());
}

#[test]
fn many_connections_at_once_are_all_accepted_and_served() {
    // More than one turn's worth of accepts (64) arriving together.
    let server = Server::start(ReactorConfig::default(), 2, 64);
    let mut conns: Vec<FramedStream> = (0..300).map(|_| server.connect()).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        ping(s, i as u64 + 1);
    }
    assert_eq!(server.stats.accepted.load(Ordering::Relaxed), 300);
}
