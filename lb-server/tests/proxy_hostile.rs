//! Hostile first packets on an MQTT proxy listener, each with its outcome,
//! while a paho device behind the same proxy keeps publishing and a
//! mosquitto_sub behind it keeps receiving. Also: tcp mode, and the PROXY
//! protocol v2 header.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lb_server::proxy::Protocol;
use support::*;

/// A CONNECT of `level` with client id bytes `id`.
fn connect(name: &[u8], level: u8, id: &[u8], v5_props: Option<&[u8]>) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u16).to_be_bytes());
    v.extend_from_slice(name);
    v.push(level);
    v.push(0x02); // clean start
    v.extend_from_slice(&30u16.to_be_bytes());
    if let Some(p) = v5_props {
        v.push(p.len() as u8);
        v.extend_from_slice(p);
    }
    v.extend_from_slice(&(id.len() as u16).to_be_bytes());
    v.extend_from_slice(id);
    let mut p = vec![0x10, v.len() as u8];
    p.extend_from_slice(&v);
    p
}

/// A 5.0 CONNECT with a will that carries will properties.
fn v5_with_will_properties(id: &str) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5]);
    v.push(0x02 | 0x04 | 0x08); // clean start, will, will QoS 1
    v.extend_from_slice(&30u16.to_be_bytes());
    v.push(0); // no CONNECT properties
    v.extend_from_slice(&(id.len() as u16).to_be_bytes());
    v.extend_from_slice(id.as_bytes());
    // Will properties: will delay 0x18 = 0 s, content type 0x03 "text/plain".
    let mut wp = vec![0x18, 0, 0, 0, 0, 0x03, 0, 10];
    wp.extend_from_slice(b"text/plain");
    v.push(wp.len() as u8);
    v.extend_from_slice(&wp);
    v.extend_from_slice(&[0, 8]);
    v.extend_from_slice(b"wills/t1");
    v.extend_from_slice(&[0, 3]);
    v.extend_from_slice(b"bye");
    let mut p = vec![0x10, v.len() as u8];
    p.extend_from_slice(&v);
    p
}

#[test]
fn hostile_first_packets_get_their_answers_while_devices_are_served() {
    let broker = Broker::start();
    // A first-packet deadline longer than any wait here: every close below
    // but the partial CONNECT's is the proxy's answer, not the deadline.
    let mut s = settings(&backends(&[&broker]), &[Protocol::Mqtt]);
    s.proxy.as_mut().unwrap().first_packet_timeout = WAIT * 3;
    let lb = start_lb(s);
    let proxy = lb.proxy_addrs[0];
    let port = proxy.port().to_string();
    // The partial CONNECT's balancer, with a short deadline.
    let mut s = settings(&backends(&[&broker]), &[Protocol::Mqtt]);
    s.proxy.as_mut().unwrap().first_packet_timeout = Duration::from_millis(500);
    let short = start_lb(s);

    // A subscriber through the proxy for the whole test, and a device
    // publishing through it after every hostile case.
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "good-sub",
            "-t",
            "good/#",
        ])
        .args(["-C", "8", "-W", "60", "-q", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    wait_until("the good subscriber to be pinned", || {
        pins(&lb).contains_key("good-sub")
    });
    let good_device = |case: &str| {
        // paho, through the proxy, while the hostile connections are open.
        devices(proxy, &[&broker], &format!("good-{case}"), 1).all_served(1);
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-i", "good-pub", "-q", "1"])
            .args(["-t", &format!("good/{case}"), "-m", case])
            .status()
            .unwrap();
        assert!(
            st.success(),
            "after {case}: mosquitto_pub through the proxy"
        );
    };
    let refused = |reason: &str| proxy_stats(&lb)["refused"][reason].as_u64().unwrap();

    // 1. A partial CONNECT, then silence: closed at the first-packet
    //    deadline, without a word.
    let whole = connect(b"MQTT", 4, b"slow", None);
    let started = Instant::now();
    let mut slow = TcpStream::connect(short.proxy_addrs[0]).unwrap();
    slow.write_all(&whole[..7]).unwrap();
    good_device("partial");
    slow.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    slow.read_to_end(&mut got)
        .expect("closed at the first-packet deadline");
    assert!(got.is_empty(), "{got:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    wait_until("the partial CONNECT to be counted", || {
        proxy_stats(&short)["incomplete"] == 1
    });

    // 2. A remaining length above the cap (64 KiB): closed at once, before
    //    the bytes arrive.
    assert_eq!(exchange(proxy, &[0x10, 0x80, 0x80, 0x40]), b"");
    assert_eq!(refused("too_large"), 1);
    good_device("too_large");

    // 3. A 5-byte remaining length.
    assert_eq!(exchange(proxy, &[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]), b"");
    assert_eq!(refused("malformed"), 1);
    good_device("five_byte_length");

    // 4. A wrong protocol name (closed) and a wrong level (CONNACK 1,
    //    unacceptable protocol version).
    assert_eq!(exchange(proxy, &connect(b"MQTX", 4, b"x", None)), b"");
    assert_eq!(refused("protocol_name"), 1);
    assert_eq!(
        exchange(proxy, &connect(b"MQTT", 7, b"x", None)),
        [0x20, 0x02, 0x00, 0x01]
    );
    assert_eq!(refused("protocol_level"), 1);
    good_device("protocol");

    // 5. A client id that is not UTF-8: CONNACK 2 (identifier rejected) in
    //    3.1.1, reason 0x85 in 5.0.
    assert_eq!(
        exchange(proxy, &connect(b"MQTT", 4, &[0xc3, 0x28], None)),
        [0x20, 0x02, 0x00, 0x02]
    );
    assert_eq!(
        exchange(proxy, &connect(b"MQTT", 5, &[0xff], Some(&[]))),
        [0x20, 0x03, 0x00, 0x85, 0x00]
    );
    assert_eq!(refused("client_id"), 2);
    good_device("client_id");

    // 6. A will with 5.0 properties is a valid CONNECT: the broker gets it
    //    byte for byte and accepts it (CONNACK, reason 0 = success).
    let mut willing = TcpStream::connect(proxy).unwrap();
    willing.set_read_timeout(Some(WAIT)).unwrap();
    willing
        .write_all(&v5_with_will_properties("willing"))
        .unwrap();
    let mut ack = [0u8; 130];
    willing.read_exact(&mut ack[..2]).unwrap();
    assert_eq!(ack[0], 0x20, "a CONNACK from mosquitto");
    let n = ack[1] as usize;
    willing.read_exact(&mut ack[2..2 + n]).unwrap();
    assert_eq!(ack[3], 0x00, "reason: success");
    assert_eq!(pins(&lb)["willing"], "b1");
    good_device("will_properties");

    // 7. An HTTP request: closed at its first byte.
    assert_eq!(exchange(proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), b"");
    assert_eq!(refused("not_connect"), 1);
    good_device("http");

    // The subscriber heard every good publish, in order.
    good_device("extra");
    let out = sub.wait_with_output().unwrap();
    let heard: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        heard,
        [
            "partial",
            "too_large",
            "five_byte_length",
            "protocol",
            "client_id",
            "will_properties",
            "http",
            "extra"
        ]
    );
}

