//! `client status` against a real collector. This test binary runs with
//! `harness = false` so that it can also *be* the client: re-executed with
//! [`AS_CLIENT`] set, its `main` is `dsf_client::cli::main()`, exactly what
//! the `client` binary's `main` is, with its own argv and stdout.

mod support;

use std::process::{Command, ExitCode, Output};

use support::*;

const AS_CLIENT: &str = "DSF_COLLECTOR_TEST_AS_CLIENT";

fn client(args: &[&str]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("DSF_") {
            cmd.env_remove(k);
        }
    }
    cmd.env(AS_CLIENT, "1")
        .env("DSF_APP_SECRET", std::str::from_utf8(APP_SECRET).unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn client_status_prints_the_node_table() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let _node = Node::start_with(col.listen_addr, "app-1", |hb| hb.stats.conns = 3);
    wait_until("app-1 in the view", WAIT, || col.view().nodes.len() == 1);
    let collector = col.listen_addr.to_string();

    let o = client(&["--app", APP, "status", "--collector", &collector]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let version = col.view().version;
    assert!(out.starts_with(&format!("view {version}\n")), "{out}");
    let row = out
        .lines()
        .find(|l| l.contains("app-1"))
        .unwrap_or_else(|| panic!("no row for app-1:\n{out}"));
    assert!(
        row.contains("127.0.0.1:17005") && row.contains("up"),
        "{row}"
    );
    assert!(out.contains("last_seen_ms"), "header: {out}");

    let o = client(&["--app", APP, "status", "--collector", &collector, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["nodes"][0]["id"], "app-1");
    assert_eq!(v["nodes"][0]["stats"]["conns"], 3);
}

fn client_status_with_an_unknown_app_is_refused() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let o = client(&[
        "--app",
        "nobody",
        "status",
        "--collector",
        &col.listen_addr.to_string(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    // The server cannot sign for an app it has no key for, and an unsigned
    // reply is never taken as the server's word: a bad reply (6), showing
    // what it claims.
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(
        err.contains("unsigned reply (it claims unauthorized"),
        "{err}"
    );
    assert!(err.contains("app-keys"), "{err}");
}

fn client_status_from_a_standby_that_took_over_says_so() {
    let lb = start_lb();
    let mut s = collector_settings(&[lb.cluster_addr]);
    // An active collector that never answers: the standby takes over.
    let active = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    s.standby_for = Some(active.clone());
    let standby = start_collector(s);
    wait_until("the standby to take over", WAIT, || {
        standby.cluster().role() == "took-over"
    });
    let o = client(&[
        "--app",
        APP,
        "status",
        "--collector",
        &standby.listen_addr.to_string(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&format!("from the standby of {active}, took over"))),
        "{out}"
    );
}

fn main() -> ExitCode {
    if std::env::var_os(AS_CLIENT).is_some() {
        return dsf_client::cli::main();
    }
    let tests: [(&str, fn()); 3] = [
        (
            "client_status_from_a_standby_that_took_over_says_so",
            client_status_from_a_standby_that_took_over_says_so,
        ),
        (
            "client_status_prints_the_node_table",
            client_status_prints_the_node_table,
        ),
        (
            "client_status_with_an_unknown_app_is_refused",
            client_status_with_an_unknown_app_is_refused,
        ),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
