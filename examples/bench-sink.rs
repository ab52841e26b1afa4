//! The receiving end of `benches/relay.sh` in its TLS modes: an SMTP sink
//! that offers STARTTLS (Postfix's `smtp-sink` does not), takes every
//! message and forgets it. It prints `mesg=N` after each message, as the
//! bench counts arrivals the same way for every mode.
//!
//!     bench-sink ADDR:PORT CHAIN.pem KEY.pem
//!
//! A measuring instrument, not a mail server: no limits, no checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, chain, key] = args.as_slice() else {
        anyhow::bail!("usage: bench-sink ADDR:PORT CHAIN.pem KEY.pem");
    };
    let certs = rustls_pemfile::certs(&mut std::fs::read(chain)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .context("certificate chain")?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?
        .context("no private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(addr).await?;
    let count = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let (acceptor, count) = (acceptor.clone(), count.clone());
        tokio::spawn(async move {
            let _ = session(stream, acceptor, count).await;
        });
    }
}

async fn session(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    count: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut plain = BufReader::new(stream);
    plain
        .get_mut()
        .write_all(b"220 sink.bench.test ESMTP\r\n")
        .await?;
    // Before STARTTLS: EHLO, then STARTTLS (or plain mail, if the client wants).
    match converse(&mut plain, &count, true).await? {
        Next::StartTls => {}
        Next::Done => return Ok(()),
    }
    let tls = acceptor.accept(plain.into_inner()).await?;
    let mut tls = BufReader::new(tls);
    converse(&mut tls, &count, false).await?;
    Ok(())
}

enum Next {
    StartTls,
    Done,
}

/// Answers commands until QUIT, EOF or STARTTLS. Replies to pipelined
/// commands are sent together when no more input is buffered.
async fn converse<S>(io: &mut BufReader<S>, count: &AtomicU64, plain: bool) -> anyhow::Result<Next>
where
    S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    BufReader<S>: AsyncBufRead,
{
    let mut line = Vec::new();
    let mut out = Vec::new();
    loop {
        line.clear();
        if io.read_until(b'\n', &mut line).await? == 0 {
            return Ok(Next::Done);
        }
        let verb: String = line
            .iter()
            .take(4)
            .map(|b| b.to_ascii_uppercase() as char)
            .collect();
        let mut next = None;
        match verb.as_str() {
            "EHLO" => out.extend_from_slice(if plain {
                b"250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 SIZE 0\r\n"
                    as &[u8]
            } else {
                b"250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n"
            }),
            "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => out.extend_from_slice(b"250 ok\r\n"),
            "STAR" if plain => {
                out.extend_from_slice(b"220 go ahead\r\n");
                next = Some(Next::StartTls);
            }
            "DATA" => {
                io.get_mut().write_all(&out).await?;
                out.clear();
                io.get_mut().write_all(b"354 go\r\n").await?;
                io.get_mut().flush().await?;
                loop {
                    line.clear();
                    if io.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(Next::Done);
                    }
                    if line == b".\r\n" {
                        break;
                    }
                }
                let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                println!("mesg={n}");
                out.extend_from_slice(b"250 ok\r\n");
            }
            "QUIT" => {
                out.extend_from_slice(b"221 bye\r\n");
                next = Some(Next::Done);
            }
            _ => out.extend_from_slice(b"502 no\r\n"),
        }
        if next.is_some() || io.buffer().is_empty() {
            io.get_mut().write_all(&out).await?;
            io.get_mut().flush().await?;
            out.clear();
        }
        if let Some(n) = next {
            return Ok(n);
        }
    }
}
