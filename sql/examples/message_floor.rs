//! The most MariaDB can store of dsf's direct messages, with no app server
//! in the way: 16 connections of the raw `mysql` crate, each committing
//! batches of 64 sends (a window's worth) as fast as it can, in three
//! shapes, rounds alternated:
//!
//! - `today`: the rows a batch of `messages.send` writes now (the messages,
//!   their run-once records, the recipients' counters taken `FOR UPDATE`,
//!   the inbox rows, the counters moved on, `COMMIT`), in three round
//!   trips (dsf sends the same statements in six: it reads the
//!   auto-increment settings first, and sends `START TRANSACTION` and
//!   `COMMIT` alone);
//! - `two-rows`: a message kept in its recipient's inbox row (no separate
//!   message row, no counter row: numbered in memory, as the node owning
//!   the recipient would number it) and its run-once record, one round trip;
//! - `one-row`: one row a message, keyed by its run-once key and carrying
//!   its recipient's number, one autocommitted round trip: the least any
//!   store of durable, run-once messages in MariaDB writes.
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

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dsf_sql::testing::cpu_seconds;
use mysql::prelude::Queryable;

const CONNS: usize = 16;
const RECIPIENTS: u64 = 16;
const BATCH: u64 = 64;
const SHAPES: [&str; 3] = ["today", "two-rows", "one-row"];

/// A nonce as clients draw them: 64 random-looking bits (splitmix64 of n).
fn nonce(n: u64) -> String {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", z ^ (z >> 31))
}

