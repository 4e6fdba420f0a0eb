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

/// Runs `cmd` with [`PASSWORD`] on its stdin (create-admin reads it there).
fn fed_password(mut cmd: Command) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    child.wait_with_output().unwrap()
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
fn refuses_to_start_without_its_secrets_and_says_how_to_set_them() {
    let keys = keys_file("nosecret");
    let start = |env: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = bin();
        cmd.args(["--db", "mysql://u:p@127.0.0.1:1/x", "--app-keys"])
            .arg(&keys)
            .args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = start(&[], &[]);
    assert!(
        err.contains("no peer secret")
            && err.contains("DSF_PEER_SECRET")
            && err.contains("--peer-secret-file"),
        "{err}"
    );
    let err = start(&[("DSF_PEER_SECRET", "p")], &["--collector", "127.0.0.1:1"]);
    assert!(
        err.contains("no key for heartbeats")
            && err.contains("--node-key-file")
            && err.contains("DSF_CLUSTER_SECRET"),
        "{err}"
    );
    std::fs::remove_dir_all(keys.parent().unwrap()).unwrap();
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

    let mut admin = bin();
    admin
        .args(["create-admin", "--name", "root"])
        .env("DSF_DB", &url);
    let out = fed_password(admin);
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

/// Serves with `cmd` until it logs where, runs `work` against that address,
/// then stops it with SIGTERM; gives its whole log.
fn serve_and_stop(mut cmd: Command, work: impl FnOnce(std::net::SocketAddr)) -> String {
    /// Kills the server if the test fails before it is stopped.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(cmd.stderr(Stdio::piped()).spawn().unwrap());
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let line = match lines.next() {
            Some(line) => line.unwrap(),
            None => panic!("the server exited before serving:\n{}", seen.join("\n")),
        };
        seen.push(line.clone());
        if let Some((_, rest)) = line.split_once(" serving on ") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    work(addr);
    let kill = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    wait_until("the server to exit after SIGTERM", || {
        child.0.try_wait().unwrap().is_some() || Instant::now() > deadline
    });
    seen.extend(log.join().unwrap());
    seen.join("\n")
}

#[test]
fn no_secret_shows_in_check_config_errors_or_debug_logs() {
    let server_url = dsf_sql::testing::server_url();
    let url = dsf_common::config::SecretUrl::new(server_url.clone());
    let db_password = url
        .password()
        .expect("the test database has a password")
        .to_string();
    let name = format!("dsf_secrets_{}", std::process::id());
    let base = server_url.trim_end_matches('/').to_string() + "/";
    let with_password = format!("{base}{name}");
    let bare = with_password.replacen(&format!(":{db_password}@"), "@", 1);
    assert!(!bare.contains(&db_password));

    let keys = keys_file("secrets");
    let pw_file = keys.with_file_name("db.password");
    std::fs::write(&pw_file, format!("{db_password}\n")).unwrap();
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cluster = "cluster-secret-never-shown";
    let app_secret = String::from_utf8_lossy(SECRET).into_owned();
    let mut secrets = vec![db_password.clone(), app_secret, cluster.to_string()];
    let shown = |secrets: &[String], text: &str| {
        secrets.iter().find(|s| text.contains(s.as_str())).cloned()
    };
    let said = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };

    // --check-config with the password in the URL: it shows `***`.
    let out = bin()
        .args(["--check-config", "--db", &with_password, "--app-keys"])
        .arg(&keys)
        .env("DSF_CLUSTER_SECRET", cluster)
        .output()
        .unwrap();
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("configuration OK") && text.contains(":***@"),
        "{text}"
    );
    assert_eq!(shown(&secrets, &text), None, "{text}");

    // The same from a config file.
    let file = keys.with_file_name("app.toml");
    std::fs::write(&file, format!("db = \"{with_password}\"\n")).unwrap();
    let out = bin()
        .args(["--check-config", "--config"])
        .arg(&file)
        .arg("--app-keys")
        .arg(&keys)
        .env("DSF_CLUSTER_SECRET", cluster)
        .output()
        .unwrap();
    let text = said(&out);
    assert!(out.status.success() && text.contains(":***@"), "{text}");
    assert_eq!(shown(&secrets, &text), None, "{text}");

    // Given twice: refused, saying what to fix, still without the password.
    let out = bin()
        .args([
            "--check-config",
            "--db",
            &with_password,
            "--db-password-file",
        ])
        .arg(&pw_file)
        .arg("--app-keys")
        .arg(&keys)
        .env("DSF_CLUSTER_SECRET", cluster)
        .output()
        .unwrap();
    let text = said(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("given twice"), "{text}");
    assert_eq!(shown(&secrets, &text), None, "{text}");

    // A wrong password fails with the database's refusal, not the password.
    let wrong = "wrong-password-never-shown";
    let out = bin()
        .args(["migrate", "--db", &bare])
        .env("DSF_DB_PASSWORD", wrong)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let text = said(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains(wrong), "{text}");

    // migrate with the file, create-admin with the variable, both logging
    // at debug.
    let out = bin()
        .args(["migrate", "--db", &bare, "--db-password-file"])
        .arg(&pw_file)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(shown(&secrets, &text), None, "{text}");
    let mut admin = bin();
    admin
        .args(["create-admin", "--name", "root", "--db", &bare])
        .env("DSF_DB_PASSWORD", &db_password)
        .env("RUST_LOG", "debug");
    let out = fed_password(admin);
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    secrets.push(PASSWORD.to_string());
    assert_eq!(shown(&secrets, &text), None, "{text}");

    // Serving at debug: a login (a user's password on the wire) and calls
    // with its token; neither the secrets nor the token reach the log.
    let mut cmd = bin();
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--db",
        &bare,
        "--db-password-file",
    ])
    .arg(&pw_file)
    .arg("--app-keys")
    .arg(&keys)
    .env("DSF_CLUSTER_SECRET", cluster)
    .env("RUST_LOG", "debug");
    let mut token = String::new();
    let log = serve_and_stop(cmd, |addr| {
        let mut c = Conn::connect(addr);
        token = c.login("root");
        assert_eq!(c.ok("user.me", json!({}), Some(&token))["role"], "admin");
        c.ok(
            "gate.check",
            json!({"id_card": "X-1", "name": "N", "gate": "north"}),
            Some(&token),
        );
    });
    assert!(log.contains("serving on"), "{log}");
    secrets.push(token);
    assert_eq!(shown(&secrets, &log), None, "{log}");

    let _ = dsf_sql::db::drop_database(&dsf_sql::DbConfig::new(server_url), &name);
}
