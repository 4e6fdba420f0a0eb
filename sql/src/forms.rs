//! The statements a run-once write stages, and how they go out: a staged
//! statement is a form (its SQL with `?` placeholders) and its values as
//! SQL literals. On a connection where the form was prepared by name
//! (`PREPARE dsf_wN FROM '…'`, a server-side statement of the session) it
//! goes as `EXECUTE dsf_wN USING …`, which MariaDB neither parses as a
//! whole statement nor plans again; elsewhere as the text of the statement
//! with its values in place. Both are text, so many statements still go in
//! one query with the transaction's `START` and `COMMIT`.
//!
//! Measured on one MariaDB (`blacklist.add` with its run-once record, one
//! connection, `examples/statement_cost.rs`): MariaDB's CPU an add fell
//! from 148–158 µs as text to 122–140 µs with `EXECUTE` (84–89 µs for the
//! add alone, autocommitted).
//!
//! A form is prepared only where no transaction is open on the connection
//! (before a write's `START TRANSACTION`), in a round trip of its own, the
//! first time a connection sends it: on Galera a transaction that prepares
//! a statement can be lost (see `db::op_key`). Which forms each connection
//! holds is kept here, by its pool and id; if that is ever wrong (a
//! server restarted and gave an id again), the `EXECUTE` fails with
//! "unknown prepared statement", the write runs again with its statements
//! sent as they come, and the connection's forms are forgotten, to be
//! prepared again. On Galera every statement goes as text ([`pool_of`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex, MutexGuard};

use mysql::PooledConn;

/// The most forms kept; a statement of another form goes as text. Forms
/// come from the code's statements, so a few dozen is what a server has;
/// the bound is for statements built at run time.
const FORMS_MAX: usize = 256;

/// The most connections whose forms are kept (those of closed connections
/// stay until the map is this full, and then it starts again).
const CONNS_MAX: usize = 4096;

/// MariaDB's `ER_UNKNOWN_STMT_HANDLER`: the `EXECUTE` of a statement the
/// session does not hold.
const UNKNOWN_STATEMENT: u16 = 1243;

/// The insert of one run-once record: app, nonce, kind, reply. Records are
/// stamped with the database's clock, which the janitor compares with the
/// same clock: app servers' clocks may differ.
pub(crate) const RECORD: &str = "INSERT INTO wire_writes (app, nonce, kind, reply, ok, created_at) \
                                 VALUES (?, ?, ?, ?, 1, CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED))";

/// A statement staged for a write's last query.
#[derive(Debug, Clone)]
pub(crate) enum Stmt {
    /// Sent as it is.
    Text(String),
    /// Form number `form` with its values, as SQL literals.
    Form { form: usize, values: Vec<String> },
}

/// The forms met so far, numbered in order, and the numbers each
/// connection has prepared.
#[derive(Default)]
struct Forms {
    sql: Vec<String>,
    by_sql: HashMap<String, usize>,
    /// By the pool ([`crate::Db`]'s id) and the connection's id.
    prepared: HashMap<(usize, u32), HashSet<usize>>,
}

static FORMS: LazyLock<Mutex<Forms>> = LazyLock::new(Default::default);

fn forms() -> MutexGuard<'static, Forms> {
    FORMS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pool whose connections take forms: its id, or `None` on Galera,
/// where every statement goes as text (a Galera cluster's nodes give
/// connections the same ids, and it has lost transactions over prepared
/// statements before).
pub(crate) fn pool_of(db: &crate::Db) -> Option<usize> {
    (!db.is_galera()).then(|| db.id())
}

// === impl Stmt ===

impl Stmt {
    /// `sql` with `params` as a form and its values; see [`literals`].
    pub(crate) fn new(sql: &str, params: &mysql::Params, plain: bool) -> Option<Stmt> {
        let values = literals(sql, params, plain)?;
        let mut f = forms();
        let form = match f.by_sql.get(sql) {
            Some(&form) => form,
            None if f.sql.len() < FORMS_MAX => {
                let form = f.sql.len();
                f.sql.push(sql.to_string());
                f.by_sql.insert(sql.to_string(), form);
                form
            }
            None => return Some(Stmt::Text(splice(sql, &values))),
        };
        Some(Stmt::Form { form, values })
    }

