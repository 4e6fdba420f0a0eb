//! `client msg send|listen|history|join|leave`: messaging from the command
//! line, over [`crate::messages`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use dsf_proto::msg::HistoryBody;
use serde_json::{json, Value};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::messages::{self, ListenOptions, Listener};
use crate::session::Session;

use super::output::Out;

/// `client msg ...`
#[derive(Debug, Subcommand)]
pub enum MsgCmd {
    /// Send a message to a user: `msg send USER TEXT`, or to a room's
    /// members: `msg send --room ROOM TEXT` (or --body JSON for either).
    /// It is stored before this returns: an offline recipient gets it at
    /// their next `msg listen`.
    #[command(
        after_help = "Examples, with `scripts/cluster up`'s exports, from the repository:\n  client msg send bob 'lunch at noon?'\n  client msg send --room ops deploy done\n  client msg send bob --body '{\"temp\":21.5}'\n  seq 1000 | client msg send bob --lines      # a message a line, 64 in flight"
    )]
    Send {
        /// USER, then the TEXT: the words after USER, joined by spaces
        /// (quote it to keep its own spacing). With --room, only the TEXT.
        /// A body is at most 64 KiB as JSON (a text's quotes and escapes
        /// count).
        #[arg(value_name = "USER TEXT")]
        words: Vec<String>,
        /// The body as JSON instead of a TEXT, e.g. '{"temp":21.5}'.
        #[arg(long, value_name = "JSON")]
        body: Option<String>,
        /// Send to every other member of this room (join it first: `client
        /// msg join ROOM`).
        #[arg(long)]
        room: Option<String>,
        /// Send each line of standard input as a message of its own (its
        /// text), in order, keeping --window sends in flight.
        #[arg(long, conflicts_with = "body")]
        lines: bool,
        /// With --lines: sends in flight at once (a server commits up to
        /// 64 of one connection's together; more only queue).
        #[arg(long, default_value_t = messages::WINDOW_DEFAULT, requires = "lines")]
        window: usize,
    },
    /// Print each message of your inbox as it arrives (first those waiting
    /// since you last listened), and acknowledge it once printed. Follows
    /// the subscription to another node when its node goes away. Ctrl-C
    /// stops after acknowledging what was printed.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client msg listen --for 3s"
    )]
    Listen {
        /// Stop after this long, e.g. 30s, 10m [default: until Ctrl-C].
        #[arg(long = "for", value_name = "DURATION", value_parser = super::parse_duration)]
        duration: Option<Duration>,
        /// Messages the server may send ahead of acknowledgements (1 to
        /// 1000).
        #[arg(long, default_value_t = dsf_proto::msg::CREDIT_DEFAULT)]
        credit: u32,
    },
    /// Messages you sent and received, newest first.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client msg history --with bob --limit 5"
    )]
    History {
        /// Only the direct messages between you and this user.
        #[arg(long, value_name = "USER")]
        with: Option<String>,
        /// How many, 1 to 500.
        #[arg(long, default_value_t = dsf_proto::msg::HISTORY_DEFAULT)]
        limit: u32,
        /// Older than this message id: the `--before N` a page ends with
        /// (with --json, the last entry's `id`).
        #[arg(long, value_name = "ID")]
        before: Option<u64>,
    },
    /// Join a room (it is made on its first join).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client msg join ops"
    )]
    Join {
        /// The room's name (names are case-sensitive: `ops` and `OPS` are
        /// two rooms).
        room: String,
    },
    /// Leave a room.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client msg leave ops"
    )]
    Leave {
        /// The room's name, as joined.
        room: String,
    },
}

