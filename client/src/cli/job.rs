//! `client job submit|status|results|cancel` and `client worker`: the task
//! service from the command line, over [`crate::tasks`].

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use dsf_proto::task as msg;
use serde_json::{json, Value};

use crate::client::{Client, ClientConfig};
use crate::error::{Error, Result};
use crate::tasks::{self, Submit, WorkerOptions};

use super::output::Out;

/// `client job ...`
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Submit one task per line of JSON (a file, or - for stdin); prints
    /// the job id.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  seq 1 10 | sed 's/.*/{\"n\":&}/' | client job submit --name squares"
    )]
    Submit {
        /// The job's name.
        #[arg(long)]
        name: Option<String>,
        /// One JSON payload a line; - reads stdin.
        #[arg(long, default_value = "-")]
        file: String,
        /// Attempts each task gets before it is dead [default: 3].
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Higher runs first [default: 0].
        #[arg(long)]
        priority: Option<i32>,
        /// Task i is keyed KEY:i, so running the same submit again with
        /// the same key adds nothing.
        #[arg(long)]
        key: Option<String>,
    },
    /// Follow a job live: a progress bar (done/total, failed, rate, ETA)
    /// until it ends; with --json, one event a line, then the final status.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client job watch 1"
    )]
    Watch { job: u64 },
    /// A job's counts and state.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client job status 1"
    )]
    Status { job: u64 },
    /// One task a line, in submit order: state, attempts, result or error.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client job results 1"
    )]
    Results { job: u64 },
    /// Cancel a job: ready and waiting tasks are dropped, leases revoked.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client job cancel 1"
    )]
    Cancel { job: u64 },
}

/// `client worker ...`
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Run once per task: the payload on stdin, stdout is the result (JSON
    /// if it parses, else a string); exit 0 is done, any other exit is a
    /// failed attempt (retried) with the end of stderr as its error. The
    /// worker's id is in `DSF_WORKER_ID`.
    #[arg(long)]
    pub exec: String,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// How long a claim holds a task without a heartbeat (extended every
    /// third of it while the command runs).
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    pub lease: Duration,
    /// Tasks each claim takes (1 to 100), run one after the other by the
    /// same slot and reported together, in one transaction: for quick
    /// commands, whose claim and report would cost more than they do
    /// (their leases are extended while any of the batch runs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub batch: u32,
    /// Names the worker and routes its claims [default: HOSTNAME-PID].
    #[arg(long)]
    pub id: Option<String>,
}

pub fn run(c: &mut Client, cmd: &JobCmd, out: &mut Out) -> Result<()> {
    match cmd {
        JobCmd::Submit {
            name,
            file,
            max_attempts,
            priority,
            key,
        } => {
            let payloads = read_payloads(file)?;
            let s = Submit {
                payloads: &payloads,
                name: name.clone(),
                max_attempts: *max_attempts,
                priority: *priority,
                key: key.clone(),
                job: None,
            };
            let bar = indicatif::ProgressBar::new(payloads.len() as u64).with_message("submitting");
            let r = tasks::submit(c, &s, |sent| bar.set_position(sent as u64))?;
            bar.finish_and_clear();
            let v = json!({"job": r.job, "tasks": r.accepted});
            out.value(&v, &format!("{}", r.job));
        }
        JobCmd::Watch { job } => {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} done · {msg} · ETA {eta}",
                )
                .expect("a valid template"),
            );
            let json = out.is_json();
            let st = tasks::watch(c, *job, |p| {
                if json {
                    out.value(&serde_json::to_value(p).expect("numbers serialise"), "");
                } else {
                    bar.set_length(p.total);
                    bar.set_position(p.done + p.dead);
                    bar.set_message(format!(
                        "{} failed attempts, {} dead, {} running, {:.1}/s",
                        p.failed, p.dead, p.running, p.rate
                    ));
                }
            })?;
            bar.finish_and_clear();
            let v = serde_json::to_value(&st).expect("a status serialises");
            out.value(
                &v,
                &format!(
                    "job {}: {}, {}/{} done, {} dead, {} failed attempts",
                    st.job, st.state, st.done, st.total, st.dead, st.failed
                ),
            );
        }
        JobCmd::Status { job } => {
            let st = tasks::status(c, *job)?;
            let v = serde_json::to_value(&st).expect("a status serialises");
            out.value(
                &v,
                &format!(
                    "job {}: {}, {}/{} done, {} failed attempts, {} dead, {} running, {} ready",
                    st.job, st.state, st.done, st.total, st.failed, st.dead, st.running, st.ready
                ),
            );
        }
        JobCmd::Results { job } => {
            let mut after = None;
            if !out.is_json() {
                out.value(&Value::Null, "seq\tstate\tattempts\tresult");
            }
            loop {
                let body = msg::ResultsBody {
                    job: *job,
                    after,
                    limit: Some(dsf_proto::LIMIT_MAX),
                };
                let page = c.send::<msg::GetResults>(&body)?;
                for r in &page.results {
                    let v = serde_json::to_value(r).expect("a result serialises");
                    let what = match (&r.result, &r.error) {
                        (Some(res), _) => res.get().to_string(),
                        (None, Some(e)) => format!("error: {e}"),
                        (None, None) => String::new(),
                    };
                    out.value(
                        &v,
                        &format!("{}\t{}\t{}\t{what}", r.seq, r.state, r.attempts),
                    );
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        JobCmd::Cancel { job } => {
            c.send::<msg::Cancel>(&msg::JobRef { job: *job })?;
            out.value(&json!({}), &format!("cancelled job {job}"));
        }
    }
    Ok(())
}

/// One payload a line; blank lines are skipped; each line must be JSON.
fn read_payloads(file: &str) -> Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(PathBuf::from(file)).map_err(|e| Error::Io {
            context: format!("reading {file}"),
            source: e,
        })?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut payloads = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::Io {
            context: format!("reading {file}"),
            source: e,
        })?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        serde_json::from_str::<serde::de::IgnoredAny>(line).map_err(|e| {
            Error::Config(format!("{file}: line {} is not one JSON value: {e}", i + 1))
        })?;
        payloads.push(line.to_string());
    }
    Ok(payloads)
}

