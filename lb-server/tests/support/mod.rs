//! Real peers for proxy mode's tests: mosquitto brokers on loopback, the
//! paho-mqtt devices (`dsf_common::testing::mqtt`), and a balancer with
//! proxy listeners.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dsf_common::call::{Connection, Signer};
use dsf_common::reactor::ReactorConfig;
use dsf_common::wire::{AppKeys, Key};
use lb_server::policy::PolicyKind;
use lb_server::proxy::{Protocol, ProxySettings};
use lb_server::ring::RingConfig;
use lb_server::server::{start, Backend, Running, Settings};
use serde_json::Value;

pub const APP_SECRET: &[u8] = b"app-secret";
pub const CLUSTER_SECRET: &[u8] = b"cluster-secret";
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits for `cond` until [`WAIT`] has passed.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nothing listens on now, below the range outgoing connections
/// take theirs from (a server started on it later finds it free).
pub fn free_port() -> u16 {
    dsf_common::testing::free_port()
}

pub use dsf_common::testing::mqtt::{Broker, Run};

/// Balancer settings with one proxy listener per protocol given, in
/// front of `backends` (`ID=HOST:PORT`).
pub fn settings(backends: &[String], proxies: &[Protocol]) -> Settings {
    let mut s = base_settings(backends);
    s.proxy = Some(ProxySettings {
        listeners: proxies
            .iter()
            .map(|p| ("127.0.0.1:0".parse().unwrap(), *p))
            .collect(),
        ..ProxySettings::default()
    });
    s
}

/// Balancer settings on free ports, app `cli` and the cluster secret, no
/// proxy listener.
pub fn base_settings<S: AsRef<str>>(backends: &[S]) -> Settings {
    let mut app_keys = AppKeys::new();
    app_keys.insert("cli", APP_SECRET);
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        cluster_listen: "127.0.0.1:0".parse().unwrap(),
        backends: backends
            .iter()
            .map(|b| b.as_ref().parse::<Backend>().unwrap())
            .collect(),
        policy: PolicyKind::Ring,
        ring: RingConfig::default(),
        app_keys,
        cluster_secret: dsf_common::config::Secret::new(CLUSTER_SECRET),
        reactor: ReactorConfig::default(),
        reactors: 1,
        proxy: None,
    }
}

/// Backends `bN=127.0.0.1:PORT` for these brokers.
pub fn backends(brokers: &[&Broker]) -> Vec<String> {
    brokers
        .iter()
        .enumerate()
        .map(|(i, b)| format!("b{}={}", i + 1, b.addr()))
        .collect()
}

/// Broker address → the backend id [`backends`] gives it (`bN`).
pub fn backend_ids(brokers: &[&Broker]) -> BTreeMap<String, String> {
    brokers
        .iter()
        .enumerate()
        .map(|(i, b)| (b.addr(), format!("b{}", i + 1)))
        .collect()
}

pub fn start_lb(s: Settings) -> Running {
    start(s).unwrap()
}

/// A signed call on a balancer's port.
pub fn call(addr: SocketAddr, cluster: bool, kind: &str, body: Value) -> Result<Value, String> {
    let (app, secret) = if cluster {
        ("cluster", CLUSTER_SECRET)
    } else {
        ("cli", APP_SECRET)
    };
    let signer = Signer {
        app: app.into(),
        key: Key::new(secret),
    };
    let target = addr.to_string();
    let mut c = Connection::connect(&target, &target, signer, WAIT, 1 << 20).unwrap();
    c.round_trip(kind, &body.to_string(), None, Instant::now() + WAIT)
        .map(|raw| serde_json::from_str(raw.get()).unwrap())
        .map_err(|f| f.to_string())
}

/// Every pin of a balancer: key → node.
pub fn pins(lb: &Running) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut body = serde_json::json!({"limit": 1000});
        if let Some(a) = &after {
            body["after"] = a.clone().into();
        }
        let page = call(lb.cluster_addr, true, "lb.pins", body).unwrap();
        for p in page["pins"].as_array().unwrap() {
            all.insert(
                p["key"].as_str().unwrap().to_string(),
                p["node"].as_str().unwrap().to_string(),
            );
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return all,
        }
    }
}

/// The proxy counters of `lb.stats`.
pub fn proxy_stats(lb: &Running) -> Value {
    call(lb.client_addr, false, "lb.stats", serde_json::json!({})).unwrap()["proxy"].clone()
}

/// Runs `count` paho devices `PREFIX-i` through `proxy`, observing `brokers`.
pub fn devices(proxy: SocketAddr, brokers: &[&Broker], prefix: &str, count: usize) -> Run {
    devices_with(proxy, brokers, prefix, count, "311")
}

pub fn devices_with(
    proxy: SocketAddr,
    brokers: &[&Broker],
    prefix: &str,
    count: usize,
    protocol: &str,
) -> Run {
    devices_in(proxy, brokers, prefix, 0..count, protocol)
}

/// Devices `PREFIX-i` for each `i` in `ids`: two runs at once need ids of
/// their own (see [`dsf_common::testing::mqtt::devices_in`]).
pub fn devices_in(
    proxy: SocketAddr,
    brokers: &[&Broker],
    prefix: &str,
    ids: std::ops::Range<usize>,
    protocol: &str,
) -> Run {
    let brokers: Vec<String> = brokers.iter().map(|b| b.addr()).collect();
    dsf_common::testing::mqtt::devices_in(&proxy.to_string(), &brokers, prefix, ids, protocol)
}

/// Raw bytes to a proxy listener; what comes back before the proxy closes.
/// Panics if it does not close within [`WAIT`] (a reset after our unread
/// bytes counts as a close).
pub fn exchange(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the proxy did not close within {WAIT:?}: {e}"),
        }
    }
}
