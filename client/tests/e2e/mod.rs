//! A whole cluster of the real binaries for the end-to-end tests: a
//! collector, one or more balancers and app servers, each a child process
//! on its own free loopback port, over a fresh database from
//! `dsf_sql::testing::fresh()` (`DSF_TEST_DB_URL`, set by `scripts/test`).
//!
//! Each process logs to a file in a temporary folder; when a test fails,
//! the tail of every log is printed. Every wait has a deadline.

#![allow(dead_code)]

pub mod chat;
pub mod check;
pub mod net;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dsf_client::{Client, ClientConfig, Error};
use dsf_common::testing::mqtt::Broker;
use dsf_sql::password::{self, Cost};
use dsf_sql::testing::TestDb;
use dsf_sql::{ListQuery, Role};
use serde_json::{json, Value};

pub const APP: &str = "e2e";
pub const APP_SECRET: &str = "e2e-app-secret-0123456789";
pub const CLUSTER_SECRET: &str = "e2e-cluster-secret-0123456789";
/// What the app servers sign peer.notify with; they hold no cluster secret.
pub const PEER_SECRET: &str = "e2e-peer-secret-0123456789";

/// App server `id`'s own key, which signs its heartbeats.
fn node_key(id: &str) -> String {
    format!("e2e-node-key-of-{id}")
}

/// Writes `text` to `path`, readable by its owner alone.
fn private(path: &std::path::Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}
pub const ADMIN: &str = "root";
pub const ADMIN_PASSWORD: &str = "root-password";
/// The collector's `--dead-after` in these tests: the design's 3 s bound on
/// eviction (4 s to leave `lb.view`) needs at most 3 s; less keeps the
/// suite short (a collector also waits this long before its first push).
pub const DEAD_AFTER: &str = "2s";
/// Longest any one wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// Path of a workspace binary. Cargo hands an integration test only its
/// own package's binaries (`CARGO_BIN_EXE_*`); the others are built next
/// to them by `cargo test --workspace` / `cargo build --workspace`.
pub fn binary(name: &str) -> PathBuf {
    if name == "client" {
        return PathBuf::from(env!("CARGO_BIN_EXE_client"));
    }
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary {name} not found at {}: the end-to-end tests start the real servers; \
         build them first with `cargo build --workspace` (same profile and target dir), \
         or run `cargo test --workspace` / scripts/test, which build every binary",
        path.display()
    );
    path
}

