//! The `client` tool: flags ([`Cli`]), one function per subcommand, and
//! the exit codes ([`exit`]). `main.rs` only calls [`main`].

mod job;
mod msg;
mod output;
mod pins;
mod time;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::bench::{self, BenchArgs};
use crate::client::{parse_body, Client, ClientConfig, DEFAULT_APP, DEFAULT_LB};
use crate::error::{Error, Result};
use crate::session::{self, Session};
use crate::stream::RawItem;
use dsf_proto::{blacklist, gate, sys, user, Empty, Message};
use output::Out;

/// Exit codes of `client`, shown in `--help`.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// A local failure: a file, the terminal.
    pub const LOCAL: u8 = 1;
    /// Bad flags or arguments, or no app secret.
    pub const USAGE: u8 = 2;
    /// The server refused the request (its code and message are printed).
    pub const REFUSED: u8 = 3;
    /// The cluster cannot be reached: no balancer, no node, or a timeout.
    pub const UNREACHABLE: u8 = 4;
    /// A write may or may not have happened (it was not resent).
    pub const OUTCOME_UNKNOWN: u8 = 5;
    /// A reply failed its signature check or could not be read.
    pub const BAD_REPLY: u8 = 6;
}

const AFTER_HELP: &str = "\
Examples:
  export DSF_APP_SECRET=...              # the secret of app `cli` (or --app-secret-file FILE)
  client ping                            # one sys.ping through the balancer
  client register ann                    # asks for a password twice; logs in
  client user create bob --role operator # an admin makes an account
  client login ann                       # token saved for this cluster, ~/.config/dsf/sessions/ (mode 0600)
  client blacklist add 110101199001011234 'Li Lei' --reason 'fraud'
  client blacklist list --prefix Li --json | jq .entries
  client check 110101199001011234 'Li Lei' --gate north
  cut -d, -f1,2 people.csv | client check --stdin --gate north
  client resolve ann                     # which node owns key `ann`, and its share
  client status --collector 127.0.0.1:6400
  client bench --op ping --conns 50 --pipeline 16 --duration 10s
  client msg send bob 'lunch at noon?'   # logged in; stored even if bob is offline
  client call sys.ping                   # any type by name: dsf's own, or a service of yours
  client stream job.watch '{\"job\": 7}' # any stream: its events as they come, then its reply
  client msg listen --for 1m             # your inbox, live, each message acknowledged once printed
  client job submit --name squares < tasks.jsonl && client worker --exec ./work.sh

Environment: DSF_LB, DSF_APP, DSF_APP_SECRET, DSF_APP_SECRET_FILE, DSF_NODE,
DSF_ROUTE, DSF_COLLECTOR, DSF_SESSION_FILE (flags win over the environment).

Exit codes:
  0  done
  1  local failure (a file, the terminal)
  2  usage error: bad flags or arguments, or no app secret
  3  refused by the server: its error code and message are printed
  4  cluster unreachable: no balancer, no node, or a timeout
  5  outcome unknown: a write may have happened and was not resent
  6  bad reply: signature mismatch (wrong secret?) or unreadable reply";

