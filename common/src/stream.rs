//! A blocking framed connection for the sending side: the client SDK,
//! heartbeats and view pushes, and tests. Servers use the [`crate::reactor`].

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConnection;

use crate::wire::frame::FrameDecoder;

/// A TCP stream, TLS or plain, with a frame decoder on its read side.
#[derive(Debug)]
pub struct FramedStream {
    stream: TcpStream,
    tls: Option<Box<ClientConnection>>,
    decoder: FrameDecoder,
}

/// The bytes of a [`FramedStream`]: through its TLS session when it has
/// one.
struct Io<'a> {
    stream: &'a mut TcpStream,
    tls: Option<&'a mut ClientConnection>,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            Some(tls) => rustls::Stream::new(tls, self.stream).read(buf),
            None => self.stream.read(buf),
        }
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            Some(tls) => rustls::Stream::new(tls, self.stream).write(buf),
            None => self.stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.tls.as_deref_mut() {
            Some(tls) => rustls::Stream::new(tls, self.stream).flush(),
            None => self.stream.flush(),
        }
    }
}

// === impl FramedStream ===

impl FramedStream {
    /// Connects with a timeout, trying each address `addr` resolves to.
    pub fn connect(
        addr: impl ToSocketAddrs,
        timeout: Duration,
        max_frame: usize,
    ) -> io::Result<FramedStream> {
        let mut last = io::Error::new(ErrorKind::InvalidInput, "address resolved to nothing");
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(FramedStream {
                        stream: s,
                        tls: None,
                        decoder: FrameDecoder::new(max_frame),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Frames over a stream already connected.
    pub fn from_std(stream: TcpStream, max_frame: usize) -> FramedStream {
        FramedStream {
            stream,
            tls: None,
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// Runs TLS over the connection, checking the server's certificate
    /// against `config`'s roots and the host of `addr`; the handshake is
    /// done before this returns, within `timeout`.
    pub fn start_tls(
        mut self,
        config: &Arc<rustls::ClientConfig>,
        addr: &str,
        timeout: Duration,
    ) -> io::Result<FramedStream> {
        let name = crate::tls::server_name(addr)
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        let mut tls = ClientConnection::new(config.clone(), name)
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))?;
        while tls.is_handshaking() {
            match tls.complete_io(&mut self.stream) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(io::Error::new(
                        ErrorKind::TimedOut,
                        format!("TLS handshake with {addr} did not finish in {timeout:?} (is it a TLS port?)"),
                    ))
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("TLS handshake with {addr} failed: {e}"),
                    ))
                }
            }
        }
        self.stream.set_write_timeout(None)?;
        self.tls = Some(Box::new(tls));
        Ok(self)
    }

    fn io(&mut self) -> Io<'_> {
        Io {
            stream: &mut self.stream,
            tls: self.tls.as_deref_mut(),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// The underlying stream (for shutdown or raw writes in tests).
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes already-encoded frames.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut io = self.io();
        io.write_all(bytes)?;
        io.flush()
    }

    /// The next frame's payload, waiting until `deadline`. `Ok(None)` on a
    /// clean EOF between frames; `TimedOut` when the deadline passes.
    pub fn recv(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => return Ok(Some(f.to_vec())),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, e.to_string())),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "no reply before the deadline",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut io = Io {
                stream: &mut self.stream,
                tls: self.tls.as_deref_mut(),
            };
            match self.decoder.read_from(&mut io, 64 << 10) {
                Ok(0) if self.decoder.buffered() == 0 => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a reply",
                    ))
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(io::Error::new(
                        ErrorKind::TimedOut,
                        "no reply before the deadline",
                    ))
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads until EOF or `deadline`, returning the raw bytes (for tests of
    /// what a server sends before it closes).
    pub fn read_to_end_until(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "peer did not close before the deadline",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(out),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(io::Error::new(
                        ErrorKind::TimedOut,
                        "peer did not close before the deadline",
                    ))
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
