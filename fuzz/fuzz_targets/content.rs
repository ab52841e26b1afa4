//! What reception does to a message's content besides storing it: the
//! end-to-end detection (policy::e2e) reads any bytes without a panic, and
//! the subject tag (view::tag_subject) changes nothing but the header
//! section: the body after the first empty line stays byte for byte, and
//! no bare CR or LF is added.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::message::crlf_lines;

fuzz_target!(|data: &[u8]| {
    let mut raw = Vec::new();
    crlf_lines(data, &mut raw);
    let _ = sealgate::policy::e2e::detect(&raw);
    let tagged = sealgate::view::tag_subject(&raw, "[qualified TLS]");
    let body = |m: &[u8]| {
        m.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| m[i + 4..].to_vec())
    };
    assert_eq!(body(&raw), body(&tagged), "the body changed");
    let bare = |m: &[u8]| {
        m.iter()
            .enumerate()
            .filter(|(i, b)| {
                (**b == b'\n' && (*i == 0 || m[i - 1] != b'\r'))
                    || (**b == b'\r' && m.get(i + 1) != Some(&b'\n'))
            })
            .count()
    };
    assert!(bare(&tagged) <= bare(&raw), "a bare line end was added");
});
