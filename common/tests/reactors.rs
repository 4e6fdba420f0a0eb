//! More than one reactor on one port (`SO_REUSEPORT`), sharing one worker
//! pool: both take connections, connection ids stay unique across them,
//! `max_conns` counts the group, one trigger stops all, and a port in use
//! by anyone else is still refused.

mod support;

use std::collections::HashSet;
use std::net::TcpListener;

use dsf_common::reactor::{Reactor, ReactorConfig};
use dsf_common::ErrorCode;
use support::*;

#[test]
fn two_reactors_share_one_port_and_both_serve() {
    let mut server = Server::start_group(ReactorConfig::default(), 2, 64, 2);
    let mut conns: Vec<_> = (0..32).map(|_| server.connect()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        // Through the pool, and inline on whichever reactor holds it.
        ping(c, 1);
        c.send(&request(2, "echo.inline", "{\"i\":1}")).unwrap();
        let r = recv_reply(c);
        assert_eq!(
            r.into_result().unwrap().get(),
            "{\"i\":1}",
            "connection {i}"
        );
    }
    let accepted = server.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 32);
    let threads: HashSet<&str> = accepted.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        threads,
        HashSet::from(["reactor-0", "reactor-1"]),
        "the kernel spreads 32 connections over both reactors"
    );
    let ids: HashSet<_> = accepted.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 32, "connection ids are unique across the group");
    assert_eq!(
        server
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        32,
        "the group shares its counters"
    );
    // The group's buffered bytes count every reactor's: 60,000 bytes of a
    // 100,000-byte frame on each connection, far more than one reactor's
    // half of the connections holds.
    let partial = 60_000usize;
    for c in &mut conns {
        let mut part = 100_000u32.to_be_bytes().to_vec();
        part.resize(partial, b' ');
        c.send(&part).unwrap();
    }
    let all = partial * conns.len();
    wait_until(
        "the group's buffered bytes to count every connection",
        || {
            server
                .stats
                .buffered
                .load(std::sync::atomic::Ordering::Relaxed)
                >= all
        },
    );
    // One trigger stops both reactors (stop joins every thread).
    server.stop();
}

#[test]
fn max_conns_counts_the_whole_group() {
    let cfg = ReactorConfig {
        max_conns: 6,
        ..ReactorConfig::default()
    };
    let server = Server::start_group(cfg, 1, 16, 2);
    let mut held: Vec<_> = (0..6).map(|_| server.connect()).collect();
    for c in &mut held {
        ping(c, 1);
    }
    // Whichever reactor the next lands on, the group is full.
    for _ in 0..4 {
        let mut extra = server.connect();
        let payload = extra
            .recv(std::time::Instant::now() + WAIT)
            .unwrap()
            .expect("an overloaded error before the close");
        let r = dsf_common::wire::Reply::parse(&payload).unwrap();
        assert_eq!(r.into_result().unwrap_err().code(), ErrorCode::Overloaded);
    }
    // The connections held are still served.
    for c in &mut held {
        ping(c, 2);
    }
}

#[test]
fn a_port_in_use_is_refused_even_when_shared() {
    // A plain listener holds the port: a group cannot join it.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap();
    let cfg = ReactorConfig {
        reuse_port: true,
        ..ReactorConfig::default()
    };
    let e = Reactor::bind(cfg.clone(), &[addr], NoService)
        .err()
        .expect("bound a port in use");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    drop(other);
    // A running group holds it: a second group cannot join it either.
    let first = Server::start_group(ReactorConfig::default(), 1, 4, 2);
    let e = Reactor::bind(cfg, &[first.addr], NoService)
        .err()
        .expect("a second server shared a running group's port");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    let mut c = first.connect();
    ping(&mut c, 1);
}

#[test]
fn a_sibling_needs_a_shared_first_reactor() {
    let r = Reactor::bind(
        ReactorConfig::default(),
        &["127.0.0.1:0".parse().unwrap()],
        NoService,
    )
    .unwrap();
    let e = r
        .sibling(&[0], NoService)
        .err()
        .expect("a sibling of a plain reactor");
    assert!(e.to_string().contains("reuse_port"), "{e}");
}

struct NoService;

impl dsf_common::reactor::Service for NoService {
    fn on_frame(
        &mut self,
        _: &[u8],
        _: &mut dsf_common::reactor::Context<'_>,
    ) -> dsf_common::reactor::Dispatch {
        dsf_common::reactor::Dispatch::Done
    }
}
