//! `orders-server` is a whole dsf app server: the same command line as
//! `app-server` (flags, subcommands, `--check-config`), composed of dsf's
//! accounts and the orders service. Its behaviour on the wire is held by
//! dsf's end-to-end tests (`client/tests/e2e_orders.rs`), which start this
//! binary in a real cluster.

use std::process::Command;

fn orders_server() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orders-server"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DSF_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn it_takes_app_servers_flags_and_subcommands() {
    let out = orders_server().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.starts_with("orders-server") || help.contains("Usage: orders-server"),
        "{help}"
    );
    for flag in [
        "migrate",
        "create-admin",
        "--check-config",
        "--listen",
        "--collector",
        "--node-id",
        "--app-keys",
        "--metrics-listen",
        "--tls-cert",
        "--registration",
    ] {
        assert!(help.contains(flag), "no {flag} in:\n{help}");
    }
    let out = orders_server()
        .args(["migrate", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--db"));
}

#[test]
fn it_refuses_to_start_without_its_secrets_and_says_how() {
    let out = orders_server()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--db",
            "mysql://nobody@127.0.0.1:1/none",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--app-keys"), "{err}");
}
