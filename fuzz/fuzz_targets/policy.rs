//! Any policy file: parsed or refused with an error that names the file,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::policy::rules::PolicySet;

fuzz_target!(|text: &str| {
    let files = vec![("fuzz.toml".into(), text.to_string())];
    if let Err(e) = PolicySet::from_files(files) {
        assert!(e.to_string().contains("fuzz.toml"), "{e}");
    }
});
