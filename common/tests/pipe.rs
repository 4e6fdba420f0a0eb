//! Byte pipes over real sockets: a sniffing listener reads a first line
//! `to ADDR [FALLBACK]\n`, then pipes the connection to ADDR (the line goes
//! first). Slow readers on either side, half-close both ways, and a backend
//! that refuses or never answers, each with another pipe served at the same
//! time.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dsf_common::reactor::{
    Accept, Context, Dispatch, Reactor, ReactorConfig, ReactorStats, Service, Shutdown as Stop,
    Sniffed,
};
use support::{wait_until, WAIT};

/// Routes by the first line; tells the client why when no backend answers.
struct Router;

impl Service for Router {
    fn on_frame(&mut self, _payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        cx.close();
        Dispatch::Done
    }

    fn on_accept(&mut self, _cx: &mut Context<'_>) -> Accept {
        Accept::Sniff {
            max: 256,
            deadline: Duration::from_secs(5),
        }
    }

    fn on_bytes(&mut self, bytes: &[u8], cx: &mut Context<'_>) -> Sniffed {
        let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
            return Sniffed::NeedMore;
        };
        let line = String::from_utf8_lossy(&bytes[..nl]);
        let mut words = line.split_whitespace();
        match (words.next(), words.next().map(str::parse::<SocketAddr>)) {
            (Some("to"), Some(Ok(addr))) => Sniffed::Pipe(addr),
            _ => {
                cx.out().extend_from_slice(b"ERR no route\n");
                Sniffed::Close
            }
        }
    }

    fn on_pipe_failed(
        &mut self,
        backend: SocketAddr,
        error: &std::io::Error,
        cx: &mut Context<'_>,
    ) -> Option<SocketAddr> {
        cx.out()
            .extend_from_slice(format!("ERR {backend}: {error}\n").as_bytes());
        None
    }
}

/// Like [`Router`], but a failed backend is retried on the second address
/// of the line.
struct Fallback(Option<SocketAddr>);

impl Service for Fallback {
    fn on_frame(&mut self, _payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        cx.close();
        Dispatch::Done
    }

    fn on_accept(&mut self, cx: &mut Context<'_>) -> Accept {
        Router.on_accept(cx)
    }

    fn on_bytes(&mut self, bytes: &[u8], cx: &mut Context<'_>) -> Sniffed {
        let line = String::from_utf8_lossy(bytes);
        self.0 = line.split_whitespace().nth(2).and_then(|a| a.parse().ok());
        Router.on_bytes(bytes, cx)
    }

    fn on_pipe_failed(
        &mut self,
        _backend: SocketAddr,
        _error: &std::io::Error,
        _cx: &mut Context<'_>,
    ) -> Option<SocketAddr> {
        self.0.take()
    }
}

struct Proxy {
    addr: SocketAddr,
    stats: Arc<ReactorStats>,
    stop: Stop,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Proxy {
    fn start<S: Service>(cfg: ReactorConfig, service: S) -> Proxy {
        let reactor = Reactor::bind(cfg, &["127.0.0.1:0".parse().unwrap()], service).unwrap();
        Proxy {
            addr: reactor.local_addrs()[0],
            stats: reactor.stats(),
            stop: reactor.shutdown_handle(),
            thread: Some(reactor.spawn().unwrap()),
        }
    }

    /// A client piped to `to`.
    fn open(&self, line: &str) -> TcpStream {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        s
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

/// A backend that serves one connection with `f`.
fn backend(f: impl FnOnce(TcpStream) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        f(s)
    });
    (addr, t)
}

/// An echo backend serving connections until the test ends.
fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Reads exactly `n` bytes.
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// Reads to EOF (a reset, when the server closed with bytes unread, ends
/// it too).
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("reading to EOF: {e}"),
        }
    }
}

/// One round trip through a pipe to the echo backend.
fn echo_round_trip(proxy: &Proxy, echo: SocketAddr) {
    let line = format!("to {echo}\n");
    let mut s = proxy.open(&line);
    assert_eq!(read_n(&mut s, line.len()), line.as_bytes());
    s.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut s, 4), b"ping");
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

const BULK: usize = 16 << 20;

fn small_pipes() -> ReactorConfig {
    ReactorConfig {
        pipe_high_water: 64 << 10,
        ..Default::default()
    }
}

