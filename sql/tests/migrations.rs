//! Migrations against a real MariaDB (run through `scripts/test`).

use std::sync::{Arc, Barrier};

use dsf_common::ErrorCode;
use dsf_sql::migrate::{self, Migration, ACCOUNTS, DSF, LEGACY};
use dsf_sql::{testing, Db, Error};
use mysql::prelude::Queryable;

/// (namespace, version) of every applied migration.
fn applied_versions(db: &Db) -> Vec<(String, u32)> {
    db.pool()
        .get_conn()
        .unwrap()
        .query("SELECT namespace, version FROM schema_migrations ORDER BY namespace, version")
        .unwrap()
}

/// Every (namespace, version) of dsf's own.
fn all() -> Vec<(String, u32)> {
    let mut all: Vec<(String, u32)> = DSF
        .iter()
        .flat_map(|(ns, set)| set.iter().map(|m| (ns.to_string(), m.version)))
        .collect();
    all.sort();
    all
}

/// What reports say was applied, as (namespace, version).
fn applied(reports: &[migrate::Report]) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = reports
        .iter()
        .flat_map(|r| r.applied.iter().map(|v| (r.namespace.clone(), *v)))
        .collect();
    out.sort();
    out
}

#[test]
fn migrations_apply_once_and_rerunning_is_a_no_op() {
    let db = testing::fresh_empty();

    let first = db.migrate().unwrap();
    assert_eq!(applied(&first), all());

    let second = db.migrate().unwrap();
    assert!(applied(&second).is_empty());
    let versions = |r: &[migrate::Report]| r.iter().map(|r| r.version).collect::<Vec<_>>();
    assert_eq!(versions(&second), versions(&first));
    assert_eq!(applied_versions(&db), all());
}

#[test]
fn a_service_numbers_its_migrations_in_a_namespace_of_its_own() {
    let db = testing::fresh();
    // Version 1 again, beside dsf's own version 1s: no collision.
    let orders = Migration {
        version: 1,
        name: "orders",
        sql: "CREATE TABLE orders_t (id INT PRIMARY KEY);\n",
    };
    let report = migrate::apply(&db, "orders", &[orders]).unwrap();
    assert_eq!(
        (report.namespace.as_str(), report.applied.as_slice()),
        ("orders", &[1][..])
    );
    assert!(applied_versions(&db).contains(&("orders".to_string(), 1)));
    assert!(applied_versions(&db).contains(&("accounts".to_string(), 1)));
    assert!(migrate::apply(&db, "orders", &[orders])
        .unwrap()
        .applied
        .is_empty());
    let e = migrate::apply(&db, "no spaces", &[orders]).unwrap_err();
    assert!(e.to_string().contains("namespace"), "{e}");
}

/// A database migrated by a release before namespaces: one list, versions
/// 1 to 6. The new binary records them by service, runs none of them
/// again, and runs only the migrations written since.
#[test]
fn a_database_from_before_namespaces_is_converted_and_nothing_runs_again() {
    let db = testing::fresh_empty();
    // The schema of that release: the migrations the old list held.
    let old: Vec<(String, u32)> = LEGACY
        .iter()
        .flat_map(|(_, now)| now.iter().map(|(ns, v)| (ns.to_string(), *v)))
        .collect();
    for (ns, set) in DSF {
        let then: Vec<Migration> = set
            .iter()
            .filter(|m| old.contains(&(ns.to_string(), m.version)))
            .copied()
            .collect();
        migrate::apply(&db, ns, &then).unwrap();
    }
    {
        let mut c = db.pool().get_conn().unwrap();
        // Back to the old bookkeeping, the schema itself left as it is.
        c.query_drop("DROP TABLE schema_migrations").unwrap();
        c.query_drop(
            "CREATE TABLE schema_migrations (version INT UNSIGNED NOT NULL PRIMARY KEY, \
             name VARCHAR(255) NOT NULL, checksum CHAR(64) CHARACTER SET ascii NOT NULL, \
             applied_at BIGINT NOT NULL)",
        )
        .unwrap();
        for (v, _) in LEGACY {
            c.exec_drop(
                "INSERT INTO schema_migrations VALUES (?, 'old', REPEAT('0', 64), 0)",
                (v,),
            )
            .unwrap();
        }
    }
    // Had anything run again, its CREATE TABLE would fail: the tables exist.
    let reports = db.migrate().unwrap();
    let newer: Vec<(String, u32)> = all().into_iter().filter(|m| !old.contains(m)).collect();
    assert_eq!(applied(&reports), newer, "only the migrations since");
    assert_eq!(applied_versions(&db), all());
    assert!(db.migrate().unwrap().iter().all(|r| r.applied.is_empty()));
}

