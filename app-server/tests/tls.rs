//! TLS on the app server's port, against peers nobody here wrote:
//! `openssl s_client` completes a verified handshake; signed calls run
//! inside TLS; a plain client is told the port speaks TLS, a client that
//! does not trust the certificate fails its handshake, and the server keeps
//! serving throughout.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dsf_common::call::{Connection, Signer};
use dsf_common::stream::FramedStream;
use dsf_common::wire::envelope::{encode_request, OutgoingRequest, Reply};
use dsf_common::wire::Key;
use dsf_common::ErrorCode;
use dsf_sql::testing;
use support::{Server, APP, SECRET, WAIT};

/// A throwaway CA and a certificate it signed for 127.0.0.1 and
/// localhost, made by `scripts/tls-ca`: (ca.pem, cert.pem, key.pem).
fn certificates(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("dsf-tls-{name}-{}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tls-ca");
    let out = Command::new(script).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/tls-ca: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

fn signer() -> Signer {
    Signer {
        app: APP.into(),
        key: Key::new(SECRET),
    }
}

fn ping(conn: &mut Connection) -> serde_json::Value {
    let raw = conn
        .round_trip("sys.ping", "{}", None, Instant::now() + WAIT)
        .unwrap();
    serde_json::from_str(raw.get()).unwrap()
}

#[test]
fn the_port_speaks_tls_to_openssl_and_signed_calls_and_tells_plain_clients() {
    let (ca, cert, key) = certificates("app");
    let db = testing::fresh();
    let mut s = support::settings(db.config(), None);
    s.reactor.tls = vec![Some(dsf_common::tls::server_config(&cert, &key).unwrap())];
    let server = Server::with(s);
    let addr = server.addr.to_string();
    let trust = dsf_common::tls::client_config(&ca).unwrap();

    // A good client over TLS, kept open through everything below.
    let mut good = Connection::connect_tls(&addr, &addr, signer(), WAIT, 1 << 20, Some(&trust))
        .expect("a TLS connection with the CA");
    assert_eq!(ping(&mut good)["node"], server.node.as_str());

    // openssl's own client: a verified handshake.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr, "-CAfile"])
        .arg(&ca)
        .args(["-verify_return_error", "-brief", "-servername", "localhost"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "s_client: {said}");
    assert!(said.contains("Verification: OK"), "{said}");
    assert!(said.contains("TLSv1.3"), "{said}");

    // A plain client: one unsigned error frame that says what to do, then
    // the connection closes.
    let mut plain = FramedStream::connect(&addr, WAIT, 1 << 20).unwrap();
    let mut frame = Vec::new();
    let body = "{}";
    let req = OutgoingRequest {
        id: 1,
        kind: "sys.ping",
        app: APP,
        token: None,
        body,
    };
    encode_request(&Key::new(SECRET), &req, &mut frame);
    plain.send(&frame).unwrap();
    let reply = plain
        .recv(Instant::now() + WAIT)
        .unwrap()
        .expect("an error frame");
    let e = Reply::parse(&reply).unwrap().unsigned_error().unwrap();
    assert_eq!(e.code(), ErrorCode::BadFrame);
    assert!(e.to_string().contains("this port speaks TLS"), "{e}");
    assert!(matches!(
        plain.recv(Instant::now() + WAIT),
        Ok(None) | Err(_)
    ));

    // A client that trusts another CA: its handshake fails, saying so.
    let (other_ca, _, _) = certificates("other");
    let distrust = dsf_common::tls::client_config(&other_ca).unwrap();
    let e = match Connection::connect_tls(&addr, &addr, signer(), WAIT, 1 << 20, Some(&distrust)) {
        Ok(_) => panic!("an untrusted certificate is refused"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("TLS handshake"), "{e}");
    // Garbage that starts like a handshake is refused by TLS itself.
    let mut junk = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::Write;
    junk.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let _ = std::io::Read::read(&mut junk, &mut buf);

    // Through it all the good client was served, and is still.
    assert_eq!(ping(&mut good)["node"], server.node.as_str());
    let mut again =
        Connection::connect_tls(&addr, &addr, signer(), WAIT, 1 << 20, Some(&trust)).unwrap();
    let raw = again
        .round_trip(
            "user.register",
            r#"{"name":"tls-user","password":"password-123"}"#,
            None,
            Instant::now() + WAIT,
        )
        .unwrap();
    assert_eq!(raw.get(), r#"{"name":"tls-user"}"#);
    let login = again
        .round_trip(
            "user.login",
            r#"{"name":"tls-user","password":"password-123"}"#,
            None,
            Instant::now() + WAIT,
        )
        .unwrap();
    assert!(login.get().contains("\"token\""));
}

#[test]
fn peer_links_between_app_servers_speak_tls() {
    let (ca, cert, key) = certificates("peers");
    let server_tls = dsf_common::tls::server_config(&cert, &key).unwrap();
    let trust = dsf_common::tls::client_config(&ca).unwrap();
    let db = testing::fresh();
    let start = || {
        let mut s = support::settings(db.config(), None);
        s.reactor.tls = vec![Some(server_tls.clone())];
        s.tls_ca = Some(trust.clone());
        // No poll within the test: only peer.notify over TLS can deliver.
        s.msg_poll = Duration::from_secs(3600);
        Server::with(s)
    };
    let (a, b) = (start(), start());
    support::introduce(&[&a, &b]);
    let connect = |s: &Server| {
        let addr = s.addr.to_string();
        Connection::connect_tls(&addr, &addr, signer(), WAIT, 1 << 20, Some(&trust)).unwrap()
    };
    let call = |c: &mut Connection, kind: &str, body: &str, token: Option<&str>| {
        let raw = c
            .round_trip(kind, body, token, Instant::now() + WAIT)
            .unwrap();
        serde_json::from_str::<serde_json::Value>(raw.get()).unwrap()
    };
    let mut on_a = connect(&a);
    let mut tokens = Vec::new();
    for name in ["ann", "bob"] {
        let cred = format!(r#"{{"name":"{name}","password":"password-123"}}"#);
        call(&mut on_a, "user.register", &cred, None);
        let login = call(&mut on_a, "user.login", &cred, None);
        tokens.push(login["token"].as_str().unwrap().to_string());
    }
    let (ann, bob) = (&tokens[0], &tokens[1]);
    let mut sub = connect(&b);
    let id = sub.send("msg.subscribe", "{}", Some(bob)).unwrap();
    support::wait_until("bob's presence on b", || {
        b.running()
            .node()
            .state::<app_server::messaging::mailroom::Mailroom>()
            .len()
            == 1
    });
    call(
        &mut on_a,
        "msg.send",
        r#"{"to":"bob","body":{"over":"tls"}}"#,
        Some(ann),
    );
    let body = loop {
        match sub.recv_stream(id, Instant::now() + WAIT).unwrap() {
            dsf_common::call::Streamed::Event { event, body, .. } if event == "message" => {
                break body
            }
            dsf_common::call::Streamed::Event { .. } => continue,
            dsf_common::call::Streamed::Final(b) => panic!("the stream ended: {}", b.get()),
        }
    };
    let m: serde_json::Value = serde_json::from_str(body.get()).unwrap();
    assert_eq!(m["body"], serde_json::json!({"over": "tls"}));
    let peers = &a.running().node().peers().counters;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(peers.sent.load(Relaxed), 1);
}

#[test]
fn a_server_closing_a_tls_connection_says_so_with_close_notify() {
    let (ca, cert, key) = certificates("close");
    let db = testing::fresh();
    let mut s = support::settings(db.config(), None);
    s.reactor.tls = vec![Some(dsf_common::tls::server_config(&cert, &key).unwrap())];
    s.reactor.idle_timeout = Duration::from_millis(300);
    let server = Server::with(s);
    let addr = server.addr.to_string();
    let trust = dsf_common::tls::client_config(&ca).unwrap();
    let mut idle = FramedStream::connect(&addr, WAIT, 1 << 20)
        .unwrap()
        .start_tls(&trust, &addr, WAIT)
        .unwrap();
    // Closed for idling: a clean end of the stream, not a cut connection.
    assert!(matches!(idle.recv(Instant::now() + WAIT), Ok(None)));
}
