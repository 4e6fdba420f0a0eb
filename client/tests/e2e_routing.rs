//! End to end, real binaries: how a three-node cluster spreads routing keys.

mod e2e;

use std::collections::BTreeMap;

use e2e::{Cluster, Spec};

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

#[test]
fn a_hundred_keys_spread_over_three_nodes_and_each_always_resolves_the_same() {
    // Two balancers fed by one collector: the design says they must agree.
    let cluster = Cluster::start(Spec {
        apps: 3,
        balancers: 2,
        ..Spec::default()
    });
    let keys = keys(100);

    let first = cluster.owners(0, &keys);
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for node in first.values() {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "every node owns keys: {per_node:?}");
    for (node, n) in &per_node {
        assert!(
            (15..=55).contains(n),
            "node {node} owns {n} of 100 keys, outside 15..=55: {per_node:?}"
        );
    }

    // Same membership: the same answer every time, from either balancer,
    // and from a fresh connection.
    for round in 0..3 {
        assert_eq!(cluster.owners(0, &keys), first, "balancer 0, round {round}");
    }
    assert_eq!(cluster.owners(1, &keys), first, "balancer 1 disagrees");

    // And the exact shares lb.view reports add up to the whole ring.
    let view = cluster.view(0).unwrap();
    let total: f64 = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["share"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-6, "shares sum to {total}: {view}");
}
