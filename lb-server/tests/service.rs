//! The balancer over real sockets on 127.0.0.1: resolve, view, set_view,
//! and the bad input every port must survive.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use dsf_common::stream::FramedStream;
use dsf_common::view::{Load, NodeState, NodeView, View};
use dsf_common::wire::{encode_request, frame, Key, OutgoingRequest, Reply};
use dsf_common::{Error, ErrorCode};
use lb_server::ring::{Ring, RingConfig};
use lb_server::server::{start, Running, Settings};
use serde_json::{json, Value};

use support::{APP_SECRET, CLUSTER_SECRET};
const WAIT: Duration = Duration::from_secs(10);

fn settings(backends: &[&str]) -> Settings {
    support::base_settings(backends)
}

struct Client {
    stream: FramedStream,
    app: &'static str,
    key: Key,
    next_id: u64,
}

impl Client {
    fn connect(addr: SocketAddr, app: &'static str, secret: &[u8]) -> Client {
        Client {
            stream: FramedStream::connect(addr, WAIT, 1 << 20).unwrap(),
            app,
            key: Key::new(secret),
            next_id: 1,
        }
    }

    fn app(addr: SocketAddr) -> Client {
        Client::connect(addr, "cli", APP_SECRET)
    }

    fn cluster(addr: SocketAddr) -> Client {
        Client::connect(addr, "cluster", CLUSTER_SECRET)
    }

    fn call(&mut self, kind: &str, body: Value) -> Result<Value, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let body = body.to_string();
        let mut out = Vec::new();
        let req = OutgoingRequest {
            id,
            kind,
            app: self.app,
            token: None,
            body: &body,
        };
        let nonce = encode_request(&self.key, &req, &mut out);
        self.stream.send(&out).unwrap();
        let reply =
            Reply::parse(&self.stream.recv(Instant::now() + WAIT).unwrap().unwrap()).unwrap();
        assert_eq!(reply.id, id);
        // An unsigned refusal (unknown app) is read for what it claims.
        if reply.sig.is_some() || reply.ok {
            reply.verify(&self.key, &nonce)?;
        }
        let raw = reply.into_result()?;
        Ok(serde_json::from_str(raw.get()).unwrap())
    }

    fn resolve(&mut self, key: &str) -> Result<String, Error> {
        self.call("lb.resolve", json!({"key": key}))
            .map(|v| v["node"].as_str().unwrap().to_string())
    }
}

fn node(id: &str, port: u16, weight: u32, state: NodeState, conns: u64) -> NodeView {
    NodeView {
        id: id.into(),
        addr: format!("127.0.0.1:{port}"),
        proxy_addr: None,
        weight,
        state,
        load: Load {
            conns,
            ..Load::default()
        },
    }
}

fn view_json(v: &View) -> Value {
    serde_json::to_value(v).unwrap()
}

