//! The global memory budget against peers that each send all but the last
//! bytes of a 1 MiB frame, with memory read from `/proc/self/status`. One
//! test in its own process, so no other test's allocations are in the
//! figures.

mod support;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dsf_common::reactor::ReactorConfig;
use dsf_common::wire::Reply;
use dsf_common::ErrorCode;
use support::*;

const MIB: usize = 1 << 20;

/// A `/proc/self/status` figure in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

/// Writes what the socket takes without blocking; returns the bytes written.
fn write_some(s: &mut TcpStream, bytes: &[u8]) -> usize {
    let mut sent = 0;
    while sent < bytes.len() {
        match s.write(&bytes[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sent
}

#[test]
fn partial_frames_from_many_peers_stay_within_the_memory_budget() {
    const PEERS: usize = 60;
    const BUDGET: usize = 8 * MIB;
    let cfg = ReactorConfig {
        memory_budget: BUDGET,
        frame_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let server = Server::start(cfg, 2, 64);
    let mut good = server.connect();
    ping(&mut good, 1);

    // A frame declared 1 MiB long, all but its last 16 bytes sent.
    let mut partial = ((MIB - 64) as u32).to_be_bytes().to_vec();
    partial.extend(std::iter::repeat_n(b'x', MIB - 64 - 16));
    let rss_before = status_bytes("VmRSS:");
    let mut peers = Vec::new();
    let mut left = Vec::new();
    for _ in 0..PEERS {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_nonblocking(true).unwrap();
        let n = write_some(&mut s, &partial);
        left.push(n);
        peers.push(s);
    }
    // Keep pushing what the sockets take until the server stops reading.
    let mut peak = 0;
    let deadline = Instant::now() + WAIT;
    while server.stats.budget_pauses.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the budget never paused anyone");
        for (s, sent) in peers.iter_mut().zip(left.iter_mut()) {
            *sent += write_some(s, &partial[*sent..]);
        }
        peak = peak.max(server.stats.buffered.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(5));
    }
    // With the budget spent, a small request is still served.
    ping(&mut good, 2);
    for _ in 0..50 {
        for (s, sent) in peers.iter_mut().zip(left.iter_mut()) {
            *sent += write_some(s, &partial[*sent..]);
        }
        peak = peak.max(server.stats.buffered.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(2));
    }
    let rss_held = status_bytes("VmRSS:").saturating_sub(rss_before);
    assert!(
        peak <= BUDGET,
        "the reactor held {peak} bytes, above its budget of {BUDGET}"
    );
    // Unbounded, the 60 peers' frames would take 60 MiB.
    assert!(
        rss_held < 3 * BUDGET,
        "resident memory grew by {rss_held} bytes holding {PEERS} partial frames (budget {BUDGET})"
    );

    // The peers that stay paused are closed, the largest first, with a
    // reason; the good client is still served.
    wait_until("a paused peer to be closed", || {
        server.stats.closed_budget.load(Ordering::Relaxed) > 0
    });
    ping(&mut good, 3);
    let mut told = 0;
    for s in &mut peers {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut stream = dsf_common::stream::FramedStream::from_std(s.try_clone().unwrap(), MIB);
        if let Ok(Some(payload)) = stream.recv(Instant::now() + Duration::from_millis(50)) {
            let e = Reply::parse(&payload).unwrap().into_result().unwrap_err();
            assert_eq!(e.code(), ErrorCode::Overloaded);
            assert!(e.to_string().contains("memory budget"), "{e}");
            told += 1;
        }
    }
    assert!(told > 0, "no closed peer was told why");
}