/// A free loopback port, below the range outgoing connections take theirs
/// from: an app server restarted on it finds it free.
pub fn free_port() -> u16 {
    dsf_common::testing::free_port()
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what` at
/// `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One child process and where its log goes.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

// === impl Proc ===

impl Proc {
    pub fn spawn(
        name: &str,
        bin: &str,
        args: &[String],
        envs: &[(&str, &str)],
        dir: &Path,
    ) -> Proc {
        Proc::spawn_as(name, bin, args, envs, dir, None)
    }

    /// [`Proc::spawn`], under user (and group) id `uid` when given.
    pub fn spawn_as(
        name: &str,
        bin: &str,
        args: &[String],
        envs: &[(&str, &str)],
        dir: &Path,
        uid: Option<u32>,
    ) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut exe = binary(bin);
        if uid.is_some() {
            // Another user may not reach into the build folder (a clone
            // under /root): it runs a copy from the test's own folder.
            let copy = dir.join(format!("{name}.{bin}"));
            if !copy.exists() {
                fs::copy(&exe, &copy).unwrap();
            }
            exe = copy;
        }
        let mut cmd = Command::new(exe);
        for (k, _) in std::env::vars() {
            if k.starts_with("DSF_") {
                cmd.env_remove(k);
            }
        }
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        cmd.args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({bin}): {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; the exit is awaited with [`Proc::wait_exit`].
    pub fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits for the exit (deadline `within`) and returns its code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = &mut self.child;
        let status = wait_for(&format!("{} to exit", self.name), within, || {
            child.try_wait().unwrap()
        });
        status.code()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends signal `sig` (`TERM`, `STOP`, `CONT`) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// What to start.
pub struct Spec {
    pub apps: usize,
    pub balancers: usize,
    /// The app server binary: `app-server`, or a server composed on dsf
    /// (`orders-server`), whose own `migrate` then runs too.
    pub server: &'static str,
    /// Each app server runs under a user id of its own ([`app_uid`]), so
    /// that nftables can tell its sockets apart (`meta skuid`) and cut one
    /// server's links alone. Needs root.
    pub own_uids: bool,
    /// App servers whose clock is off: `(i, offset)` starts app server `i`
    /// under libfaketime with `FAKETIME=offset` (`"+30"`: 30 s ahead,
    /// `"-5m"`: five minutes behind); see [`faketime`].
    pub clocks: Vec<(usize, &'static str)>,
    /// Proxy mode: a mosquitto broker beside each app server, which the
    /// app server advertises (`--proxy-advertise`), and an MQTT proxy
    /// listener on each balancer, its pins shared in the cluster's
    /// database (`--pins-db`).
    pub proxy: bool,
    /// A second collector standing by for the first (`--standby-for`),
    /// every app server heartbeating to both ([`Cluster::start_with_standby`]).
    pub standby: bool,
    /// More flags for every app server.
    pub app_args: Vec<&'static str>,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            apps: 3,
            balancers: 1,
            server: "app-server",
            own_uids: false,
            clocks: Vec::new(),
            proxy: false,
            standby: false,
            app_args: Vec::new(),
        }
    }
}

/// libfaketime's library (Debian's package `faketime`, which
/// `scripts/need faults` installs), or `None` with why, when it is not
/// installed.
pub fn faketime() -> Result<PathBuf, String> {
    let dirs = fs::read_dir("/usr/lib").map_err(|e| e.to_string())?;
    dirs.flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.exists())
        .ok_or_else(|| "libfaketime is not installed (scripts/need faults installs it)".into())
}

/// The user id the standby collector runs under with [`Spec::own_uids`].
pub const STANDBY_UID: u32 = 20_100;

/// The user id app server `i` runs under with [`Spec::own_uids`].
pub fn app_uid(i: usize) -> u32 {
    20_000 + i as u32
}

/// Where the cluster's database lives.
enum Store {
    /// A throwaway database on the shared test server.
    Shared(#[allow(dead_code)] TestDb),
    /// A server of its own.
    Private(dsf_sql::testing::PrivateServer),
    /// A throwaway database on a Galera cluster (`DSF_TEST_GALERA_URLS`),
    /// dropped with the cluster.
    Galera(dsf_sql::DbConfig, String),
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Store::Galera(cfg, name) = self {
            if let Err(e) = dsf_sql::db::drop_database(cfg, name) {
                eprintln!("dropping Galera test database {name}: {e}");
            }
        }
    }
}

/// The Galera cluster every e2e cluster runs on when `DSF_TEST_GALERA_URLS`
/// is set (`scripts/test` sets it for its Galera run): its nodes' server
/// URLs.
pub fn galera_nodes() -> Option<Vec<String>> {
    dsf_sql::testing::galera_urls()
}

/// The running cluster.
pub struct Cluster {
    pub dir: PathBuf,
    pub db: dsf_sql::Db,
    store: Store,
    pub db_url: String,
    /// On Galera: each node's URL of the database, app server `i`
    /// preferring node `i` (its `--db` list starts there).
    pub db_nodes: Vec<String>,
    keys: PathBuf,
    pub collector: Option<Proc>,
    pub collector_addr: String,
    metrics_addr: String,
    /// With [`Cluster::start_with_standby`]: the standby collector
    /// (`--standby-for` the one above), which every app server heartbeats
    /// to as well.
    pub standby: Option<Proc>,
    pub standby_addr: Option<String>,
    /// Balancers: (client address, cluster address, process).
    pub lbs: Vec<(String, String, Option<Proc>)>,
    /// App servers by index: node id `app-{i}`, address, process.
    pub apps: Vec<(String, String, Option<Proc>)>,
    /// App server `i`'s `--metrics-listen`.
    app_metrics: Vec<String>,
    /// With TLS on every dsf port: the folder of `scripts/tls-ca`'s
    /// `ca.pem`, `cert.pem` and `key.pem`.
    pub tls: Option<PathBuf>,
    /// The app server binary ([`Spec::server`]).
    pub server: &'static str,
    /// [`Spec::own_uids`].
    pub own_uids: bool,
    /// [`Spec::clocks`].
    pub clocks: Vec<(usize, &'static str)>,
    /// [`Spec::app_args`].
    pub app_args: Vec<&'static str>,
    /// With [`Spec::proxy`]: app server `i`'s broker, and balancer `i`'s
    /// proxy listener.
    pub brokers: Vec<Broker>,
    pub proxies: Vec<String>,
}

// === impl Cluster ===

impl Cluster {
    /// Starts `spec` and waits until every app server is `up` in every
    /// balancer's view.
    pub fn start(spec: Spec) -> Cluster {
        Cluster::start_shared(spec, false)
    }

    /// Like [`Cluster::start`], with a second collector standing by for the
    /// first (`--standby-for`) and every app server heartbeating to both.
    pub fn start_with_standby(spec: Spec) -> Cluster {
        Cluster::start_shared(
            Spec {
                standby: true,
                ..spec
            },
            false,
        )
    }

    /// Like [`Cluster::start`], with TLS on every dsf port (balancers,
    /// collector, app servers, and the links between them) under a
    /// throwaway CA; [`Cluster::client`] and [`Cluster::cli`] trust it.
    pub fn start_tls(spec: Spec) -> Cluster {
        Cluster::start_shared(spec, true)
    }

    /// On a throwaway database of the shared test server, or of the
    /// Galera cluster when `DSF_TEST_GALERA_URLS` names one.
    fn start_shared(spec: Spec, tls: bool) -> Cluster {
        if let Some(nodes) = galera_nodes() {
            static N: AtomicU64 = AtomicU64::new(0);
            let name = format!(
                "dsf_e2e_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let list: Vec<String> = nodes.iter().map(|n| format!("{n}{name}")).collect();
            let cfg = dsf_sql::DbConfig::new(list.join(","));
            dsf_sql::db::ensure_database(&cfg).unwrap();
            let pool = dsf_sql::Db::connect(&cfg).unwrap();
            pool.migrate().unwrap();
            let url = list.join(",");
            let store = Store::Galera(cfg, name);
            return Cluster::start_on(spec, pool, url, list, store, tls);
        }
        let db = dsf_sql::testing::fresh();
        let db_url = format!(
            "{}/{}",
            dsf_sql::testing::server_url().trim_end_matches('/'),
            db.name()
        );
        let pool = (*db).clone();
        let store = Store::Shared(db);
        Cluster::start_on(spec, pool, db_url, Vec::new(), store, tls)
    }

    /// Like [`Cluster::start`], on a MariaDB of its own, which
    /// [`Cluster::restart_db`] can stop and start again.
    pub fn start_with_own_db(spec: Spec) -> Cluster {
        Cluster::start_with_own_db_in(spec, |_| {})
    }

    /// [`Cluster::start_with_own_db`], calling `prepare` with the
    /// server's folder before it starts there (to mount a small disk on
    /// it, say).
    pub fn start_with_own_db_in(spec: Spec, prepare: impl FnOnce(&Path)) -> Cluster {
        let _ = dsf_sql::testing::server_url();
        let own = dsf_sql::testing::PrivateServer::new("e2e-db");
        prepare(own.dir());
        own.script("start");
        let url = format!("{}dsf_e2e", own.script("url"));
        let cfg = dsf_sql::DbConfig::new(url.clone());
        dsf_sql::db::ensure_database(&cfg).unwrap();
        let pool = dsf_sql::Db::connect(&cfg).unwrap();
        pool.migrate().unwrap();
        Cluster::start_on(spec, pool, url, Vec::new(), Store::Private(own), false)
    }

    /// The pid of the cluster's own MariaDB ([`Cluster::start_with_own_db`]).
    pub fn db_pid(&self) -> u32 {
        let Store::Private(own) = &self.store else {
            panic!("db_pid needs Cluster::start_with_own_db");
        };
        own.pid().expect("the cluster's MariaDB has no pid file")
    }

    /// Whether the cluster's own MariaDB is running (its pid file names a
    /// live process).
    pub fn db_running(&self) -> bool {
        let Store::Private(own) = &self.store else {
            panic!("db_running needs Cluster::start_with_own_db");
        };
        own.pid()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Stops the cluster's own MariaDB, waits `down`, and starts it again
    /// on the same port and data.
    pub fn restart_db(&self, down: Duration) {
        let Store::Private(own) = &self.store else {
            panic!("restart_db needs Cluster::start_with_own_db");
        };
        own.script("stop");
        std::thread::sleep(down);
        own.script("start");
    }

    fn start_on(
        spec: Spec,
        db: dsf_sql::Db,
        db_url: String,
        db_nodes: Vec<String>,
        store: Store,
        tls: bool,
    ) -> Cluster {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dsf-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let keys = dir.join("app-keys.toml");
        fs::write(&keys, format!("{APP} = \"{APP_SECRET}\"\n")).unwrap();
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o600)).unwrap();

        // An admin made straight in the database (cheap hash: tests only).
        let hash = password::hash_with(ADMIN_PASSWORD, Cost::TEST).unwrap();
        db.users().create(ADMIN, &hash, Role::Admin).unwrap();

        let lbs = (0..spec.balancers)
            .map(|_| {
                (
                    format!("127.0.0.1:{}", free_port()),
                    format!("127.0.0.1:{}", free_port()),
                    None,
                )
            })
            .collect();
        let apps = (0..spec.apps)
            .map(|i| {
                (
                    format!("app-{i}"),
                    format!("127.0.0.1:{}", free_port()),
                    None,
                )
            })
            .collect();
        // Each app server signs its heartbeats with its own key, which the
        // collector lists: none of them holds the cluster secret, which
        // signs lb.set_view.
        let node_keys: String = (0..spec.apps)
            .map(|i| format!("\"app-{i}\" = \"{}\"\n", node_key(&format!("app-{i}"))))
            .collect();
        private(&dir.join("node-keys.toml"), &node_keys);
        for i in 0..spec.apps {
            let id = format!("app-{i}");
            private(&dir.join(format!("{id}.node-key")), &node_key(&id));
        }
        let app_metrics = (0..spec.apps)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut c = Cluster {
            dir,
            app_metrics,
            db,
            store,
            db_url,
            db_nodes,
            keys,
            collector: None,
            collector_addr: format!("127.0.0.1:{}", free_port()),
            metrics_addr: format!("127.0.0.1:{}", free_port()),
            standby: None,
            standby_addr: spec.standby.then(|| format!("127.0.0.1:{}", free_port())),
            lbs,
            apps,
            tls: None,
            server: "app-server",
            own_uids: false,
            clocks: Vec::new(),
            app_args: spec.app_args.clone(),
            brokers: Vec::new(),
            proxies: Vec::new(),
        };
        if spec.proxy {
            c.brokers = (0..spec.apps).map(|_| Broker::start()).collect();
            c.proxies = (0..spec.balancers)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect();
        }
        if tls {
            let folder = c.dir.join("tls");
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tls-ca");
            let out = std::process::Command::new(script)
                .arg(&folder)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "scripts/tls-ca: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            c.tls = Some(folder);
        }
        if spec.server != "app-server" {
            // dsf's schema is there; the composed server adds its own
            // services' with its `migrate`, as its user would.
            let out = Command::new(binary(spec.server))
                .args(["migrate", "--db", &c.db_url])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} migrate: {}",
                spec.server,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        c.server = spec.server;
        c.own_uids = spec.own_uids;
        c.clocks = spec.clocks;
        for i in 0..spec.balancers {
            c.start_lb(i);
        }
        c.start_collector();
        if c.standby_addr.is_some() {
            c.start_standby();
        }
        for i in 0..spec.apps {
            c.start_app(i);
        }
        let ids: Vec<String> = c.apps.iter().map(|a| a.0.clone()).collect();
        for i in 0..spec.balancers {
            c.wait_view(i, &ids, WAIT);
        }
        c
    }

    fn env(&self) -> Vec<(&'static str, &'static str)> {
        vec![("DSF_CLUSTER_SECRET", CLUSTER_SECRET)]
    }

    pub fn start_lb(&mut self, i: usize) {
        let (listen, cluster) = (self.lbs[i].0.clone(), self.lbs[i].1.clone());
        let args = vec![
            "--listen".into(),
            listen,
            "--cluster-listen".into(),
            cluster,
            "--app-keys".into(),
            self.keys.display().to_string(),
            // Ownership must depend on the ring alone for these tests to
            // compare owners across time; bounded load is lb-server's own
            // tests' business.
            "--bounded-load".into(),
            "off".into(),
        ];
        let mut args = [args, self.tls_args()].concat();
        if let Some(proxy) = self.proxies.get(i) {
            args.extend([
                "--proxy-listen".into(),
                proxy.clone(),
                "--proxy-protocol".into(),
                "mqtt".into(),
                "--pins-db".into(),
                self.db_url.clone(),
                // Cached pins outlive the scenarios: a balancer must not
                // need the cache to run out to follow the table.
                "--pins-cache".into(),
                "60s".into(),
            ]);
        }
        let p = Proc::spawn(
            &format!("lb-{i}"),
            "lb-server",
            &args,
            &self.env(),
            &self.dir,
        );
        self.lbs[i].2 = Some(p);
        let addr = self.lbs[i].0.clone();
        wait_for(&format!("lb-{i} to listen on {addr}"), WAIT, || {
            std::net::TcpStream::connect(&addr).ok()
        });
    }

    pub fn start_collector(&mut self) {
        let (listen, metrics) = (self.collector_addr.clone(), self.metrics_addr.clone());
        self.collector = Some(self.spawn_collector("collector", &listen, &metrics, &[]));
    }

    /// Starts the standby collector of [`Cluster::start_with_standby`].
    pub fn start_standby(&mut self) {
        let listen = self.standby_addr.clone().expect("a cluster with a standby");
        let metrics = format!("127.0.0.1:{}", free_port());
        let active = self.collector_addr.clone();
        let p = self.spawn_collector("standby", &listen, &metrics, &["--standby-for", &active]);
        self.standby = Some(p);
    }

    fn spawn_collector(&self, name: &str, listen: &str, metrics: &str, more: &[&str]) -> Proc {
        // With own user ids, the standby runs under STANDBY_UID, so that
        // its links to the active can be cut alone, with copies of the key
        // files it reads.
        let uid = (self.own_uids && name == "standby").then_some(STANDBY_UID);
        let (mut keys, mut node_keys) = (self.keys.clone(), self.dir.join("node-keys.toml"));
        if let Some(uid) = uid {
            for f in [&mut keys, &mut node_keys] {
                let copy = self.dir.join(format!(
                    "{name}.{}",
                    f.file_name().unwrap().to_string_lossy()
                ));
                fs::copy(&*f, &copy).unwrap();
                std::os::unix::fs::chown(&copy, Some(uid), Some(uid)).unwrap();
                *f = copy;
            }
        }
        let lbs: Vec<String> = self.lbs.iter().map(|l| l.1.clone()).collect();
        let args = vec![
            "--listen".into(),
            listen.to_string(),
            "--metrics-listen".into(),
            metrics.to_string(),
            "--lb".into(),
            lbs.join(","),
            "--dead-after".into(),
            DEAD_AFTER.into(),
            "--app-keys".into(),
            keys.display().to_string(),
            "--node-keys".into(),
            node_keys.display().to_string(),
        ];
        let more: Vec<String> = more.iter().map(|s| s.to_string()).collect();
        let args = [args, more, self.tls_args()].concat();
        // The app servers' database, for the dashboard's jobs.
        let url: &'static str = Box::leak(self.db_url.clone().into_boxed_str());
        let env = [self.env(), vec![("DSF_DB", url)]].concat();
        let p = Proc::spawn_as(name, "collector", &args, &env, &self.dir, uid);
        wait_for(&format!("{name} to listen on {listen}"), WAIT, || {
            std::net::TcpStream::connect(listen).ok()
        });
        p
    }

    /// Runs `client ARGS` as a long-lived child (a `client worker`) named
    /// `name`, reaching the cluster through its balancers as app [`APP`].
    pub fn spawn_client(&self, name: &str, args: &[&str]) -> Proc {
        let envs = [
            ("DSF_LB", self.lb_addrs().join(",")),
            ("DSF_APP", APP.to_string()),
            ("DSF_APP_SECRET", APP_SECRET.to_string()),
        ];
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Proc::spawn(name, "client", &args, &envs, &self.dir)
    }

    /// App server `i`'s `--db`: on Galera, the list from node `i` round.
    pub fn app_db_url(&self, i: usize) -> String {
        let n = self.db_nodes.len();
        if n < 2 && self.own_uids {
            // The driver moves a connection to 127.0.0.1 onto the server's
            // Unix socket, where no cut of the port would reach it.
            let sep = if self.db_url.contains('?') { '&' } else { '?' };
            return format!("{}{sep}prefer_socket=false", self.db_url);
        }
        if n < 2 {
            return self.db_url.clone();
        }
        (0..n)
            .map(|k| self.db_nodes[(i + k) % n].as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The collector's dashboard, on its metrics port.
    pub fn dashboard_url(&self) -> String {
        format!("http://{}/", self.metrics_addr)
    }

    pub fn start_app(&mut self, i: usize) {
        let (id, addr) = (self.apps[i].0.clone(), self.apps[i].1.clone());
        let args = vec![
            "--listen".into(),
            addr.clone(),
            "--node-id".into(),
            id.clone(),
            "--collector".into(),
            match &self.standby_addr {
                Some(standby) => format!("{},{standby}", self.collector_addr),
                None => self.collector_addr.clone(),
            },
            "--workers".into(),
            "4".into(),
            "--app-keys".into(),
            self.keys.display().to_string(),
            "--node-key-file".into(),
            self.dir
                .join(format!("{id}.node-key"))
                .display()
                .to_string(),
        ];
        let mut args = [args, self.tls_args()].concat();
        if let Some(broker) = self.brokers.get(i) {
            args.extend(["--proxy-advertise".into(), broker.addr()]);
        }
        args.extend(self.app_args.iter().map(|a| a.to_string()));
        args.extend(["--metrics-listen".into(), self.app_metrics[i].clone()]);
        let mut env = vec![("DSF_PEER_SECRET", PEER_SECRET)];
        let url: &'static str = Box::leak(self.app_db_url(i).into_boxed_str());
        env.push(("DSF_DB", url));
        if let Some((_, offset)) = self.clocks.iter().find(|(j, _)| *j == i) {
            let lib = faketime().unwrap_or_else(|e| panic!("app-{i}'s clock: {e}"));
            let lib: &'static str = Box::leak(lib.display().to_string().into_boxed_str());
            env.extend([
                ("LD_PRELOAD", lib),
                ("FAKETIME", *offset),
                // Only the wall clock is off; timers keep their pace.
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ]);
        }
        let p = if self.own_uids {
            // Its own copies of the files it reads, owned by its user.
            let uid = app_uid(i);
            let keys = self.dir.join(format!("{id}.app-keys.toml"));
            fs::copy(&self.keys, &keys).unwrap();
            let node_key = self.dir.join(format!("{id}.node-key"));
            for f in [&keys, &node_key] {
                std::os::unix::fs::chown(f, Some(uid), Some(uid)).unwrap();
            }
            let args: Vec<String> = args
                .into_iter()
                .map(|a| match a == self.keys.display().to_string() {
                    true => keys.display().to_string(),
                    false => a,
                })
                .collect();
            Proc::spawn_as(&id, self.server, &args, &env, &self.dir, Some(uid))
        } else {
            Proc::spawn(&id, self.server, &args, &env, &self.dir)
        };
        self.apps[i].2 = Some(p);
        wait_for(&format!("app-{i} to listen on {addr}"), WAIT, || {
            std::net::TcpStream::connect(&addr).ok()
        });
    }

    /// The TLS flags every server gets when the cluster speaks TLS.
    fn tls_args(&self) -> Vec<String> {
        let Some(dir) = &self.tls else {
            return Vec::new();
        };
        let file = |f: &str| dir.join(f).display().to_string();
        vec![
            "--tls-cert".into(),
            file("cert.pem"),
            "--tls-key".into(),
            file("key.pem"),
            "--tls-ca".into(),
            file("ca.pem"),
        ]
    }

    /// The SDK's settings for this cluster, trusting its CA under TLS.
    pub fn client_config(&self, balancers: Vec<String>) -> ClientConfig {
        let cfg = ClientConfig::new(balancers, APP, APP_SECRET.as_bytes().to_vec());
        match &self.tls {
            Some(dir) => cfg.tls_ca(&dir.join("ca.pem")).unwrap(),
            None => cfg,
        }
    }

    pub fn app(&mut self, i: usize) -> &mut Proc {
        self.apps[i].2.as_mut().expect("app server started")
    }

    pub fn lb_addrs(&self) -> Vec<String> {
        self.lbs.iter().map(|l| l.0.clone()).collect()
    }

    /// The `client` binary set up for this cluster (balancers, app, secret)
    /// and none of the caller's `DSF_*`, its session kept in `session`
    /// (a file name in the cluster's folder).
    pub fn cli(&self, session: &str) -> Command {
        let mut cmd = Command::new(binary("client"));
        for (k, _) in std::env::vars() {
            if k.starts_with("DSF_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("DSF_LB", self.lb_addrs().join(","))
            .env("DSF_APP", APP)
            .env("DSF_APP_SECRET", APP_SECRET)
            .env("DSF_SESSION_FILE", self.dir.join(session));
        if let Some(dir) = &self.tls {
            cmd.env("DSF_TLS_CA", dir.join("ca.pem"));
        }
        cmd
    }

    /// Submits a job `name` of `tasks` tasks `{"n": i}` with `client job
    /// submit`; its id.
    pub fn submit_job(&self, name: &str, tasks: usize) -> u64 {
        let file = self.dir.join(format!("{name}.jsonl"));
        let lines: Vec<String> = (0..tasks).map(|i| format!("{{\"n\":{i}}}")).collect();
        fs::write(&file, lines.join("\n") + "\n").unwrap();
        let out = self
            .cli("no.session")
            .args([
                "job",
                "submit",
                "--file",
                file.to_str().unwrap(),
                "--name",
                name,
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["job"]
            .as_u64()
            .unwrap()
    }

    /// `client job status JOB`, or `None` while it fails (for waits).
    pub fn job_status(&self, job: u64) -> Option<serde_json::Value> {
        let out = self
            .cli("no.session")
            .args(["job", "status", &job.to_string(), "--json"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// A client of app `e2e` through every balancer.
    pub fn client(&self) -> Client {
        let mut cfg = self.client_config(self.lb_addrs());
        cfg.request_timeout = Duration::from_secs(10);
        Client::new(cfg).unwrap()
    }

    /// The value of the unlabelled metric `name` on app server `i`'s
    /// `/metrics` page, if it answers.
    pub fn app_metric(&self, i: usize, name: &str) -> Option<f64> {
        let page = self.app_metrics_page(i)?;
        page.lines().find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok())?
        })
    }

    /// App server `i`'s `/metrics` page, if it answers.
    pub fn app_metrics_page(&self, i: usize) -> Option<String> {
        let url = format!("http://{}/metrics", self.app_metrics[i]);
        ureq::get(&url).call().ok()?.into_string().ok()
    }

    /// A client that talks to app server `i` alone, never asking a
    /// balancer, with room for a long poll of up to 20 s.
    pub fn client_of_app(&self, i: usize) -> Client {
        let mut cfg = self.client_config(Vec::new());
        cfg.node = Some(self.apps[i].1.clone());
        cfg.request_timeout = Duration::from_secs(25);
        cfg.deadline = Duration::from_secs(30);
        Client::new(cfg).unwrap()
    }

    /// A client that asks only balancer `i`.
    pub fn client_of_lb(&self, i: usize) -> Client {
        let cfg = self.client_config(vec![self.lbs[i].0.clone()]);
        Client::new(cfg).unwrap()
    }

    /// A session token of the admin.
    pub fn admin_token(&self) -> String {
        let mut c = self.client();
        let r = c
            .call(
                "user.login",
                &json!({"name": ADMIN, "password": ADMIN_PASSWORD}),
            )
            .unwrap();
        r["token"].as_str().unwrap().to_string()
    }

    /// Balancer `i`'s `lb.view`, if it answers.
    pub fn view(&self, i: usize) -> Option<Value> {
        let mut c = self.client_of_lb(i);
        let raw = c.balancer_call("lb.view", "{}").ok()?;
        serde_json::from_str(raw.get()).ok()
    }

    /// The ids of nodes `up` in balancer `i`'s view.
    pub fn up_in_view(&self, i: usize) -> Option<Vec<String>> {
        Some(up_ids(&self.view(i)?["nodes"]))
    }

    /// The ids of every node in balancer `i`'s view, whatever its state.
    pub fn ids_in_view(&self, i: usize) -> Option<Vec<String>> {
        Some(all_ids(&self.view(i)?["nodes"]))
    }

    /// `cluster.status` of the collector at `addr`, if it answers.
    pub fn status_at(&self, addr: &str) -> Option<Value> {
        let raw = self.client().call_at(addr, "cluster.status", "{}").ok()?;
        serde_json::from_str(raw.get()).ok()
    }

    /// The ids of every node in the collector's `cluster.status`.
    pub fn ids_in_status(&self) -> Option<Vec<String>> {
        let c = self.client();
        let raw = c
            .call_at(&self.collector_addr, "cluster.status", "{}")
            .ok()?;
        let v: Value = serde_json::from_str(raw.get()).ok()?;
        Some(all_ids(&v["nodes"]))
    }

    /// `client status --json` run as a user would, through the CLI binary.
    pub fn cli_status(&self) -> String {
        self.cli_status_of(&self.collector_addr)
    }

    /// `client status --json --collector COLLECTORS` (one address, or a
    /// list), through the CLI binary.
    pub fn cli_status_of(&self, collectors: &str) -> String {
        let out = Command::new(binary("client"))
            .args(["--app", APP, "status", "--json", "--collector"])
            .arg(collectors)
            .env("DSF_APP_SECRET", APP_SECRET)
            .env_remove("DSF_APP_SECRET_FILE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "client status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The ids of nodes `up` in the collector's `cluster.status`.
    pub fn up_in_status(&self) -> Option<Vec<String>> {
        let c = self.client();
        let raw = c
            .call_at(&self.collector_addr, "cluster.status", "{}")
            .ok()?;
        let v: Value = serde_json::from_str(raw.get()).ok()?;
        Some(up_ids(&v["nodes"]))
    }

    /// Waits until balancer `i` lists exactly `ids` as up.
    pub fn wait_view(&self, i: usize, ids: &[String], within: Duration) {
        let mut want: Vec<String> = ids.to_vec();
        want.sort();
        wait_for(
            &format!("balancer {i}'s view to list exactly {want:?} as up"),
            within,
            || (self.up_in_view(i).as_ref() == Some(&want)).then_some(()),
        );
    }

    /// Every pin balancer `lb` holds (device key → node id), listed by
    /// `client pins list --all --json` as an operator would.
    pub fn pins(&self, lb: usize) -> BTreeMap<String, String> {
        let out = Command::new(binary("client"))
            .args([
                "pins",
                "list",
                "--all",
                "--json",
                "--cluster",
                &self.lbs[lb].1,
            ])
            .env("DSF_CLUSTER_SECRET", CLUSTER_SECRET)
            .env_remove("DSF_CLUSTER_SECRET_FILE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "client pins list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["pins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["key"].as_str().unwrap().into(),
                    p["node"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    /// Runs `count` MQTT devices `PREFIX-k` through balancer `lb`'s proxy
    /// ([`Spec::proxy`]), each connecting, publishing and leaving; says
    /// which app server's broker each one reached (device → node id).
    pub fn devices(&self, lb: usize, prefix: &str, count: usize) -> BTreeMap<String, String> {
        let brokers: Vec<String> = self.brokers.iter().map(|b| b.addr()).collect();
        let run = dsf_common::testing::mqtt::devices(&self.proxies[lb], &brokers, prefix, count);
        run.all_served(count);
        run.landed
            .into_iter()
            .map(|(d, at)| {
                let i = brokers.iter().position(|b| *b == at).unwrap();
                (d, self.apps[i].0.clone())
            })
            .collect()
    }

    /// Owner of each key according to balancer `lb` (one resolve each).
    pub fn owners(&self, lb: usize, keys: &[String]) -> BTreeMap<String, String> {
        let mut c = self.client_of_lb(lb);
        keys.iter()
            .map(|k| {
                let r = c
                    .resolve(Some(k), &[])
                    .unwrap_or_else(|e| panic!("resolving {k}: {e}"));
                (k.clone(), r.node)
            })
            .collect()
    }

    /// Every id card in the blacklist table.
    pub fn blacklist_ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .db
                .blacklist()
                .list(&ListQuery {
                    after: after.as_deref(),
                    limit: Some(500),
                    name_prefix: None,
                })
                .unwrap();
            out.extend(page.entries.into_iter().map(|e| e.id_card));
            match page.next {
                Some(n) => after = Some(n),
                None => return out,
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut procs: Vec<Proc> = Vec::new();
        procs.extend(self.apps.iter_mut().filter_map(|a| a.2.take()));
        procs.extend(self.collector.take());
        procs.extend(self.standby.take());
        procs.extend(self.lbs.iter_mut().filter_map(|l| l.2.take()));
        for p in &mut procs {
            p.kill();
        }
        if std::thread::panicking() {
            for p in &procs {
                let text = p.log_text();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "----- last {} lines of {} ({}) -----\n{}",
                    tail.len(),
                    p.name,
                    p.log.display(),
                    tail.join("\n")
                );
            }
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn all_ids(nodes: &Value) -> Vec<String> {
    let mut ids: Vec<String> = nodes
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

fn up_ids(nodes: &Value) -> Vec<String> {
    let mut ids: Vec<String> = nodes
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|n| n["state"] == "up")
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

/// The outcome of one write by a [`Writer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Unknown,
}

/// What a writing client saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Id cards whose `blacklist.add` got `ok`.
    pub acked: Vec<String>,
    /// Id cards whose outcome is unknown (may or may not be stored).
    pub unknown: Vec<String>,
    /// Failed resolves (no balancer answered) that were retried: nothing
    /// had been sent to a node, so the write was sent again.
    pub retried_resolves: usize,
    /// Any other error: the tests require none.
    pub errors: Vec<String>,
    /// The longest any one write took, retries and all.
    pub slowest: Duration,
}

/// Runs up to `n` `blacklist.add` writes as client `who`, each with a
/// unique id card, calling `progress` after each; it stops early when
/// `progress` returns `false`. With `rotate` > 1 the client cycles through
/// that many routing keys, a new one each write, so every write resolves
/// (and reconnects): balancer restarts then meet resolves in flight.
pub fn write_many(
    cluster_lbs: Vec<String>,
    token: String,
    who: usize,
    n: usize,
    rotate: usize,
    mut progress: impl FnMut() -> bool,
) -> Tally {
    let mut cfg = ClientConfig::new(cluster_lbs, APP, APP_SECRET.as_bytes().to_vec());
    cfg.request_timeout = Duration::from_secs(10);
    let mut c = Client::new(cfg).unwrap();
    c.set_token(Some(token));
    let mut t = Tally::default();
    for j in 0..n {
        c.set_routing_key(Some(format!("writer-{who}-{}", j % rotate.max(1))));
        let id_card = format!("{who:03}{j:05}");
        let body = json!({"id_card": id_card, "name": format!("Person {who}-{j}")});
        let mut resolves = 0;
        let started = Instant::now();
        loop {
            match c.call("blacklist.add", &body) {
                Ok(_) => t.acked.push(id_card.clone()),
                Err(Error::OutcomeUnknown { .. }) => t.unknown.push(id_card.clone()),
                Err(Error::NoBalancer { .. }) if resolves < 100 => {
                    resolves += 1;
                    t.retried_resolves += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => t.errors.push(format!("write {id_card}: {e}")),
            }
            break;
        }
        t.slowest = t.slowest.max(started.elapsed());
        if !progress() {
            break;
        }
    }
    t
}

/// Fails if any writing client saw an error that was not retried.
pub fn assert_no_errors(tallies: &[Tally]) {
    let errors: Vec<&String> = tallies.iter().flat_map(|t| &t.errors).collect();
    assert!(errors.is_empty(), "clients saw errors: {errors:#?}");
}

/// Fails if any write ended with an unknown outcome; `during` says what
/// cut it off, for the message.
pub fn assert_no_unknown_outcomes(tallies: &[Tally], during: &str) {
    let unknown: Vec<&String> = tallies.iter().flat_map(|t| &t.unknown).collect();
    assert!(
        unknown.is_empty(),
        "writes {during} with an unknown outcome (an error no one retried): {unknown:?}"
    );
}

/// Checks what the design promises about acknowledged writes: each is in
/// MySQL exactly once, and nothing is there that was never sent (the
/// fault scenarios' checker, [`check::Report::writes`]).
pub fn check_writes(cluster: &Cluster, tallies: &[Tally]) {
    check::Report::default()
        .writes(cluster, tallies)
        .assert("writes");
}

/// The task part of the fault scenarios' workload: a job of `tasks` tasks
/// (payload `{"n": SEQ}`) worked by one `client worker` of four threads,
/// whose result is `{"echo": PAYLOAD}`.
pub struct Work {
    pub job: u64,
    pub tasks: usize,
    worker: Proc,
}

impl Work {
    pub fn start(cluster: &Cluster, name: &str, tasks: usize) -> Work {
        let job = cluster.submit_job(name, tasks);
        let worker = cluster.spawn_client(
            &format!("worker-{name}"),
            &[
                "worker",
                "--id",
                name,
                "--lease",
                "3s",
                "--concurrency",
                "4",
                "--exec",
                r#"read p; sleep 0.05; printf '{"echo":%s}' "$p""#,
                "--json",
            ],
        );
        Work { job, tasks, worker }
    }

    /// Waits until every task is done, then stops the worker; `(job,
    /// tasks)` for [`check::Report::tasks`].
    pub fn finish(mut self, cluster: &Cluster) -> (u64, usize) {
        let (job, n) = (self.job, self.tasks);
        wait_for(&format!("job {job}'s {n} tasks done"), WAIT * 2, || {
            cluster
                .job_status(job)
                .filter(|s| s["done"] == n as u64)
                .map(|_| ())
        });
        self.worker.terminate();
        self.worker.wait_exit(WAIT);
        (job, n)
    }

    /// What each task's result must be.
    pub fn expected(seq: usize) -> Value {
        json!({"echo": { "n": seq }})
    }
}

/// Clients writing until told to stop, counting what they did.
pub struct Writers {
    pub done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Tally>>,
}

// === impl Writers ===

impl Writers {
    /// `clients` writers through the cluster's balancers, as the admin.
    pub fn start(cluster: &Cluster, clients: usize, rotate: usize) -> Writers {
        let token = cluster.admin_token();
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|i| {
                let (lbs, token) = (cluster.lb_addrs(), token.clone());
                let (done, stop) = (done.clone(), stop.clone());
                std::thread::spawn(move || {
                    write_many(lbs, token, i, 99_999, rotate, || {
                        done.fetch_add(1, Ordering::Relaxed);
                        !stop.load(Ordering::Relaxed)
                    })
                })
            })
            .collect();
        Writers {
            done,
            stop,
            threads,
        }
    }

    /// Waits until `more` writes have been done from now on.
    pub fn wait_more(&self, more: usize) {
        let target = self.done.load(Ordering::Relaxed) + more;
        wait_for(&format!("{more} more writes"), WAIT, || {
            (self.done.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Stops them and returns what each saw.
    pub fn finish(self) -> Vec<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a writer panicked"))
            .collect()
    }
}
