//! How results are shown: short sentences and aligned tables for people,
//! one JSON object per line with `--json` for scripts.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::bench::Report;
use crate::client::Resolved;
use crate::error::{Error, Result};

use super::time::{is_time, Clock};

/// The tool's output.
pub struct Out {
    json: bool,
    clock: Clock,
    stdout: std::io::Stdout,
}

// === impl Out ===

impl Out {
    pub fn new(json: bool, clock: Clock) -> Out {
        Out {
            json,
            clock,
            stdout: std::io::stdout(),
        }
    }

    /// How times are shown (local, or UTC with `--utc`).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A field's value for people: a time in Unix ms as a time, the rest
    /// as [`s`] shows it.
    fn cell(&self, field: &str, v: &Value) -> String {
        match v.as_i64() {
            Some(ms) if is_time(field, v) => self.clock.full(ms),
            _ => s(v),
        }
    }

    fn line(&mut self, s: &str) {
        // A closed pipe (`| head`) is not worth a panic.
        let _ = writeln!(self.stdout.lock(), "{s}");
    }

    fn json_line(&mut self, v: &Value) {
        self.line(&v.to_string());
    }

    /// Whether output is one JSON object a line (`--json`).
    pub fn is_json(&self) -> bool {
        self.json
    }

    pub fn flush(&mut self) {
        let _ = self.stdout.flush();
    }

    /// An error: always on stderr; with `--json` also as an object on stdout.
    pub fn error(&mut self, e: &Error) {
        eprintln!("error: {e}");
        if self.json {
            let mut v = json!({"error": {"kind": e.kind(), "message": e.to_string()}});
            if let Error::Refused { code, message, .. } = e {
                v["error"]["code"] = json!(code.as_str());
                v["error"]["message"] = json!(message);
            }
            self.json_line(&v);
        }
    }

    /// A reply with nothing to show but success.
    pub fn value(&mut self, v: &Value, human: &str) {
        if self.json {
            self.json_line(v)
        } else {
            self.line(human)
        }
    }

    /// A reply shown as it came (`client call`): indented for people, one
    /// line with `--json`.
    pub fn reply(&mut self, v: &Value) {
        if self.json {
            self.json_line(v)
        } else {
            let pretty = serde_json::to_string_pretty(v).expect("a JSON value prints");
            self.line(&pretty)
        }
    }

    /// One event of a stream (`client stream`).
    pub fn stream_event(&mut self, event: &str, body: &serde_json::value::RawValue) {
        if self.json {
            self.line(&format!(
                r#"{{"event":{},"body":{}}}"#,
                json!(event),
                body.get()
            ))
        } else {
            self.line(&format!("{event} {}", body.get()))
        }
    }

