//! Opening an envelope from anywhere: the header parser refuses what is
//! not an envelope and bounds the work it asks for (the KDF iterations).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::seal::envelope::header;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = header(data) {
        assert!(
            h.iterations <= sealgate::seal::envelope::MAX_ITERATIONS,
            "unbounded KDF work: {}",
            h.iterations
        );
    }
});
