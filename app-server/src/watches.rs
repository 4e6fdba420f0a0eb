//! `job.watch`: open streams of job progress, served by one `watches`
//! thread per node. Every [`POLL`] it reads each watched job's counts once
//! (however many streams watch it), sends a `progress` event to each
//! stream whose counts changed, and finishes the streams of jobs that have
//! ended with the final status. The counts live in MySQL, so a completion
//! on any node is seen here within a poll. A slow reader gets the latest
//! counts when it catches up ([`Stream::update`]), never a backlog.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use dsf_common::wire::streams::Stream;
use dsf_proto::task::{JobStatus, Progress, PROGRESS};
use dsf_sql::tasks::Owner;
use dsf_sql::Db;

/// How often watched jobs are read: progress events at most this often.
pub const POLL: Duration = Duration::from_millis(100);

/// The window the `rate` is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

struct Watch {
    /// Taken when the stream ends.
    stream: Option<Stream>,
    app: String,
    job: u64,
    /// The session token sent with the watch, checked on its first turn.
    token: Option<String>,
    user: Option<u64>,
    operator: bool,
    /// The counts last sent.
    last: Option<(u64, u64, u64, u64, u64)>,
    /// (when, finished) samples for the rate.
    samples: Vec<(Instant, u64)>,
}

/// The watches' thread; stops when dropped.
pub struct Watches {
    tx: Sender<Watch>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches").finish()
    }
}

impl Watches {
    pub fn start(controller: Arc<crate::controller::Controller>) -> Watches {
        let (tx, rx) = unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("watches".into())
            .spawn(move || run(&controller, &rx, &flag))
            .expect("spawning the watches thread");
        Watches { tx, stop }
    }

    /// Serves `stream`, a `job.watch` of `job` by `app` (with the
    /// session `token` it sent, if any).
    pub fn add(&self, stream: Stream, app: String, job: u64, token: Option<String>) {
        let _ = self.tx.send(Watch {
            stream: Some(stream),
            app,
            job,
            token,
            user: None,
            operator: false,
            last: None,
            samples: Vec::new(),
        });
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn run(controller: &crate::controller::Controller, rx: &Receiver<Watch>, stop: &AtomicBool) {
    let db: &Db = &controller.app().db;
    let mut watches: Vec<Watch> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        // New watches are served at once; the rest every POLL.
        match rx.recv_timeout(POLL) {
            Ok(w) => watches.push(w),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        watches.extend(rx.try_iter());
        // A token sent with a watch: its session, once (a bad one ends it).
        watches.retain_mut(|w| {
            let Some(token) = w.token.take() else {
                return true;
            };
            match controller.session_for(&w.app, Some(&token), "job.watch") {
                Ok(s) => {
                    w.user = Some(s.user.id);
                    w.operator = s.user.role >= dsf_sql::Role::Operator;
                    true
                }
                Err(e) => {
                    if let Some(s) = w.stream.take() {
                        let _ = s.fail(&e);
                    }
                    false
                }
            }
        });
        if watches.is_empty() {
            continue;
        }
        let now = Instant::now();
        type Key = (String, Option<u64>, bool, u64);
        let mut read: HashMap<Key, Result<JobStatus, dsf_common::Error>> = HashMap::new();
        watches = std::mem::take(&mut watches)
            .into_iter()
            .filter_map(|mut w| {
                let st = read
                    .entry((w.app.clone(), w.user, w.operator, w.job))
                    .or_insert_with(|| {
                        let owner = Owner {
                            app: &w.app,
                            user: w.user,
                            operator: w.operator,
                        };
                        db.tasks().status(&owner, w.job).map_err(Into::into)
                    })
                    .clone();
                serve(&mut w, st, now).then_some(w)
            })
            .collect();
    }
}

/// Sends what changed; whether the stream goes on.
fn serve(w: &mut Watch, st: Result<JobStatus, dsf_common::Error>, now: Instant) -> bool {
    let Some(stream) = w.stream.as_mut() else {
        return false;
    };
    let st = match st {
        Ok(st) => st,
        Err(e) if e.code() == dsf_common::ErrorCode::Unavailable => {
            // The database is away: the watch waits for it.
            return stream.flush().is_ok();
        }
        Err(e) => {
            if let Some(s) = w.stream.take() {
                let _ = s.fail(&e);
            }
            return false;
        }
    };
    let counts = (st.done, st.failed, st.dead, st.running, st.total);
    let finished = st.done + st.dead;
    w.samples.push((now, finished));
    w.samples
        .retain(|(t, _)| now.duration_since(*t) <= RATE_WINDOW);
    let rate = match (w.samples.first(), w.samples.last()) {
        (Some((t0, f0)), Some((t1, f1))) if t1 > t0 => {
            (f1 - f0) as f64 / t1.duration_since(*t0).as_secs_f64()
        }
        _ => 0.0,
    };
    if w.last != Some(counts) {
        w.last = Some(counts);
        let p = Progress {
            done: st.done,
            failed: st.failed,
            dead: st.dead,
            running: st.running,
            total: st.total,
            rate: (rate * 10.0).round() / 10.0,
        };
        let body = serde_json::to_string(&p).expect("numbers serialise");
        if stream.update(PROGRESS, &body).is_err() {
            return false;
        }
    } else if stream.flush().is_err() {
        return false;
    }
    if st.state != "running" {
        let body = serde_json::to_string(&st).expect("a status serialises");
        if let Some(s) = w.stream.take() {
            let _ = s.finish(&body);
        }
        return false;
    }
    true
}
