//! The messaging part of the fault scenarios' workload: users whose keys
//! spread over every node, each sending numbered messages to the others
//! in turn and listening to its own inbox, until told to stop. What each
//! sent and got is kept for the checker ([`super::check::Report::messages`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dsf_client::messages::{self, ListenOptions, Listener};
use dsf_client::{Client, Error};
use dsf_sql::password::{self, Cost};
use dsf_sql::Role;
use serde_json::{json, Value};

use super::{wait_for, Cluster, WAIT};

const PASSWORD: &str = "chat-password";

/// A user's name: `chat-N`.
pub fn user(i: usize) -> String {
    format!("chat-{i}")
}

/// What one sender saw.
#[derive(Debug, Default)]
pub struct Sent {
    /// `(to, n)` of the sends acknowledged, in order.
    pub acked: Vec<(usize, u64)>,
    /// `(to, n)` of the sends whose outcome is unknown.
    pub unknown: Vec<(usize, u64)>,
    /// Any other error.
    pub errors: Vec<String>,
}

/// What one user's application got: `(from, n)` in arrival order.
type Inbox = Arc<Mutex<Vec<(usize, u64)>>>;

/// What every sender and listener recorded.
#[derive(Debug)]
pub struct History {
    /// By sender.
    pub sent: Vec<Sent>,
    /// By recipient: `(from, n)` in arrival order.
    pub inboxes: Vec<Vec<(usize, u64)>>,
    /// Errors a listener ended on.
    pub listen_errors: Vec<String>,
}

/// Users sending and listening.
pub struct Chat {
    pub users: usize,
    stop: Arc<AtomicBool>,
    pub sent_count: Arc<AtomicUsize>,
    senders: Vec<JoinHandle<Sent>>,
    /// What each user's application got: `(from, n)` in arrival order.
    pub inboxes: Vec<Inbox>,
    /// Errors a listener ended on.
    pub listen_errors: Arc<Mutex<Vec<String>>>,
    listeners: Vec<JoinHandle<()>>,
    listening: Arc<AtomicBool>,
}

/// A client logged in as user `i`, routed by its name.
fn login(cluster: &Cluster, i: usize) -> Client {
    let mut c = cluster.client();
    c.set_routing_key(Some(user(i)));
    let r = c
        .call(
            "user.login",
            &json!({"name": user(i), "password": PASSWORD}),
        )
        .unwrap();
    c.set_token(Some(r["token"].as_str().unwrap().to_string()));
    c
}

// === impl Chat ===

impl Chat {
    /// `users` users (made in the database here), each listening, each
    /// sending a message every `every` to the next user in turn.
    pub fn start(cluster: &Cluster, users: usize, every: Duration) -> Chat {
        let hash = password::hash_with(PASSWORD, Cost::TEST).unwrap();
        for i in 0..users {
            cluster
                .db
                .users()
                .create(&user(i), &hash, Role::Viewer)
                .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let listening = Arc::new(AtomicBool::new(true));
        let sent_count = Arc::new(AtomicUsize::new(0));
        let listen_errors = Arc::new(Mutex::new(Vec::new()));
        let inboxes: Vec<_> = (0..users).map(|_| Arc::default()).collect();
        let listeners = (0..users)
            .map(|i| {
                let c = login(cluster, i);
                let (inbox, listening, errors): (Inbox, _, _) = (
                    Arc::clone(&inboxes[i]),
                    listening.clone(),
                    listen_errors.clone(),
                );
                std::thread::spawn(move || {
                    let mut l = Listener::new(&c, &user(i), ListenOptions::default()).unwrap();
                    while listening.load(Ordering::Acquire) {
                        match l.next(Instant::now() + Duration::from_millis(100)) {
                            Ok(Some(m)) => {
                                let from = m.from["chat-".len()..].parse::<usize>().unwrap();
                                let n = m.body.get().parse::<Value>().unwrap()["n"]
                                    .as_u64()
                                    .unwrap();
                                inbox.lock().unwrap().push((from, n));
                                l.handled(m.seq);
                            }
                            Ok(None) => {}
                            Err(e) => {
                                errors.lock().unwrap().push(format!("{}: {e}", user(i)));
                                return;
                            }
                        }
                    }
                    l.close();
                })
            })
            .collect();
        let senders = (0..users)
            .map(|i| {
                let mut c = login(cluster, i);
                let (stop, count) = (stop.clone(), sent_count.clone());
                std::thread::spawn(move || {
                    let mut s = Sent::default();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        let to = (i + 1 + (n as usize) % (users - 1)) % users;
                        let body = json!({ "n": n }).to_string();
                        match messages::send(&mut c, &user(to), &body) {
                            Ok(_) => s.acked.push((to, n)),
                            Err(Error::OutcomeUnknown { .. }) => s.unknown.push((to, n)),
                            Err(e) => s.errors.push(format!("{} to {}: {e}", user(i), user(to))),
                        }
                        n += 1;
                        count.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(every);
                    }
                    s
                })
            })
            .collect();
        Chat {
            users,
            stop,
            sent_count,
            senders,
            inboxes,
            listen_errors,
            listeners,
            listening,
        }
    }

    /// Waits until `more` messages have been sent from now on.
    pub fn wait_more(&self, more: usize) {
        let target = self.sent_count.load(Ordering::Relaxed) + more;
        wait_for(&format!("{more} more messages sent"), WAIT, || {
            (self.sent_count.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Stops sending, waits (at most [`WAIT`]) until every acknowledged
    /// message has arrived, stops listening; what everyone recorded.
    pub fn finish(self) -> History {
        self.stop.store(true, Ordering::Release);
        let sent: Vec<Sent> = self
            .senders
            .into_iter()
            .map(|t| t.join().expect("a sender panicked"))
            .collect();
        // Until every acknowledged message has arrived (those whose send
        // ended unknown, and duplicates, do not count).
        let acked: HashSet<(usize, usize, u64)> = sent
            .iter()
            .enumerate()
            .flat_map(|(from, s)| s.acked.iter().map(move |&(to, n)| (from, to, n)))
            .collect();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let arrived: HashSet<(usize, usize, u64)> = self
                .inboxes
                .iter()
                .enumerate()
                .flat_map(|(to, b)| {
                    let got = b.lock().unwrap().clone();
                    got.into_iter().map(move |(from, n)| (from, to, n))
                })
                .filter(|m| acked.contains(m))
                .collect();
            if arrived.len() == acked.len() || !self.listen_errors.lock().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.listening.store(false, Ordering::Release);
        for l in self.listeners {
            l.join().expect("a listener panicked");
        }
        let inboxes = self
            .inboxes
            .iter()
            .map(|b| b.lock().unwrap().clone())
            .collect();
        let listen_errors = self.listen_errors.lock().unwrap().clone();
        History {
            sent,
            inboxes,
            listen_errors,
        }
    }
}
