//! The built `client` binary against stand-in servers on 127.0.0.1: output
//! (human and `--json`), exit codes, the session file, gate device mode,
//! and `client bench`.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::{dead_addr, fake_lb, TestServer, SECRET};

/// A `client` command with a clean environment: our secret, a private
/// session file, nothing else from the caller's `DSF_*`.
fn client(session: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_client"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DSF_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DSF_APP_SECRET", std::str::from_utf8(SECRET).unwrap())
        .env("DSF_SESSION_FILE", session_path(session));
    cmd
}

fn session_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dsf-cli-test-{}-{name}", std::process::id()))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("client runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn json(o: &Output) -> Value {
    serde_json::from_str(stdout(o).trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", stdout(o)))
}

#[test]
fn ping_names_the_node_that_answered() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);

    let o = run(client("ping").args(["--lb", &lb.addr_string(), "ping"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("pong from a in "), "{}", stdout(&o));

    let o = run(client("ping").args(["--lb", &lb.addr_string(), "ping", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["node"], "a");
    assert!(v["rtt_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn balancers_from_the_environment_are_tried_in_turn() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let o = run(client("env")
        .env("DSF_LB", format!("{},{}", dead_addr(), lb.addr_string()))
        .args(["ping", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["node"], "a");
}

#[test]
fn resolve_shows_the_owning_node_and_its_share() {
    let (a, b) = (TestServer::app("a"), TestServer::app("b"));
    let (lb, _) = fake_lb(vec![("a", a.addr_string()), ("b", b.addr_string())]);

    let o = run(client("resolve").args(["--lb", &lb.addr_string(), "--json", "resolve", "ann"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["key"], "ann");
    assert_eq!(v["node"], "a");
    assert_eq!(v["addr"], a.addr_string());
    assert_eq!(v["view"], 7);
    assert_eq!(v["share"], 0.5);

    let o = run(client("resolve").args(["--lb", &lb.addr_string(), "resolve", "ann"]));
    let out = stdout(&o);
    assert!(out.contains("node a") && out.contains("50.00%"), "{out}");
}

#[test]
fn a_usage_error_exits_2() {
    let o = run(client("usage").args(["blacklist", "frobnicate"]));
    assert_eq!(o.status.code(), Some(2));
    let o = run(client("usage").args(["check"]));
    assert_eq!(
        o.status.code(),
        Some(2),
        "check needs an id card or --stdin"
    );
    // No secret anywhere is a usage error that says how to give one.
    let o = run(client("usage").env_remove("DSF_APP_SECRET").arg("ping"));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("DSF_APP_SECRET"), "{}", stderr(&o));
    // A worker's claim size outside 1 to 100 is refused before it starts.
    for bad in ["0", "101"] {
        let o = run(client("usage").args(["worker", "--exec", "true", "--batch", bad]));
        assert_eq!(o.status.code(), Some(2), "--batch {bad}");
        assert!(stderr(&o).contains("--batch"), "{}", stderr(&o));
    }
}

#[test]
fn a_refused_request_exits_3_with_the_servers_code_and_message() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);

    let o = run(client("refused").args(["--lb", &lb.addr_string(), "blacklist", "get", "1101"]));
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert!(
        err.contains("not_found") && err.contains("no entry for id card 1101"),
        "{err}"
    );

    let o = run(client("refused").args([
        "--lb",
        &lb.addr_string(),
        "--json",
        "blacklist",
        "get",
        "1101",
    ]));
    assert_eq!(o.status.code(), Some(3));
    let v = json(&o);
    assert_eq!(v["error"]["kind"], "refused");
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(v["error"]["message"], "no entry for id card 1101");
}

#[test]
fn an_unreachable_cluster_exits_4() {
    let o = run(client("unreachable").args(["--lb", &dead_addr(), "ping"]));
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("no balancer reachable"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn login_saves_a_private_session_that_later_commands_use() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let lbs = lb.addr_string();
    let path = session_path("login");
    let _ = std::fs::remove_file(&path);

    let mut child = client("login")
        .args(["--lb", &lbs, "login", "ann"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pw-ann\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stdout(&o).contains("tok-ann"), "the token is not printed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let o = run(client("login").args(["--lb", &lbs, "whoami"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("ann (id 1, role viewer)"),
        "{}",
        stdout(&o)
    );

    let _ = std::fs::remove_file(&path);
    let o = run(client("login").args(["--lb", &lbs, "whoami"]));
    assert_eq!(
        o.status.code(),
        Some(3),
        "no session: refused as unauthorized"
    );
}

#[test]
fn register_logs_in_to_learn_whether_the_account_is_now_this_passwords() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let lbs = lb.addr_string();
    let register = |password: &str| {
        let mut child = client("register")
            .args(["--lb", &lbs, "register", "ann", "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{password}").unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    // The server answers both alike; the login after it tells them apart.
    let ok = register("pw-ann");
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(
        stdout(&ok).starts_with("registered ann (id 1, role viewer) and logged in"),
        "{}",
        stdout(&ok)
    );
    assert!(session_path("register").exists());
    let taken = register("someone-elses");
    assert_eq!(taken.status.code(), Some(3), "{}", stderr(&taken));
    let err = stderr(&taken);
    assert!(
        err.contains("the name is taken") && err.contains("client login ann"),
        "{err}"
    );
    let _ = std::fs::remove_file(session_path("register"));
}

#[test]
fn check_stdin_answers_every_line_in_order() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let input: String = (0..1000).map(|i| format!("{i:018},Person {i}\n")).collect();

    let mut child = client("check")
        .args([
            "--lb",
            &lb.addr_string(),
            "check",
            "--stdin",
            "--gate",
            "north",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();

    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 1000);
    for (i, line) in lines.iter().enumerate() {
        let id = format!("{i:018}");
        let want = if i % 10 == 7 {
            format!("{id}\tHIT\tPerson {i}\ttest")
        } else {
            format!("{id}\tclear")
        };
        assert_eq!(line, &want);
    }
    assert_eq!(a.seen("gate.check"), 1000);
}

#[test]
fn bench_counts_add_up_direct_and_through_the_balancer() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);

    let o = run(client("bench").args([
        "bench",
        "--op",
        "ping",
        "--target",
        &a.addr_string(),
        "--requests",
        "2000",
        "--conns",
        "4",
        "--pipeline",
        "8",
        "--json",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = json(&o);
    assert_eq!(r["op"], "ping");
    assert_eq!(r["via"], "direct");
    assert_eq!(r["requests"], 2000);
    assert_eq!(r["ok"], 2000);
    assert_eq!(r["errors"], serde_json::json!({}));
    assert_eq!(r["unsent"], 0);
    let l = &r["latency_ms"];
    let (p50, p99, p999) = (
        l["p50"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
        l["p999"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{l}");
    assert!(r["rps"].as_f64().unwrap() > 0.0);
    assert_eq!(a.seen("sys.ping"), 2000);

    // Through the balancer, and against the balancer itself.
    let o = run(client("bench").args([
        "--lb",
        &lb.addr_string(),
        "bench",
        "--op",
        "ping",
        "--requests",
        "300",
        "--conns",
        "3",
        "--json",
    ]));
    let r = json(&o);
    assert_eq!(
        (r["via"].as_str(), r["ok"].as_u64()),
        (Some("balancer"), Some(300))
    );

    let o = run(client("bench").args([
        "--lb",
        &lb.addr_string(),
        "bench",
        "--op",
        "resolve",
        "--requests",
        "300",
        "--conns",
        "2",
        "--pipeline",
        "4",
        "--json",
    ]));
    let r = json(&o);
    assert_eq!(r["ok"], 300, "{r}");
}

#[test]
fn bench_counts_errors_by_code() {
    // Every gate.check is refused as overloaded; pings are fine.
    let a = TestServer::start(|r| match r.kind.as_str() {
        "gate.check" => support::Action::Err(dsf_common::Error::Overloaded("busy".into())),
        _ => support::app_handler("a", r),
    });
    let o = run(client("bench-err").args([
        "bench",
        "--op",
        "check",
        "--target",
        &a.addr_string(),
        "--requests",
        "500",
        "--conns",
        "2",
        "--pipeline",
        "4",
        "--json",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = json(&o);
    assert_eq!(r["requests"], 500);
    assert_eq!(r["ok"], 0);
    assert_eq!(r["errors"]["overloaded"], 500);
}

#[test]
fn pins_are_listed_and_dropped_with_the_cluster_secret() {
    use lb_server::proxy::{Protocol, ProxySettings};
    // A balancer in tcp proxy mode in front of a plain listener; one
    // connection through it pins 127.0.0.1.
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut keys = dsf_common::wire::AppKeys::new();
    keys.insert("cli", SECRET);
    let lb = lb_server::server::start(lb_server::server::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        cluster_listen: "127.0.0.1:0".parse().unwrap(),
        backends: vec![format!("plain={}", backend.local_addr().unwrap())
            .parse()
            .unwrap()],
        policy: Default::default(),
        ring: Default::default(),
        app_keys: keys,
        cluster_secret: dsf_common::config::Secret::new(b"pins-secret".to_vec()),
        reactor: Default::default(),
        reactors: 1,
        proxy: Some(ProxySettings {
            listeners: vec![("127.0.0.1:0".parse().unwrap(), Protocol::Tcp)],
            ..ProxySettings::default()
        }),
    })
    .unwrap();
    let _through = std::net::TcpStream::connect(lb.proxy_addrs[0]).unwrap();
    let _accepted = backend.accept().unwrap();
    let cluster = lb.cluster_addr.to_string();
    let pins = |args: &[&str]| {
        let mut cmd = client("pins");
        cmd.env("DSF_CLUSTER_SECRET", "pins-secret")
            .args(["pins"])
            .args(args)
            .args(["--cluster", &cluster]);
        run(&mut cmd)
    };

    let o = pins(&["list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["pins"][0]["key"], "127.0.0.1");
    assert_eq!(v["pins"][0]["node"], "plain");
    let o = pins(&["list"]);
    assert!(stdout(&o).starts_with("key"), "a table: {}", stdout(&o));
    assert!(stdout(&o).contains("127.0.0.1  plain"), "{}", stdout(&o));

    let o = pins(&["drop", "127.0.0.1"]);
    assert_eq!(stdout(&o).trim(), "dropped 1 pins", "{}", stderr(&o));
    let o = pins(&["list"]);
    assert_eq!(stdout(&o).trim(), "no pins");
    let o = pins(&["drop"]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("--node"), "{}", stderr(&o));

    // The wrong secret: refused, and the message says which secret.
    let mut cmd = client("pins");
    cmd.env("DSF_CLUSTER_SECRET", "wrong")
        .args(["pins", "list", "--cluster", &cluster]);
    let o = run(&mut cmd);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("DSF_CLUSTER_SECRET"), "{}", stderr(&o));
}

/// A `client` command keeping its sessions where a user's are: under
/// `home`'s config folder (no `DSF_SESSION_FILE`).
fn client_at_home(home: &std::path::Path) -> Command {
    let mut cmd = client("unused");
    cmd.env_remove("DSF_SESSION_FILE")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
    cmd
}

#[test]
fn sessions_are_kept_per_cluster_and_a_stale_one_is_named() {
    let a = TestServer::app("a");
    let (lb1, _) = fake_lb(vec![("a", a.addr_string())]);
    let (lb2, _) = fake_lb(vec![("a", a.addr_string())]);
    let home = session_path("home");
    let _ = std::fs::remove_dir_all(&home);

    let mut child = client_at_home(&home)
        .args([
            "--lb",
            &lb1.addr_string(),
            "login",
            "ann",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pw-ann\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(client_at_home(&home).args(["--lb", &lb1.addr_string(), "whoami"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Another cluster: ann's token is not sent there.
    let o = run(client_at_home(&home).args(["--lb", &lb2.addr_string(), "whoami"]));
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("log in first"), "{}", stderr(&o));

    // A stale session of that cluster: the refusal names its file and
    // how to drop it; `logout --local` drops it without the servers.
    let key = lb2.addr_string().replace([':'], "_");
    let stale = home.join(".config/dsf/sessions").join(key);
    std::fs::write(&stale, r#"{"token":"gone","user":"ann","expires_at":0}"#).unwrap();
    let o = run(client_at_home(&home).args(["--lb", &lb2.addr_string(), "whoami"]));
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert!(
        err.contains(&stale.display().to_string()) && err.contains("client logout --local"),
        "{err}"
    );
    let o = run(client_at_home(&home).args(["--lb", &lb2.addr_string(), "logout", "--local"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stale.exists());
    // The first cluster's session is untouched.
    let o = run(client_at_home(&home).args(["--lb", &lb1.addr_string(), "whoami"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn times_are_local_by_default_utc_when_asked_and_ms_in_json() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let lbs = lb.addr_string();
    let add = |extra: &[&str]| {
        let mut cmd = client("times");
        cmd.env("TZ", "JST-9")
            .args(["--lb", &lbs, "blacklist", "add", "1101", "Li"])
            .args(extra);
        run(&mut cmd)
    };
    let o = add(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("2026-12-05 16:13:45"), "{}", stdout(&o));
    let o = add(&["--utc"]);
    assert!(
        stdout(&o).contains("2026-12-05 07:13:45 UTC"),
        "{}",
        stdout(&o)
    );
    let o = add(&["--json"]);
    assert_eq!(json(&o)["created_at"], 1_796_454_825_554u64);
}

#[test]
fn sixteen_clients_saving_a_session_at_once_all_succeed() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let home = session_path("many");
    let _ = std::fs::remove_dir_all(&home);
    let children: Vec<_> = (0..16)
        .map(|_| {
            let mut child = client_at_home(&home)
                .args([
                    "--lb",
                    &lb.addr_string(),
                    "login",
                    "ann",
                    "--password-stdin",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(b"pw-ann\n").unwrap();
            child
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let dir = home.join(".config/dsf/sessions");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one session, nothing left beside it: {files:?}"
    );
    let o = run(client_at_home(&home).args(["--lb", &lb.addr_string(), "whoami"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&home);
}
