//! Real peers for proxy mode's tests: mosquitto brokers on loopback, the
//! paho-mqtt devices of `devices.py`, and a balancer with proxy listeners.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

fn need(program: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join(program);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{program} is not installed: proxy mode is tested against real MQTT peers. \
         Run scripts/test (it installs them), or: apt-get install mosquitto mosquitto-clients python3-paho-mqtt"
    );
}

/// A mosquitto broker on 127.0.0.1, killed when dropped.
pub struct Broker {
    pub port: u16,
    child: Child,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "dsf-{tag}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Broker {
    pub fn start() -> Broker {
        Broker::on(free_port())
    }

    /// A broker on `port` (a broker brought back where it was).
    pub fn on(port: u16) -> Broker {
        let dir = tempdir::Dir::new("mosquitto");
        let conf = dir.0.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_keepalive 600\n"
            ),
        )
        .unwrap();
        let child = Command::new(need("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = Broker {
            port,
            child,
            _dir: dir,
        };
        wait_until(&format!("mosquitto on port {port}"), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        wait_until("the killed broker's port to close", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// What a run of `devices.py` saw.
#[derive(Debug)]
pub struct Run {
    /// Device id → the broker (`127.0.0.1:PORT`) its messages reached.
    pub landed: BTreeMap<String, String>,
    pub echoed: usize,
    pub errors: Vec<String>,
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
    let python = need("python3");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/devices.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--proxy")
        .arg(proxy.to_string())
        .arg("--count")
        .arg(count.to_string())
        .arg("--prefix")
        .arg(prefix)
        .arg("--protocol")
        .arg(protocol)
        .arg("--timeout")
        .arg(WAIT.as_secs().to_string());
    for b in brokers {
        cmd.arg("--broker").arg(b.addr());
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "devices.py failed: {stderr}\n(is python3-paho-mqtt installed? apt-get install python3-paho-mqtt)"
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("devices.py printed no JSON ({e}): {stderr}"));
    Run {
        landed: v["landed"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect(),
        echoed: v["echoed"].as_u64().unwrap() as usize,
        errors: v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect(),
    }
}

impl Run {
    /// Asserts every device landed and got its echo.
    pub fn all_served(&self, count: usize) {
        assert!(self.errors.is_empty(), "device errors: {:?}", self.errors);
        assert_eq!(
            self.landed.len(),
            count,
            "devices whose messages reached a broker"
        );
        assert_eq!(
            self.echoed, count,
            "devices that got their own publish back"
        );
    }
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
