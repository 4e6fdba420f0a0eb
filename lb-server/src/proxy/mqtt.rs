//! The MQTT CONNECT packet, read for routing: MQTT 3.1 (`MQIsdp`, level
//! 3), 3.1.1 (`MQTT`, level 4) and 5.0 (`MQTT`, level 5).
//!
//! [`parse`] takes the bytes a device has sent so far and says whether they
//! are a whole, valid CONNECT, not enough yet, or something to refuse. It
//! reads every field the packet holds (the 1–4 byte remaining length, the
//! protocol name and level, the connect flags, keep-alive, 5.0 properties,
//! client id, will with its 5.0 properties, username and password) and
//! checks that they fill the remaining length exactly, so the packet handed
//! to the broker is the packet the routing decision was made on. Strings
//! are checked as MQTT wants them: UTF-8 without U+0000.
//!
//! A refusal carries the answer the protocol has for it, where it has one:
//! a CONNACK with the 3.1.1 return code or the 5.0 reason code, in the
//! version the device speaks ([`Refusal::connack`]). Where the version is
//! not known (not a CONNECT at all, a wrong protocol name) the answer is to
//! close.

use std::fmt;

/// The fixed header's first byte of a CONNECT: type 1, flags 0.
const CONNECT: u8 = 0x10;

/// Default cap on a CONNECT's remaining length: room for a long client id,
/// credentials and a will message of tens of kilobytes.
pub const DEFAULT_MAX_CONNECT: usize = 64 * 1024;

/// The protocol version a CONNECT names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: `MQTT`, level 4.
    V311,
    /// MQTT 5.0: `MQTT`, level 5.
    V5,
}

impl Level {
    /// As the CONNECT's level byte gives it.
    pub fn byte(self) -> u8 {
        match self {
            Level::V31 => 3,
            Level::V311 => 4,
            Level::V5 => 5,
        }
    }
}

/// A whole, valid CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect<'a> {
    pub level: Level,
    /// Clean session (3.x) or clean start (5.0).
    pub clean_start: bool,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// May be empty (the broker assigns one), with clean start.
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// Whether the packet carries a will message.
    pub will: bool,
    /// The packet's length in bytes, fixed header included.
    pub len: usize,
}

/// What the bytes so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A CONNECT, not complete yet.
    Incomplete,
    Connect(Connect<'a>),
    Refused(Refusal),
}

/// Why a first packet is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first byte is not a CONNECT's (an HTTP request, another packet).
    NotConnect,
    /// The remaining length declares more than the cap.
    TooLarge,
    /// A field breaks the packet's grammar (a 5-byte remaining length, a
    /// reserved flag set, a string that overruns the packet, bytes left over).
    Malformed,
    /// The protocol name is neither `MQTT` nor `MQIsdp`.
    ProtocolName,
    /// A level this parser does not speak (or that does not match the name).
    ProtocolLevel,
    /// The client id is not valid UTF-8, or is empty where 3.x forbids it.
    ClientId,
}

impl Reason {
    /// A stable name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotConnect => "not_connect",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::ProtocolName => "protocol_name",
            Reason::ProtocolLevel => "protocol_level",
            Reason::ClientId => "client_id",
        }
    }

    /// Every reason, in a fixed order (metric rows).
    pub const ALL: [Reason; 6] = [
        Reason::NotConnect,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::ProtocolName,
        Reason::ProtocolLevel,
        Reason::ClientId,
    ];
}

/// A refused first packet: why, in words for the log, and what the device
/// is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
    /// The version the device speaks, when the packet got far enough to say.
    pub level: Option<Level>,
}

