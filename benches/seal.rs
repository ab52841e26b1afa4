//! Envelope throughput: `cargo bench --bench seal`. Prints the PBKDF2 time
//! per envelope at the default count, seal and open throughput without the
//! KDF, and `openssl speed -evp aes-256-ctr` on the same machine for scale.

use std::process::Command;
use std::time::Instant;

use sealgate::seal::envelope::{self, MIN_ITERATIONS};

const SIZE: usize = 64 * 1024 * 1024;
const ROUNDS: u32 = 3;

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`:
    // measuring is for `cargo bench` only.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let password = "abcdefghjkmnpqrstuvwxyz2";
    let (salt, iv) = ([1u8; 16], [2u8; 16]);

    // An empty envelope costs one key derivation and almost nothing else.
    let start = Instant::now();
    for _ in 0..ROUNDS {
        envelope::seal_with(b"", password, MIN_ITERATIONS, &salt, &iv);
    }
    let kdf = start.elapsed().as_secs_f64() / f64::from(ROUNDS);

    let plain: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let mut sealed = Vec::new();
    for _ in 0..ROUNDS {
        sealed = envelope::seal_with(&plain, password, MIN_ITERATIONS, &salt, &iv);
    }
    let seal = start.elapsed().as_secs_f64() / f64::from(ROUNDS) - kdf;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let opened = envelope::open(&sealed, password).expect("opens");
        assert_eq!(opened.len(), SIZE);
    }
    let open = start.elapsed().as_secs_f64() / f64::from(ROUNDS) - kdf;

    let mb = SIZE as f64 / 1e6;
    println!(
        "PBKDF2-HMAC-SHA512, {MIN_ITERATIONS} iterations: {:.0} ms per envelope",
        kdf * 1e3
    );
    println!(
        "seal (AES-256-CTR + HMAC-SHA256), {} MiB: {:.0} MB/s",
        SIZE >> 20,
        mb / seal
    );
    println!(
        "open (HMAC-SHA256 check + AES-256-CTR), {} MiB: {:.0} MB/s",
        SIZE >> 20,
        mb / open
    );

    match Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-256-ctr",
            "-seconds",
            "2",
            "-bytes",
            "16384",
        ])
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = text
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("aes-256-ctr"))
            {
                let kb_s: f64 = line
                    .split_whitespace()
                    .last()
                    .and_then(|v| v.trim_end_matches('k').parse().ok())
                    .unwrap_or(0.0);
                println!(
                    "openssl speed -evp aes-256-ctr (16 KiB blocks, AES only): {:.0} MB/s",
                    kb_s * 1000.0 / 1e6
                );
            }
        }
        Err(e) => println!("openssl speed not run: {e}"),
    }
}
