//! The envelope's bytes: PBKDF2-HMAC-SHA512 → AES-256-CTR → HMAC-SHA256
//! over header and ciphertext (encrypt-then-MAC). The layout is documented
//! byte by byte in docs/envelope-format.md, so anyone can write an opener.
//!
//! ```text
//! offset size field
//!      0    4 magic "SGEV"
//!      4    1 format version (1)
//!      5    1 KDF id (1 = PBKDF2-HMAC-SHA512)
//!      6    4 iterations, big-endian
//!     10   16 salt
//!     26   16 AES-CTR initial counter block (the whole block is the counter)
//!     42    n ciphertext
//!   42+n   32 HMAC-SHA256(mac key, bytes 0 .. 42+n)
//! ```

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Sha256, Sha512};

use super::password::Password;

pub const MAGIC: &[u8; 4] = b"SGEV";
pub const VERSION: u8 = 1;
pub const KDF_PBKDF2_SHA512: u8 = 1;
pub const HEADER_LEN: usize = 42;
pub const TAG_LEN: usize = 32;
/// The floor for the iteration count (OWASP's figure for PBKDF2-HMAC-SHA512).
pub const MIN_ITERATIONS: u32 = 210_000;
/// Refused when opening, so a hostile file cannot make us spin for hours.
pub const MAX_ITERATIONS: u32 = 10_000_000;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("not a sealgate envelope (wrong magic or too short)")]
    NotAnEnvelope,
    #[error("envelope format version {0} is not supported (this sealgate reads version 1)")]
    Version(u8),
    #[error("unknown key derivation {0}")]
    Kdf(u8),
    #[error("iteration count {0} outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u32),
    /// Wrong password or a modified file: the two cannot be told apart, on purpose.
    #[error("wrong password, or the envelope was modified")]
    Authentication,
}

/// Keys derived from the password: AES-256 and HMAC-SHA256.
struct Keys {
    aes: [u8; 32],
    mac: [u8; 32],
}

fn derive(password: &str, salt: &[u8], iterations: u32) -> Keys {
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut out);
    let mut keys = Keys {
        aes: [0; 32],
        mac: [0; 32],
    };
    keys.aes.copy_from_slice(&out[..32]);
    keys.mac.copy_from_slice(&out[32..]);
    keys
}

/// Encrypts `plaintext` under `password` with a fresh salt and counter block.
pub fn seal(plaintext: &[u8], password: &Password, iterations: u32) -> Vec<u8> {
    let mut rng = ChaCha20Rng::from_os_rng();
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut iv);
    seal_with(plaintext, password.canonical(), iterations, &salt, &iv)
}

/// `seal` with given salt and counter block: the known-answer tests use it.
pub fn seal_with(
    plaintext: &[u8],
    password: &str,
    iterations: u32,
    salt: &[u8; 16],
    iv: &[u8; 16],
) -> Vec<u8> {
    let keys = derive(password, salt, iterations);
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(KDF_PBKDF2_SHA512);
    out.extend_from_slice(&iterations.to_be_bytes());
    out.extend_from_slice(salt);
    out.extend_from_slice(iv);
    let start = out.len();
    out.extend_from_slice(plaintext);
    Aes256Ctr::new(&keys.aes.into(), iv.into()).apply_keystream(&mut out[start..]);
    let mut mac = HmacSha256::new_from_slice(&keys.mac).expect("HMAC takes any key length");
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

/// The parameters in an envelope's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub iterations: u32,
    pub salt: [u8; 16],
    pub iv: [u8; 16],
}

pub fn header(envelope: &[u8]) -> Result<Header, EnvelopeError> {
    if envelope.len() < HEADER_LEN + TAG_LEN || &envelope[..4] != MAGIC {
        return Err(EnvelopeError::NotAnEnvelope);
    }
    if envelope[4] != VERSION {
        return Err(EnvelopeError::Version(envelope[4]));
    }
    if envelope[5] != KDF_PBKDF2_SHA512 {
        return Err(EnvelopeError::Kdf(envelope[5]));
    }
    let iterations = u32::from_be_bytes([envelope[6], envelope[7], envelope[8], envelope[9]]);
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(EnvelopeError::Iterations(iterations));
    }
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    salt.copy_from_slice(&envelope[10..26]);
    iv.copy_from_slice(&envelope[26..42]);
    Ok(Header {
        iterations,
        salt,
        iv,
    })
}