/// Samples the bytes the reactor holds until `done`.
fn peak_while(stats: &ReactorStats, done: &JoinHandle<()>) -> usize {
    let mut peak = 0;
    let deadline = Instant::now() + WAIT * 3;
    while !done.is_finished() {
        assert!(Instant::now() < deadline, "the transfer did not finish");
        peak = peak.max(stats.buffered.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(2));
    }
    peak
}

#[test]
fn a_slow_backend_holds_the_client_back_and_no_byte_is_lost() {
    let proxy = Proxy::start(small_pipes(), Router);
    let echo = echo_backend();
    let (addr, reader) = backend(|mut s| {
        let mut seen = 0usize;
        let mut buf = vec![0; 16 << 10];
        // The first line, then the bulk, read slowly.
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            let n = s.read(&mut buf[..1]).unwrap();
            line.extend_from_slice(&buf[..n]);
        }
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(seen + k), "byte {} changed", seen + k);
            }
            seen += n;
            std::thread::sleep(Duration::from_micros(300));
        }
        assert_eq!(seen, BULK);
    });
    let mut client = proxy.open(&format!("to {addr}\n"));
    let writer = std::thread::spawn(move || {
        let bulk: Vec<u8> = (0..BULK).map(pattern).collect();
        client.write_all(&bulk).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
    });
    let peak = peak_while(&proxy.stats, &reader);
    reader.join().unwrap();
    writer.join().unwrap();
    // The watermark (64 KiB) plus one read, not the 16 MiB sent.
    assert!(peak <= 256 << 10, "the pipe held {peak} bytes");
    echo_round_trip(&proxy, echo);
}

#[test]
fn a_slow_client_holds_the_backend_back_and_no_byte_is_lost() {
    let proxy = Proxy::start(small_pipes(), Router);
    let echo = echo_backend();
    let (addr, writer) = backend(|mut s| {
        let bulk: Vec<u8> = (0..BULK).map(pattern).collect();
        s.write_all(&bulk).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        // The client's first line arrived too.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.starts_with(b"to "));
    });
    let mut client = proxy.open(&format!("to {addr}\n"));
    let reader = std::thread::spawn(move || {
        let mut seen = 0usize;
        let mut buf = vec![0; 16 << 10];
        loop {
            let n = client.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(seen + k), "byte {} changed", seen + k);
            }
            seen += n;
            std::thread::sleep(Duration::from_micros(300));
        }
        client.shutdown(Shutdown::Write).unwrap();
        seen
    });
    let peak = peak_while(&proxy.stats, &writer);
    writer.join().unwrap();
    assert_eq!(reader.join().unwrap(), BULK);
    assert!(peak <= 256 << 10, "the pipe held {peak} bytes");
    echo_round_trip(&proxy, echo);
}

#[test]
fn the_client_half_closes_and_still_gets_the_backends_answer() {
    let proxy = Proxy::start(ReactorConfig::default(), Router);
    let (addr, server) = backend(|mut s| {
        let got = read_all(&mut s);
        assert!(got.ends_with(b"\nhello"), "{got:?}");
        s.write_all(b"bye").unwrap();
    });
    let mut client = proxy.open(&format!("to {addr}\n"));
    client.write_all(b"hello").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut client), b"bye");
    server.join().unwrap();
    wait_until("both sides to close", || {
        proxy.stats.conns.load(Ordering::Relaxed) == 0
    });
}

#[test]
fn the_backend_half_closes_and_still_gets_the_clients_bytes() {
    let proxy = Proxy::start(ReactorConfig::default(), Router);
    let (addr, server) = backend(|mut s| {
        s.write_all(b"first").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = read_all(&mut s);
        assert!(got.ends_with(b"\nlate"), "{got:?}");
    });
    let mut client = proxy.open(&format!("to {addr}\n"));
    // The backend's EOF comes through while the client can still write.
    assert_eq!(read_all(&mut client), b"first");
    client.write_all(b"late").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    server.join().unwrap();
    wait_until("both sides to close", || {
        proxy.stats.conns.load(Ordering::Relaxed) == 0
    });
}