/// `client worker`: claims and runs tasks until SIGTERM or SIGINT, then
/// finishes the tasks it holds and exits.
pub fn worker(cfg: &ClientConfig, args: &WorkerArgs, out: &mut Out) -> Result<()> {
    let id = args.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = dsf_common::signals::on_terminate(move || flag.store(true, Ordering::Release));
    let mut opts = WorkerOptions::new(id.clone());
    opts.concurrency = args.concurrency;
    opts.lease = args.lease;
    opts.batch = args.batch;
    log::info!(
        "worker {id}: {} at a time, claims of {}, lease {:?}, running {:?}",
        args.concurrency,
        args.batch,
        args.lease,
        args.exec
    );
    let report = tasks::work(cfg, &opts, &stop, |payload| {
        exec(&args.exec, &id, payload.get())
    })?;
    let v = json!({"worker": id, "done": report.done, "failed": report.failed, "refused": report.refused});
    out.value(
        &v,
        &format!(
            "worker {id} stopped: {} done, {} failed, {} refused (lease lost)",
            report.done, report.failed, report.refused
        ),
    );
    Ok(())
}

/// Most of stderr kept as a failed attempt's error.
const STDERR_TAIL: usize = 2000;

/// Runs `cmd` through `sh -c` with `payload` on stdin and the worker's id
/// in `DSF_WORKER_ID`.
fn exec(cmd: &str, worker: &str, payload: &str) -> std::result::Result<String, String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("DSF_WORKER_ID", worker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run sh -c {cmd:?}: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let payload = payload.to_string();
    // Written from a thread, so a command that does not read its stdin
    // (or fills its stdout first) cannot deadlock us.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(payload.as_bytes());
        let _ = stdin.write_all(b"\n");
    });
    let mut stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        let mut e = Vec::new();
        let _ = stderr.read_to_end(&mut e);
        e
    });
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {cmd:?}: {e}"))?;
    let _ = writer.join();
    let stderr = errs.join().unwrap_or_default();
    if status.success() {
        let text = String::from_utf8_lossy(&stdout);
        let text = text.trim_end();
        Ok(match serde_json::from_str::<Value>(text) {
            Ok(_) => text.to_string(),
            Err(_) => Value::String(text.to_string()).to_string(),
        })
    } else {
        let tail = String::from_utf8_lossy(&stderr);
        let tail = tail.trim_end();
        let start = tail.len().saturating_sub(STDERR_TAIL);
        let mut start = start;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        Err(format!("{status}: {}", &tail[start..]))
    }
}
