//! SMTP replies: a code, an enhanced status code (RFC 3463) and text.
//!
//! Both sides use this type: inbound sends replies, outbound reads them from
//! peers and stores them as evidence. Named constants keep magic numbers out
//! of the session code.

use std::borrow::Cow;
use std::fmt;

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code; `[0, 0, 0]` when the peer sent none.
    pub status: [u8; 3],
    pub text: Cow<'static, str>,
}

macro_rules! replies {
    ($($name:ident = $code:literal, [$a:literal, $b:literal, $c:literal], $text:literal;)*) => {
        $(pub const $name: Reply = Reply { code: $code, status: [$a, $b, $c], text: Cow::Borrowed($text) };)*
    };
}

impl Reply {
    replies! {
        OK = 250, [2, 0, 0], "OK";
        SENDER_OK = 250, [2, 1, 0], "Sender OK";
        RECIPIENT_OK = 250, [2, 1, 5], "Recipient OK";
        RESET_OK = 250, [2, 0, 0], "Reset";
        START_DATA = 354, [0, 0, 0], "End data with <CR><LF>.<CR><LF>";
        READY_FOR_TLS = 220, [2, 0, 0], "Ready to start TLS";
        AUTH_OK = 235, [2, 7, 0], "Authentication succeeded";
        BYE = 221, [2, 0, 0], "Bye";
        TOO_MANY_CONNECTIONS = 421, [4, 7, 0], "Too many connections, try again later";
        TIMEOUT = 421, [4, 4, 2], "Timeout, closing connection";
        TOO_MANY_ERRORS = 421, [4, 7, 0], "Too many errors, closing connection";
        SHUTTING_DOWN = 421, [4, 3, 2], "Service shutting down, try again later";
        STORAGE_FULL = 452, [4, 3, 1], "Insufficient system storage, try again later";
        STORAGE_ERROR = 451, [4, 3, 0], "Local error in processing, try again later";
        STORAGE_DOWN = 451, [4, 3, 0], "Storage unavailable, try again later";
        TOO_MANY_RECIPIENTS = 452, [4, 5, 3], "Too many recipients";
        SYNTAX_ERROR = 500, [5, 5, 2], "Syntax error";
        LINE_TOO_LONG = 500, [5, 5, 2], "Line too long";
        UNKNOWN_COMMAND = 500, [5, 5, 1], "Command unrecognized";
        NOT_IMPLEMENTED = 502, [5, 5, 1], "Command not implemented";
        BAD_SEQUENCE = 503, [5, 5, 1], "Bad sequence of commands";
        NEED_MAIL = 503, [5, 5, 1], "MAIL first";
        NEED_RCPT = 503, [5, 5, 1], "RCPT first";
        NEED_EHLO = 503, [5, 5, 1], "EHLO or HELO first";
        ALREADY_AUTHENTICATED = 503, [5, 5, 1], "Already authenticated";
        ALREADY_TLS = 503, [5, 5, 1], "TLS already active";
        PARAM_NOT_IMPLEMENTED = 504, [5, 5, 4], "Parameter not implemented";
        BAD_PARAMETER = 501, [5, 5, 4], "Parameter contains control characters";
        BAD_HELO = 501, [5, 5, 4], "HELO name contains control characters";
        BAD_HEADERS = 554, [5, 6, 0], "Message header contains a control character";
        AUTH_MECHANISM_UNSUPPORTED = 504, [5, 5, 4], "Unrecognized authentication mechanism";
        AUTH_REQUIRED = 530, [5, 7, 0], "Authentication required";
        TLS_REQUIRED = 530, [5, 7, 0], "Must issue a STARTTLS command first";
        REQUIRETLS_WITHOUT_TLS = 530, [5, 7, 10], "REQUIRETLS needs an encrypted session: issue STARTTLS first";
        AUTH_INVALID = 535, [5, 7, 8], "Authentication credentials invalid";
        AUTH_CANCELLED = 501, [5, 0, 0], "Authentication cancelled";
        AUTH_MALFORMED = 501, [5, 5, 2], "Malformed authentication data";
        RELAY_DENIED = 554, [5, 7, 1], "Relay access denied";
        SMTPUTF8_NOT_ALLOWED = 553, [5, 6, 7], "Non-ASCII address needs SMTPUTF8";
        BAD_SENDER = 501, [5, 1, 7], "Bad sender address syntax";
        BAD_RECIPIENT = 501, [5, 1, 3], "Bad recipient address syntax";
        MESSAGE_TOO_BIG = 552, [5, 3, 4], "Message size exceeds fixed limit";
        DATA_LINE_TOO_LONG = 554, [5, 6, 0], "Message has a line longer than the limit";
        NO_VALID_RECIPIENTS = 554, [5, 5, 1], "No valid recipients";
        TLS_NOT_AVAILABLE = 454, [4, 7, 0], "TLS not available";
        VRFY_REFUSED = 252, [2, 5, 2], "Cannot VRFY user, but will accept message";
        NO_POSTMASTER = 550, [5, 1, 1], "<Postmaster>: no postmaster mailbox is configured on this gateway";
        LITERAL_REFUSED = 550, [5, 7, 1], "Address literal destinations are not relayed by this gateway";
        CHUNK_OK = 250, [2, 0, 0], "Chunk received";
        MIXED_DATA_BDAT = 503, [5, 5, 1], "DATA and BDAT cannot be mixed in one transaction";
    }

    /// A reply with other text than the constant's.
    pub fn with_text(&self, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code: self.code,
            status: self.status,
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: never try again.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The wire form, CRLF-terminated; multi-line text becomes continuation lines.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self
            .text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .collect();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}", self.code, sep).as_bytes());
            if self.status != [0, 0, 0] {
                out.extend_from_slice(
                    format!("{}.{}.{} ", self.status[0], self.status[1], self.status[2]).as_bytes(),
                );
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status == [0, 0, 0] {
            write!(f, "{} {}", self.code, self.text)
        } else {
            let [a, b, c] = self.status;
            write!(f, "{} {a}.{b}.{c} {}", self.code, self.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_wire_form() {
        let mut out = Vec::new();
        Reply::OK.with_text("a\nb").write_to(&mut out);
        assert_eq!(out, b"250-2.0.0 a\r\n250 2.0.0 b\r\n");
        let mut out = Vec::new();
        Reply::START_DATA.write_to(&mut out);
        assert_eq!(out, b"354 End data with <CR><LF>.<CR><LF>\r\n");
    }
}