/// `client`: talk to a dsf cluster.
#[derive(Debug, Parser)]
#[command(
    name = "client",
    version,
    about = "Talk to a dsf cluster: accounts, blacklist, gate checks, jobs, messages, cluster status, benchmarks.",
    long_about = "Talk to a dsf cluster. Requests are signed with the app's secret and go to the \
                  node the balancer picks for the routing key (lb.resolve), then straight to that \
                  node; if it goes away, reads are retried on another node, and writes are never \
                  resent silently.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Balancers, tried in turn: HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "DSF_LB", value_delimiter = ',', default_value = DEFAULT_LB, global = true)]
    pub lb: Vec<String>,
    /// App id to sign as.
    #[arg(long, env = "DSF_APP", default_value = DEFAULT_APP, global = true)]
    pub app: String,
    /// File (mode 0600) holding the app secret; else DSF_APP_SECRET is used.
    #[arg(long, env = "DSF_APP_SECRET_FILE", value_name = "FILE", global = true)]
    pub app_secret_file: Option<PathBuf>,
    /// Talk to this app server directly instead of asking a balancer.
    #[arg(long, env = "DSF_NODE", value_name = "HOST:PORT", global = true)]
    pub node: Option<String>,
    /// Routing key for the balancer (default: the logged-in user, else our IP).
    #[arg(long, env = "DSF_ROUTE", value_name = "KEY", global = true)]
    pub route: Option<String>,
    /// Time allowed for each reply, e.g. 500ms, 10s, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    /// Speak TLS to the balancers and nodes, trusting the PEM certificates
    /// in FILE (the servers run with --tls-cert).
    #[arg(long, env = "DSF_TLS_CA", value_name = "FILE", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Print replies as JSON (one object per line) for scripts; times
    /// stay Unix milliseconds there.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show times in UTC instead of this machine's local time.
    #[arg(long, global = true)]
    pub utc: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account (user.register) and log in; asks for the password.
    /// Works where the servers' registration is open; otherwise an admin
    /// makes accounts with `client user create`.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  echo a-good-password | client register ann --password-stdin"
    )]
    Register(Credentials),
    /// Log in (user.login) and save the session token.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client login admin < .dsf/admin.password"
    )]
    Login(Credentials),
    /// End the session (user.logout) and delete the saved token; with
    /// --local, only delete it (a token the servers no longer know).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client logout"
    )]
    Logout {
        /// Only forget the saved session; send nothing.
        #[arg(long)]
        local: bool,
    },
    /// Show the logged-in user (user.me).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client whoami"
    )]
    Whoami,
    /// Accounts made by an admin (user.create).
    #[command(subcommand)]
    User(UserCmd),
    /// Give a user a role: viewer, operator or admin (user.set_role; admin only).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client set-role ann operator"
    )]
    SetRole {
        /// User name.
        name: String,
        /// viewer, operator or admin.
        role: String,
    },
    /// Manage the blacklist (blacklist.*).
    #[command(subcommand)]
    Blacklist(BlacklistCmd),
    /// Check a person at a gate (gate.check), or every `id_card,name` line of stdin.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client check 110101199001011234 'Li Lei' --gate north"
    )]
    Check(CheckArgs),
    /// Show recorded gate checks (gate.history).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client history --gate north --limit 5"
    )]
    History {
        /// Only checks of this id card.
        #[arg(long)]
        id_card: Option<String>,
        /// Only checks at this gate.
        #[arg(long)]
        gate: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show the audit trail: role changes, users made, blacklist changes,
    /// newest first (audit.list; admin only).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client audit --limit 5"
    )]
    Audit {
        /// Only entries about this user name or id card.
        #[arg(long)]
        subject: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
        /// Older than this entry id (the `next` a page printed).
        #[arg(long, value_name = "ID")]
        before: Option<u64>,
    },
    /// Show the cluster's members and load (cluster.status, from the collector).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client status"
    )]
    Status {
        /// The collector's address; with an active and a standby, both
        /// (A,B, as app servers take them): the one feeding the balancers
        /// is shown.
        #[arg(
            long,
            env = "DSF_COLLECTOR",
            default_value = "127.0.0.1:6400",
            value_delimiter = ','
        )]
        collector: Vec<String>,
    },
    /// Show which node owns KEY (lb.resolve) and its share of keys (lb.view).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client resolve ann"
    )]
    Resolve {
        /// The routing key (user name, device id, ...).
        key: String,
    },
    /// Ping a node (sys.ping) and show which one answered and how fast.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client ping"
    )]
    Ping,
    /// Generate load and report requests/s and latency percentiles.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client bench --op ping --duration 2s"
    )]
    Bench(BenchArgs),
    /// Proxy mode's stored routes on a balancer: list or drop them
    /// (lb.pins, lb.unpin; needs the cluster secret).
    #[command(subcommand)]
    Pins(pins::PinsCmd),
    /// Jobs of tasks: submit, status, results, cancel (task.submit, job.*).
    #[command(subcommand)]
    Job(job::JobCmd),
    /// Claim tasks and run a command for each (task.claim, task.complete):
    /// payload on stdin, stdout the result, exit 0 done.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client worker --concurrency 2 --exec 'read p; echo \"$p\"'"
    )]
    Worker(job::WorkerArgs),
    /// Messages between users, on any node: send, listen, history, rooms
    /// (msg.*; logged in).
    #[command(subcommand)]
    Msg(msg::MsgCmd),
    /// Send any message type with a JSON body and print its reply: dsf's
    /// own, or one of a service of your own
    /// (client call order.place '{"item":"tea","qty":2}').
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client call sys.ping"
    )]
    Call(CallArgs),
    /// Open any stream type with a JSON body and print its events as they
    /// come, then its final reply (client stream order.watch '{"id":1}').
    /// If its node goes away, the stream is opened again on another.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client stream job.watch '{\"job\": 1}'"
    )]
    Stream {
        /// The message type, e.g. job.watch.
        kind: String,
        /// The body, a JSON object.
        #[arg(default_value = "{}")]
        body: String,
    },
}

