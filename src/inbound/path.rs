//! The two paths smtp-proto does not take: address literals
//! (`user@[192.0.2.1]`, `user@[IPv6:…]`, RFC 5321 §4.1.3), which it
//! refuses, and `<Postmaster>` (§4.5.1), which it reads as an empty path,
//! like `<>`. Both are seen in the raw command line; the parameters are
//! still parsed by smtp-proto.

use smtp_proto::Request;

use crate::message::{AddressError, literal, literal_ip};

/// What RCPT carries for `<Postmaster>`: no address smtp-proto returns
/// lacks an `@`, so this cannot be a real recipient.
pub const POSTMASTER: &str = "Postmaster";

/// Stands in for an address literal while smtp-proto parses the line.
const STAND_IN: &str = "address-literal.invalid";

/// Where the path of a MAIL or RCPT line is: the bytes between `<` and
/// the `>` that ends it (a `>` inside a quoted local part does not), and
/// where its domain starts, if it has one.
struct RawPath {
    start: usize,
    end: usize,
    domain: Option<usize>,
}

fn raw_path(line: &str) -> Option<RawPath> {
    let start = line.find('<')? + 1;
    let (mut quoted, mut escaped, mut domain) = (false, false, None);
    for (i, c) in line[start..].char_indices() {
        let at = start + i;
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '@' if !quoted => domain = Some(at + 1),
            '>' if !quoted => {
                return Some(RawPath {
                    start,
                    end: at,
                    domain,
                });
            }
            _ => {}
        }
    }
    None
}

fn verb(line: &str, verb: &str) -> bool {
    line.get(..verb.len())
        .is_some_and(|v| v.eq_ignore_ascii_case(verb))
}

/// Whether an RCPT line that smtp-proto read as an empty path named
/// `<Postmaster>` (any case), rather than `<>`.
pub fn is_postmaster(line: &[u8]) -> bool {
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    verb(line, "RCPT")
        && raw_path(line).is_some_and(|p| line[p.start..p.end].eq_ignore_ascii_case("postmaster"))
}

/// A MAIL or RCPT line whose path smtp-proto refused, parsed again when
/// the path's domain is an address literal: `None` when it is not one
/// (smtp-proto's error stands), the request with the literal in its one
/// form, or why the literal is not an address.
pub fn with_literal(line: &[u8]) -> Option<Result<Request<String>, AddressError>> {
    let line = std::str::from_utf8(line).ok()?;
    if !(verb(line, "MAIL") || verb(line, "RCPT")) {
        return None;
    }
    let path = raw_path(line)?;
    let domain = &line[path.domain?..path.end];
    if !domain.starts_with('[') {
        return None;
    }
    let Some(ip) = literal_ip(domain) else {
        return Some(Err(AddressError::Literal));
    };
    let stand_in = format!(
        "{}{STAND_IN}{}",
        &line[..path.end - domain.len()],
        &line[path.end..]
    );
    let request = Request::parse(&mut stand_in.as_bytes().iter()).ok()?;
    let put_back = |address: String| match address.strip_suffix(STAND_IN) {
        Some(local) => format!("{local}{}", literal(ip)),
        None => address,
    };
    Some(Ok(match request.into_owned() {
        Request::Mail { mut from } => {
            from.address = put_back(from.address);
            Request::Mail { from }
        }
        Request::Rcpt { mut to } => {
            to.address = put_back(to.address);
            Request::Rcpt { to }
        }
        other => other,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(line: &str) -> smtp_proto::RcptTo<String> {
        match with_literal(line.as_bytes()) {
            Some(Ok(Request::Rcpt { to })) => to,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn rfc5321_4_1_3_literals_keep_their_parameters() {
        let to = rcpt("RCPT TO:<user@[192.0.2.1]> NOTIFY=SUCCESS ORCPT=rfc822;a@b.test\r\n");
        assert_eq!(to.address, "user@[192.0.2.1]");
        assert_eq!(to.orcpt.as_deref(), Some("a@b.test"));
        assert_eq!(
            rcpt("rcpt to:<\"a>b\"@[IPv6:2001:DB8::1]>\r\n").address,
            "a>b@[IPv6:2001:db8::1]"
        );
        match with_literal(b"MAIL FROM:<s@[198.51.100.7]> SIZE=10\r\n") {
            Some(Ok(Request::Mail { from })) => {
                assert_eq!(from.address, "s@[198.51.100.7]");
                assert_eq!(from.size, 10);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_is_not_a_literal_keeps_smtp_protos_answer() {
        assert!(with_literal(b"RCPT TO:<a b@c.test>\r\n").is_none());
        assert!(with_literal(b"RCPT TO:<a@c.test\r\n").is_none());
        assert!(with_literal(b"VRFY <a@[192.0.2.1]>\r\n").is_none());
        assert_eq!(
            with_literal(b"RCPT TO:<a@[192.0.2.999]>\r\n").map(|r| r.err()),
            Some(Some(AddressError::Literal))
        );
        assert_eq!(
            with_literal(b"RCPT TO:<a@[IPv6:nope]>\r\n").map(|r| r.err()),
            Some(Some(AddressError::Literal))
        );
    }

    #[test]
    fn rfc5321_4_5_1_postmaster_is_not_the_null_path() {
        assert!(is_postmaster(b"RCPT TO:<Postmaster>\r\n"));
        assert!(is_postmaster(b"rcpt to:<POSTMASTER> NOTIFY=NEVER\r\n"));
        assert!(!is_postmaster(b"RCPT TO:<>\r\n"));
        assert!(!is_postmaster(b"MAIL FROM:<postmaster>\r\n"));
    }
}