    /// The insert of run-once records (app, nonce, kind, reply): one
    /// record as the form [`RECORD`], more in one multi-row `INSERT` of
    /// text (one statement to parse for many rows, where each `EXECUTE`
    /// is one). Strings are escaped for `conn`'s session.
    pub(crate) fn records(conn: &PooledConn, records: &[&[String; 4]]) -> Option<Stmt> {
        let plain = conn.no_backslash_escape();
        let literals = |r: &[String; 4]| -> Vec<String> {
            (r.iter())
                .map(|v| mysql::Value::from(v.as_str()).as_sql(plain))
                .collect()
        };
        let form = record_form();
        match records {
            [] => None,
            [one] => Some(Stmt::Form {
                form,
                values: literals(one),
            }),
            many => {
                let rows: Vec<Vec<String>> = many.iter().map(|r| literals(r)).collect();
                let f = forms();
                let (head, row) = one_row_insert(&f.sql[form]).expect("RECORD inserts one row");
                Some(Stmt::Text(rows_of(
                    head,
                    row,
                    rows.iter().map(Vec::as_slice),
                )))
            }
        }
    }
}

/// The number of the form [`RECORD`].
fn record_form() -> usize {
    static FORM: LazyLock<usize> = LazyLock::new(|| {
        let mut f = forms();
        let form = f.sql.len();
        f.sql.push(RECORD.to_string());
        f.by_sql.insert(RECORD.to_string(), form);
        form
    });
    *FORM
}

/// The values of `params` as SQL literals (escaped for a session with or
/// without `NO_BACKSLASH_ESCAPES`, as `plain` says), one for each `?` of
/// `sql`; `None` for named parameters, a count that does not match, or
/// more than one statement. `sql` must have no `?` but its placeholders.
fn literals(sql: &str, params: &mysql::Params, plain: bool) -> Option<Vec<String>> {
    let values: &[mysql::Value] = match params {
        mysql::Params::Empty => &[],
        mysql::Params::Positional(values) => values,
        mysql::Params::Named(_) => return None,
    };
    // One statement, one result: results are counted to say which
    // statement failed. A float that is not finite has no literal.
    let not_finite = |v: &mysql::Value| match v {
        mysql::Value::Float(f) => !f.is_finite(),
        mysql::Value::Double(d) => !d.is_finite(),
        _ => false,
    };
    if sql.contains(';')
        || values.iter().any(not_finite)
        || sql.matches('?').count() != values.len()
    {
        return None;
    }
    Some(values.iter().map(|v| v.as_sql(plain)).collect())
}

/// `sql` with each `?` replaced by its value of `params` as an SQL literal
/// ([`literals`]).
pub(crate) fn as_text(sql: &str, params: &mysql::Params, plain: bool) -> Option<String> {
    literals(sql, params, plain).map(|values| splice(sql, &values))
}

/// `sql` with each `?` replaced by its value of `values`, in order.
fn splice(sql: &str, values: &[String]) -> String {
    let mut text = String::with_capacity(sql.len() + values.iter().map(String::len).sum::<usize>());
    let mut values = values.iter();
    for (i, part) in sql.split('?').enumerate() {
        if i > 0 {
            text.push_str(values.next().expect("as many values as placeholders"));
        }
        text.push_str(part);
    }
    text
}