/// `client call ...`
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The message type, e.g. order.get.
    pub kind: String,
    /// The body, a JSON object.
    #[arg(default_value = "{}")]
    pub body: String,
    /// The type is a read: if its node goes away it may be sent again,
    /// to another. A type dsf does not know is otherwise taken for a
    /// write, resent only as itself (same nonce), so that it runs once.
    #[arg(long)]
    pub read: bool,
}

/// A user name; the password is asked for, never taken from a flag.
#[derive(Debug, Args)]
pub struct Credentials {
    /// User name.
    pub name: String,
    /// Read the password from the first line of stdin (automatic when stdin is not a terminal).
    #[arg(long)]
    pub password_stdin: bool,
}

/// `client user ...`
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Make an account (admin); asks for its password twice.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  echo a-good-password | client user create bob --role operator --password-stdin"
    )]
    Create {
        #[command(flatten)]
        cred: Credentials,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
}

/// `client blacklist ...`
#[derive(Debug, Subcommand)]
pub enum BlacklistCmd {
    /// List a person (operator).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client blacklist add 110101199001011234 'Li Lei' --reason fraud"
    )]
    Add {
        /// Id card number.
        id_card: String,
        /// Name on the id card.
        name: String,
        /// Why they are listed.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show one entry.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client blacklist get 110101199001011234"
    )]
    Get {
        /// Id card number.
        id_card: String,
    },
    /// Change an entry's name or reason (operator).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client blacklist update 110101199001011234 --reason 'fraud, twice'"
    )]
    Update {
        /// Id card number.
        id_card: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New reason.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove an entry (operator).
    #[command(alias = "remove")]
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client blacklist rm 110101199001011234"
    )]
    Rm {
        /// Id card number.
        id_card: String,
    },
    /// List entries, a page at a time.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client blacklist list --prefix Li"
    )]
    List {
        /// Start after this id card (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Entries per page (at most 500).
        #[arg(long)]
        limit: Option<u32>,
        /// Only names starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
}

/// `client check ...`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Id card number (omit with --stdin).
    #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
    pub id_card: Option<String>,
    /// Name on the id card (omit with --stdin).
    #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
    pub name: Option<String>,
    /// The gate checking.
    #[arg(long)]
    pub gate: Option<String>,
    /// Gate device mode: read `id_card,name` lines from stdin, print one result per line, in order.
    #[arg(long)]
    pub stdin: bool,
    /// Checks in flight at once in --stdin mode.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
}

/// Parses `500ms`, `10s`, `2m`, `1h` or sums like `1m30s` (more than zero).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    // The servers' parser, so `--timeout` reads like `--idle-timeout`:
    // 500ms, 10s, 2m, 1m30s; a bare number is refused rather than guessed.
    let d = s.parse::<dsf_common::config::HumanDuration>()?.get();
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// Parses the process's arguments, runs the command, and returns the exit
/// code. Usage errors exit with 2 from inside clap.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A tool's stderr is for its answer's errors: only warnings by default
    // (RUST_LOG=debug shows resolves, connects and failovers).
    dsf_common::logging::init("warn");
    ExitCode::from(run(cli))
}

/// Runs one parsed command; returns its exit code after printing its
/// result (stdout) or its error (stderr, and stdout too with `--json`).
pub fn run(cli: Cli) -> u8 {
    let mut out = Out::new(cli.json, time::Clock::new(cli.utc));
    match dispatch(&cli, &mut out) {
        Ok(code) => code,
        Err(e) => {
            let e = name_the_session(&cli, e);
            out.error(&e);
            exit_code(&e)
        }
    }
}