    /// A stream's final reply (`client stream`).
    pub fn stream_done(&mut self, body: &serde_json::value::RawValue) {
        if self.json {
            self.line(&format!(r#"{{"done":{}}}"#, body.get()))
        } else {
            self.line(&format!("done {}", body.get()))
        }
    }

    /// A registration, confirmed by the login after it (`v` is the login's
    /// reply).
    pub fn registered(&mut self, name: &str, v: &Value, path: &Path) {
        if self.json {
            return self.json_line(&serde_json::json!({"registered": name, "user": v["user"]}));
        }
        self.line(&format!(
            "registered {name} (id {}, role {}) and logged in; session saved to {}",
            s(&v["user"]["id"]),
            s(&v["user"]["role"]),
            path.display()
        ));
    }

    /// An account an admin made.
    pub fn user_created(&mut self, v: &Value) {
        if self.json {
            return self.json_line(v);
        }
        self.line(&format!(
            "created {} (id {}, role {})",
            s(&v["name"]),
            s(&v["id"]),
            s(&v["role"])
        ));
    }

    pub fn logged_in(&mut self, name: &str, v: &Value, path: &Path) {
        if self.json {
            // The token stays in the session file, out of logs and pipes.
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("token");
                o.insert("session_file".into(), json!(path.display().to_string()));
            }
            return self.json_line(&v);
        }
        self.line(&format!(
            "logged in as {name} (role {}) until {}; session saved to {}",
            s(&v["user"]["role"]),
            self.cell("expires_at", &v["expires_at"]),
            path.display()
        ));
    }

    pub fn user(&mut self, v: &Value) {
        if self.json {
            return self.json_line(v);
        }
        self.line(&format!(
            "{} (id {}, role {})",
            s(&v["name"]),
            s(&v["id"]),
            s(&v["role"])
        ));
    }

    pub fn entry(&mut self, v: &Value) {
        if self.json {
            return self.json_line(v);
        }
        self.fields(v);
    }

    /// `key: value` lines for an object.
    fn fields(&mut self, v: &Value) {
        let Some(o) = v.as_object() else {
            return self.line(&v.to_string());
        };
        let w = o.keys().map(|k| k.len()).max().unwrap_or(0);
        for (k, val) in o {
            let cell = self.cell(k, val);
            self.line(&format!("{k:<w$}  {cell}"));
        }
    }

    pub fn list(&mut self, v: &Value) {
        if self.json {
            return self.json_line(v);
        }
        self.table(
            &v["entries"],
            &["id_card", "name", "reason", "created_at"],
            "no entries",
        );
        if let Some(next) = v["next"].as_str() {
            self.line(&format!("more: --after {next}"));
        }
    }

    /// An aligned table of an array of objects: `first` columns in that
    /// order (those present), then any other field.
    pub fn table(&mut self, rows: &Value, first: &[&str], empty: &str) {
        if self.json {
            return self.json_line(rows);
        }
        let rows: Vec<&serde_json::Map<String, Value>> = rows
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_object).collect())
            .unwrap_or_default();
        if rows.is_empty() {
            return self.line(empty);
        }
        let mut cols: Vec<String> = first
            .iter()
            .filter(|c| rows.iter().any(|r| r.contains_key(**c)))
            .map(|c| c.to_string())
            .collect();
        for r in &rows {
            for k in r.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                cols.iter()
                    .map(|c| r.get(c).map(|v| self.cell(c, v)).unwrap_or_default())
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cells
                    .iter()
                    .map(|r| r[i].len())
                    .max()
                    .unwrap_or(0)
                    .max(c.len())
            })
            .collect();
        let fmt = |row: &[String]| {
            row.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        self.line(&fmt(&cols));
        for r in &cells {
            self.line(&fmt(r));
        }
    }

    /// A page of proxy pins (`client pins list`): one JSON object with
    /// `pins` and `next`, or a table and how to get the next page.
    pub fn pins(&mut self, v: &Value) {
        if self.json {
            return self.json_line(v);
        }
        self.table(
            &v["pins"],
            &["key", "node", "idle_ms", "pinned_at_ms"],
            "no pins",
        );
        if let Some(n) = v["next"].as_str() {
            self.line(&format!("(more: client pins list --after {n}, or --all)"));
        }
    }

    /// One gate check's result: `HIT` or `clear`, or the error.
    pub fn check(&mut self, id_card: &str, r: &Result<Value>) {
        match (r, self.json) {
            (Ok(v), true) => {
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    o.entry("id_card").or_insert(json!(id_card));
                }
                self.json_line(&v)
            }
            // Without a session the server says hit or miss, not who.
            (Ok(v), false) if v["hit"].as_bool() == Some(true) && v["entry"].is_null() => {
                self.line(&format!("{id_card}\tHIT"))
            }
            (Ok(v), false) if v["hit"].as_bool() == Some(true) => {
                let e = &v["entry"];
                self.line(&format!(
                    "{id_card}\tHIT\t{}\t{}",
                    s(&e["name"]),
                    s(&e["reason"])
                ))
            }
            (Ok(_), false) => self.line(&format!("{id_card}\tclear")),
            (Err(e), true) => {
                let mut v = json!({"id_card": id_card, "error": {"kind": e.kind(), "message": e.to_string()}});
                if let Some(code) = e.code() {
                    v["error"]["code"] = json!(code.as_str());
                }
                self.json_line(&v)
            }
            (Err(e), false) => self.line(&format!("{id_card}\terror\t{e}")),
        }
    }

    pub fn status(&mut self, v: &Value) {
        if self.json {
            return self.json_line(v);
        }
        let version = v["view"]["version"]
            .as_u64()
            .or_else(|| v["view"].as_u64())
            .map(|n| n.to_string())
            .unwrap_or_else(|| s(&v["view"]));
        self.line(&format!("view {version}"));
        // From a standby (there are two collectors): which it is, and
        // whether it feeds the balancers.
        if let Some(active) = v["standby_for"].as_str() {
            let doing = match v["role"].as_str() {
                Some("took-over") => "took over: it feeds the balancers while the active is silent",
                _ => "standing by: the active feeds the balancers",
            };
            self.line(&format!("from the standby of {active}, {doing}"));
        }
        let rows: Vec<Value> = v["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| {
                        let l = &n["load"];
                        json!({"id": n["id"], "addr": n["addr"], "state": n["state"],
                               "last_seen_ms": n["last_seen_ms"], "conns": l["conns"],
                               "inflight": l["inflight"], "rps": l["rps"], "p99_ms": l["p99_ms"]})
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.table(
            &Value::Array(rows),
            &[
                "id",
                "addr",
                "state",
                "last_seen_ms",
                "conns",
                "inflight",
                "rps",
                "p99_ms",
            ],
            "no nodes",
        );
        // What each balancer holds: one behind the view (cut off from the
        // collectors, say) resolves from the view it last got.
        let view = v["view"]["version"].as_u64().or_else(|| v["view"].as_u64());
        let lbs: Vec<Value> = v["balancers"]
            .as_array()
            .map(|a| a.iter().map(|b| json!({"balancer": b["addr"], "holds": b["applied"], "state": balancer_state(b, view)})).collect())
            .unwrap_or_default();
        if !lbs.is_empty() {
            self.table(&Value::Array(lbs), &["balancer", "holds", "state"], "");
        }
    }

    pub fn resolved(&mut self, key: &str, r: &Resolved, view: &Value) {
        let share = view["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["id"] == r.node.as_str()))
            .and_then(|n| n["share"].as_f64());
        if self.json {
            return self.json_line(&json!({
                "key": key, "node": r.node, "addr": r.addr, "view": r.view, "share": share,
            }));
        }
        let share = share
            .map(|x| format!(", which owns {:.2}% of the key space", x * 100.0))
            .unwrap_or_default();
        self.line(&format!(
            "{key} -> node {} at {} (view {}){share}",
            r.node, r.addr, r.view
        ));
    }

    pub fn ping(&mut self, v: &Value, via: &str, rtt: Duration) {
        let node = v["node"].as_str().unwrap_or(via).to_string();
        if self.json {
            return self.json_line(&json!({"node": node, "rtt_ms": ms(rtt)}));
        }
        self.line(&format!("pong from {node} in {:.3} ms", ms(rtt)));
    }

    pub fn bench(&mut self, r: &Report) {
        if self.json {
            return self.json_line(&serde_json::to_value(r).expect("report serialises"));
        }
        for l in r.human().lines() {
            self.line(l);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `n` of a thing, for people: "1 message", "3 messages".
pub fn count(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// A JSON value as a table cell: strings bare, null empty.
fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// Whether a balancer of `cluster.status` holds the collector's view
/// `view`: `current`, `stale (...)` saying why it may be, or `unreachable`.
fn balancer_state(b: &Value, view: Option<u64>) -> String {
    let why = b["last_error"].as_str();
    match (b["applied"].as_u64(), view) {
        (Some(a), Some(v)) if a >= v => "current".into(),
        (Some(_), _) => format!(
            "stale: resolves from an older view{}",
            why.map(|w| format!(" (last push: {w})"))
                .unwrap_or_else(
                    || " (the current one is on its way, or the link to it is cut)".into()
                )
        ),
        (None, _) => format!(
            "no view yet{}",
            why.map(|w| format!(" (last push: {w})"))
                .unwrap_or_default()
        ),
    }
}