#[test]
fn a_backend_that_refuses_is_reported_to_the_client_and_others_are_served() {
    let proxy = Proxy::start(ReactorConfig::default(), Router);
    let echo = echo_backend();
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut good = proxy.open(&format!("to {echo}\n"));
    let mut client = proxy.open(&format!("to {dead}\n"));
    let said = String::from_utf8(read_all(&mut client)).unwrap();
    assert!(said.starts_with(&format!("ERR {dead}: ")), "{said}");
    assert!(said.contains("refused"), "{said}");
    assert!(proxy.stats.connect_failed.load(Ordering::Relaxed) >= 1);
    // The pipe opened before is untouched.
    let line = format!("to {echo}\n");
    assert_eq!(read_n(&mut good, line.len()), line.as_bytes());
    good.write_all(b"still here").unwrap();
    assert_eq!(read_n(&mut good, 10), b"still here");
}

#[test]
fn a_refused_backend_is_retried_on_the_one_the_service_names() {
    let proxy = Proxy::start(ReactorConfig::default(), Fallback(None));
    let echo = echo_backend();
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let line = format!("to {dead} {echo}\n");
    let mut client = proxy.open(&line);
    assert_eq!(read_n(&mut client, line.len()), line.as_bytes());
    client.write_all(b"through").unwrap();
    assert_eq!(read_n(&mut client, 7), b"through");
    assert_eq!(proxy.stats.connect_failed.load(Ordering::Relaxed), 1);
}