/// A session token refused: the error says which saved session was sent
/// and how to be rid of it.
fn name_the_session(cli: &Cli, e: Error) -> Error {
    let Error::Refused {
        kind,
        server,
        code: code @ dsf_common::ErrorCode::Unauthorized,
        message,
    } = e
    else {
        return e;
    };
    let saved = session_path(cli).ok().filter(|p| p.is_file());
    let message = match saved {
        Some(path) if message.contains("session token") => format!(
            "{message} (the session saved at {} was sent: log in again with `client login NAME`, \
             or forget it with `client logout --local`)",
            path.display()
        ),
        _ => message,
    };
    Error::Refused {
        kind,
        server,
        code,
        message,
    }
}

/// The exit code of an error.
pub fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Refused { .. } => exit::REFUSED,
        Error::NoBalancer { .. } | Error::NoNode { .. } | Error::Timeout { .. } => {
            exit::UNREACHABLE
        }
        Error::OutcomeUnknown { .. } => exit::OUTCOME_UNKNOWN,
        Error::BadReply { .. } => exit::BAD_REPLY,
        Error::Config(_) => exit::USAGE,
        Error::Io { .. } => exit::LOCAL,
    }
}

/// The app secret: `--app-secret-file` (mode 0600) or `DSF_APP_SECRET`.
fn app_secret(cli: &Cli) -> Result<Vec<u8>> {
    let secret = match &cli.app_secret_file {
        Some(path) => dsf_common::wire::keys::read_private(path)
            .map_err(|e| Error::Config(e.to_string()))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        None => std::env::var(dsf_common::wire::keys::APP_SECRET_ENV).unwrap_or_default(),
    };
    if secret.is_empty() {
        return Err(Error::Config(format!(
            "no secret for app {:?}: set {} or pass --app-secret-file FILE (mode 0600)",
            cli.app,
            dsf_common::wire::keys::APP_SECRET_ENV
        )));
    }
    Ok(secret.into_bytes())
}

/// Builds the SDK client for `cli`, with the saved session attached.
/// The SDK's settings from the global flags.
fn config(cli: &Cli) -> Result<ClientConfig> {
    let mut cfg = ClientConfig::new(cli.lb.clone(), cli.app.clone(), app_secret(cli)?);
    if let Some(ca) = &cli.tls_ca {
        cfg = cfg.tls_ca(ca)?;
    }
    Ok(cfg)
}

/// Where this cluster's session is kept (see [`session`]).
fn session_path(cli: &Cli) -> Result<PathBuf> {
    session::path_for(&session::cluster_key(&cli.lb, cli.node.as_deref()))
}

fn client(cli: &Cli) -> Result<(Client, Option<Session>)> {
    let mut cfg = config(cli)?;
    cfg.node = cli.node.clone();
    cfg.request_timeout = cli.timeout;
    let session = Session::load(&session_path(cli)?)?;
    cfg.routing_key = cli
        .route
        .clone()
        .or_else(|| session.as_ref().map(|s| s.user.clone()));
    let mut client = Client::new(cfg)?;
    client.set_token(session.as_ref().map(|s| s.token.clone()));
    Ok((client, session))
}