impl Refusal {
    fn new(reason: Reason, level: Option<Level>, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
            level,
        }
    }

    /// The CONNACK the device gets before the close, where the protocol has
    /// one for this refusal; `None` means close without a word.
    ///
    /// - 3.x: a wrong level gets return code 1 (unacceptable protocol
    ///   version), a bad client id code 2 (identifier rejected); a
    ///   malformed packet has no code and is closed.
    /// - 5.0: reason 0x81 (malformed packet), 0x85 (client identifier not
    ///   valid) or 0x95 (packet too large).
    pub fn connack(&self) -> Option<Vec<u8>> {
        match (self.level, self.reason) {
            // A level we do not speak: the 3.1.1 answer, which every
            // version's client reads.
            (_, Reason::ProtocolLevel) => Some(vec![0x20, 0x02, 0x00, 0x01]),
            (Some(Level::V31 | Level::V311), Reason::ClientId) => {
                Some(vec![0x20, 0x02, 0x00, 0x02])
            }
            (Some(Level::V5), reason) => {
                let code = match reason {
                    Reason::ClientId => 0x85,
                    Reason::TooLarge => 0x95,
                    Reason::Malformed => 0x81,
                    _ => return None,
                };
                // Session present 0, the reason, no properties.
                Some(vec![0x20, 0x03, 0x00, code, 0x00])
            }
            _ => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// Reads the first packet from `bytes` (everything received so far), with
/// `max` the largest remaining length accepted.
pub fn parse(bytes: &[u8], max: usize) -> Parsed<'_> {
    let Some(&first) = bytes.first() else {
        return Parsed::Incomplete;
    };
    if first != CONNECT {
        return Parsed::Refused(Refusal::new(
            Reason::NotConnect,
            None,
            format!(
                "first byte {first:#04x} is not a CONNECT (0x10){}",
                if first.is_ascii_alphabetic() {
                    "; text, such as an HTTP request"
                } else {
                    ""
                }
            ),
        ));
    }
    let (remaining, header) = match remaining_length(&bytes[1..]) {
        Ok(Some(v)) => v,
        Ok(None) => return Parsed::Incomplete,
        Err(detail) => {
            // Where the variable header starts is not known: no version.
            return Parsed::Refused(Refusal::new(Reason::Malformed, None, detail));
        }
    };
    if remaining > max {
        return Parsed::Refused(Refusal::new(
            Reason::TooLarge,
            peek_level(&bytes[1 + header..]),
            format!("the CONNECT declares {remaining} bytes, above the cap of {max}"),
        ));
    }
    let len = 1 + header + remaining;
    if bytes.len() < len {
        return Parsed::Incomplete;
    }
    match body(&bytes[1 + header..len], len) {
        Ok(c) => Parsed::Connect(c),
        Err(r) => Parsed::Refused(r),
    }
}

/// The remaining length (1–4 bytes, 7 bits each, low first) and how many
/// bytes it took; `None` while it is still arriving.
fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        if i == 4 {
            return Err("the remaining length runs past 4 bytes".into());
        }
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err("the remaining length runs past 4 bytes".into());
    }
    Ok(None)
}

/// The level of a variable header that starts with a known name, when
/// enough of it has arrived (to answer in the device's version).
fn peek_level(var: &[u8]) -> Option<Level> {
    let mut r = Reader::new(var);
    let name = r.binary().ok()?;
    level_of(name, *r.rest().first()?).ok()
}

fn level_of(name: &[u8], level: u8) -> Result<Level, Reason> {
    match (name, level) {
        (b"MQTT", 4) => Ok(Level::V311),
        (b"MQTT", 5) => Ok(Level::V5),
        (b"MQIsdp", 3) => Ok(Level::V31),
        (b"MQTT" | b"MQIsdp", _) => Err(Reason::ProtocolLevel),
        _ => Err(Reason::ProtocolName),
    }
}

