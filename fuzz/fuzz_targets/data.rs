//! The DATA normaliser and the client's data writer: whatever bytes a
//! message holds, the data we send has CRLF line ends only and ends where
//! we end it: a receiver that un-dot-stuffs it (smtp-proto) stops exactly at
//! our final dot, with the whole message (as CRLF lines) before it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::message::crlf_lines;
use sealgate::outbound::client::data_on_the_wire;
use smtp_proto::request::receiver::DataReceiver;

fuzz_target!(|body: &[u8]| {
    let wire = data_on_the_wire(body);
    for (i, b) in wire.iter().enumerate() {
        if *b == b'\r' {
            assert_eq!(wire.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if *b == b'\n' {
            assert!(i > 0 && wire[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    // As our inbound side reads it: the data starts at a line start.
    let mut receiver = DataReceiver::new();
    let mut received = Vec::new();
    receiver.ingest(&mut b"\r\n".iter(), &mut received);
    received.clear();
    let mut bytes = wire.iter();
    let done = receiver.ingest(&mut bytes, &mut received);
    assert!(done, "the data must end");
    assert!(
        bytes.as_slice().is_empty(),
        "data ended early, before our dot"
    );
    let mut expected = Vec::new();
    crlf_lines(body, &mut expected);
    if !expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    assert_eq!(received, expected);
});