/// Checks the MAC (in constant time) and only then decrypts.
pub fn open(envelope: &[u8], password: &str) -> Result<Vec<u8>, EnvelopeError> {
    let h = header(envelope)?;
    let password = Password::canonicalize(password);
    let keys = derive(&password, &h.salt, h.iterations);
    open_with(envelope, &h, &keys)
}

fn open_with(envelope: &[u8], h: &Header, keys: &Keys) -> Result<Vec<u8>, EnvelopeError> {
    let (signed, tag) = envelope.split_at(envelope.len() - TAG_LEN);
    let mut mac = HmacSha256::new_from_slice(&keys.mac).expect("HMAC takes any key length");
    mac.update(signed);
    mac.verify_slice(tag)
        .map_err(|_| EnvelopeError::Authentication)?;
    let mut plaintext = signed[HEADER_LEN..].to_vec();
    Aes256Ctr::new(&keys.aes.into(), (&h.iv).into()).apply_keystream(&mut plaintext);
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 6070-style vector for PBKDF2-HMAC-SHA512 (the widely published
    /// "password"/"salt" values, also what `openssl kdf` prints).
    #[test]
    fn pbkdf2_sha512_known_answer() {
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(b"password", b"salt", 1, &mut out);
        assert_eq!(
            out.to_vec(),
            hex(
                "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"
            )
        );
    }

    /// NIST SP 800-38A F.5.5, CTR-AES256.Encrypt, first block.
    #[test]
    fn aes256_ctr_known_answer() {
        let key = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let iv = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let mut block = hex("6bc1bee22e409f96e93d7e117393172a");
        Aes256Ctr::new(key.as_slice().into(), iv.as_slice().into()).apply_keystream(&mut block);
        assert_eq!(block, hex("601ec313775789a5b7a7f504bbf3d228"));
    }

    /// RFC 4231 test case 2, HMAC-SHA-256.
    #[test]
    fn hmac_sha256_known_answer() {
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            mac.finalize().into_bytes().to_vec(),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    // PBKDF2 at 210,000 iterations is slow in an unoptimized test build:
    // these tests derive keys as few times as they can.

    #[test]
    fn round_trip_for_several_sizes_and_the_wrong_password_fails() {
        let pw = Password::generate();
        for len in [0usize, 17, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let env = seal(&plain, &pw, MIN_ITERATIONS);
            assert_eq!(env.len(), HEADER_LEN + len + TAG_LEN);
            assert_eq!(open(&env, pw.display()).unwrap(), plain);
        }
        let env = seal(b"x", &pw, MIN_ITERATIONS);
        assert_eq!(
            open(&env, "wrong-password"),
            Err(EnvelopeError::Authentication)
        );
    }

    #[test]
    fn every_byte_region_flipped_is_detected() {
        let pw = "abcd-efgh";
        let env = seal_with(
            b"secret message body",
            pw,
            MIN_ITERATIONS,
            &[7; 16],
            &[9; 16],
        );
        let h = header(&env).unwrap();
        let keys = derive(pw, &h.salt, h.iterations);
        assert!(open_with(&env, &h, &keys).is_ok());
        // Every header field, the ciphertext and the tag are covered by the
        // MAC, even under the right keys.
        for at in [
            0,
            4,
            5,
            6,
            9,
            10,
            25,
            26,
            41,
            42,
            env.len() - 33,
            env.len() - 1,
        ] {
            let mut bad = env.clone();
            bad[at] ^= 0x01;
            assert_eq!(
                open_with(&bad, &h, &keys),
                Err(EnvelopeError::Authentication),
                "flip at {at} went unnoticed"
            );
        }
        // Through the public path: header checks, then the MAC.
        let mut bad = env.clone();
        bad[0] ^= 0x01;
        assert_eq!(open(&bad, pw), Err(EnvelopeError::NotAnEnvelope));
        bad = env.clone();
        bad[50] ^= 0x01;
        assert_eq!(open(&bad, pw), Err(EnvelopeError::Authentication));
        assert!(open(&env[..env.len() - 1], pw).is_err());
        let mut longer = env.clone();
        longer.push(0);
        assert!(open_with(&longer, &h, &keys).is_err());
    }
}