/// The statements of several writes (each a list) as fewer statements,
/// when they can be: if every write is the same sequence of inserts of
/// literal values alone (`INSERT … VALUES (?, …, ?)`, nothing after the
/// row), the writes' rows of each insert go in one multi-row `INSERT`.
/// Rows of one write keep their order; a write's later insert goes after
/// the other writes' earlier ones, which inserts of values alone cannot
/// tell (a key two of them share fails the statement, as it would have
/// failed one of the writes). `None`: sent as they are.
pub(crate) fn merge(writes: &[&[Stmt]]) -> Option<Vec<Stmt>> {
    let (first, rest) = writes.split_first()?;
    if rest.is_empty() {
        return None;
    }
    let forms_of = |w: &[Stmt]| -> Option<Vec<usize>> {
        (w.iter())
            .map(|s| match s {
                Stmt::Form { form, .. } => Some(*form),
                Stmt::Text(_) => None,
            })
            .collect()
    };
    let shape = forms_of(first)?;
    if rest.iter().any(|w| forms_of(w).as_ref() != Some(&shape)) {
        return None;
    }
    let f = forms();
    // A row of placeholders alone: its values are literals, which no
    // other row's place changes (`LAST_INSERT_ID()` would be changed).
    let values_only = |(_, row): &(&str, &str)| {
        let inner = &row[1..row.len() - 1];
        inner.split(',').all(|p| p.trim() == "?")
    };
    let inserts: Vec<(&str, &str)> = (shape.iter())
        .map(|&n| one_row_insert(&f.sql[n]).filter(values_only))
        .collect::<Option<_>>()?;
    let merged = (inserts.iter().enumerate())
        .map(|(i, (head, row))| {
            let rows = writes.iter().map(|w| match &w[i] {
                Stmt::Form { values, .. } => values.as_slice(),
                Stmt::Text(_) => unreachable!("every write has the shape of the first"),
            });
            Stmt::Text(rows_of(head, row, rows))
        })
        .collect();
    Some(merged)
}

/// `sql` split before its row, if it is a plain insert of one row, the
/// last thing in it: `INSERT INTO t (a, b) VALUES (?, ?)` gives
/// `INSERT INTO t (a, b) VALUES ` and `(?, ?)`.
fn one_row_insert(sql: &str) -> Option<(&str, &str)> {
    let at = sql.rfind(" VALUES ")? + " VALUES ".len();
    let (head, row) = sql.split_at(at);
    let row = row.trim_end();
    // `INSERT INTO t (a, b) VALUES `: a column list at most, no select.
    let plain = head
        .get(..12)
        .is_some_and(|h| h.eq_ignore_ascii_case("INSERT INTO "))
        && head.matches('(').count() <= 1;
    let one_row = row.starts_with('(') && row.ends_with(')');
    (plain && one_row).then_some((head, row))
}

/// `head` followed by `row` once for each of `rows`, its placeholders
/// filled with that row's values: a multi-row `INSERT`.
fn rows_of<'v>(head: &str, row: &str, rows: impl Iterator<Item = &'v [String]>) -> String {
    let mut sql = String::from(head);
    for (i, values) in rows.enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&splice(row, values));
    }
    sql
}

/// Prepares on `conn`, which has no transaction open, the forms of
/// `stmts` it does not hold yet, in one round trip. One that cannot be
/// prepared is sent as text; the write is not refused for it.
pub(crate) fn prepare<'s>(
    pool: Option<usize>,
    conn: &mut PooledConn,
    stmts: impl IntoIterator<Item = &'s Stmt>,
) {
    let Some(pool) = pool else {
        return;
    };
    let key = (pool, conn.connection_id());
    let plain = conn.no_backslash_escape();
    let (missing, sql) = {
        let f = forms();
        let held = f.prepared.get(&key);
        let mut missing: Vec<usize> = (stmts.into_iter())
            .filter_map(|s| match s {
                Stmt::Form { form, .. } if !held.is_some_and(|h| h.contains(form)) => Some(*form),
                _ => None,
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        missing.sort_unstable();
        missing.dedup();
        let sql: Vec<String> = (missing.iter())
            .map(|&n| {
                let text = mysql::Value::from(f.sql[n].as_str()).as_sql(plain);
                format!("PREPARE dsf_w{n} FROM {text}")
            })
            .collect();
        (missing, sql)
    };
    match crate::writes::run_all(conn, &sql.join(";")) {
        Ok(()) => {
            let mut f = forms();
            if f.prepared.len() >= CONNS_MAX && !f.prepared.contains_key(&key) {
                // Mostly connections long closed: the ones still open
                // prepare their forms again (a `PREPARE` of a name held
                // replaces it).
                f.prepared.clear();
            }
            f.prepared.entry(key).or_default().extend(missing);
        }
        Err((i, e)) => {
            log::debug!(
                "preparing {} on a connection failed ({e}): it goes as text",
                sql[i]
            );
            crate::db::forget_if_broken(conn, &e);
            forms()
                .prepared
                .entry(key)
                .or_default()
                .extend(&missing[..i]);
        }
    }
}

/// `stmts` as `conn` is to be sent them: a form it holds as `EXECUTE`,
/// anything else as text.
pub(crate) fn render<'s>(
    pool: Option<usize>,
    conn: &PooledConn,
    stmts: impl IntoIterator<Item = &'s Stmt>,
) -> Vec<Cow<'s, str>> {
    let f = forms();
    let held = pool.and_then(|p| f.prepared.get(&(p, conn.connection_id())));
    (stmts.into_iter())
        .map(|s| match s {
            Stmt::Text(t) => Cow::Borrowed(t.as_str()),
            Stmt::Form { form, values } if held.is_some_and(|h| h.contains(form)) => {
                match values.is_empty() {
                    true => Cow::Owned(format!("EXECUTE dsf_w{form}")),
                    false => Cow::Owned(format!("EXECUTE dsf_w{form} USING {}", values.join(","))),
                }
            }
            Stmt::Form { form, values } => Cow::Owned(splice(&f.sql[*form], values)),
        })
        .collect()
}

