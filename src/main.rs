//! The `sealgate` command; everything lives in the library.

fn main() -> std::process::ExitCode {
    sealgate::cli::main()
}