/// The variable header and payload (exactly the remaining length).
fn body(var: &[u8], len: usize) -> Result<Connect<'_>, Refusal> {
    let mut r = Reader::new(var);
    let malformed = |level, what: &str| Refusal::new(Reason::Malformed, level, what.to_string());
    let name = r
        .binary()
        .map_err(|_| malformed(None, "the protocol name overruns the packet"))?;
    let level_byte = r.byte().map_err(|_| malformed(None, "no protocol level"))?;
    let level = level_of(name, level_byte).map_err(|reason| {
        let detail = match reason {
            Reason::ProtocolName => format!(
                "protocol name {:?} is not \"MQTT\" or \"MQIsdp\"",
                String::from_utf8_lossy(name)
            ),
            _ => format!(
                "protocol {:?} level {level_byte} is not spoken here (3.1 is MQIsdp 3, 3.1.1 is MQTT 4, 5.0 is MQTT 5)",
                String::from_utf8_lossy(name)
            ),
        };
        Refusal::new(reason, None, detail)
    })?;
    let lv = Some(level);
    let flags = r.byte().map_err(|_| malformed(lv, "no connect flags"))?;
    if flags & 0x01 != 0 && level != Level::V31 {
        return Err(malformed(lv, "the reserved connect flag is set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if will_qos == 3 {
        return Err(malformed(lv, "will QoS 3"));
    }
    if !will && (will_qos != 0 || will_retain) {
        return Err(malformed(lv, "will QoS or retain set without a will"));
    }
    if has_password && !has_username && level != Level::V5 {
        return Err(malformed(lv, "a password without a username (3.x)"));
    }
    let keep_alive = r.u16().map_err(|_| malformed(lv, "no keep-alive"))?;
    if level == Level::V5 {
        r.properties()
            .map_err(|what| malformed(lv, &format!("CONNECT properties: {what}")))?;
    }
    let id = r
        .binary()
        .map_err(|_| malformed(lv, "the client id overruns the packet"))?;
    let client_id = mqtt_str(id)
        .map_err(|what| Refusal::new(Reason::ClientId, lv, format!("the client id {what}")))?;
    if client_id.is_empty() && level == Level::V31 {
        return Err(Refusal::new(
            Reason::ClientId,
            lv,
            "MQTT 3.1 needs a client id of at least one character",
        ));
    }
    if client_id.is_empty() && !clean_start && level == Level::V311 {
        return Err(Refusal::new(
            Reason::ClientId,
            lv,
            "an empty client id needs clean session (3.1.1)",
        ));
    }
    if will {
        if level == Level::V5 {
            r.properties()
                .map_err(|what| malformed(lv, &format!("will properties: {what}")))?;
        }
        let topic = r
            .binary()
            .map_err(|_| malformed(lv, "the will topic overruns the packet"))?;
        mqtt_str(topic).map_err(|what| malformed(lv, &format!("the will topic {what}")))?;
        r.binary()
            .map_err(|_| malformed(lv, "the will payload overruns the packet"))?;
    }
    let username = if has_username {
        let u = r
            .binary()
            .map_err(|_| malformed(lv, "the username overruns the packet"))?;
        Some(mqtt_str(u).map_err(|what| malformed(lv, &format!("the username {what}")))?)
    } else {
        None
    };
    let password = if has_password {
        Some(
            r.binary()
                .map_err(|_| malformed(lv, "the password overruns the packet"))?,
        )
    } else {
        None
    };
    if !r.rest().is_empty() {
        return Err(malformed(
            lv,
            &format!(
                "{} bytes after the last field of the CONNECT",
                r.rest().len()
            ),
        ));
    }
    Ok(Connect {
        level,
        clean_start,
        keep_alive,
        client_id,
        username,
        password,
        will,
        len,
    })
}

/// An MQTT UTF-8 string: valid UTF-8, no U+0000.
fn mqtt_str(b: &[u8]) -> Result<&str, &'static str> {
    let s = std::str::from_utf8(b).map_err(|_| "is not valid UTF-8")?;
    if s.contains('\0') {
        return Err("holds U+0000");
    }
    Ok(s)
}

