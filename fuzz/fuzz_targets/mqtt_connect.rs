//! Arbitrary bytes as the first packet of an MQTT proxy connection, read by
//! `lb_server::proxy::mqtt::parse` (cap 4096 bytes).
//!
//! Properties checked beyond "does not panic":
//! - a CONNECT's `len` fits the input, and the packet alone parses to the
//!   same CONNECT; bytes after it (the device's next packets) change nothing;
//! - every prefix of a CONNECT, cut a byte short, is `Incomplete`;
//! - a refusal stays the same refusal whatever bytes follow, and its
//!   CONNACK, when there is one, is a well-formed CONNACK (3.x: 4 bytes,
//!   5.0: 5 bytes with empty properties);
//! - `Incomplete` never holds more than the cap and the fixed header.

#![no_main]

use lb_server::proxy::mqtt::{parse, Parsed};
use libfuzzer_sys::fuzz_target;

const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let first = parse(data, CAP);
    let mut longer = data.to_vec();
    longer.extend_from_slice(&[0x30, 0x00, 0xff]);
    match &first {
        Parsed::Connect(c) => {
            assert!(c.len <= data.len());
            assert_eq!(parse(&data[..c.len], CAP), first);
            assert_eq!(parse(&longer, CAP), first);
            assert_eq!(parse(&data[..c.len - 1], CAP), Parsed::Incomplete);
        }
        Parsed::Refused(r) => {
            assert_eq!(parse(&longer, CAP), first, "more bytes changed a refusal");
            if let Some(ack) = r.connack() {
                assert_eq!(ack[0], 0x20);
                match ack.len() {
                    4 => assert_eq!(ack[1], 2),
                    5 => assert_eq!((ack[1], ack[4]), (3, 0)),
                    n => panic!("a CONNACK of {n} bytes"),
                }
            }
        }
        Parsed::Incomplete => assert!(data.len() < CAP + 5),
    }
});