fn wait_for_view(lb: &Running, version: u64) {
    let deadline = Instant::now() + WAIT;
    while lb.view().version != version {
        assert!(Instant::now() < deadline, "view {version} never applied");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn resolve_answers_what_a_ring_of_the_same_view_answers() {
    let lb = start(settings(&[
        "a=127.0.0.1:7001",
        "b=127.0.0.1:7002",
        "c=127.0.0.1:7003,2",
    ]))
    .unwrap();
    let ring = Ring::from_view(&lb.view(), RingConfig::default()).unwrap();
    let mut c = Client::app(lb.client_addr);
    for i in 0..200 {
        let key = format!("user-{i}");
        let got = c.call("lb.resolve", json!({ "key": key })).unwrap();
        let want = ring.node(ring.route(key.as_bytes(), &[] as &[&str]).unwrap());
        assert_eq!(got["node"], want.id.as_str(), "{key}");
        assert_eq!(got["addr"], want.addr.as_str());
        assert_eq!(got["view"], 0);
    }
}

#[test]
fn without_a_key_the_peer_address_is_the_key() {
    let lb = start(settings(&[
        "a=127.0.0.1:7001",
        "b=127.0.0.1:7002",
        "c=127.0.0.1:7003",
    ]))
    .unwrap();
    let mut c = Client::app(lb.client_addr);
    let by_ip = c.resolve("127.0.0.1").unwrap();
    for _ in 0..5 {
        let v = c.call("lb.resolve", json!({})).unwrap();
        assert_eq!(v["node"], by_ip.as_str());
    }
}

#[test]
fn exclude_is_honoured_until_no_node_is_left() {
    let lb = start(settings(&[
        "a=127.0.0.1:7001",
        "b=127.0.0.1:7002",
        "c=127.0.0.1:7003",
    ]))
    .unwrap();
    let mut c = Client::app(lb.client_addr);
    for i in 0..50 {
        let key = format!("k{i}");
        let first = c.resolve(&key).unwrap();
        let second = c
            .call("lb.resolve", json!({"key": key, "exclude": [first]}))
            .unwrap()["node"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(first, second);
    }
    let e = c
        .call(
            "lb.resolve",
            json!({"key": "x", "exclude": ["a", "b", "c"]}),
        )
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
}

#[test]
fn an_empty_balancer_answers_unavailable_and_says_why() {
    let lb = start(settings(&[])).unwrap();
    let mut c = Client::app(lb.client_addr);
    let e = c.resolve("anything").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    // The connection stays open for the next request.
    assert_eq!(c.call("lb.view", json!({})).unwrap()["nodes"], json!([]));
}

#[test]
fn view_reports_every_node_with_its_exact_share() {
    let lb = start(settings(&["a=127.0.0.1:7001", "b=127.0.0.1:7002,3"])).unwrap();
    let mut c = Client::app(lb.client_addr);
    let v = c.call("lb.view", json!({})).unwrap();
    assert_eq!(v["version"], 0);
    assert_eq!(v["policy"], "ring");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let share = |id: &str| {
        nodes.iter().find(|n| n["id"] == id).unwrap()["share"]
            .as_f64()
            .unwrap()
    };
    assert!((share("a") + share("b") - 1.0).abs() < 1e-9);
    // Weight 3 against 1: b owns roughly three quarters.
    assert!(share("b") > 0.6 && share("b") < 0.9, "{}", share("b"));
}

#[test]
fn set_view_from_the_cluster_replaces_the_members() {
    let lb = start(settings(&["a=127.0.0.1:7001"])).unwrap();
    let mut cluster = Client::cluster(lb.cluster_addr);
    let view = View {
        version: 5,
        nodes: vec![
            node("x", 8001, 1, NodeState::Up, 0),
            node("y", 8002, 1, NodeState::Up, 0),
        ],
    };
    let applied = cluster.call("lb.set_view", view_json(&view)).unwrap();
    assert_eq!(applied["applied"], 5);
    // The balancer's counters ride along, for the collector's metrics.
    assert_eq!(applied["stats"]["view"], 0, "counted as the view arrived");
    let mut c = Client::app(lb.client_addr);
    for i in 0..20 {
        let n = c.resolve(&format!("k{i}")).unwrap();
        assert!(n == "x" || n == "y", "{n}");
    }
    assert_eq!(c.call("lb.view", json!({})).unwrap()["version"], 5);
}

#[test]
fn a_stale_view_is_ignored() {
    let lb = start(settings(&[])).unwrap();
    let mut cluster = Client::cluster(lb.cluster_addr);
    let newer = View {
        version: 9,
        nodes: vec![node("new", 8001, 1, NodeState::Up, 0)],
    };
    let older = View {
        version: 8,
        nodes: vec![node("old", 8002, 1, NodeState::Up, 0)],
    };
    assert_eq!(
        cluster.call("lb.set_view", view_json(&newer)).unwrap()["applied"],
        9
    );
    assert_eq!(
        cluster.call("lb.set_view", view_json(&older)).unwrap()["applied"],
        9
    );
    assert_eq!(lb.view(), newer);
    let mut c = Client::app(lb.client_addr);
    assert_eq!(c.resolve("k").unwrap(), "new");
}

#[test]
fn same_version_with_new_loads_updates_loads_without_moving_keys() {
    let lb = start(settings(&[])).unwrap();
    let mut cluster = Client::cluster(lb.cluster_addr);
    let nodes = vec![
        node("a", 8001, 1, NodeState::Up, 0),
        node("b", 8002, 1, NodeState::Up, 0),
    ];
    let v1 = View { version: 1, nodes };
    cluster.call("lb.set_view", view_json(&v1)).unwrap();
    let mut loaded = v1.clone();
    loaded.nodes[0].load.conns = 40;
    cluster.call("lb.set_view", view_json(&loaded)).unwrap();
    wait_for_view(&lb, 1);
    let mut c = Client::app(lb.client_addr);
    let v = c.call("lb.view", json!({})).unwrap();
    assert_eq!(v["nodes"][0]["load"]["conns"], 40);
    // a is far above 1.25 × the average: bounded load sends a's keys to b.
    for i in 0..20 {
        assert_eq!(c.resolve(&format!("k{i}")).unwrap(), "b");
    }
}

#[test]
fn draining_nodes_get_no_new_keys() {
    let lb = start(settings(&[])).unwrap();
    let mut cluster = Client::cluster(lb.cluster_addr);
    let view = View {
        version: 2,
        nodes: vec![
            node("a", 8001, 1, NodeState::Draining, 0),
            node("b", 8002, 1, NodeState::Up, 0),
        ],
    };
    cluster.call("lb.set_view", view_json(&view)).unwrap();
    let mut c = Client::app(lb.client_addr);
    for i in 0..30 {
        assert_eq!(c.resolve(&format!("k{i}")).unwrap(), "b");
    }
}

#[test]
fn set_view_is_refused_without_the_cluster_secret() {
    let lb = start(settings(&["a=127.0.0.1:7001"])).unwrap();
    let view = view_json(&View {
        version: 3,
        nodes: vec![node("evil", 6666, 1, NodeState::Up, 0)],
    });
    // Signed with an app key: forbidden.
    let mut app_on_cluster_port = Client::app(lb.cluster_addr);
    let e = app_on_cluster_port
        .call("lb.set_view", view.clone())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);
    // Claiming to be the cluster with the wrong secret: bad signature.
    let mut forger = Client::connect(lb.cluster_addr, "cluster", b"guess");
    let e = forger.call("lb.set_view", view.clone()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadSignature);
    // Unsigned entirely (an unknown app): unauthorized.
    let mut stranger = Client::connect(lb.cluster_addr, "nobody", b"x");
    let e = stranger.call("lb.set_view", view.clone()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized);
    // On the client port, even correctly signed, it is not served.
    let mut cluster_on_client_port = Client::cluster(lb.client_addr);
    let e = cluster_on_client_port
        .call("lb.set_view", view)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::UnknownType);
    assert_eq!(lb.view().nodes[0].id, "a");
}

#[test]
fn malformed_views_are_refused_and_the_old_view_stays() {
    let lb = start(settings(&["a=127.0.0.1:7001"])).unwrap();
    let mut cluster = Client::cluster(lb.cluster_addr);
    let dup = json!({"version": 4, "nodes": [
        {"id": "x", "addr": "127.0.0.1:1"}, {"id": "x", "addr": "127.0.0.1:2"}]});
    let e = cluster.call("lb.set_view", dup).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert!(e.to_string().contains("twice"), "{e}");
    let wrong_type = json!({"version": "four", "nodes": []});
    let e = cluster.call("lb.set_view", wrong_type).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    let bad_state = json!({"version": 4, "nodes": [{"id": "x", "addr": "h:1", "state": "gone"}]});
    assert_eq!(
        cluster.call("lb.set_view", bad_state).unwrap_err().code(),
        ErrorCode::BadRequest
    );
    assert_eq!(lb.view().nodes[0].id, "a");
}

#[test]
fn bad_resolve_bodies_name_the_field() {
    let lb = start(settings(&["a=127.0.0.1:7001"])).unwrap();
    let mut c = Client::app(lb.client_addr);
    let e = c.call("lb.resolve", json!({"key": 7})).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    // The balancer's bodies are parsed as the app servers' are: the
    // field is named.
    assert!(e.to_string().contains("key: invalid type"), "{e}");
    let e = c
        .call("lb.resolve", json!({"key": "x".repeat(2000)}))
        .unwrap_err();
    assert!(e.to_string().contains("key: at most"), "{e}");
    let e = c.call("lb.resolve", json!({"exclude": "a"})).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    let e = c.call("lb.nope", json!({})).unwrap_err();
    assert_eq!(e.code(), ErrorCode::UnknownType);
    assert_eq!(c.resolve("k").unwrap(), "a");
}

#[test]
fn broken_frames_close_only_their_own_connection() {
    let lb = start(settings(&["a=127.0.0.1:7001"])).unwrap();
    let mut good = Client::app(lb.client_addr);
    let mut invalid_json = Vec::new();
    frame::encode(b"{nope", &mut invalid_json);
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (vec![0, 0, 0, 0], ErrorCode::BadFrame),
        (
            (2u32 << 20).to_be_bytes().to_vec(),
            ErrorCode::FrameTooLarge,
        ),
        (invalid_json, ErrorCode::BadJson),
    ];
    for (raw, code) in cases {
        for addr in [lb.client_addr, lb.cluster_addr] {
            let mut bad = FramedStream::connect(addr, WAIT, 1 << 20).unwrap();
            bad.send(&raw).unwrap();
            let reply = Reply::parse(&bad.recv(Instant::now() + WAIT).unwrap().unwrap()).unwrap();
            assert_eq!(reply.into_result().unwrap_err().code(), code);
            assert!(bad
                .read_to_end_until(Instant::now() + WAIT)
                .unwrap()
                .is_empty());
            assert_eq!(good.resolve("k").unwrap(), "a");
        }
    }
}