/// Reads fields off a packet that is all there.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn rest(&self) -> &'a [u8] {
        self.rest
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ()> {
        if self.rest.len() < n {
            return Err(());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, ()> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ()> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A 2-byte length, then that many bytes.
    fn binary(&mut self) -> Result<&'a [u8], ()> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A 5.0 property block: a variable byte integer length, then that
    /// many bytes (skipped: routing needs none of them).
    fn properties(&mut self) -> Result<(), &'static str> {
        let (n, used) = match remaining_length(self.rest) {
            Ok(Some(v)) => v,
            _ => return Err("the length is not a valid variable byte integer"),
        };
        self.take(used)
            .map_err(|_| "the length overruns the packet")?;
        self.take(n).map_err(|_| "they overrun the packet")?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fields a test CONNECT is built from.
    #[derive(Debug, Clone)]
    pub(crate) struct Spec {
        pub level: u8,
        pub name: Vec<u8>,
        pub clean: bool,
        pub keep_alive: u16,
        pub props: Vec<u8>,
        pub client_id: Vec<u8>,
        pub will: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
        pub username: Option<Vec<u8>>,
        pub password: Option<Vec<u8>>,
    }

    impl Spec {
        pub(crate) fn v311(client_id: &str) -> Spec {
            Spec {
                level: 4,
                name: b"MQTT".to_vec(),
                clean: true,
                keep_alive: 60,
                props: Vec::new(),
                client_id: client_id.as_bytes().to_vec(),
                will: None,
                username: None,
                password: None,
            }
        }

        pub(crate) fn encode(&self) -> Vec<u8> {
            let mut v = Vec::new();
            str16(&mut v, &self.name);
            v.push(self.level);
            let mut flags = 0u8;
            if self.clean {
                flags |= 0x02;
            }
            if self.will.is_some() {
                flags |= 0x04 | 0x08; // QoS 1
            }
            if self.password.is_some() {
                flags |= 0x40;
            }
            if self.username.is_some() {
                flags |= 0x80;
            }
            v.push(flags);
            v.extend_from_slice(&self.keep_alive.to_be_bytes());
            if self.level == 5 {
                varint(&mut v, self.props.len());
                v.extend_from_slice(&self.props);
            }
            str16(&mut v, &self.client_id);
            if let Some((props, topic, payload)) = &self.will {
                if self.level == 5 {
                    varint(&mut v, props.len());
                    v.extend_from_slice(props);
                }
                str16(&mut v, topic);
                str16(&mut v, payload);
            }
            if let Some(u) = &self.username {
                str16(&mut v, u);
            }
            if let Some(p) = &self.password {
                str16(&mut v, p);
            }
            let mut packet = vec![CONNECT];
            varint(&mut packet, v.len());
            packet.extend_from_slice(&v);
            packet
        }
    }

    fn str16(v: &mut Vec<u8>, s: &[u8]) {
        v.extend_from_slice(&(s.len() as u16).to_be_bytes());
        v.extend_from_slice(s);
    }

    pub(crate) fn varint(v: &mut Vec<u8>, mut n: usize) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            v.push(b);
            if n == 0 {
                return;
            }
        }
    }

    fn connect(bytes: &[u8]) -> Connect<'_> {
        match parse(bytes, DEFAULT_MAX_CONNECT) {
            Parsed::Connect(c) => c,
            other => panic!("expected a CONNECT, got {other:?}"),
        }
    }

    fn refusal(bytes: &[u8]) -> Refusal {
        match parse(bytes, DEFAULT_MAX_CONNECT) {
            Parsed::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_mosquitto_pub_311_connect() {
        // What `mosquitto_pub -V mqttv311 -i dev1 -k 60` sends, byte for byte.
        let bytes = [
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04,
            b'd', b'e', b'v', b'1',
        ];
        let c = connect(&bytes);
        assert_eq!(c.level, Level::V311);
        assert_eq!(c.client_id, "dev1");
        assert_eq!(c.keep_alive, 60);
        assert!(c.clean_start);
        assert_eq!(c.len, bytes.len());
    }

    #[test]
    fn reads_31_and_50_with_credentials_and_wills() {
        let mut s = Spec::v311("old-device");
        s.name = b"MQIsdp".to_vec();
        s.level = 3;
        s.username = Some(b"u".to_vec());
        s.password = Some(b"p\xff".to_vec());
        let bytes = s.encode();
        let c = connect(&bytes);
        assert_eq!(
            (c.level, c.username, c.password),
            (Level::V31, Some("u"), Some(&b"p\xff"[..]))
        );

        let mut s = Spec::v311("new-device");
        s.level = 5;
        // Session expiry interval 0x11 = 3600, receive maximum 0x21 = 10.
        s.props = vec![0x11, 0, 0, 0x0e, 0x10, 0x21, 0, 10];
        // Will delay 0x18 = 5 s, content type 0x03 "text/plain".
        let mut will_props = vec![0x18, 0, 0, 0, 5, 0x03, 0, 10];
        will_props.extend_from_slice(b"text/plain");
        s.will = Some((will_props, b"dev/gone".to_vec(), b"bye".to_vec()));
        s.password = Some(b"secret".to_vec()); // 5.0 allows it without a username
        let bytes = s.encode();
        let c = connect(&bytes);
        assert_eq!(c.level, Level::V5);
        assert_eq!(c.client_id, "new-device");
        assert!(c.will);
        assert_eq!((c.username, c.password), (None, Some(&b"secret"[..])));
    }

    #[test]
    fn every_prefix_is_incomplete_and_the_whole_is_one_connect() {
        let mut s = Spec::v311("a-long-client-id-for-a-two-byte-length");
        s.level = 5;
        s.will = Some((vec![0x01, 1], b"t".to_vec(), vec![7; 300]));
        let bytes = s.encode();
        assert!(bytes.len() > 128, "a 2-byte remaining length");
        for n in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..n], DEFAULT_MAX_CONNECT),
                Parsed::Incomplete,
                "{n}"
            );
        }
        assert_eq!(connect(&bytes).len, bytes.len());
    }

    #[test]
    fn an_http_request_is_not_a_connect_and_gets_a_close() {
        let r = refusal(b"GET / HTTP/1.1\r\n");
        assert_eq!(r.reason, Reason::NotConnect);
        assert!(r.detail.contains("HTTP"), "{r}");
        assert_eq!(r.connack(), None);
        // Known at the first byte: no need to wait for more.
        assert_eq!(refusal(b"G").reason, Reason::NotConnect);
    }

    #[test]
    fn a_five_byte_remaining_length_is_malformed() {
        let r = refusal(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(r.reason, Reason::Malformed);
        assert!(r.detail.contains("4 bytes"), "{r}");
        // Refused as soon as the fourth continuation byte is seen.
        assert_eq!(
            refusal(&[0x10, 0x80, 0x80, 0x80, 0x80]).reason,
            Reason::Malformed
        );
        assert_eq!(
            parse(&[0x10, 0x80, 0x80, 0x80], 1 << 30),
            Parsed::Incomplete
        );
    }

    #[test]
    fn a_declared_length_above_the_cap_is_refused_before_it_arrives() {
        let mut bytes = vec![0x10];
        varint(&mut bytes, 1 << 20);
        let r = refusal(&bytes);
        assert_eq!(r.reason, Reason::TooLarge);
        assert_eq!(
            r.connack(),
            None,
            "3.x has no code for it, and no level is known"
        );
        // With the header of a 5.0 CONNECT in view, 5.0's own code.
        bytes.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5]);
        assert_eq!(refusal(&bytes).connack(), Some(vec![0x20, 3, 0, 0x95, 0]));
    }

    #[test]
    fn wrong_names_and_levels_get_their_answers() {
        let mut s = Spec::v311("d");
        s.name = b"MQTX".to_vec();
        let r = refusal(&s.encode());
        assert_eq!(r.reason, Reason::ProtocolName);
        assert_eq!(r.connack(), None);

        let mut s = Spec::v311("d");
        s.level = 6;
        let r = refusal(&s.encode());
        assert_eq!(r.reason, Reason::ProtocolLevel);
        assert_eq!(r.connack(), Some(vec![0x20, 2, 0, 0x01]));

        // MQIsdp is 3.1 only.
        let mut s = Spec::v311("d");
        s.name = b"MQIsdp".to_vec();
        assert_eq!(refusal(&s.encode()).reason, Reason::ProtocolLevel);
    }

    #[test]
    fn a_client_id_that_is_not_utf8_is_rejected_in_the_devices_version() {
        let mut s = Spec::v311("");
        s.client_id = vec![b'd', 0xc3, 0x28];
        let r = refusal(&s.encode());
        assert_eq!(r.reason, Reason::ClientId);
        assert_eq!(r.connack(), Some(vec![0x20, 2, 0, 0x02]));
        s.level = 5;
        assert_eq!(
            refusal(&s.encode()).connack(),
            Some(vec![0x20, 3, 0, 0x85, 0])
        );
        s.client_id = b"nul\0inside".to_vec();
        assert_eq!(refusal(&s.encode()).reason, Reason::ClientId);
    }

    #[test]
    fn an_empty_client_id_needs_clean_session_in_311_and_is_refused_in_31() {
        let mut s = Spec::v311("");
        s.level = 3;
        s.name = b"MQIsdp".to_vec();
        assert_eq!(refusal(&s.encode()).connack(), Some(vec![0x20, 2, 0, 0x02]));
        let mut s = Spec::v311("");
        assert_eq!(connect(&s.encode()).client_id, "");
        s.clean = false;
        assert_eq!(refusal(&s.encode()).reason, Reason::ClientId);
        s.level = 5;
        assert_eq!(connect(&s.encode()).client_id, "");
    }

    #[test]
    fn grammar_breaks_are_malformed() {
        let good = Spec::v311("dev").encode();
        // Reserved flag.
        let mut b = good.clone();
        b[9] |= 0x01;
        assert_eq!(refusal(&b).reason, Reason::Malformed);
        // Will QoS without a will.
        let mut b = good.clone();
        b[9] |= 0x08;
        assert_eq!(refusal(&b).reason, Reason::Malformed);
        // A byte too many inside the declared length.
        let mut b = good.clone();
        b[1] += 1;
        b.push(0);
        assert!(refusal(&b).detail.contains("after the last field"));
        // A client id longer than the packet.
        let mut b = good.clone();
        b[13] = 0x7f;
        assert_eq!(refusal(&b).reason, Reason::Malformed);
        // 5.0 properties that overrun: the 5.0 answer.
        let mut s = Spec::v311("dev");
        s.level = 5;
        s.props = vec![0x11, 0, 0, 0, 1];
        let mut b = s.encode();
        b[12] = 0x7f;
        let r = refusal(&b);
        assert_eq!(r.reason, Reason::Malformed);
        assert_eq!(r.connack(), Some(vec![0x20, 3, 0, 0x81, 0]));
    }

    #[test]
    fn the_packets_real_clients_sent_parse_as_they_said() {
        // Captured from mosquitto_pub and paho-mqtt by
        // fuzz/capture_mqtt_seeds.py (the fuzz target's seeds).
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/mqtt_connect");
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let cases: [(&str, Level, &str, Option<&str>, bool); 6] = [
            ("mosquitto_pub_31", Level::V31, "dev-31", None, false),
            ("mosquitto_pub_311", Level::V311, "dev-311", None, false),
            ("mosquitto_pub_311_empty_id", Level::V311, "", None, false),
            (
                "mosquitto_pub_311_will_user",
                Level::V311,
                "dev-w",
                Some("alice"),
                true,
            ),
            ("mosquitto_pub_5", Level::V5, "dev-5", None, false),
            (
                "paho_5_will_properties",
                Level::V5,
                "paho-v5-will",
                Some("user"),
                true,
            ),
        ];
        for (name, level, id, user, will) in cases {
            let bytes = read(name);
            let c = connect(&bytes);
            assert_eq!(
                (c.level, c.client_id, c.username, c.will),
                (level, id, user, will),
                "{name}"
            );
            assert_eq!(c.len, bytes.len(), "{name}");
        }
        assert_eq!(refusal(&read("http_request")).reason, Reason::NotConnect);
        assert_eq!(refusal(&read("five_byte_length")).reason, Reason::Malformed);
    }

    fn mqtt_string() -> impl Strategy<Value = Vec<u8>> {
        "[a-zA-Z0-9/_é-]{0,40}".prop_map(String::into_bytes)
    }

    proptest! {
        #[test]
        fn parse_reads_back_what_was_encoded(
            level in prop::sample::select(vec![3u8, 4, 5]),
            id in "[a-z0-9]{1,30}",
            keep_alive in any::<u16>(),
            user in prop::option::of(mqtt_string()),
            pass in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
            will in prop::option::of((mqtt_string(), prop::collection::vec(any::<u8>(), 0..300))),
        ) {
            let mut s = Spec::v311(&id);
            s.level = level;
            s.name = if level == 3 { b"MQIsdp".to_vec() } else { b"MQTT".to_vec() };
            s.keep_alive = keep_alive;
            // 3.x needs a username for a password.
            s.username = if level < 5 && pass.is_some() { Some(user.clone().unwrap_or_default()) } else { user.clone() };
            s.password = pass.clone();
            s.will = will.map(|(t, p)| (Vec::new(), t, p));
            let bytes = s.encode();
            let c = connect(&bytes);
            prop_assert_eq!(c.level.byte(), level);
            prop_assert_eq!(c.client_id, id.as_str());
            prop_assert_eq!(c.keep_alive, keep_alive);
            prop_assert_eq!(c.username.map(str::as_bytes), s.username.as_deref());
            prop_assert_eq!(c.password, pass.as_deref());
            prop_assert_eq!(c.len, bytes.len());
        }

        #[test]
        fn parse_never_panics_and_answers_only_known_connacks(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
            max in 0usize..300,
        ) {
            let mut b = bytes;
            if let Some(f) = b.first_mut() { *f = CONNECT; }
            if let Parsed::Refused(r) = parse(&b, max) {
                if let Some(ack) = r.connack() {
                    prop_assert_eq!(ack[0], 0x20);
                    prop_assert!(ack.len() == 4 || ack.len() == 5);
                }
            }
        }
    }
}
