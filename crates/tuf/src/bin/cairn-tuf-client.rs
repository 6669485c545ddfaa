//! `cairn-tuf-client`: the tuf-conformance client-under-test CLI. All logic
//! is in `cairn_tuf::client_cli`; this only guarantees the exit status is 0
//! or 1, even if something panics.

fn main() {
    let code =
        std::panic::catch_unwind(|| cairn_tuf::client_cli::main_with_args(std::env::args_os()))
            .unwrap_or(1);
    std::process::exit(code);
}
