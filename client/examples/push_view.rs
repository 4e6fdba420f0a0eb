//! Pushes a view of N made-up nodes to a balancer's cluster port, the way
//! the collector does (`lb.set_view` signed with the cluster secret under
//! app `cluster`), and waits until the balancer says it is in force. Used by
//! `scripts/bench memory` to measure what a balancer holding a 1,000-node
//! view costs in memory.
//!
//! ```text
//! DSF_CLUSTER_SECRET=… cargo run --release -p dsf-client --example push_view -- 127.0.0.1:6200 1000
//! ```
//! Nodes are `node-0000`… at `10.{i/250}.{i%250}.1:7000`, weight 1, up.
//! Prints one JSON line: `{"nodes","applied","bytes","ms"}` (the view's
//! size on the wire and the time from sending to the balancer's answer,
//! which comes once the ring is built and swapped in).

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use dsf_common::stream::FramedStream;
use dsf_common::view::{Load, NodeState, NodeView, View};
use dsf_common::wire::keys::CLUSTER_APP;
use dsf_common::wire::{encode_request, now_ms, Key, OutgoingRequest, Reply, DEFAULT_MAX_FRAME};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: DSF_CLUSTER_SECRET=… push_view HOST:PORT NODES");
        std::process::exit(2);
    }
    let nodes: usize = args[2].parse().expect("NODES must be a number");
    let secret = std::env::var("DSF_CLUSTER_SECRET").unwrap_or_else(|_| {
        eprintln!("push_view: set DSF_CLUSTER_SECRET to the balancer's cluster secret");
        std::process::exit(2);
    });
    let view = View {
        version: now_ms(),
        nodes: (0..nodes)
            .map(|i| NodeView {
                id: format!("node-{i:04}"),
                addr: format!("10.{}.{}.1:7000", i / 250, i % 250),
                proxy_addr: None,
                weight: 1,
                state: NodeState::Up,
                load: Load::default(),
            })
            .collect(),
    };
    let body = serde_json::to_string(&view).expect("a view serialises");
    // A 1,000-node view is about 100 KiB; leave room above the default cap.
    let max_frame = DEFAULT_MAX_FRAME.max(body.len() * 2);
    let key = Key::new(secret.as_bytes());
    let mut out = Vec::with_capacity(body.len() + 256);
    let nonce = encode_request(
        &key,
        &OutgoingRequest {
            id: 1,
            kind: "lb.set_view",
            app: CLUSTER_APP,
            token: None,
            body: &body,
        },
        &mut out,
    );
    let mut conn = FramedStream::connect(&args[1], Duration::from_secs(5), max_frame)
        .unwrap_or_else(|e| fail(&format!("cannot connect to {}: {e}", args[1])));
    let t0 = Instant::now();
    conn.send(&out)
        .unwrap_or_else(|e| fail(&format!("send failed: {e}")));
    let frame = conn
        .recv(Instant::now() + Duration::from_secs(30))
        .unwrap_or_else(|e| fail(&format!("no reply: {e}")))
        .unwrap_or_else(|| fail("the balancer closed the connection"));
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let reply = Reply::parse(&frame).unwrap_or_else(|e| fail(&format!("bad reply: {e}")));
    reply
        .verify(&key, &nonce)
        .unwrap_or_else(|e| fail(&format!("reply not signed by the cluster secret: {e}")));
    let answer = reply
        .into_result()
        .unwrap_or_else(|e| fail(&format!("refused: {e}")));
    let applied: serde_json::Value =
        serde_json::from_str(answer.get()).unwrap_or_else(|e| fail(&format!("bad body: {e}")));
    println!(
        "{{\"nodes\":{nodes},\"applied\":{},\"bytes\":{},\"ms\":{ms:.1}}}",
        applied["applied"],
        body.len()
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("push_view: {msg}");
    std::process::exit(1);
}