#[test]
fn three_processes_migrating_at_once_end_with_one_applied_set() {
    let t = testing::fresh_empty();
    let barrier = Arc::new(Barrier::new(3));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let cfg = t.config();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Separate pools, as separate app servers would have.
                let db = Db::connect(&cfg).unwrap();
                barrier.wait();
                db.migrate().unwrap()
            })
        })
        .collect();
    let reports: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let appliers: Vec<_> = reports.iter().filter(|r| !applied(r).is_empty()).collect();
    assert_eq!(
        appliers.len(),
        1,
        "exactly one process applies: {reports:?}"
    );
    assert_eq!(applied(appliers[0]), all());
    assert_eq!(applied_versions(&t), all());
}

#[test]
fn a_changed_applied_migration_is_refused() {
    let db = testing::fresh();
    let changed = Migration {
        sql: "-- edited after release\nCREATE TABLE users (id INT);\n",
        ..ACCOUNTS[0]
    };

    let err = migrate::apply(&db, "accounts", &[changed]).unwrap_err();

    assert!(
        matches!(err, Error::MigrationChanged { version: 1, .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::Internal);
    let msg = err.to_string();
    assert!(
        msg.contains("migration 1 (users) of accounts was changed"),
        "{msg}"
    );
    assert!(msg.contains("new migration"), "{msg}");
}

#[test]
fn a_new_migration_is_applied_after_the_recorded_ones() {
    let db = testing::fresh();
    let extra = Migration {
        version: 9999,
        name: "extra",
        sql: "CREATE TABLE extra (x INT);\nINSERT INTO extra VALUES (1);\n",
    };
    let set = [ACCOUNTS[0], extra];

    let report = migrate::apply(&db, "accounts", &set).unwrap();

    assert_eq!(report.applied, vec![9999]);
    assert_eq!(report.version, 9999);
    let n: Option<u32> = db
        .pool()
        .get_conn()
        .unwrap()
        .query_first("SELECT COUNT(*) FROM extra")
        .unwrap();
    assert_eq!(n, Some(1));
    assert!(migrate::apply(&db, "accounts", &set)
        .unwrap()
        .applied
        .is_empty());
}

/// Galera replicates rows by primary key: a table without one replicates
/// badly (every row event a full scan on the other nodes) or not at all
/// for deletes. Every table the migrations make has one.
#[test]
fn every_table_has_a_primary_key() {
    let db = testing::fresh();
    let mut c = db.pool().get_conn().unwrap();
    let tables: Vec<String> = c
        .query(
            "SELECT table_name FROM information_schema.tables t \
             WHERE t.table_schema = DATABASE() AND t.table_type = 'BASE TABLE'",
        )
        .unwrap();
    assert!(tables.len() >= 15, "the schema's tables: {tables:?}");
    let without: Vec<String> = c
        .query(
            "SELECT t.table_name FROM information_schema.tables t \
             WHERE t.table_schema = DATABASE() AND t.table_type = 'BASE TABLE' AND NOT EXISTS ( \
               SELECT 1 FROM information_schema.table_constraints k \
               WHERE k.table_schema = t.table_schema AND k.table_name = t.table_name \
                 AND k.constraint_type = 'PRIMARY KEY')",
        )
        .unwrap();
    assert!(
        without.is_empty(),
        "tables without a primary key: {without:?}"
    );
}

/// A process that died while migrating leaves its lease behind: the next
/// one waits for the lease to run out, then migrates.
#[test]
fn a_lease_left_by_a_dead_migrator_is_taken_when_it_runs_out() {
    let db = testing::fresh();
    let until = dsf_sql::time::now_ms() + 1_500;
    db.pool()
        .get_conn()
        .unwrap()
        .exec_drop(
            "UPDATE schema_lock SET holder = 'gone-host:1:0', expires_at = ? WHERE id = 1",
            (until,),
        )
        .unwrap();
    let extra = Migration {
        version: 9998,
        name: "after_the_dead",
        sql: "CREATE TABLE after_the_dead (x INT PRIMARY KEY);\n",
    };

    let report = migrate::apply(&db, "accounts", &[ACCOUNTS[0], extra]).unwrap();

    assert_eq!(report.applied, vec![9998]);
    assert!(
        dsf_sql::time::now_ms() >= until,
        "migrated before the dead holder's lease ran out"
    );
    let holder: Option<String> = db
        .pool()
        .get_conn()
        .unwrap()
        .query_first("SELECT holder FROM schema_lock WHERE id = 1")
        .unwrap();
    assert_eq!(holder.as_deref(), Some(""), "released after migrating");
}