/// Where the k-th send of a connection goes.
fn recipient(conn: usize, k: u64, pairs: bool) -> u64 {
    let turn = if pairs { conn as u64 } else { k };
    1 + turn % RECIPIENTS
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
    fn sends(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..BATCH).map(move |k| {
            (
                self.first + k,
                recipient(self.conn, self.first + k, self.pairs),
            )
        })
    }

    /// `today`: what `messages::prepare_group` and the commit send.
    fn today(&self, c: &mut mysql::Conn) -> mysql::Result<()> {
        let sender = self.conn as u64 + 100;
        let mut sql = String::from(
            "START TRANSACTION;INSERT INTO messages (sender_id, sender_name, recipient_id, room_id, body, sent_at) VALUES ",
        );
        for (i, (_, to)) in self.sends().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(
                sql,
                "{sep}({sender},'s{sender}',{to},NULL,'{}',{})",
                self.body, self.now
            );
        }
        c.query_drop(&sql)?;
        let first_id = c.last_insert_id();
        let mut to: Vec<u64> = self.sends().map(|(_, r)| r).collect();
        to.sort_unstable();
        to.dedup();
        let list = to.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let zeros = to
            .iter()
            .map(|r| format!("({r},0)"))
            .collect::<Vec<_>>()
            .join(",");
        let mut sql = String::from(
            "INSERT INTO wire_writes (app, nonce, kind, ok, reply, created_at) VALUES ",
        );
        for (i, (n, _)) in self.sends().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let id = first_id + i as u64;
            let _ = write!(
                sql,
                "{sep}('bench','{}','messages.send',1,'{{\"id\":{id}}}',{})",
                nonce(n),
                self.now
            );
        }
        let _ = write!(
            sql,
            ";INSERT INTO inboxes (user_id, last_seq) VALUES {zeros} ON DUPLICATE KEY UPDATE last_seq = last_seq;\
             SELECT user_id, last_seq FROM inboxes WHERE user_id IN ({list}) FOR UPDATE"
        );
        let mut last: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let mut result = c.query_iter(&sql)?;
        while let Some(set) = result.iter() {
            for row in set {
                let (user, seq): (u64, u64) = mysql::from_row(row?);
                last.insert(user, seq);
            }
        }
        drop(result);
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
            .collect::<Vec<_>>()
            .join(",");
        let _ = write!(
            sql,
            ";INSERT INTO inboxes (user_id, last_seq) VALUES {moved} ON DUPLICATE KEY UPDATE last_seq = VALUES(last_seq);COMMIT"
        );
        c.query_iter(&sql)?.for_each(drop);
        Ok(())
    }

    /// `two-rows` and `one-row`, numbered from `seqs` in memory.
    fn fewer(&self, c: &mut mysql::Conn, one: bool, seqs: &[AtomicU64]) -> mysql::Result<()> {
        let sender = self.conn as u64 + 100;
        let mut rows = String::new();
        let mut records = String::new();
        for (i, (n, to)) in self.sends().enumerate() {
            let seq = seqs[to as usize].fetch_add(1, Ordering::Relaxed) + 1;
            let sep = if i > 0 { "," } else { "" };
            if one {
                let _ = write!(
                    rows,
                    "{sep}('bench','{}',{to},{seq},{sender},'{}',{})",
                    nonce(n),
                    self.body,
                    self.now
                );
            } else {
                let _ = write!(
                    rows,
                    "{sep}({to},{seq},{sender},'{}',{})",
                    self.body, self.now
                );
                let _ = write!(
                    records,
                    "{sep}('bench','{}','messages.send',1,'{{\"seq\":{seq}}}',{})",
                    nonce(n),
                    self.now
                );
            }
        }
        let sql = if one {
            format!("INSERT INTO floor_once (app, nonce, user_id, seq, sender_id, body, sent_at) VALUES {rows}")
        } else {
            format!(
                "START TRANSACTION;INSERT INTO floor_inbox (user_id, seq, sender_id, body, sent_at) VALUES {rows};\
                 INSERT INTO wire_writes (app, nonce, kind, ok, reply, created_at) VALUES {records};COMMIT"
            )
        };
        c.query_iter(sql)?.for_each(drop);
        Ok(())
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
    let db = dsf_sql::testing::fresh();
    let url = std::env::var("DSF_TEST_DB_URL").expect("DSF_TEST_DB_URL");
    let opts = mysql::Opts::from_url(&format!("{}/{}", url.trim_end_matches('/'), db.name()))
        .expect("DSF_TEST_DB_URL is a URL");
    let connect = || mysql::Conn::new(opts.clone()).expect("connecting");
    connect()
        .query_drop(
            "CREATE TABLE floor_inbox (user_id BIGINT UNSIGNED NOT NULL, seq BIGINT UNSIGNED NOT NULL, \
               sender_id BIGINT UNSIGNED NOT NULL, body MEDIUMTEXT NOT NULL, sent_at BIGINT UNSIGNED NOT NULL, \
               PRIMARY KEY (user_id, seq)) ENGINE = InnoDB;\
             CREATE TABLE floor_once (app VARCHAR(64) NOT NULL, nonce VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
               user_id BIGINT UNSIGNED NOT NULL, seq BIGINT UNSIGNED NOT NULL, sender_id BIGINT UNSIGNED NOT NULL, \
               body MEDIUMTEXT NOT NULL, sent_at BIGINT UNSIGNED NOT NULL, \
               PRIMARY KEY (app, nonce)) ENGINE = InnoDB",
        )
        .expect("the floor's tables");
    let body = format!("{{\"text\":\"{}\"}}", "x".repeat(64));
    let seqs: Vec<AtomicU64> = (0..=RECIPIENTS).map(|_| AtomicU64::new(0)).collect();
    let next = AtomicU64::new(0);
    println!("round\tshape\tmsgs/s\tmariadbd CPU a message (us)\tthis program's (us)");
    for round in 1..=rounds {
        for shape in SHAPES {
            let (db_cpu, own_cpu) = (cpu_seconds(&pid), cpu_seconds("self"));
            let sent = AtomicU64::new(0);
            let start = Instant::now();
            std::thread::scope(|s| {
                for conn in 0..CONNS {
                    let (next, sent, seqs, body) = (&next, &sent, &seqs, &body);
                    let mut c = connect();
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
                                "today" => batch.today(&mut c),
                                "two-rows" => batch.fewer(&mut c, false, seqs),
                                _ => batch.fewer(&mut c, true, seqs),
                            }
                            .expect("a batch");
                            sent.fetch_add(BATCH, Ordering::Relaxed);
                        }
                    });
                }
            });
            let n = sent.load(Ordering::Relaxed) as f64;
            let rate = n / start.elapsed().as_secs_f64();
            let db_us = (cpu_seconds(&pid) - db_cpu) * 1e6 / n;
            let own_us = (cpu_seconds("self") - own_cpu) * 1e6 / n;
            println!("{round}\t{shape}\t{rate:.0}\t{db_us:.0}\t{own_us:.0}");
        }
    }
}
