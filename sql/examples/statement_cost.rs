//! What MariaDB spends on one `blacklist.add` sent three ways on one
//! connection of the raw `mysql` crate, rounds alternated: the insert
//! alone, autocommitted and prepared (`alone`); the insert and its
//! run-once record in one transaction as text, one round trip (`text`);
//! the same with both statements prepared by name once and run as
//! `EXECUTE … USING` (`execute`), as `dsf-sql` sends staged writes; and
//! that again with the record going to a copy of `wire_writes` without
//! its `created_at` index (`unindexed`): what expiry by primary-key order
//! could save at most. Prints
//! adds/s and the server's CPU an add (`mariadbd`'s utime and stime in
//! `/proc`, so run it on the server's machine).
//!
//! ```text
//! scripts/mariadb start
//! DSF_TEST_DB_URL=$(scripts/mariadb url) MARIADB_PID=$(cat target/mariadb/mariadb.pid) \
//!     cargo run --release -p dsf-sql --example statement_cost [SECONDS] [ROUNDS]
//! ```

use std::time::{Duration, Instant};

use dsf_sql::testing::cpu_seconds;
use mysql::prelude::Queryable;

const INSERT: &str = "INSERT INTO blacklist (id_card, name, reason, created_by, created_at, updated_by, updated_at) \
                      VALUES (?, ?, NULL, 'bench', 1, 'bench', 1)";
const RECORD: &str = "INSERT INTO wire_writes (app, nonce, kind, reply, ok, created_at) \
                      VALUES (?, ?, 'blacklist.add', ?, 1, CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED))";

/// One add of card `n`, sent as `how` says.
fn add(c: &mut mysql::Conn, how: &str, n: u64) -> mysql::Result<()> {
    let (card, nonce) = (format!("'C{n:010}'"), format!("'{n:016x}'"));
    let reply = format!("'{{\"id_card\":\"C{n:010}\"}}'");
    let prepared = |record: &str| {
        format!(
            "START TRANSACTION;EXECUTE s_insert USING {card},'Li';\
             EXECUTE {record} USING 'bench',{nonce},{reply};COMMIT"
        )
    };
    let sql = match how {
        "alone" => return c.exec_drop(INSERT, (format!("C{n:010}"), "Li")),
        "text" => format!(
            "START TRANSACTION;{};{};COMMIT",
            INSERT.replacen('?', &card, 1).replacen('?', "'Li'", 1),
            RECORD
                .replacen('?', "'bench'", 1)
                .replacen('?', &nonce, 1)
                .replacen('?', &reply, 1)
        ),
        "execute" => prepared("s_record"),
        "unindexed" => prepared("s_unindexed"),
        _ => unreachable!("a way of sending: {how}"),
    };
    c.query_iter(sql)?.for_each(drop);
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs = Duration::from_secs(args.next().map_or(4, |a| a.parse().expect("SECONDS")));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));
    let pid = std::env::var("MARIADB_PID").expect("MARIADB_PID: the pid of mariadbd");
    let db = dsf_sql::testing::fresh();
    let url = std::env::var("DSF_TEST_DB_URL").expect("DSF_TEST_DB_URL");
    let url = format!("{}/{}", url.trim_end_matches('/'), db.name());
    let mut c = mysql::Conn::new(mysql::Opts::from_url(&url).expect("a URL")).expect("connecting");
    c.query_drop(
        "CREATE TABLE wire_writes_unindexed LIKE wire_writes;\
         ALTER TABLE wire_writes_unindexed DROP INDEX wire_writes_created",
    )
    .expect("a copy of wire_writes without its created_at index");
    let quoted = |sql: &str| mysql::Value::from(sql).as_sql(c.no_backslash_escape());
    let prepare = format!(
        "PREPARE s_insert FROM {};PREPARE s_record FROM {};PREPARE s_unindexed FROM {}",
        quoted(INSERT),
        quoted(RECORD),
        quoted(&RECORD.replace("wire_writes", "wire_writes_unindexed"))
    );
    c.query_iter(prepare).expect("preparing").for_each(drop);
    println!("round\thow\tadds/s\tmariadbd CPU an add (us)");
    let mut n = 0;
    for round in 1..=rounds {
        for how in ["alone", "text", "execute", "unindexed"] {
            let (cpu, start, first) = (cpu_seconds(&pid), Instant::now(), n);
            while start.elapsed() < secs {
                n += 1;
                add(&mut c, how, n).expect("an add");
            }
            let adds = (n - first) as f64;
            let cpu = (cpu_seconds(&pid) - cpu) * 1e6 / adds;
            let rate = adds / start.elapsed().as_secs_f64();
            println!("{round}\t{how}\t{rate:.0}\t{cpu:.0}");
        }
    }
}
