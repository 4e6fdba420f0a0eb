//! The `collector` binary: refusing to start without a secret, saying how
//! to set one; `--check-config`; SIGTERM as a graceful stop.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::*;

fn collector() -> Command {
    collector_binary()
}

#[test]
fn without_a_cluster_secret_it_refuses_to_start_and_says_how_to_set_one() {
    let o = collector()
        .args(["--lb", "127.0.0.1:6200"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("DSF_CLUSTER_SECRET") && err.contains("--cluster-secret-file"),
        "{err}"
    );
}

#[test]
fn check_config_validates_and_exits() {
    let o = collector()
        .env("DSF_CLUSTER_SECRET", "c")
        .args([
            "--lb",
            "127.0.0.1:6200",
            "--target",
            "a=127.0.0.1:7000,2",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("configuration OK"));

    let o = collector()
        .env("DSF_CLUSTER_SECRET", "c")
        .args(["--lb", "nowhere", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HOST:PORT"));

    // A real start would stop without the secret, so the check does too.
    let o = collector()
        .args(["--lb", "127.0.0.1:6200", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("DSF_CLUSTER_SECRET"));
}

#[test]
fn sigterm_stops_it_gracefully() {
    let lb = start_lb();
    let mut child = collector()
        .env(
            "DSF_CLUSTER_SECRET",
            std::str::from_utf8(CLUSTER_SECRET).unwrap(),
        )
        .env("RUST_LOG", "info")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--lb",
            &lb.cluster_addr.to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for it to be listening, from its own log.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("listening on") {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("collector stopped")),
        "{rest:?}"
    );
}