#[test]
fn a_backend_that_never_answers_times_out_and_others_are_served() {
    let cfg = ReactorConfig {
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let proxy = Proxy::start(cfg, Router);
    let echo = echo_backend();
    // A listener that never accepts, with its queue full: the kernel drops
    // further SYNs, so a connect to it hangs.
    let silent = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    silent
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    silent.listen(0).unwrap();
    let silent_addr = silent.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    loop {
        match TcpStream::connect_timeout(&silent_addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the silent listener's queue: {e}"),
        }
        assert!(fillers.len() < 64, "the silent listener keeps accepting");
    }
    let started = Instant::now();
    let mut client = proxy.open(&format!("to {silent_addr}\n"));
    echo_round_trip(&proxy, echo);
    let said = String::from_utf8(read_all(&mut client)).unwrap();
    assert!(said.contains("no answer within 300ms"), "{said}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(proxy.stats.connect_failed.load(Ordering::Relaxed), 1);
    echo_round_trip(&proxy, echo);
}

#[test]
fn a_first_line_that_never_ends_is_cut_at_its_size_cap() {
    let proxy = Proxy::start(ReactorConfig::default(), Router);
    let echo = echo_backend();
    let mut client = TcpStream::connect(proxy.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    // More than the 256-byte cap, no newline.
    let _ = client.write_all(&[b'x'; 1024]);
    assert!(read_all(&mut client).is_empty());
    echo_round_trip(&proxy, echo);
}

/// Decides on another thread: `later ADDR` is piped from there, `deny` is
/// answered and closed from there, `never` is left waiting; `idle MS ADDR`
/// is piped at once with its own idle timeout.
struct Deferred(
    crossbeam_channel::Sender<(dsf_common::reactor::Outbox, String)>,
    Option<SocketAddr>,
);

impl Service for Deferred {
    fn on_frame(&mut self, _payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        cx.close();
        Dispatch::Done
    }

    fn on_accept(&mut self, _cx: &mut Context<'_>) -> Accept {
        Accept::Sniff {
            max: 256,
            deadline: Duration::from_millis(500),
        }
    }

    fn on_bytes(&mut self, bytes: &[u8], cx: &mut Context<'_>) -> Sniffed {
        let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
            return Sniffed::NeedMore;
        };
        let line = String::from_utf8_lossy(&bytes[..nl]).into_owned();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["idle", ms, addr] = words[..] {
            cx.set_idle_timeout(Duration::from_millis(ms.parse().unwrap()));
            return Sniffed::Pipe(addr.parse().unwrap());
        }
        if let ["pre", dead, good] = words[..] {
            let local = cx.local_addr().expect("an accepted connection has one");
            cx.set_preamble(format!("from {} to {local}\n", cx.peer()).into_bytes());
            self.1 = good.parse().ok();
            return Sniffed::Pipe(dead.parse().unwrap());
        }
        self.0.send((cx.outbox(), line)).unwrap();
        Sniffed::Wait
    }

    fn on_pipe_failed(
        &mut self,
        _backend: SocketAddr,
        _error: &std::io::Error,
        _cx: &mut Context<'_>,
    ) -> Option<SocketAddr> {
        self.1.take()
    }
}

/// Closes every connection at once with a word.
struct Closer;

impl Service for Closer {
    fn on_frame(&mut self, _payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        cx.close();
        Dispatch::Done
    }

    fn on_accept(&mut self, cx: &mut Context<'_>) -> Accept {
        cx.out().extend_from_slice(b"no backend\n");
        Accept::Close
    }
}

/// A proxy over [`Deferred`] and the thread that decides for it.
fn deferred_proxy() -> Proxy {
    let (tx, rx) = crossbeam_channel::unbounded::<(dsf_common::reactor::Outbox, String)>();
    std::thread::spawn(move || {
        for (outbox, line) in rx {
            // Decided a little later, as a database lookup would be.
            std::thread::sleep(Duration::from_millis(20));
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["later", addr] => outbox.pipe(addr.parse().unwrap()),
                ["deny"] => {
                    outbox.send(b"ERR denied\n".to_vec()).unwrap();
                    outbox.close();
                }
                _ => {}
            }
        }
    });
    Proxy::start(ReactorConfig::default(), Deferred(tx, None))
}

#[test]
fn a_decision_from_another_thread_pipes_the_waiting_connection() {
    let proxy = deferred_proxy();
    let echo = echo_backend();
    let line = format!("later {echo}\n");
    let mut s = proxy.open(&line);
    // The first line goes to the backend first, then the pipe carries on.
    assert_eq!(read_n(&mut s, line.len()), line.as_bytes());
    s.write_all(b"after the wait").unwrap();
    assert_eq!(read_n(&mut s, 14), b"after the wait");
    assert_eq!(proxy.stats.pipes.load(Ordering::Relaxed), 1);
    wait_until("the bytes both ways are counted", || {
        proxy.stats.pipe_bytes.load(Ordering::Relaxed) == 2 * (line.len() as u64 + 14)
    });
}

#[test]
fn a_refusal_from_another_thread_answers_and_closes() {
    let proxy = deferred_proxy();
    let mut s = proxy.open("deny\n");
    assert_eq!(read_all(&mut s), b"ERR denied\n");
    assert_eq!(proxy.stats.pipes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_wait_nobody_ends_is_closed_at_the_first_packet_deadline_and_others_are_served() {
    let proxy = deferred_proxy();
    let echo = echo_backend();
    let started = Instant::now();
    let mut stuck = proxy.open("never\n");
    let mut other = proxy.open(&format!("later {echo}\n"));
    other.write_all(b"x").unwrap();
    assert!(read_all(&mut stuck).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(
        read_n(&mut other, echo.to_string().len() + 8),
        format!("later {echo}\nx").as_bytes()
    );
}

#[test]
fn a_pipe_with_its_own_idle_timeout_closes_on_it_while_others_stay() {
    let proxy = deferred_proxy();
    let echo = echo_backend();
    let mut short = proxy.open(&format!("idle 200 {echo}\n"));
    let mut long = proxy.open(&format!("idle 60000 {echo}\n"));
    let started = Instant::now();
    let _ = read_n(&mut short, format!("idle 200 {echo}\n").len());
    assert!(
        read_all(&mut short).is_empty(),
        "closed after 200 ms of silence"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    // The default (60 s) and the other pipe's own timeout still hold.
    let _ = read_n(&mut long, format!("idle 60000 {echo}\n").len());
    long.write_all(b"still here").unwrap();
    assert_eq!(read_n(&mut long, 10), b"still here");
}

#[test]
fn a_preamble_goes_first_to_the_backend_that_takes_the_pipe_and_only_once() {
    let proxy = deferred_proxy();
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (good, served) = backend(|mut s| {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"tail") {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "EOF before the tail: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(&got).unwrap();
    });
    let line = format!("pre {dead} {good}\n");
    let mut s = proxy.open(&line);
    s.write_all(b"tail").unwrap();
    let want = format!(
        "from {} to {}\n{line}tail",
        s.local_addr().unwrap(),
        proxy.addr
    );
    assert_eq!(read_n(&mut s, want.len()), want.as_bytes());
    served.join().unwrap();
}

#[test]
fn accept_close_writes_its_word_and_closes() {
    let proxy = Proxy::start(ReactorConfig::default(), Closer);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(read_all(&mut s), b"no backend\n");
}
