//! Real MQTT peers for proxy mode's tests: mosquitto brokers on loopback
//! and the paho-mqtt devices of `devices.py` (Debian's `mosquitto` and
//! `python3-paho-mqtt`, which `scripts/test` installs).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a broker has to listen, or to be gone after a kill.
const WAIT: Duration = Duration::from_secs(20);

/// The installed `program`, or a panic that says how to install it.
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

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A mosquitto broker on 127.0.0.1, killed when dropped.
pub struct Broker {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Broker {
    /// A broker on a free port ([`super::free_port`]).
    pub fn start() -> Broker {
        Broker::on(super::free_port())
    }

    /// A broker on `port` (a broker brought back where it was).
    pub fn on(port: u16) -> Broker {
        let dir = std::env::temp_dir().join(format!(
            "dsf-mosquitto-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
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
        let b = Broker { port, child, dir };
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a run of `devices.py` saw.
#[derive(Debug)]
pub struct Run {
    /// Device id → the broker (`127.0.0.1:PORT`) its messages reached.
    pub landed: BTreeMap<String, String>,
    pub echoed: usize,
    pub errors: Vec<String>,
}

/// Runs `count` paho devices `PREFIX-i` (MQTT 3.1.1) through `proxy`,
/// observing the brokers at `brokers` (`127.0.0.1:PORT`).
pub fn devices(proxy: &str, brokers: &[String], prefix: &str, count: usize) -> Run {
    devices_with(proxy, brokers, prefix, count, "311")
}

/// [`devices`] in MQTT `protocol` (`31`, `311` or `5`).
pub fn devices_with(
    proxy: &str,
    brokers: &[String],
    prefix: &str,
    count: usize,
    protocol: &str,
) -> Run {
    devices_in(proxy, brokers, prefix, 0..count, protocol)
}

/// Devices `PREFIX-i` for each `i` in `ids`, in MQTT `protocol`. Two runs
/// at once against the same brokers need ids of their own: a broker drops
/// the older of two connections with one client id.
pub fn devices_in(
    proxy: &str,
    brokers: &[String],
    prefix: &str,
    ids: std::ops::Range<usize>,
    protocol: &str,
) -> Run {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/testing/devices.py");
    let mut cmd = Command::new(need("python3"));
    cmd.arg(script)
        .args(["--proxy", proxy])
        .args(["--first", &ids.start.to_string()])
        .args(["--count", &ids.len().to_string()])
        .args(["--prefix", prefix])
        .args(["--protocol", protocol])
        .args(["--timeout", &WAIT.as_secs().to_string()]);
    for b in brokers {
        cmd.args(["--broker", b]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "devices.py failed: {stderr}\n(is python3-paho-mqtt installed? apt-get install python3-paho-mqtt)"
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("devices.py printed no JSON ({e}): {stderr}"));
    let strings = |v: &Value| v.as_str().unwrap().to_string();
    Run {
        landed: v["landed"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), strings(v)))
            .collect(),
        echoed: v["echoed"].as_u64().unwrap() as usize,
        errors: v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(strings)
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
