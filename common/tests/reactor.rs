//! The reactor over real sockets on 127.0.0.1, through the echo service of
//! `support`. Every bad-input test also keeps a well-behaved client
//! connected and checks it is still answered.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dsf_common::reactor::ReactorConfig;
use dsf_common::wire::{self, encode_request, Key, OutgoingRequest, Reply};
use dsf_common::ErrorCode;
use support::*;

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
    let nonce = encode_request(&Key::new(b"not the secret"), &req, &mut forged);
    expect_reply(3, nonce);
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
