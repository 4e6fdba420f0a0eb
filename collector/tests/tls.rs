//! TLS between the parts: a balancer and a collector serving TLS, the
//! collector pushing its views over TLS, a node's heartbeats over TLS, and
//! `openssl s_client` completing a verified handshake with each port; a
//! plain client on a TLS port is told so. A standby collector with TLS on
//! one side only of its link to the active one stands by, saying why.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use dsf_common::call::{Connection, Signer};
use dsf_common::wire::keys::CLUSTER_APP;
use dsf_common::wire::Key;
use dsf_common::ErrorCode;
use support::*;

/// `scripts/tls-ca`'s throwaway CA and certificate: (ca, cert, key), made
/// once for every test of this binary.
fn certificates() -> (PathBuf, PathBuf, PathBuf) {
    static MADE: std::sync::OnceLock<(PathBuf, PathBuf, PathBuf)> = std::sync::OnceLock::new();
    MADE.get_or_init(make_certificates).clone()
}

fn make_certificates() -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("dsf-tls-collector-{}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tls-ca");
    let out = Command::new(script).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// Whether `openssl s_client` verifies `addr`'s certificate against `ca`.
fn s_client(addr: &str, ca: &Path) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-brief"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("Verification: OK"),
        "s_client {addr}: {said}"
    );
}

#[test]
fn views_and_heartbeats_cross_tls_and_every_port_verifies_with_openssl() {
    let (ca, cert, key) = certificates();
    let server = dsf_common::tls::server_config(&cert, &key).unwrap();
    let trust = dsf_common::tls::client_config(&ca).unwrap();

    let mut ls = lb_settings("127.0.0.1:0".parse().unwrap());
    ls.reactor.tls = vec![Some(server.clone()), Some(server.clone())];
    init_logs();
    let lb = lb_server::server::start(ls).unwrap();
    let mut cs = collector_settings(&[lb.cluster_addr]);
    cs.reactor.tls = vec![Some(server)];
    cs.push.tls = Some(trust.clone());
    let col = start_collector(cs);
    wait_for_first_push(&lb);

    for addr in [lb.client_addr, lb.cluster_addr, col.listen_addr] {
        s_client(&addr.to_string(), &ca);
    }

    // A heartbeat over TLS reaches the balancer through the TLS push.
    let addr = col.listen_addr.to_string();
    let signer = Signer {
        app: CLUSTER_APP.into(),
        key: Key::new(CLUSTER_SECRET),
    };
    let mut node =
        Connection::connect_tls(&addr, &addr, signer, WAIT, 1 << 20, Some(&trust)).unwrap();
    let hb = serde_json::to_string(&heartbeat("a", "127.0.0.1:17001")).unwrap();
    node.round_trip("node.heartbeat", &hb, None, Instant::now() + WAIT)
        .unwrap();
    wait_until("a in the balancer's view", WAIT, || {
        lb.view().nodes.iter().any(|n| n.id == "a")
    });

    // A plain client is told the port speaks TLS (an unsigned refusal).
    let mut plain =
        dsf_common::stream::FramedStream::connect(lb.client_addr, WAIT, 1 << 20).unwrap();
    let mut frame = Vec::new();
    let req = dsf_common::wire::envelope::OutgoingRequest {
        id: 1,
        kind: "lb.view",
        app: APP,
        token: None,
        body: "{}",
    };
    dsf_common::wire::envelope::encode_request(&Key::new(APP_SECRET), &req, &mut frame);
    plain.send(&frame).unwrap();
    let reply = plain.recv(Instant::now() + WAIT).unwrap().unwrap();
    let e = dsf_common::wire::envelope::Reply::parse(&reply)
        .unwrap()
        .unsigned_error()
        .unwrap();
    assert_eq!(e.code(), ErrorCode::BadFrame);
    assert!(e.to_string().contains("speaks TLS"), "{e}");
    // And the node's connection still works.
    node.round_trip("node.heartbeat", &hb, None, Instant::now() + WAIT)
        .unwrap();
}

/// A standby whose link to the active collector has TLS on one side only
/// finds it alive (something answers) and stands by rather than make a
/// second feeder: `standby_tls` on its side, `active_tls` on the active's.
fn standby_across_half_tls(active_tls: bool, standby_tls: bool) {
    let (ca, cert, key) = certificates();
    let server = dsf_common::tls::server_config(&cert, &key).unwrap();
    let trust = dsf_common::tls::client_config(&ca).unwrap();
    let lb = start_lb();
    let mut a = collector_settings(&[lb.cluster_addr]);
    if active_tls {
        a.reactor.tls = vec![Some(server)];
    }
    let active = start_collector(a);
    wait_for_first_push(&lb);
    let mut s = collector_settings(&[lb.cluster_addr]);
    s.standby_for = Some(active.listen_addr.to_string());
    if standby_tls {
        s.push.tls = Some(trust);
    }
    let standby = start_collector(s);
    // Past the time a silent active collector gets, and its warm-up.
    holds_for(
        "the standby stands by",
        2 * collector::standby::TAKE_OVER_AFTER + DEAD_AFTER,
        || standby.cluster().role() == "standby",
    );
}

#[test]
fn a_plain_standby_of_an_active_collector_on_tls_stands_by() {
    standby_across_half_tls(true, false);
}

#[test]
fn a_tls_standby_of_a_plain_active_collector_stands_by() {
    standby_across_half_tls(false, true);
}