fn dispatch(cli: &Cli, out: &mut Out) -> Result<u8> {
    if let Command::Bench(args) = &cli.command {
        let mut cfg = config(cli)?;
        cfg.request_timeout = cli.timeout;
        let token = Session::load(&session_path(cli)?)?.map(|s| s.token);
        if args.op == bench::Op::Add && token.is_none() {
            return Err(Error::Config(
                "--op add sends blacklist.add, which needs an operator's session: log in first (client login NAME)".into(),
            ));
        }
        let report = bench::run(&cfg, args, token)?;
        out.bench(&report);
        return Ok(exit::OK);
    }
    if let Command::Pins(cmd) = &cli.command {
        let tls = cli
            .tls_ca
            .as_deref()
            .map(dsf_common::tls::client_config)
            .transpose()
            .map_err(|e| Error::Config(e.to_string()))?;
        pins::run(cmd, cli.timeout, &tls, out)?;
        return Ok(exit::OK);
    }
    if let Command::Worker(args) = &cli.command {
        let (c, _) = client(cli)?;
        job::worker(c.config(), args, out)?;
        return Ok(exit::OK);
    }
    let (mut c, session) = client(cli)?;
    match &cli.command {
        Command::Register(cred) => {
            let creds = user::Credentials {
                name: cred.name.clone(),
                password: read_password(cred.password_stdin, true)?,
            };
            typed::<user::Register>(&mut c, &creds)?;
            // The reply is the same for a taken name, so only a login tells
            // whether the account is now this password's.
            match log_in(&mut c, cli, &creds) {
                Ok((v, path)) => out.registered(&cred.name, &v, &path),
                Err(e) if e.code() == Some(dsf_common::ErrorCode::Unauthorized) => {
                    return Err(Error::Refused {
                        kind: "user.register".into(),
                        server: c.node_id().unwrap_or("server").into(),
                        code: dsf_common::ErrorCode::Conflict,
                        message: format!(
                            "{:?} did not become an account with this password: the name is taken \
                             (servers do not say which names exist, so this is learnt by logging in); \
                             choose another, or `client login {}` if it is yours",
                            cred.name, cred.name
                        ),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Command::Login(cred) => {
            let creds = user::Credentials {
                name: cred.name.clone(),
                password: read_password(cred.password_stdin, false)?,
            };
            let (v, path) = log_in(&mut c, cli, &creds)?;
            out.logged_in(&cred.name, &v, &path);
        }
        Command::User(UserCmd::Create { cred, role }) => {
            let v = typed::<user::Create>(
                &mut c,
                &user::CreateBody {
                    name: cred.name.clone(),
                    password: read_password(cred.password_stdin, true)?,
                    role: Some(role.clone()),
                },
            )?;
            out.user_created(&v);
        }
        Command::Logout { local: true } => {
            let path = session_path(cli)?;
            if session.is_none() {
                return Err(Error::Config(format!(
                    "not logged in (no session at {})",
                    path.display()
                )));
            }
            Session::remove(&path)?;
            out.value(
                &json!({"forgotten": path.display().to_string()}),
                &format!("forgot the session at {}", path.display()),
            );
        }
        Command::Logout { local: false } => {
            let path = session_path(cli)?;
            if session.is_none() {
                return Err(Error::Config(format!(
                    "not logged in (no session at {})",
                    path.display()
                )));
            }
            let res = typed::<user::Logout>(&mut c, &Empty {});
            // A token refused as unauthorized is useless: forget it too.
            match &res {
                Ok(_) => Session::remove(&path)?,
                Err(e) if e.code() == Some(dsf_common::ErrorCode::Unauthorized) => {
                    Session::remove(&path)?
                }
                Err(_) => {}
            }
            out.value(&res?, "logged out");
        }
        Command::Whoami => {
            let v = typed::<user::Me>(&mut c, &Empty {})?;
            out.user(&v);
        }
        Command::SetRole { name, role } => {
            let v = typed::<user::SetRole>(
                &mut c,
                &user::SetRoleBody {
                    name: name.clone(),
                    role: role.clone(),
                },
            )?;
            out.user(&v);
        }
        Command::Blacklist(cmd) => blacklist(&mut c, cmd, out)?,
        Command::Check(args) if args.stdin => return check_stdin(&mut c, args, out),
        Command::Check(args) => {
            let body = gate::CheckBody {
                id_card: args.id_card.clone().unwrap_or_default(),
                name: args.name.clone().unwrap_or_default(),
                gate: args.gate.clone(),
            };
            let v = typed::<gate::Check>(&mut c, &body)?;
            out.check(args.id_card.as_deref().unwrap_or(""), &Ok(v));
        }
        Command::History {
            id_card,
            gate,
            limit,
        } => {
            let body = gate::HistoryBody {
                id_card: id_card.clone(),
                gate: gate.clone(),
                limit: *limit,
            };
            let v = typed::<gate::History>(&mut c, &body)?;
            out.table(
                &v["checks"],
                &["at", "id_card", "name", "gate", "hit"],
                "no checks",
            );
        }
        Command::Audit {
            subject,
            limit,
            before,
        } => {
            let body = dsf_proto::audit::ListBody {
                before: *before,
                subject: subject.clone(),
                limit: *limit,
            };
            let v = typed::<dsf_proto::audit::List>(&mut c, &body)?;
            out.table(
                &v["entries"],
                &["id", "at", "actor", "node", "action", "subject", "detail"],
                "no audit entries",
            );
            if let Some(n) = v.get("next").and_then(Value::as_u64) {
                if !out.is_json() {
                    out.value(&Value::Null, &format!("(older: --before {n})"));
                }
            }
        }
        Command::Status { collector } => out.status(&feeding_status(&c, collector)?),
        Command::Resolve { key } => {
            let r = c.resolve(Some(key), &[])?;
            let view = c.balancer_call("lb.view", "{}")?;
            let view = parse_body(&view, "balancer")?;
            out.resolved(key, &r, &view);
        }
        Command::Ping => {
            let t = Instant::now();
            let v = typed::<sys::Ping>(&mut c, &Empty {})?;
            out.ping(&v, c.node_id().unwrap_or("?"), t.elapsed());
        }
        Command::Job(cmd) => job::run(&mut c, cmd, out)?,
        Command::Msg(cmd) => msg::run(&mut c, session.as_ref(), cmd, out)?,
        Command::Call(args) => {
            let body = json_body(&args.kind, &args.body)?;
            let read = args.read || crate::is_idempotent(&args.kind);
            let raw = c.call_raw_as(&args.kind, &body, read)?;
            let v = parse_body(&raw, c.node_id().unwrap_or("server"))?;
            out.reply(&v);
        }
        Command::Stream { kind, body } => {
            let body = json_body(kind, body)?;
            for item in c.stream_raw(kind, &body)? {
                match item? {
                    RawItem::Event { event, body } => out.stream_event(&event, &body),
                    RawItem::Done(body) => out.stream_done(&body),
                }
                out.flush();
            }
        }
        Command::Bench(_) | Command::Pins(_) | Command::Worker(_) => unreachable!("handled above"),
    }
    Ok(exit::OK)
}

/// `cluster.status` of the first collector of `collectors` that says it
/// feeds the balancers, else of the first that answers, else the last
/// error.
fn feeding_status(c: &Client, collectors: &[String]) -> Result<Value> {
    let (mut answered, mut failed) = (None, None);
    for addr in collectors {
        match c
            .call_at(addr, "cluster.status", "{}")
            .and_then(|raw| parse_body(&raw, addr))
        {
            Ok(v) if v["feeding"] == true => return Ok(v),
            Ok(v) => answered = answered.or(Some(v)),
            Err(e) => failed = Some(e),
        }
    }
    match (answered, failed) {
        (Some(v), _) => Ok(v),
        (None, Some(e)) => Err(e),
        (None, None) => Err(Error::Config(
            "--collector: give the collector's address, HOST:PORT".into(),
        )),
    }
}

/// A typed call (the catalogue's body and reply), its reply as JSON for
/// the printers.
/// `body` as the compact JSON object the server parses, or a usage error.
fn json_body(kind: &str, body: &str) -> Result<String> {
    match serde_json::from_str::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v.to_string()),
        Ok(_) => Err(Error::Config(format!(
            "the body of {kind} must be a JSON object, like '{{\"id\": 1}}'"
        ))),
        Err(e) => Err(Error::Config(format!(
            "the body of {kind} is not JSON: {e} (quote it for the shell: '{{\"id\": 1}}')"
        ))),
    }
}

fn typed<M: Message>(c: &mut Client, body: &M::Body) -> Result<Value> {
    let reply = c.send::<M>(body)?;
    Ok(serde_json::to_value(reply).expect("a catalogue reply serialises"))
}

fn blacklist(c: &mut Client, cmd: &BlacklistCmd, out: &mut Out) -> Result<()> {
    match cmd {
        BlacklistCmd::Add {
            id_card,
            name,
            reason,
        } => {
            let body = blacklist::AddBody {
                id_card: id_card.clone(),
                name: name.clone(),
                reason: reason.clone(),
            };
            out.entry(&typed::<blacklist::Add>(c, &body)?);
        }
        BlacklistCmd::Get { id_card } => {
            let body = blacklist::IdCard {
                id_card: id_card.clone(),
            };
            out.entry(&typed::<blacklist::Get>(c, &body)?);
        }
        BlacklistCmd::Update {
            id_card,
            name,
            reason,
        } => {
            if name.is_none() && reason.is_none() {
                return Err(Error::Config(
                    "nothing to update: pass --name and/or --reason".into(),
                ));
            }
            let body = blacklist::UpdateBody {
                id_card: id_card.clone(),
                name: name.clone(),
                reason: reason.clone(),
            };
            out.entry(&typed::<blacklist::Update>(c, &body)?);
        }
        BlacklistCmd::Rm { id_card } => {
            let body = blacklist::IdCard {
                id_card: id_card.clone(),
            };
            let v = typed::<blacklist::Remove>(c, &body)?;
            out.value(&v, &format!("removed {id_card}"));
        }
        BlacklistCmd::List {
            after,
            limit,
            prefix,
        } => {
            let body = blacklist::ListBody {
                after: after.clone(),
                limit: *limit,
                name_prefix: prefix.clone(),
            };
            let v = typed::<blacklist::List>(c, &body)?;
            out.list(&v);
        }
    }
    Ok(())
}

/// Gate device mode: every `id_card,name` line of stdin becomes one
/// pipelined `gate.check`; results are printed in input order as they come.
/// Blank lines and `#` comments are skipped; malformed lines are reported
/// on stderr and skipped.
fn check_stdin(c: &mut Client, args: &CheckArgs, out: &mut Out) -> Result<u8> {
    // Id cards of the checks sent and not yet printed: the input side
    // pushes, the reply side pops, both in input order.
    let queue = RefCell::new(VecDeque::<String>::new());
    let mut read_error = None;
    let mut bad_lines = 0usize;
    let mut failed = 0usize;
    let bodies = std::io::stdin()
        .lock()
        .lines()
        .enumerate()
        .map_while(|(n, line)| match line {
            Ok(line) => Some((n, line)),
            Err(e) => {
                read_error = Some(e);
                None
            }
        })
        .filter_map(|(n, line)| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            match line.split_once(',') {
                Some((id, name)) if !id.trim().is_empty() && !name.trim().is_empty() => {
                    let mut body = json!({"id_card": id.trim(), "name": name.trim()});
                    if let Some(g) = &args.gate {
                        body["gate"] = json!(g);
                    }
                    queue.borrow_mut().push_back(id.trim().to_string());
                    Some(body.to_string())
                }
                _ => {
                    bad_lines += 1;
                    eprintln!(
                        "line {} skipped: expected `id_card,name`, got {line:?}",
                        n + 1
                    );
                    None
                }
            }
        });
    let res = c.call_many("gate.check", bodies, args.window, |_, r| {
        let id_card = queue.borrow_mut().pop_front().unwrap_or_default();
        if r.is_err() {
            failed += 1;
        }
        out.check(&id_card, &r.and_then(|raw| parse_body(&raw, "node")));
    });
    out.flush();
    if let Some(e) = read_error {
        return Err(Error::io("cannot read stdin", e));
    }
    res?;
    Ok(if failed > 0 || bad_lines > 0 {
        exit::REFUSED
    } else {
        exit::OK
    })
}

/// Logs in as `creds` (user.login) and saves the session; gives the reply
/// and where the session was saved.
fn log_in(
    c: &mut Client,
    cli: &Cli,
    creds: &user::Credentials,
) -> Result<(Value, std::path::PathBuf)> {
    c.set_token(None);
    c.set_routing_key(cli.route.clone().or_else(|| Some(creds.name.clone())));
    let v = typed::<user::Login>(c, creds)?;
    let token = v["token"].as_str().ok_or_else(|| Error::BadReply {
        server: c.node_id().unwrap_or("server").into(),
        reason: "user.login reply has no token".into(),
    })?;
    let path = session_path(cli)?;
    Session {
        token: token.into(),
        user: creds.name.clone(),
        expires_at: v["expires_at"].clone(),
    }
    .save(&path)?;
    Ok((v, path))
}

/// Reads a password: from stdin's first line when asked or when stdin is
/// not a terminal, else from the terminal without echo (twice to confirm a
/// new one).
fn read_password(from_stdin: bool, confirm: bool) -> Result<String> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::io("cannot read the password from stdin", e))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        let p = rpassword::prompt_password("password: ")
            .map_err(|e| Error::io("cannot read the password from the terminal", e))?;
        if confirm {
            let again = rpassword::prompt_password("password again: ")
                .map_err(|e| Error::io("cannot read the password from the terminal", e))?;
            if again != p {
                return Err(Error::Config("the passwords differ; try again".into()));
            }
        }
        p
    };
    if password.is_empty() {
        return Err(Error::Config("empty password".into()));
    }
    let _ = std::io::stderr().flush();
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_flag_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_read_with_their_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("3").is_err(), "a bare number needs its unit");
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
