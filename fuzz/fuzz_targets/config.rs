//! Any configuration text: parsed or refused with an error that names the
//! place, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::config::Config;

fuzz_target!(|text: &str| {
    if let Err(e) = Config::parse(text, std::path::Path::new("fuzz.toml")) {
        assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
    }
});
