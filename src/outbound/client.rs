//! An SMTP client connection: greeting, EHLO, STARTTLS, and transactions
//! with PIPELINING (RFC 2920) and per-recipient replies.
//!
//! Replies are framed here (lines up to the one without a `-`) and parsed by
//! smtp-proto. Every network wait has a timeout; any I/O or protocol error
//! makes the connection unusable, and the caller defers what was not
//! confirmed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_CHUNKING, EXT_DSN, EXT_PIPELINING, EXT_REQUIRE_TLS, EXT_SIZE, EXT_SMTP_UTF8,
    EXT_START_TLS, EhloResponse,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

use crate::message::{Envelope, Recipient, Ret, TlsRequest, xtext};
use crate::qualify::TlsFacts;
use crate::reply::Reply;

/// Longest reply we read, in all lines.
const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("timeout after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("unparsable reply from peer: {0}")]
    Protocol(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The peer refused us at greeting or EHLO.
    #[error("peer refused the session: {0}")]
    Refused(Reply),
    /// The TLS handshake completed, then the session failed: a failed TLS
    /// session, never a reason to try the same host in plaintext.
    #[error("TLS session failed after the handshake completed: {0}")]
    AfterHandshake(Box<ClientError>),
}

/// Timeouts for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data: Duration,
}

/// What the peer offered in its EHLO reply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    /// BDAT (RFC 3030): the content goes as it is, with no dot-stuffing.
    pub chunking: bool,
    /// SIZE limit, 0 when none was given.
    pub size: Option<usize>,
    /// RFC 8689.
    pub requiretls: bool,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The replies of one transaction.
#[derive(Debug, Clone)]
pub struct TransactionReplies {
    /// One entry per recipient, in order: the reply that decides its fate
    /// (the MAIL reply if MAIL failed, the RCPT reply if RCPT failed, else
    /// the reply after the data).
    pub per_recipient: Vec<Reply>,
}

/// One SMTP session to a peer.
pub struct SmtpClient {
    stream: BufReader<Stream>,
    pub peer: SocketAddr,
    pub host: String,
    pub caps: Capabilities,
    pub tls: Option<TlsFacts>,
    pub transactions: usize,
    /// Replies read so far: tells whether a failed transaction got anywhere.
    replies: usize,
    timeouts: Timeouts,
    helo: String,
}

impl SmtpClient {
    /// Connects, reads the greeting and says EHLO.
    pub async fn connect(
        peer: SocketAddr,
        host: &str,
        helo: &str,
        timeouts: Timeouts,
    ) -> Result<SmtpClient, ClientError> {
        let tcp = timeout(timeouts.connect, TcpStream::connect(peer))
            .await
            .map_err(|_| ClientError::Timeout(timeouts.connect, "TCP connect"))?
            .map_err(|e| ClientError::Connect(peer, e))?;
        let _ = tcp.set_nodelay(true);
        let mut client = SmtpClient {
            stream: BufReader::new(Stream::Plain(tcp)),
            peer,
            host: host.to_string(),
            caps: Capabilities::default(),
            tls: None,
            transactions: 0,
            replies: 0,
            timeouts,
            helo: helo.to_string(),
        };
        let greeting = client.read_reply(timeouts.command, "greeting").await?.0;
        if greeting.code != 220 {
            return Err(ClientError::Refused(greeting));
        }
        client.ehlo().await?;
        Ok(client)
    }

