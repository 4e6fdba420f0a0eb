//! The most MariaDB can store of dsf's direct messages, with no app server
//! in the way: 16 connections of the raw `mysql` crate, each committing
//! batches of 64 sends (a window's worth) as fast as it can, in three
//! shapes, rounds alternated (each round starts with the next shape):
//!
//! - `today`: the statements a batch of `msg.send` sends now
//!   (`messages::prepare_group` and the group's commit): the messages,
//!   their run-once records, the recipients' counters taken `FOR UPDATE`
//!   and their presence read `LOCK IN SHARE MODE`, the inbox rows, the
//!   counters moved on, `COMMIT`; in three round trips, where dsf takes
//!   five (it sends `START TRANSACTION` alone and reads the auto-increment
//!   settings before storing the messages);
//! - `two-rows`: each message kept in its recipient's inbox row, and its
//!   run-once record, one round trip;
//! - `one-row`: one row a message, keyed by its run-once key, with an index
//!   for delivery (recipient, number) and one for expiry, autocommitted.
//!
//! The last two number messages in memory, as the node owning a recipient
//! would, and leave out what such a design would still need: batches
//! commit out of number order here (a reader could see n before n - 1),
//! and `two-rows` has no index for history. They are lower bounds.
//!
//! With `shared` (the default) every connection sends to the 16 recipients
//! in turn, as `msg_bench` does, so `today`'s batches wait for each other's
//! counters; with `pairs` connection k sends to recipient k only. Prints
//! messages/s and the CPU a message of `mariadbd` (from `/proc`, so run it
//! on the server's machine) and of this program.
//!
//! ```text
//! scripts/mariadb start
//! DSF_TEST_DB_URL=$(scripts/mariadb url) MARIADB_PID=$(cat target/mariadb/mariadb.pid) \
//!     cargo run --release -p dsf-sql --example message_floor [SECONDS] [ROUNDS] [shared|pairs]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dsf_sql::testing::cpu_seconds;
use mysql::prelude::Queryable;

const CONNS: usize = 16;
const RECIPIENTS: u64 = 16;
const BATCH: u64 = 64;
const SHAPES: [&str; 3] = ["today", "two-rows", "one-row"];
/// A record's `created_at`, as `dsf-sql` writes it (the database's clock).
const NOW_MS: &str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";

/// A nonce as clients draw them: 64 random-looking bits (splitmix64 of n).
fn nonce(n: u64) -> String {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", z ^ (z >> 31))
}

/// Where send number `n` of connection `conn` goes.
fn recipient(conn: usize, n: u64, pairs: bool) -> u64 {
    let turn = if pairs { conn as u64 } else { n };
    1 + turn % RECIPIENTS
}

/// Runs `sql`, one or more statements, and reads every result: the rows
/// of each statement in turn. (`query_iter` reports only the first
/// statement's error; a later one's would go unseen if not read.)
fn run(c: &mut mysql::Conn, sql: &str) -> mysql::Result<Vec<Vec<mysql::Row>>> {
    let mut result = c.query_iter(sql)?;
    let mut sets = Vec::new();
    while let Some(set) = result.iter() {
        sets.push(set.collect::<mysql::Result<Vec<_>>>()?);
    }
    Ok(sets)
}

/// One batch of a connection: its sends are numbered from `first` (their
/// nonces) and all carry `body`.
struct Batch<'a> {
    conn: usize,
    first: u64,
    pairs: bool,
    body: &'a str,
    now: u64,
}

