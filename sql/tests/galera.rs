//! On a Galera cluster (`scripts/galera`, named by `DSF_TEST_GALERA_URLS`,
//! which `scripts/test` sets for its Galera run): the pool turns causal
//! reads on by itself, so a row written through one node is read at once
//! through another. Says so and passes without the cluster, unless
//! `DSF_NEED_GALERA` is set.

use dsf_sql::{Db, DbConfig};
use mysql::prelude::Queryable;

fn nodes() -> Option<Vec<String>> {
    let urls = std::env::var("DSF_TEST_GALERA_URLS").ok();
    let Some(urls) = urls else {
        assert!(
            std::env::var_os("DSF_NEED_GALERA").is_none(),
            "DSF_NEED_GALERA is set but DSF_TEST_GALERA_URLS is not"
        );
        eprintln!("skipping the Galera test: DSF_TEST_GALERA_URLS is not set (scripts/test sets it for its Galera run)");
        return None;
    };
    Some(
        urls.split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string() + "/")
            .collect(),
    )
}

#[test]
fn reads_through_one_node_see_writes_through_another() {
    let Some(nodes) = nodes() else {
        return;
    };
    let name = format!("dsf_galera_{}", std::process::id());
    let list = nodes
        .iter()
        .map(|n| format!("{n}{name}"))
        .collect::<Vec<_>>()
        .join(",");
    let all = DbConfig::new(list);
    dsf_sql::db::ensure_database(&all).unwrap();
    // One pool on node 1, one on node 2: each is a list of one.
    let one = Db::connect(&DbConfig::new(format!("{}{name}", nodes[0]))).unwrap();
    let two = Db::connect(&DbConfig::new(format!("{}{name}", nodes[1]))).unwrap();
    for db in [&one, &two] {
        let wait: u64 = db
            .checkout()
            .unwrap()
            .query_first("SELECT @@session.wsrep_sync_wait")
            .unwrap()
            .unwrap();
        assert_eq!(wait, 1, "causal reads on {}", db.target());
    }
    let mut w = one.checkout().unwrap();
    w.query_drop("CREATE TABLE IF NOT EXISTS seen (id INT PRIMARY KEY)")
        .unwrap();
    let mut r = two.checkout().unwrap();
    for id in 0..200 {
        w.exec_drop("INSERT INTO seen (id) VALUES (?)", (id,))
            .unwrap();
        let found: Option<i32> = r
            .exec_first("SELECT id FROM seen WHERE id = ?", (id,))
            .unwrap();
        assert_eq!(
            found,
            Some(id),
            "row {id} written on node 1, read on node 2"
        );
    }
    drop((w, r));
    dsf_sql::db::drop_database(&all, &name).unwrap();
}
