//! Envelope passwords: 118 bits from a ChaCha20 CSPRNG seeded by the
//! operating system, written in groups of four from an alphabet without
//! look-alikes (no 0/o, 1/l/i), so they can be read aloud or typed from an SMS.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// 31 symbols (log2 31 ≈ 4.95 bits each); lower case only, no 0, o, 1, l, i.
const ALPHABET: &[u8; 31] = b"abcdefghjkmnpqrstuvwxyz23456789";
const SYMBOLS: usize = 24;
const GROUP: usize = 4;

/// A generated password. Its `Debug` hides it so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Password {
    canonical: String,
    display: String,
}

impl Password {
    /// A fresh password of 24 symbols, 118 bits.
    pub fn generate() -> Password {
        let mut rng = ChaCha20Rng::from_os_rng();
        let canonical: String = (0..SYMBOLS)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        Password::from_canonical(canonical)
    }

    /// A password given by an operator or a contacts store, in any grouping.
    pub fn from_text(text: &str) -> Password {
        Password::from_canonical(Password::canonicalize(text))
    }

    fn from_canonical(canonical: String) -> Password {
        let display = canonical
            .as_bytes()
            .chunks(GROUP)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-");
        Password { canonical, display }
    }

    /// What goes into the KDF: the symbols without separators, lower case.
    /// The opener does the same to what the reader types.
    pub fn canonicalize(text: &str) -> String {
        text.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    }

    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Grouped for reading aloud: `abcd-efgh-…`.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Entropy in whole bits of a generated password: ⌊24 · log2 31⌋.
    pub const BITS: usize = 118;
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_readable_and_distinct() {
        let bits = SYMBOLS as f64 * (ALPHABET.len() as f64).log2();
        assert_eq!(Password::BITS, bits.floor() as usize);
        assert!(bits >= 100.0);
        let a = Password::generate();
        let b = Password::generate();
        assert_ne!(a, b);
        assert_eq!(a.canonical().len(), SYMBOLS);
        assert_eq!(a.display().split('-').count(), SYMBOLS / GROUP);
        for c in a.canonical().chars() {
            assert!(!"0o1li".contains(c), "look-alike {c} in {}", a.display());
        }
        assert_eq!(format!("{a:?}"), "Password(…)");
        assert_eq!(Password::from_text(&a.display().to_uppercase()), a);
        assert_eq!(Password::from_text(&a.display().replace('-', " ")), a);
    }
}