impl Batch<'_> {
    /// (send number, recipient) of each send.
    fn sends(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (self.first..self.first + BATCH).map(|n| (n, recipient(self.conn, n, self.pairs)))
    }

    /// `today`. The messages' ids follow from the first, as `store_ahead`
    /// assumes when it stores ahead (`main` checks the settings it needs).
    fn today(&self, c: &mut mysql::Conn) -> mysql::Result<()> {
        let sender = self.conn as u64 + 100;
        let mut sql = String::from(
            "START TRANSACTION;INSERT INTO messages \
             (sender_id, sender_name, recipient_id, room_id, body, sent_at) VALUES ",
        );
        for (i, (_, to)) in self.sends().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let (body, now) = (self.body, self.now);
            let _ = write!(sql, "{sep}({sender},'s{sender}',{to},NULL,'{body}',{now})");
        }
        sql.push_str(";SELECT LAST_INSERT_ID()");
        let sets = run(c, &sql)?;
        let first_id: u64 = mysql::from_row(sets[2][0].clone());

        let mut to: Vec<u64> = self.sends().map(|(_, r)| r).collect();
        to.sort_unstable();
        to.dedup();
        let list = to.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let zeros = to.iter().map(|r| format!("({r},0)")).collect::<Vec<_>>();
        let mut sql = String::from(
            "INSERT INTO wire_writes (app, nonce, kind, ok, reply, created_at) VALUES ",
        );
        for (i, (n, _)) in self.sends().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let (nonce, id) = (nonce(n), first_id + i as u64);
            let _ = write!(
                sql,
                "{sep}('bench','{nonce}','msg.send',1,'{{\"id\":{id}}}',{NOW_MS})"
            );
        }
        let _ = write!(
            sql,
            ";INSERT INTO inboxes (user_id, last_seq) VALUES {} \
             ON DUPLICATE KEY UPDATE last_seq = last_seq;\
             SELECT user_id, last_seq FROM inboxes WHERE user_id IN ({list}) FOR UPDATE;\
             SELECT user_id, node FROM presence WHERE user_id IN ({list}) \
             AND seen_at > NOW(3) - INTERVAL 30 SECOND LOCK IN SHARE MODE",
            zeros.join(",")
        );
        let sets = run(c, &sql)?;
        let mut last: BTreeMap<u64, u64> = sets[2]
            .iter()
            .map(|row| mysql::from_row::<(u64, u64)>(row.clone()))
            .collect();
        assert_eq!(sets[3].len(), to.len(), "every recipient is present");

        let mut sql = String::from("INSERT INTO inbox (user_id, seq, message_id) VALUES ");
        for (i, (_, to)) in self.sends().enumerate() {
            let seq = last.get_mut(&to).expect("a counter taken");
            *seq += 1;
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(sql, "{sep}({to},{seq},{})", first_id + i as u64);
        }
        let moved = last
            .iter()
            .map(|(u, s)| format!("({u},{s})"))
            .collect::<Vec<_>>();
        let _ = write!(
            sql,
            ";INSERT INTO inboxes (user_id, last_seq) VALUES {} \
             ON DUPLICATE KEY UPDATE last_seq = VALUES(last_seq);COMMIT",
            moved.join(",")
        );
        run(c, &sql).map(drop)
    }

    /// `two-rows` and `one-row`, numbered from `seqs` in memory.
    fn fewer(&self, c: &mut mysql::Conn, one: bool, seqs: &[AtomicU64]) -> mysql::Result<()> {
        let sender = self.conn as u64 + 100;
        let (body, now) = (self.body, self.now);
        let mut rows = String::new();
        let mut records = String::new();
        for (i, (n, to)) in self.sends().enumerate() {
            let seq = seqs[to as usize].fetch_add(1, Ordering::Relaxed) + 1;
            let sep = if i > 0 { "," } else { "" };
            let nonce = nonce(n);
            if one {
                let _ = write!(
                    rows,
                    "{sep}('bench','{nonce}',{to},{seq},{sender},'{body}',{now},{NOW_MS})"
                );
            } else {
                let _ = write!(rows, "{sep}({to},{seq},{sender},'{body}',{now})");
                let _ = write!(
                    records,
                    "{sep}('bench','{nonce}','msg.send',1,'{{\"seq\":{seq}}}',{NOW_MS})"
                );
            }
        }
        let sql = if one {
            format!(
                "INSERT INTO floor_once \
                 (app, nonce, user_id, seq, sender_id, body, sent_at, created_at) VALUES {rows}"
            )
        } else {
            format!(
                "START TRANSACTION;\
                 INSERT INTO floor_inbox (user_id, seq, sender_id, body, sent_at) VALUES {rows};\
                 INSERT INTO wire_writes (app, nonce, kind, ok, reply, created_at) \
                 VALUES {records};COMMIT"
            )
        };
        run(c, &sql).map(drop)
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs = Duration::from_secs(args.next().map_or(5, |a| a.parse().expect("SECONDS")));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));
    let pairs = match args.next().as_deref() {
        None | Some("shared") => false,
        Some("pairs") => true,
        Some(other) => panic!("the third argument is shared or pairs, not {other}"),
    };
    let pid = std::env::var("MARIADB_PID").expect("MARIADB_PID: the pid of mariadbd");
    let pid = pid.trim();
    let db = dsf_sql::testing::fresh();
    let url = std::env::var("DSF_TEST_DB_URL").expect("DSF_TEST_DB_URL");
    let opts = mysql::Opts::from_url(&format!("{}/{}", url.trim_end_matches('/'), db.name()))
        .expect("DSF_TEST_DB_URL is a URL");
    let connect = || mysql::Conn::new(opts.clone()).expect("connecting");
    let mut setup = connect();
    let (mode, step): (u32, u64) = setup
        .query_first("SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment")
        .expect("reading the auto-increment settings")
        .expect("a row");
    assert!(
        mode <= 1 && step == 1,
        "`today` needs one statement's ids consecutive (innodb_autoinc_lock_mode 0 or 1, \
         auto_increment_increment 1); this server has {mode} and {step}"
    );
    let present = (1..=RECIPIENTS)
        .map(|u| format!("({u},'app-1',1,NOW(3) + INTERVAL 1 DAY)"))
        .collect::<Vec<_>>()
        .join(",");
    run(
        &mut setup,
        &format!(
            "INSERT INTO presence (user_id, node, epoch, seen_at) VALUES {present};\
             CREATE TABLE floor_inbox (user_id BIGINT UNSIGNED NOT NULL, seq BIGINT UNSIGNED NOT NULL, \
               sender_id BIGINT UNSIGNED NOT NULL, body MEDIUMTEXT NOT NULL, sent_at BIGINT UNSIGNED NOT NULL, \
               PRIMARY KEY (user_id, seq)) ENGINE = InnoDB;\
             CREATE TABLE floor_once (app VARCHAR(64) NOT NULL, \
               nonce VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
               user_id BIGINT UNSIGNED NOT NULL, seq BIGINT UNSIGNED NOT NULL, \
               sender_id BIGINT UNSIGNED NOT NULL, body MEDIUMTEXT NOT NULL, \
               sent_at BIGINT UNSIGNED NOT NULL, created_at BIGINT NOT NULL, \
               PRIMARY KEY (app, nonce), KEY floor_once_inbox (user_id, seq), \
               KEY floor_once_created (created_at)) ENGINE = InnoDB"
        ),
    )
    .expect("the floor's presence rows and tables");
    let body = format!("{{\"text\":\"{}\"}}", "x".repeat(64));
    let seqs: Vec<AtomicU64> = (0..=RECIPIENTS).map(|_| AtomicU64::new(0)).collect();
    let next = AtomicU64::new(0);
    let mut conns: Vec<mysql::Conn> = (0..CONNS).map(|_| connect()).collect();
    println!("round\tshape\tmsgs/s\tmariadbd CPU a message (us)\tthis program's (us)");
    for round in 1..=rounds {
        for k in 0..SHAPES.len() {
            let shape = SHAPES[(round - 1 + k) % SHAPES.len()];
            let (db_cpu, own_cpu) = (cpu_seconds(pid), cpu_seconds("self"));
            let sent = AtomicU64::new(0);
            let start = Instant::now();
            std::thread::scope(|s| {
                for (conn, c) in conns.iter_mut().enumerate() {
                    let (next, sent, seqs, body) = (&next, &sent, &seqs, &body);
                    s.spawn(move || {
                        while start.elapsed() < secs {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as u64);
                            let batch = Batch {
                                conn,
                                first: next.fetch_add(BATCH, Ordering::Relaxed),
                                pairs,
                                body,
                                now,
                            };
                            match shape {
                                "today" => batch.today(c),
                                "two-rows" => batch.fewer(c, false, seqs),
                                _ => batch.fewer(c, true, seqs),
                            }
                            .expect("a batch");
                            sent.fetch_add(BATCH, Ordering::Relaxed);
                        }
                    });
                }
            });
            let n = sent.load(Ordering::Relaxed) as f64;
            let rate = n / start.elapsed().as_secs_f64();
            let db_us = (cpu_seconds(pid) - db_cpu) * 1e6 / n;
            let own_us = (cpu_seconds("self") - own_cpu) * 1e6 / n;
            println!("{round}\t{shape}\t{rate:.0}\t{db_us:.0}\t{own_us:.0}");
        }
    }
}
