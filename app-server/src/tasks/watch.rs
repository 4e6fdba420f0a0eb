//! `job.watch {"job"}`: `progress` events whenever the job's counts change,
//! at most every [`POLL`], then its final status when it ends. The stream
//! lives on the node's `follow` thread, which reads the job every
//! [`POLL`]; a job another may not see ends it with `not_found`.

use std::time::{Duration, Instant};

use dsf_common::pipeline::Stream;
use dsf_common::Result;
use dsf_proto::task::{JobRef, Progress, Watch};
use dsf_sql::tasks::Owner;

use super::handlers::owner;
use crate::node::{Call, CallExt};
use crate::topics::Step;

/// How often a watched job is read: progress events at most this often.
pub const POLL: Duration = Duration::from_millis(100);

/// The window the `rate` is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Opens the watch.
pub fn watch(call: &Call, b: JobRef, stream: Stream<Watch>) -> Result<()> {
    let who = owner(call);
    let (app, user, operator) = (who.app.to_string(), who.user, who.operator);
    let db = call.db().clone();
    let job = b.job;
    let mut last = None;
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    call.node()
        .follow(format!("job:{job}"), POLL, stream, move |stream| {
            let owner = Owner {
                app: &app,
                user,
                operator,
            };
            let st = db.tasks().status(&owner, job)?;
            let now = Instant::now();
            let counts = (st.done, st.failed, st.dead, st.running, st.total);
            let finished = st.done + st.dead;
            samples.push((now, finished));
            samples.retain(|(t, _)| now.duration_since(*t) <= RATE_WINDOW);
            let rate = match (samples.first(), samples.last()) {
                (Some((t0, f0)), Some((t1, f1))) if t1 > t0 => {
                    (f1 - f0) as f64 / t1.duration_since(*t0).as_secs_f64()
                }
                _ => 0.0,
            };
            if last != Some(counts) {
                last = Some(counts);
                let p = Progress {
                    done: st.done,
                    failed: st.failed,
                    dead: st.dead,
                    running: st.running,
                    total: st.total,
                    rate: (rate * 10.0).round() / 10.0,
                };
                if stream.update(&p).is_err() {
                    // Closed or cancelled: the follow thread drops it.
                    return Ok(Step::Wait);
                }
            }
            if st.state != "running" {
                return Ok(Step::Finish(st));
            }
            Ok(Step::Wait)
        });
    Ok(())
}
