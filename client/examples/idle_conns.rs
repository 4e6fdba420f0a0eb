//! Opens N TCP connections to one server and holds them open, idle, from
//! one thread (no thread per connection), until its standard input closes.
//! Used by `scripts/bench memory|idle` to measure what idle connections cost
//! a server (memory, and the latency of other clients while they are open);
//! works against any TCP server (app-server, redis-server).
//!
//! ```text
//! cargo run --release -p dsf-client --example idle_conns -- 127.0.0.1:7000 10000
//! ```
//! Once every connection is attempted it prints `{"opened","failed","ms"}`
//! on one line; when stdin reaches EOF it checks each connection without
//! blocking and prints `{"open","closed","spoke"}` (`spoke`: the server sent
//! something unasked, such as `overloaded` before closing). Needs a file
//! limit above N (`ulimit -n`).

#![forbid(unsafe_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: idle_conns HOST:PORT N   (holds them until stdin closes)");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1]
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| {
            eprintln!("idle_conns: {} does not resolve", args[1]);
            std::process::exit(2);
        });
    let n: usize = args[2].parse().expect("N must be a number");

    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => {
                s.set_nonblocking(true).expect("set_nonblocking");
                conns.push(s);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("idle_conns: {failed} of {n} connections failed; first error: {e}");
    }
    println!(
        "{{\"opened\":{},\"failed\":{failed},\"ms\":{:.0}}}",
        conns.len(),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    std::io::stdout().flush().ok();

    // Hold until told to stop.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);

    let (mut open, mut closed, mut spoke) = (0, 0, 0);
    let mut buf = [0u8; 1];
    for s in &conns {
        match s.peek(&mut buf) {
            Ok(0) => closed += 1,
            Ok(_) => spoke += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => open += 1,
            Err(_) => closed += 1,
        }
    }
    println!("{{\"open\":{open},\"closed\":{closed},\"spoke\":{spoke}}}");
}