#[test]
fn tcp_mode_splices_by_the_clients_address_and_sends_proxy_v2_first() {
    // A plain TCP backend that reports what it got: the PROXY v2 header,
    // then the client's bytes.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let served = std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = vec![0u8; 28 + 5];
        s.read_exact(&mut got).unwrap();
        s.write_all(b"pong").unwrap();
        got
    });
    let mut s = settings(&[format!("plain={backend_addr}")], &[Protocol::Tcp]);
    s.proxy.as_mut().unwrap().send_proxy_v2 = true;
    let lb = start_lb(s);
    let proxy = lb.proxy_addrs[0];
    let mut c = TcpStream::connect(proxy).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"hello").unwrap();
    let mut pong = [0u8; 4];
    c.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"pong");
    let got = served.join().unwrap();
    let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c, 127, 0, 0, 1, 127, 0, 0, 1]);
    want.extend_from_slice(&c.local_addr().unwrap().port().to_be_bytes());
    want.extend_from_slice(&proxy.port().to_be_bytes());
    want.extend_from_slice(b"hello");
    assert_eq!(got, want);
    // The client's IP address is the key.
    assert_eq!(pins(&lb)["127.0.0.1"], "plain");
}

#[test]
fn tcp_mode_fails_over_to_a_live_broker_for_mosquitto_clients() {
    let live = Broker::start();
    let dead = format!("127.0.0.1:{}", free_port());
    // The ring's owner of 127.0.0.1 is the backend that is down.
    let ids = ["n1", "n2"];
    let view = dsf_common::view::View {
        version: 0,
        nodes: ids
            .iter()
            .map(|id| dsf_common::view::NodeView {
                id: id.to_string(),
                addr: "127.0.0.1:1".into(),
                proxy_addr: None,
                weight: 1,
                state: Default::default(),
                load: Default::default(),
            })
            .collect(),
    };
    let ring = lb_server::ring::Ring::from_view(&view, Default::default()).unwrap();
    let owner = ring
        .node(
            ring.owner(lb_server::ring::key_position(b"127.0.0.1"))
                .unwrap(),
        )
        .id
        .clone();
    let other = ids.iter().find(|i| **i != owner).unwrap().to_string();
    let lb = start_lb(settings(
        &[
            format!("{owner}={dead}"),
            format!("{other}={}", live.addr()),
        ],
        &[Protocol::Tcp],
    ));
    let port = lb.proxy_addrs[0].port().to_string();
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "t",
            "-m",
            "through tcp mode",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(pins(&lb)["127.0.0.1"], other, "re-pinned to the live one");
    assert_eq!(proxy_stats(&lb)["backend_failures"], 1);
}

