//! End to end, real binaries, with TLS on every dsf port: balancers,
//! collector and app servers serve TLS under a throwaway CA
//! (`scripts/tls-ca`), heartbeats, view pushes and peer links speak it, and
//! the SDK and the CLI reach the cluster through it. `openssl s_client`
//! verifies each port's certificate; a plain client is told the port speaks
//! TLS while the others are served.

mod e2e;

use std::process::{Command, Stdio};
use std::time::Instant;

use dsf_client::messages::{self, ListenOptions, Listener};
use e2e::{Cluster, Spec, WAIT};
use serde_json::json;

#[test]
fn a_cluster_speaking_tls_serves_the_sdk_and_the_cli() {
    // Both app servers up in the view: heartbeats reached the collector and
    // the view reached the balancer, each over TLS.
    let cluster = Cluster::start_tls(Spec {
        apps: 2,
        balancers: 1,
        ..Spec::default()
    });
    let ca = cluster.tls.as_ref().unwrap().join("ca.pem");
    let ports: Vec<String> = [
        cluster.lbs[0].0.clone(),
        cluster.lbs[0].1.clone(),
        cluster.collector_addr.clone(),
    ]
    .into_iter()
    .chain(cluster.apps.iter().map(|a| a.1.clone()))
    .collect();
    for addr in &ports {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", addr, "-CAfile"])
            .arg(&ca)
            .args(["-verify_return_error", "-brief"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.contains("Verification: OK"),
            "s_client {addr}: {said}"
        );
    }

    // The SDK: resolve through the balancer, then the node, both over TLS.
    let mut c = cluster.client();
    let token = cluster.admin_token();
    c.set_token(Some(token.clone()));
    let me = c.call("user.me", &json!({})).unwrap();
    assert_eq!(me["name"], e2e::ADMIN);
    for name in ["tls-ann", "tls-bob"] {
        c.call(
            "user.create",
            &json!({"name": name, "password": "password-123"}),
        )
        .unwrap();
    }

    // A message between users on different nodes: the peer link is TLS.
    let login = |name: &str| {
        let mut c = cluster.client();
        c.set_routing_key(Some(name.to_string()));
        let r = c
            .call(
                "user.login",
                &json!({"name": name, "password": "password-123"}),
            )
            .unwrap();
        c.set_token(Some(r["token"].as_str().unwrap().to_string()));
        c
    };
    let mut ann = login("tls-ann");
    let bob = login("tls-bob");
    let mut listener = Listener::new(&bob, "tls-bob", ListenOptions::default()).unwrap();
    messages::send(&mut ann, "tls-bob", r#"{"over":"tls"}"#).unwrap();
    let m = listener
        .next(Instant::now() + WAIT)
        .unwrap()
        .expect("the message, within the wait");
    assert_eq!(m.body.get(), r#"{"over":"tls"}"#);
    listener.handled(m.seq);
    listener.close();

    // The CLI, with DSF_TLS_CA set by the cluster.
    let out = cluster.cli("cli.session").arg("ping").output().unwrap();
    assert!(
        out.status.success(),
        "client ping: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without it: a plain client on a TLS port gets the reason.
    let out = cluster
        .cli("cli.session")
        .env_remove("DSF_TLS_CA")
        .args(["--node", &cluster.apps[0].1, "ping"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("speaks TLS") && err.contains("--tls-ca"),
        "{err}"
    );
    // And the SDK was served all along.
    c.call("user.me", &json!({})).unwrap();
}