/// After `e` on `conn`: if the server did not know a statement the
/// connection was thought to hold, forgets what it holds.
pub(crate) fn after_error(pool: Option<usize>, conn: &PooledConn, e: &mysql::Error) {
    if let (Some(pool), mysql::Error::MySqlError(m)) = (pool, e) {
        if m.code == UNKNOWN_STATEMENT {
            log::info!(
                "a connection did not hold the statements it had prepared (a server restarted?): \
                 they are prepared again"
            );
            forms().prepared.remove(&(pool, conn.connection_id()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(sql: &str, values: &[&str]) -> Stmt {
        let params = mysql::Params::Positional(values.iter().map(|v| (*v).into()).collect());
        Stmt::new(sql, &params, false).expect("a form")
    }

    fn text(s: &Stmt) -> &str {
        match s {
            Stmt::Text(t) => t,
            Stmt::Form { .. } => panic!("a form, not text"),
        }
    }

    #[test]
    fn writes_of_the_same_inserts_of_values_merge_into_one_insert_each() {
        let a = "INSERT INTO merge_a (k, v) VALUES (?, ?)";
        let b = "INSERT INTO merge_b (k) VALUES (?)";
        let one = [form(a, &["x", "1"]), form(b, &["x"])];
        let two = [form(a, &["y", "2"]), form(b, &["y"])];
        let merged = merge(&[&one, &two]).expect("merged");
        assert_eq!(merged.len(), 2);
        assert_eq!(
            text(&merged[0]),
            "INSERT INTO merge_a (k, v) VALUES ('x', '1'),('y', '2')"
        );
        assert_eq!(
            text(&merged[1]),
            "INSERT INTO merge_b (k) VALUES ('x'),('y')"
        );
    }

    #[test]
    fn writes_that_differ_or_do_more_than_insert_values_are_not_merged() {
        let a = "INSERT INTO merge_c (k) VALUES (?)";
        let one = [form(a, &["x"])];
        assert!(merge(&[&one]).is_none(), "a write alone");
        let other = [form(a, &["y"]), form(a, &["z"])];
        assert!(merge(&[&one, &other]).is_none(), "another shape");
        for sql in [
            "INSERT INTO merge_d (k, n) VALUES (?, 1)",
            "INSERT INTO merge_e (k) VALUES (?) ON DUPLICATE KEY UPDATE n = n + 1",
            "INSERT INTO merge_f (k) SELECT ? FROM dual",
            "UPDATE merge_g SET k = ? WHERE id = 1",
            "INSERT INTO merge_h (k, id) VALUES (?, LAST_INSERT_ID())",
        ] {
            let n = sql.matches('?').count();
            let one = [form(sql, &vec!["x"; n])];
            let two = [form(sql, &vec!["y"; n])];
            assert!(merge(&[&one, &two]).is_none(), "{sql}");
        }
        let text_too = [Stmt::Text("INSERT INTO merge_c (k) VALUES ('t')".into())];
        assert!(merge(&[&text_too, &text_too]).is_none(), "text");
    }
}
