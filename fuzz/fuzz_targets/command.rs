//! A MAIL or RCPT command as the inbound session reads it (smtp-proto,
//! then `inbound::path` for address literals) → the mailbox we keep → the
//! command we write on → read again: the same address, no parameter that
//! was not there, no control character, whatever the client sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::inbound::path;
use sealgate::message::mailbox;
use smtp_proto::{Error, Request};

/// As the session does it: smtp-proto first, literals when it refuses.
fn read(line: &[u8]) -> Option<Request<String>> {
    match Request::parse(&mut line.iter()) {
        Ok(r) => Some(r.into_owned()),
        Err(Error::InvalidSenderAddress | Error::InvalidRecipientAddress) => {
            path::with_literal(line)?.ok()
        }
        Err(_) => None,
    }
}

fuzz_target!(|line: &[u8]| {
    let (verb, address) = match read(line) {
        Some(Request::Rcpt { to }) => ("RCPT TO", to.address),
        Some(Request::Mail { from }) => ("MAIL FROM", from.address),
        _ => return,
    };
    if address.is_empty() {
        return;
    }
    let Ok(wire) = mailbox(&address) else {
        return;
    };
    assert!(!wire.chars().any(char::is_control), "{wire:?}");
    let again = format!("{verb}:<{wire}>\r\n");
    match read(again.as_bytes()) {
        Some(Request::Rcpt { to: back }) => {
            assert_eq!(back.address, address, "{again:?}");
            assert_eq!(back.flags, 0, "parameters appeared: {again:?}");
            assert!(back.orcpt.is_none(), "{again:?}");
        }
        Some(Request::Mail { from: back }) => {
            assert_eq!(back.address, address, "{again:?}");
            assert_eq!(back.flags, 0, "parameters appeared: {again:?}");
            assert!(back.env_id.is_none(), "{again:?}");
        }
        other => panic!("{again:?} does not read back: {other:?}"),
    }
});
