//! Address parse → quote → parse: whatever a client sends as RCPT TO, the
//! mailbox we keep has no control character, and the next hop's parser
//! (smtp-proto, as on our inbound side) reads back exactly what the client
//! meant: same local part, same domain, no extra parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::message::mailbox;

fuzz_target!(|line: &[u8]| {
    let Ok(smtp_proto::Request::Rcpt { to }) = smtp_proto::Request::parse(&mut line.iter()) else {
        return;
    };
    let Ok(wire) = mailbox(&to.address) else {
        return;
    };
    assert!(!wire.chars().any(char::is_control), "{wire:?}");
    let again = format!("RCPT TO:<{wire}>\r\n");
    match smtp_proto::Request::parse(&mut again.as_bytes().iter()) {
        Ok(smtp_proto::Request::Rcpt { to: back }) => {
            assert_eq!(back.address, to.address, "{again:?}");
            assert_eq!(back.flags, 0, "parameters appeared: {again:?}");
            assert!(back.orcpt.is_none(), "{again:?}");
        }
        other => panic!("{again:?} does not parse back: {other:?}"),
    }
});