#[test]
fn no_broker_up_gets_server_unavailable() {
    let lb = start_lb(settings(&[], &[Protocol::Mqtt]));
    let proxy = lb.proxy_addrs[0];
    assert_eq!(
        exchange(proxy, &connect(b"MQTT", 4, b"lonely", None)),
        [0x20, 0x02, 0x00, 0x03]
    );
    assert_eq!(
        exchange(proxy, &connect(b"MQTT", 5, b"lonely", Some(&[]))),
        [0x20, 0x03, 0x00, 0x88, 0x00]
    );
    assert_eq!(proxy_stats(&lb)["unavailable"], 2);
}

/// A broker stand-in that answers a CONNECT with a CONNACK and then holds
/// the connection open without a word, whatever the device does.
fn silent_broker() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                if s.read(&mut buf).unwrap_or(0) > 0 {
                    let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]);
                }
                // Until the proxy closes its side.
                while s.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
        }
    });
    addr
}

/// Opens a device with `keep_alive` seconds and returns how long the
/// proxy took to close it once it fell silent after its CONNACK.
fn silent_for(proxy: std::net::SocketAddr, id: &[u8], keep_alive: u16) -> Duration {
    let mut packet = connect(b"MQTT", 4, id, None);
    packet[10..12].copy_from_slice(&keep_alive.to_be_bytes());
    let mut d = TcpStream::connect(proxy).unwrap();
    d.set_read_timeout(Some(WAIT)).unwrap();
    d.write_all(&packet).unwrap();
    let mut ack = [0u8; 4];
    d.read_exact(&mut ack).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    d.read_to_end(&mut rest)
        .expect("the proxy closes the silent device within the read timeout");
    started.elapsed()
}

#[test]
fn a_silent_device_is_closed_after_one_and_a_half_keep_alives() {
    let mut s = settings(&[format!("fake={}", silent_broker())], &[Protocol::Mqtt]);
    // Keep-alive 0 turns MQTT's own timeout off: the proxy's idle timeout.
    s.proxy.as_mut().unwrap().idle_timeout = Duration::from_millis(700);
    let lb = start_lb(s);
    let proxy = lb.proxy_addrs[0];
    // Keep-alive 2 s: closed at 3 s of silence (the reactor's own idle
    // timeout is 60 s, so nothing else would close it within the read
    // timeout).
    let two = std::thread::spawn(move || silent_for(proxy, b"ka-2", 2));
    let zero = silent_for(proxy, b"ka-0", 0);
    assert!(zero >= Duration::from_millis(700), "{zero:?}");
    let two = two.join().unwrap();
    assert!(two >= Duration::from_secs(3), "{two:?}");
    assert!(
        two > zero,
        "the keep-alive, not the proxy default, timed it"
    );
}

#[test]
fn proxied_clients_leave_room_for_the_client_and_cluster_ports() {
    // Room for 3 proxied clients: (70 - 64 reserved) / 2 connections each.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = settings(
        &[format!("plain={}", backend.local_addr().unwrap())],
        &[Protocol::Tcp],
    );
    s.reactor.max_conns = 70;
    let lb = start_lb(s);
    let proxy = lb.proxy_addrs[0];
    let mut held = Vec::new();
    for i in 0..3u8 {
        let mut c = TcpStream::connect(proxy).unwrap();
        c.write_all(&[i]).unwrap();
        let (mut far, _) = backend.accept().unwrap();
        let mut b = [0u8; 1];
        far.read_exact(&mut b).unwrap();
        held.push((c, far));
    }
    // The fourth is closed at once, without a dsf frame...
    assert_eq!(exchange(proxy, b"x"), b"");
    assert_eq!(proxy_stats(&lb)["unavailable"], 1);
    // ...while both dsf ports still answer.
    let view = call(lb.client_addr, false, "lb.view", serde_json::json!({})).unwrap();
    assert_eq!(view["nodes"][0]["id"], "plain");
    let applied = call(
        lb.cluster_addr,
        true,
        "lb.set_view",
        serde_json::json!({"version": 5, "nodes": []}),
    )
    .unwrap();
    assert_eq!(applied["applied"], 5);
    drop(held);
}
