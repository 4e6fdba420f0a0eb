//! TLS on a reactor connection: ciphertext on the socket, plaintext for the
//! protocol above ([`super::Conn::read_into`] and [`super::Conn::flush`]
//! go through it). The handshake needs no turn of its own: its records are
//! read like any input and written by the same flush as replies.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::Got;
use crate::tls::HANDSHAKE_RECORD;

/// Plaintext a session holds for sending before it stops taking more: the
/// connection's own output buffer is the place for the rest.
const SESSION_BUFFER: usize = 64 << 10;

pub(super) struct Tls {
    pub(super) session: Connection,
    /// The first byte has been looked at (or need not be: a client's): a
    /// client that does not open with a TLS handshake is told, in plain,
    /// that the port speaks TLS.
    checked: bool,
}

impl Tls {
    /// The server side, on an accepted connection.
    pub(super) fn server(config: Arc<ServerConfig>) -> Result<Tls, rustls::Error> {
        let mut session = Connection::Server(ServerConnection::new(config)?);
        session.set_buffer_limit(Some(SESSION_BUFFER));
        Ok(Tls {
            session,
            checked: false,
        })
    }

    /// The client side, on an outbound link to a server whose certificate
    /// must carry `name`.
    pub(super) fn client(
        config: Arc<ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Tls, rustls::Error> {
        let mut session = Connection::Client(ClientConnection::new(config, name)?);
        session.set_buffer_limit(Some(SESSION_BUFFER));
        Ok(Tls {
            session,
            checked: true,
        })
    }

    /// Moves `out[*pos..]` into the session and the session's records to
    /// the socket until either stops taking; whether anything moved.
    pub(super) fn flush(
        &mut self,
        stream: &mut TcpStream,
        out: &[u8],
        pos: &mut usize,
    ) -> Result<bool, &'static str> {
        let mut progressed = false;
        loop {
            let mut moved = false;
            if *pos < out.len() {
                match self.session.writer().write(&out[*pos..]) {
                    Ok(n) => {
                        *pos += n;
                        moved |= n > 0;
                    }
                    Err(_) => return Err("TLS write error"),
                }
            }
            while self.session.wants_write() {
                match self.session.write_tls(stream) {
                    Ok(0) => return Err("peer closed while writing"),
                    Ok(_) => moved = true,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(progressed || moved),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Err("write error"),
                }
            }
            progressed |= moved;
            if !moved {
                return Ok(progressed);
            }
        }
    }

    /// Tells the peer the session ends (best effort, without waiting), so
    /// that it reads a clean end rather than a cut connection.
    pub(super) fn close_notify(&mut self, stream: &mut TcpStream) {
        self.session.send_close_notify();
        while self.session.wants_write() {
            if !matches!(self.session.write_tls(stream), Ok(n) if n > 0) {
                break;
            }
        }
    }

    /// One step of reading: plaintext the session already holds, else
    /// records from the socket. `want_read` is the connection's readiness
    /// flag (cleared once the socket is drained).
    pub(super) fn read(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        want_read: &mut bool,
        peer: std::net::SocketAddr,
    ) -> Got {
        loop {
            match self.session.reader().read(buf) {
                // The peer's close_notify.
                Ok(0) => return Got::Eof,
                Ok(n) => return Got::Bytes(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // Closed without close_notify: the end of what it sent.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Got::Eof,
                Err(_) => return Got::Failed,
            }
            if !*want_read {
                return Got::Nothing;
            }
            if !self.checked {
                let mut first = [0u8; 1];
                match stream.peek(&mut first) {
                    Ok(0) => return Got::Eof,
                    Ok(_) if first[0] != HANDSHAKE_RECORD => {
                        log::debug!("{peer} sent plain bytes to a TLS port: told so and closed");
                        let _ = stream.write(&plain_refusal());
                        return Got::Failed;
                    }
                    Ok(_) => self.checked = true,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        *want_read = false;
                        return Got::Nothing;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => return Got::Nothing,
                    Err(_) => return Got::Failed,
                }
            }
            match self.session.read_tls(stream) {
                Ok(0) => return Got::Eof,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    *want_read = false;
                    return Got::Nothing;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => return Got::Nothing,
                Err(_) => return Got::Failed,
            }
            if let Err(e) = self.session.process_new_packets() {
                log::debug!("TLS with {peer} failed: {e}");
                // The alert that says why, if the socket takes it.
                let _ = self.session.write_tls(stream);
                return Got::Failed;
            }
        }
    }
}

/// What a plain client on a TLS port reads: one unsigned dsf error frame.
fn plain_refusal() -> Vec<u8> {
    let e = crate::Error::BadFrame(
        "this port speaks TLS: connect with TLS (client --tls-ca FILE, or DSF_TLS_CA)".into(),
    );
    let mut out = Vec::new();
    crate::wire::envelope::encode_error(None, 0, "", &e, &mut out);
    out
}