    async fn ehlo(&mut self) -> Result<(), ClientError> {
        self.write(format!("EHLO {}\r\n", self.helo).as_bytes())
            .await?;
        let (reply, raw) = self.read_reply(self.timeouts.command, "EHLO reply").await?;
        if reply.code == 250 {
            let ehlo = EhloResponse::parse(&mut raw.iter())
                .map_err(|e| ClientError::Protocol(format!("EHLO reply: {e}")))?;
            self.caps = Capabilities {
                pipelining: ehlo.has_capability(EXT_PIPELINING),
                starttls: ehlo.has_capability(EXT_START_TLS),
                eight_bit: ehlo.has_capability(EXT_8BIT_MIME),
                smtputf8: ehlo.has_capability(EXT_SMTP_UTF8),
                dsn: ehlo.has_capability(EXT_DSN),
                chunking: ehlo.has_capability(EXT_CHUNKING),
                requiretls: ehlo.has_capability(EXT_REQUIRE_TLS),
                size: ehlo
                    .has_capability(EXT_SIZE)
                    .then_some(ehlo.size)
                    .filter(|s| *s > 0),
            };
            return Ok(());
        }
        if !reply.is_permanent() {
            return Err(ClientError::Refused(reply));
        }
        // RFC 5321 §3.2: a server that does not know EHLO gets HELO.
        self.write(format!("HELO {}\r\n", self.helo).as_bytes())
            .await?;
        let reply = self
            .read_reply(self.timeouts.command, "HELO reply")
            .await?
            .0;
        if reply.code != 250 {
            return Err(ClientError::Refused(reply));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    /// Sends STARTTLS and checks the 220 reply (RFC 3207).
    async fn starttls_command(&mut self) -> Result<(), (ClientError, Option<Reply>)> {
        if let Err(e) = self.write(b"STARTTLS\r\n").await {
            return Err((e, None));
        }
        let reply = match self
            .read_reply(self.timeouts.command, "STARTTLS reply")
            .await
        {
            Ok((r, _)) => r,
            Err(e) => return Err((e, None)),
        };
        if reply.code != 220 {
            return Err((
                ClientError::Tls(format!("peer refused STARTTLS: {reply}")),
                Some(reply),
            ));
        }
        // Anything the peer sent after its 220 would be read as if it came
        // over TLS: a known injection (CVE-2011-0411); refuse it.
        if !self.stream.buffer().is_empty() {
            return Err((
                ClientError::Protocol("peer sent data after its STARTTLS reply".into()),
                None,
            ));
        }
        Ok(())
    }

    /// Sends STARTTLS and hands over the bare TCP stream, for a probe that
    /// speaks TLS records itself.
    pub async fn starttls_raw(mut self) -> Result<TcpStream, ClientError> {
        self.starttls_command().await.map_err(|(e, _)| e)?;
        match self.stream.into_inner() {
            Stream::Plain(tcp) => Ok(tcp),
            Stream::Tls(_) => Err(ClientError::Protocol("STARTTLS on a TLS connection".into())),
        }
    }

    /// Upgrades to TLS (RFC 3207) and says EHLO again. On `Err` the connection is unusable.
    pub async fn starttls(
        mut self,
        connector: &tokio_rustls::TlsConnector,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Result<SmtpClient, (ClientError, Option<Reply>)> {
        self.starttls_command().await?;
        let Stream::Plain(tcp) = self.stream.into_inner() else {
            return Err((
                ClientError::Protocol("STARTTLS on a TLS connection".into()),
                None,
            ));
        };
        let tls = match timeout(self.timeouts.command, connector.connect(server_name, tcp)).await {
            Err(_) => {
                return Err((
                    ClientError::Timeout(self.timeouts.command, "TLS handshake"),
                    None,
                ));
            }
            Ok(Err(e)) => return Err((ClientError::Tls(e.to_string()), None)),
            Ok(Ok(tls)) => tls,
        };
        let facts = crate::qualify::facts::of(tls.get_ref().1, false);
        self.stream = BufReader::new(Stream::Tls(Box::new(tls)));
        self.tls = facts;
        if let Err(e) = self.ehlo().await {
            return Err((ClientError::AfterHandshake(Box::new(e)), None));
        }
        Ok(self)
    }

    /// Sends one message to the given recipients and collects a reply for each.
    /// The content goes only when a recipient was accepted (RFC 2920 §3.1):
    /// with BDAT when the peer offers CHUNKING, else with DATA.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        recipients: &[&Recipient],
        body: &[u8],
    ) -> Result<TransactionReplies, ClientError> {
        self.transactions += 1;
        let chunked = self.caps.chunking;
        let mail = self.mail_from(envelope, body.len());
        let rcpts: Vec<String> = recipients.iter().map(|r| self.rcpt_to(r)).collect();
        let mut replies = Vec::with_capacity(rcpts.len());
        let mail_reply;
        let mut data_reply = None;
        if self.caps.pipelining {
            let mut batch = mail.into_bytes();
            for r in &rcpts {
                batch.extend_from_slice(r.as_bytes());
            }
            if !chunked {
                batch.extend_from_slice(b"DATA\r\n");
            }
            self.write(&batch).await?;
            mail_reply = self
                .read_reply(self.timeouts.command, "MAIL reply")
                .await?
                .0;
            for _ in &rcpts {
                replies.push(
                    self.read_reply(self.timeouts.command, "RCPT reply")
                        .await?
                        .0,
                );
            }
            if !chunked {
                data_reply = Some(
                    self.read_reply(self.timeouts.command, "DATA reply")
                        .await?
                        .0,
                );
            }
        } else {
            self.write(mail.as_bytes()).await?;
            mail_reply = self
                .read_reply(self.timeouts.command, "MAIL reply")
                .await?
                .0;
            if !mail_reply.is_positive() {
                return self.abort(vec![mail_reply; recipients.len()]).await;
            }
            for r in &rcpts {
                self.write(r.as_bytes()).await?;
                replies.push(
                    self.read_reply(self.timeouts.command, "RCPT reply")
                        .await?
                        .0,
                );
            }
            if !replies.iter().any(Reply::is_positive) {
                return self.abort(replies).await;
            }
            if !chunked {
                self.write(b"DATA\r\n").await?;
                data_reply = Some(
                    self.read_reply(self.timeouts.command, "DATA reply")
                        .await?
                        .0,
                );
            }
        }
        if !mail_reply.is_positive() {
            return self.abort(vec![mail_reply; recipients.len()]).await;
        }
        let accepted = replies.iter().any(Reply::is_positive);
        match data_reply {
            None if !accepted => return self.abort(replies).await,
            None => self.write_chunk(body).await?,
            Some(data_reply) if data_reply.code == 354 && !accepted => {
                // RFC 2920 §3.1: a peer that takes the pipelined DATA although
                // it refused every recipient gets no content: the data ends at once.
                self.write(b".\r\n").await?;
                self.read_reply(self.timeouts.data, "reply after empty DATA")
                    .await?;
                return self.abort(replies).await;
            }
            Some(data_reply) if data_reply.code != 354 => {
                // No recipient accepted (the pipelined DATA then fails), or DATA itself refused.
                let replies = replies
                    .into_iter()
                    .map(|r| {
                        if r.is_positive() {
                            data_reply.clone()
                        } else {
                            r
                        }
                    })
                    .collect();
                return self.abort(replies).await;
            }
            Some(_) => self.write_data(body).await?,
        }
        let final_reply = self
            .read_reply(
                self.timeouts.data,
                if chunked {
                    "reply after BDAT"
                } else {
                    "reply after DATA"
                },
            )
            .await?
            .0;
        let per_recipient = replies
            .into_iter()
            .map(|r| {
                if r.is_positive() {
                    final_reply.clone()
                } else {
                    r
                }
            })
            .collect();
        Ok(TransactionReplies { per_recipient })
    }

    async fn abort(
        &mut self,
        per_recipient: Vec<Reply>,
    ) -> Result<TransactionReplies, ClientError> {
        self.write(b"RSET\r\n").await?;
        self.read_reply(self.timeouts.command, "RSET reply").await?;
        Ok(TransactionReplies { per_recipient })
    }

    fn mail_from(&self, e: &Envelope, size: usize) -> String {
        let mut cmd = format!("MAIL FROM:<{}>", e.sender);
        if self.caps.size.is_some() {
            cmd.push_str(&format!(" SIZE={size}"));
        }
        if e.body_8bit && self.caps.eight_bit {
            cmd.push_str(" BODY=8BITMIME");
        }
        if e.smtputf8 && self.caps.smtputf8 {
            cmd.push_str(" SMTPUTF8");
        }
        // Only where the policy let the message go: a peer that offers it,
        // authenticated (policy::Requirement::met_by). A sealed envelope
        // of such a message goes without it where the carrier lacks it.
        if e.tls_request == TlsRequest::RequireTls && self.caps.requiretls {
            cmd.push_str(" REQUIRETLS");
        }
        if self.caps.dsn {
            match e.ret {
                Some(Ret::Full) => cmd.push_str(" RET=FULL"),
                Some(Ret::Headers) => cmd.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(id) = &e.env_id {
                cmd.push_str(&format!(" ENVID={}", xtext(id)));
            }
        }
        cmd.push_str("\r\n");
        cmd
    }

    fn rcpt_to(&self, r: &Recipient) -> String {
        let mut cmd = format!("RCPT TO:<{}>", r.address);
        if self.caps.dsn {
            let n = r.notify;
            if n.explicit {
                let words: Vec<&str> = if n.never {
                    vec!["NEVER"]
                } else {
                    [
                        (n.success, "SUCCESS"),
                        (n.failure, "FAILURE"),
                        (n.delay, "DELAY"),
                    ]
                    .into_iter()
                    .filter_map(|(on, w)| on.then_some(w))
                    .collect()
                };
                cmd.push_str(&format!(" NOTIFY={}", words.join(",")));
            }
            if let Some(orcpt) = &r.orcpt {
                cmd.push_str(&format!(" ORCPT=rfc822;{}", xtext(orcpt)));
            }
        }
        cmd.push_str("\r\n");
        cmd
    }

    /// Sends the body with every line end as CRLF and dot-stuffing at every
    /// line start (RFC 5321 §4.5.2), then the final dot: whatever the body
    /// holds, no bare CR or LF and no lone dot line reaches the wire.
    async fn write_data(&mut self, body: &[u8]) -> Result<(), ClientError> {
        let out = data_on_the_wire(body);
        timeout(self.timeouts.data, self.write(&out))
            .await
            .map_err(|_| ClientError::Timeout(self.timeouts.data, "sending message data"))?
    }

    /// Sends the body as one last BDAT chunk (RFC 3030): every line end
    /// CRLF as with DATA, but nothing stuffed and no end marker; the count
    /// says where it ends.
    async fn write_chunk(&mut self, body: &[u8]) -> Result<(), ClientError> {
        let normalized;
        let body = if bare_line_end(body) {
            let mut out = Vec::with_capacity(body.len() + body.len() / 64);
            crate::message::crlf_lines(body, &mut out);
            normalized = out;
            &normalized[..]
        } else {
            body
        };
        let command = format!("BDAT {} LAST\r\n", body.len());
        let stream = self.stream.get_mut();
        timeout(self.timeouts.data, async {
            stream.write_all(command.as_bytes()).await?;
            stream.write_all(body).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout(self.timeouts.data, "sending message data"))??;
        Ok(())
    }

    pub fn replies_read(&self) -> usize {
        self.replies
    }

    /// Ends a session politely. Errors do not matter any more.
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply(Duration::from_secs(5), "QUIT reply").await;
        }
        let _ = self.stream.get_mut().shutdown().await;
    }

    /// Checks that an idle connection still works before reusing it.
    pub async fn rset(&mut self) -> Result<(), ClientError> {
        self.write(b"RSET\r\n").await?;
        let reply = self
            .read_reply(self.timeouts.command, "RSET reply")
            .await?
            .0;
        if reply.code == 250 {
            Ok(())
        } else {
            Err(ClientError::Refused(reply))
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let stream = self.stream.get_mut();
        timeout(self.timeouts.command, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout(self.timeouts.command, "sending a command"))??;
        Ok(())
    }

    /// Reads one complete (possibly multi-line) reply; returns it parsed and raw.
    async fn read_reply(
        &mut self,
        limit: Duration,
        what: &'static str,
    ) -> Result<(Reply, Vec<u8>), ClientError> {
        let stream = &mut self.stream;
        let raw = timeout(limit, async {
            let mut raw = Vec::new();
            loop {
                let start = raw.len();
                let n = stream.read_until(b'\n', &mut raw).await?;
                if n == 0 {
                    return Err(ClientError::Closed);
                }
                if raw.len() > MAX_REPLY {
                    return Err(ClientError::Protocol(format!(
                        "{what} longer than {MAX_REPLY} bytes"
                    )));
                }
                let line = &raw[start..];
                if line.len() < 4 || line[3] != b'-' {
                    return Ok(raw);
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(limit, what))??;
        let parsed = ResponseReceiver::default()
            .parse(&mut raw.iter())
            .map_err(|e| {
                ClientError::Protocol(format!("{what}: {e}: {:?}", String::from_utf8_lossy(&raw)))
            })?;
        self.replies += 1;
        let reply = Reply {
            code: parsed.code,
            status: parsed.esc,
            text: parsed.message.into(),
        };
        Ok((reply, raw))
    }
}

/// Whether a CR or LF in the body is not part of a CRLF.
fn bare_line_end(body: &[u8]) -> bool {
    body.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => body.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || body[i - 1] != b'\r',
        _ => false,
    })
}

/// The DATA of a message as sent: CRLF line ends, dots stuffed, ended by `.`.
pub fn data_on_the_wire(body: &[u8]) -> Vec<u8> {
    let mut lines = Vec::with_capacity(body.len() + 8);
    crate::message::crlf_lines(body, &mut lines);
    if !lines.ends_with(b"\r\n") {
        lines.extend_from_slice(b"\r\n");
    }
    let mut out = Vec::with_capacity(lines.len() + lines.len() / 64 + 8);
    let mut at_line_start = true;
    for &b in &lines {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5321_4_5_2_every_line_start_is_dot_stuffed_and_no_bare_cr_leaves() {
        assert_eq!(data_on_the_wire(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        // A bare CR or LF before a dot: a line end to some MTAs, so CRLF and stuffed.
        assert_eq!(data_on_the_wire(b"x\r.\ry"), b"x\r\n..\r\ny\r\n.\r\n");
        assert_eq!(data_on_the_wire(b"x\n.\n"), b"x\r\n..\r\n.\r\n");
    }

    #[test]
    fn bare_line_ends_are_found_wherever_they_are() {
        assert!(!bare_line_end(b"a\r\nb\r\n"));
        assert!(!bare_line_end(b"no line end"));
        assert!(bare_line_end(b"\na"));
        assert!(bare_line_end(b"a\r"));
        assert!(bare_line_end(b"a\rb\r\n"));
        assert!(bare_line_end(b"a\r\nb\n"));
    }
}
