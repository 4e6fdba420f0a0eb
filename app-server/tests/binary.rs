//! The `app-server` binary: refusing to start without secrets, `migrate`,
//! `create-admin`, serving, and SIGTERM → exit 0.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{wait_until, Conn, APP, PASSWORD, SECRET};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_app-server"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DSF_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info");
    c
}

fn keys_file(dir: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("app-server-{dir}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys.toml");
    std::fs::write(
        &path,
        format!("{APP} = \"{}\"\n", String::from_utf8_lossy(SECRET)),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn refuses_to_start_without_a_cluster_secret_and_says_how_to_set_one() {
    let keys = keys_file("nosecret");
    let out = bin()
        .args(["--db", "mysql://u:p@127.0.0.1:1/x", "--app-keys"])
        .arg(&keys)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DSF_CLUSTER_SECRET") && err.contains("--cluster-secret-file"),
        "{err}"
    );
}

#[test]
fn refuses_to_start_without_app_keys_and_says_how_to_set_them() {
    let out = bin()
        .args(["run", "--db", "mysql://u:p@127.0.0.1:1/x"])
        .env("DSF_CLUSTER_SECRET", "s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--app-keys"), "{err}");
}

#[test]
fn migrate_create_admin_serve_and_exit_0_on_sigterm() {
    let server_url = dsf_sql::testing::server_url();
    let name = format!("dsf_bin_{}", std::process::id());
    let url = format!(
        "{}{name}",
        server_url.trim_end_matches('/').to_string() + "/"
    );

    let out = bin().args(["migrate", "--db", &url]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut admin = bin()
        .args(["create-admin", "--name", "root"])
        .env("DSF_DB", &url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(admin.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = admin.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let keys = keys_file("serve");
    let mut child = bin()
        .args(["--listen", "127.0.0.1:0", "--workers", "2", "--app-keys"])
        .arg(&keys)
        .env("DSF_DB", &url)
        .env("DSF_CLUSTER_SECRET", "cluster")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server logs where it serves")
            .unwrap();
        if let Some((_, rest)) = line.split_once(" serving on ") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let mut c = Conn::connect(addr);
    let token = c.login("root");
    assert_eq!(c.ok("user.me", json!({}), Some(&token))["role"], "admin");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = None;
    wait_until("the server to exit after SIGTERM", || {
        status = child.try_wait().unwrap();
        status.is_some() || Instant::now() > deadline
    });
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("draining"), "{log}");

    let _ = dsf_sql::db::drop_database(&dsf_sql::DbConfig::new(server_url), &name);
}