pub fn run(c: &mut Client, session: Option<&Session>, cmd: &MsgCmd, out: &mut Out) -> Result<()> {
    let me = session.map(|s| s.user.clone()).ok_or_else(|| {
        Error::Config("messages are a logged-in user's: log in first (client login NAME)".into())
    })?;
    match cmd {
        MsgCmd::Send {
            words,
            body,
            room,
            lines,
            window,
        } => {
            if *lines {
                return send_lines(c, words, room.as_deref(), *window, out);
            }
            let (to, text) = match (room, words.as_slice()) {
                (Some(_), []) => (None, None),
                (Some(_), text) => (None, Some(text.join(" "))),
                (None, [to]) => (Some(to), None),
                (None, [to, text @ ..]) => (Some(to), Some(text.join(" "))),
                (None, []) => {
                    return Err(Error::Config(
                        "give the recipient: client msg send USER TEXT (or --room ROOM TEXT)"
                            .into(),
                    ))
                }
            };
            let body = match (text, body) {
                (Some(t), None) if t.is_empty() => {
                    return Err(Error::Config(
                        "the TEXT is empty: give one, or --body JSON".into(),
                    ))
                }
                (Some(t), None) => json!(t).to_string(),
                (None, Some(b)) => {
                    serde_json::from_str::<serde::de::IgnoredAny>(b).map_err(|e| {
                        Error::Config(format!(
                            "--body is not JSON: {e} (quote it: --body '{{\"a\":1}}')"
                        ))
                    })?;
                    b.clone()
                }
                (None, None) => {
                    return Err(Error::Config(
                        "nothing to send: give the TEXT, or --body JSON".into(),
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(Error::Config(
                        "give the TEXT or --body JSON, not both".into(),
                    ))
                }
            };
            let (sent, to_whom) = match (room, to) {
                (Some(r), _) => (messages::send_to_room(c, r, &body)?, format!("room {r}")),
                (None, Some(t)) => (messages::send(c, t, &body)?, t.clone()),
                (None, None) => unreachable!("a user or a room, checked above"),
            };
            let v = serde_json::to_value(sent).expect("numbers serialise");
            let human = match (sent.seq, sent.recipients) {
                (Some(seq), _) => format!(
                    "sent message {} to {to_whom} (#{seq} in their inbox)",
                    sent.id
                ),
                (None, Some(n)) => {
                    let n = super::output::count(n, "recipient");
                    format!("sent message {} to {to_whom} ({n})", sent.id)
                }
                _ => format!("sent message {}", sent.id),
            };
            out.value(&v, &human);
        }
        MsgCmd::Listen { duration, credit } => listen(c, &me, *duration, *credit, out)?,
        MsgCmd::History {
            with,
            limit,
            before,
        } => {
            let page = messages::history(
                c,
                &HistoryBody {
                    with: with.clone(),
                    before: *before,
                    limit: Some(*limit),
                },
            )?;
            if out.is_json() {
                for e in &page.messages {
                    out.value(&serde_json::to_value(e).expect("an entry serialises"), "");
                }
            } else if page.messages.is_empty() {
                out.value(&Value::Null, "no messages");
            } else {
                for e in &page.messages {
                    let to = match (&e.to, &e.room) {
                        (_, Some(r)) => format!("#{r}"),
                        (Some(t), None) => t.clone(),
                        (None, None) => "?".into(),
                    };
                    out.value(
                        &Value::Null,
                        &format!(
                            "{}  {}  {} → {}: {}",
                            e.id,
                            out.clock().short(e.sent_at as i64),
                            e.from,
                            to,
                            text_of(e.body.get())
                        ),
                    );
                }
                if let Some(n) = page.next {
                    out.value(&Value::Null, &format!("(older: --before {n})"));
                }
            }
        }
        MsgCmd::Join { room } => {
            let j = messages::join(c, room)?;
            let v = serde_json::to_value(&j).expect("a reply serialises");
            let members = super::output::count(j.members, "member");
            out.value(&v, &format!("joined {} ({members})", j.room));
        }
        MsgCmd::Leave { room } => {
            messages::leave(c, room)?;
            out.value(&json!({}), &format!("left {room}"));
        }
    }
    Ok(())
}

/// `msg send --lines`: each line of stdin a message, `window` in flight.
fn send_lines(
    c: &mut Client,
    words: &[String],
    room: Option<&str>,
    window: usize,
    out: &mut Out,
) -> Result<()> {
    let to = match (room, words) {
        (Some(r), []) => messages::To::Room(r),
        (None, [user]) => messages::To::User(user),
        _ => {
            return Err(Error::Config(
                "with --lines, name only the recipient (client msg send USER --lines) or --room ROOM; the texts come from standard input".into(),
            ))
        }
    };
    if window == 0 {
        return Err(Error::Config("--window: at least 1 send in flight".into()));
    }
    let mut read_error = None;
    let stdin = std::io::stdin();
    let bodies = std::io::BufRead::lines(stdin.lock()).map_while(|l| match l {
        Ok(l) => Some((
            to,
            serde_json::value::to_raw_value(&l).expect("a string is JSON"),
        )),
        Err(e) => {
            read_error = Some(e);
            None
        }
    });
    let (mut sent, mut failed, mut last, mut first_error) = (0u64, 0u64, None, None);
    messages::send_many(c, bodies, window, |i, r| match r {
        Ok(s) => {
            sent += 1;
            last = Some(s.id);
        }
        Err(e) => {
            failed += 1;
            eprintln!("line {}: not sent: {e}", i + 1);
            first_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = read_error {
        return Err(Error::Config(format!(
            "reading standard input stopped after {} lines: {e}",
            sent + failed
        )));
    }
    let v = json!({"sent": sent, "failed": failed, "last_id": last});
    let whom = match to {
        messages::To::User(u) => u.to_string(),
        messages::To::Room(r) => format!("room {r}"),
    };
    let count = super::output::count(sent, "message");
    out.value(&v, &format!("sent {count} to {whom}, in order"));
    let Some(first) = first_error else {
        return Ok(());
    };
    let summary = format!(
        "{failed} of {} not sent (each is named above)",
        super::output::count(sent + failed, "line")
    );
    // The exit code is the first failure's: 3 when the server refused it.
    Err(match first {
        Error::Refused {
            kind, server, code, ..
        } => Error::Refused {
            kind,
            server,
            code,
            message: summary,
        },
        other => {
            eprintln!("{summary}");
            other
        }
    })
}

fn listen(
    c: &Client,
    me: &str,
    duration: Option<Duration>,
    credit: u32,
    out: &mut Out,
) -> Result<()> {
    if credit == 0 || credit > dsf_proto::msg::CREDIT_MAX {
        return Err(Error::Config(format!(
            "--credit: 1 to {}",
            dsf_proto::msg::CREDIT_MAX
        )));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = dsf_common::signals::on_terminate(move || flag.store(true, Ordering::Release));
    let opts = ListenOptions {
        credit,
        ack_every: u64::from(credit).div_ceil(4),
        ..ListenOptions::default()
    };
    let mut inbox = Listener::new(c, me, opts)?;
    let end = duration.map(|d| Instant::now() + d);
    let json = out.is_json();
    if !json {
        eprintln!(
            "listening as {me}{} (Ctrl-C stops)",
            duration.map_or_else(String::new, |d| format!(" for {d:?}"))
        );
    }
    let mut printed = 0u64;
    while !stop.load(Ordering::Acquire) {
        // Wake at least every 200 ms to see Ctrl-C.
        let step = Instant::now() + Duration::from_millis(200);
        let until = end.map_or(step, |e| e.min(step));
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        let m = match inbox.next(until) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                // What was printed is acknowledged before giving up.
                inbox.close();
                return Err(e);
            }
        };
        let v = serde_json::to_value(&m).expect("a message serialises");
        let from = match &m.room {
            Some(r) => format!("#{r} {}", m.from),
            None => m.from.clone(),
        };
        out.value(
            &v,
            &format!(
                "[{}] {from}: {}",
                out.clock().short(m.sent_at as i64),
                text_of(m.body.get())
            ),
        );
        out.flush();
        let _ = std::io::stdout().flush();
        // Printed: only now is it acknowledged.
        inbox.handled(m.seq);
        printed += 1;
    }
    inbox.close();
    if !json {
        eprintln!("{}", super::output::count(printed, "message"));
    }
    Ok(())
}

/// A body for people: a JSON string as its text, anything else as JSON.
fn text_of(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(Value::String(s)) => s,
        _ => body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_bodies_print_as_their_text() {
        assert_eq!(text_of(r#""hello""#), "hello");
        assert_eq!(text_of(r#"{"a":1}"#), r#"{"a":1}"#);
    }
}
