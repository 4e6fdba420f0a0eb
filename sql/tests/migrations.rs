//! Migrations against a real MariaDB (run through `scripts/test`).

use std::sync::{Arc, Barrier};

use dsf_common::ErrorCode;
use dsf_sql::migrate::{self, Migration, MIGRATIONS};
use dsf_sql::{testing, Db, Error};
use mysql::prelude::Queryable;

fn applied_versions(db: &Db) -> Vec<u32> {
    db.pool()
        .get_conn()
        .unwrap()
        .query("SELECT version FROM schema_migrations ORDER BY version")
        .unwrap()
}

#[test]
fn migrations_apply_once_and_rerunning_is_a_no_op() {
    let db = testing::fresh_empty();

    let first = db.migrate().unwrap();
    let all: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(first.applied, all);

    let second = db.migrate().unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.version, first.version);
    assert_eq!(applied_versions(&db), all);
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

    let all: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let appliers: Vec<_> = reports.iter().filter(|r| !r.applied.is_empty()).collect();
    assert_eq!(
        appliers.len(),
        1,
        "exactly one process applies: {reports:?}"
    );
    assert_eq!(appliers[0].applied, all);
    assert_eq!(applied_versions(&t), all);
}

#[test]
fn a_changed_applied_migration_is_refused() {
    let db = testing::fresh();
    let changed = Migration {
        sql: "-- edited after release\nCREATE TABLE users (id INT);\n",
        ..MIGRATIONS[0]
    };

    let err = migrate::apply(&db, &[changed]).unwrap_err();

    assert!(
        matches!(err, Error::MigrationChanged { version: 1, .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::Internal);
    let msg = err.to_string();
    assert!(msg.contains("migration 1 (init) was changed"), "{msg}");
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
    let set = [MIGRATIONS[0], extra];

    let report = migrate::apply(&db, &set).unwrap();

    assert_eq!(report.applied, vec![9999]);
    assert_eq!(report.version, 9999);
    let n: Option<u32> = db
        .pool()
        .get_conn()
        .unwrap()
        .query_first("SELECT COUNT(*) FROM extra")
        .unwrap();
    assert_eq!(n, Some(1));
    assert!(migrate::apply(&db, &set).unwrap().applied.is_empty());
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

    let report = migrate::apply(&db, &[MIGRATIONS[0], extra]).unwrap();

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