#[test]
fn shutdown_stops_the_balancer() {
    let lb = start(settings(&["a=127.0.0.1:7001"])).unwrap();
    let addr = lb.client_addr;
    lb.stop().unwrap();
    // Closed at once, but a test on another thread that is spawning the
    // lb-server binary may hold a copy of the descriptor between its fork
    // and exec (close-on-exec closes it there): wait that out.
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the client port still accepts after stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lb_binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb-server"));
    cmd.env_remove("DSF_CLUSTER_SECRET").env("RUST_LOG", "off");
    cmd
}

fn private_file(name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("dsf-lb-{}", dsf_common::wire::new_nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn the_binary_refuses_to_start_without_secrets_and_says_how_to_set_them() {
    let keys = private_file("keys.toml", "cli = \"s\"\n");
    let out = lb_binary()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--app-keys",
        ])
        .arg(&keys)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DSF_CLUSTER_SECRET"), "{err}");

    let out = lb_binary()
        .env("DSF_CLUSTER_SECRET", "c")
        .args(["--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--app-keys"));
}

#[test]
fn check_config_says_ok_only_when_the_server_would_start() {
    let keys = private_file("keys.toml", "cli = \"s\"\n");
    let ok = lb_binary()
        .env("DSF_CLUSTER_SECRET", "c")
        .args([
            "--check-config",
            "--backend",
            "a=127.0.0.1:1,2",
            "--policy",
            "random",
            "--app-keys",
        ])
        .arg(&keys)
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration OK"));

    // --pins-db's password is shown as ***, and its file needs --pins-db.
    let shown = lb_binary()
        .env("DSF_CLUSTER_SECRET", "c")
        .args([
            "--check-config",
            "--proxy-listen",
            "127.0.0.1:0",
            "--proxy-protocol",
            "tcp",
            "--pins-db",
            "mysql://dsf:pins-pw-never-shown@127.0.0.1:1/pins",
            "--app-keys",
        ])
        .arg(&keys)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&shown.stdout).into_owned()
        + &String::from_utf8_lossy(&shown.stderr);
    assert_eq!(shown.status.code(), Some(0), "{out}");
    assert!(out.contains("mysql://dsf:***@127.0.0.1:1/pins"), "{out}");
    assert!(!out.contains("pins-pw-never-shown"), "{out}");

    // Each of these would stop a real start, so the check fails too.
    let open_keys = private_file("keys.toml", "cli = \"s\"\n");
    std::fs::set_permissions(
        &open_keys,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, Option<&std::path::Path>, bool, &str)> = vec![
        (
            vec!["--bounded-load", "0.5"],
            Some(&keys),
            true,
            "bounded_load",
        ),
        (vec![], Some(&keys), false, "DSF_CLUSTER_SECRET"),
        (vec![], None, true, "--app-keys"),
        (vec![], Some(&open_keys), true, "chmod 600"),
        (
            vec!["--pins-db-password-file", "/nonexistent"],
            Some(&keys),
            true,
            "without --pins-db",
        ),
    ];
    for (args, keys, secret, want) in cases {
        let mut cmd = lb_binary();
        cmd.arg("--check-config").args(&args);
        if let Some(k) = keys {
            cmd.arg("--app-keys").arg(k);
        }
        if secret {
            cmd.env("DSF_CLUSTER_SECRET", "c");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn the_binary_serves_and_stops_on_sigterm() {
    let keys = private_file("keys.toml", "cli = \"app-secret\"\n");
    let mut child = lb_binary()
        .env("DSF_CLUSTER_SECRET", "cluster-secret")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--backend",
            "a=127.0.0.1:7001",
            "--app-keys",
        ])
        .arg(&keys)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The log says where it listens; read the first "listening on" line.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr: SocketAddr = rx.recv_timeout(WAIT).unwrap().parse().unwrap();
    let mut c = Client::app(addr);
    assert_eq!(c.resolve("k").unwrap(), "a");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "{s}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lb-server did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_reactor_on_the_client_port_answers_from_the_same_view() {
    let lb = start(Settings {
        reactors: 3,
        ..settings(&["a=127.0.0.1:7001", "b=127.0.0.1:7002"])
    })
    .unwrap();
    let ring = |v: &View| Ring::from_view(v, RingConfig::default()).unwrap();
    // Twenty-four connections: the kernel spreads them over the three
    // reactors; each resolves every key as one ring of the view does.
    let mut clients: Vec<Client> = (0..24).map(|_| Client::app(lb.client_addr)).collect();
    let check = |clients: &mut [Client], expected: &Ring| {
        for (i, c) in clients.iter_mut().enumerate() {
            for k in 0..10 {
                let key = format!("key-{i}-{k}");
                let want = expected.node(expected.route(key.as_bytes(), &[] as &[&str]).unwrap());
                assert_eq!(c.resolve(&key).unwrap(), want.id, "{key} on connection {i}");
            }
        }
    };
    check(&mut clients, &ring(&lb.view()));
    // A view pushed to the cluster port (on the first reactor) is the one
    // every reactor answers from.
    let view = View {
        version: 7,
        nodes: vec![
            node("x", 8001, 1, NodeState::Up, 0),
            node("y", 8002, 2, NodeState::Up, 0),
            node("z", 8003, 1, NodeState::Up, 0),
        ],
    };
    let mut cluster = Client::cluster(lb.cluster_addr);
    assert_eq!(
        cluster.call("lb.set_view", view_json(&view)).unwrap()["applied"],
        7
    );
    wait_for_view(&lb, 7);
    check(&mut clients, &ring(&view));
    for c in &mut clients {
        assert_eq!(c.call("lb.view", json!({})).unwrap()["version"], 7);
    }
    lb.stop().unwrap();
}
