//! `skein`: see `skein --help`. Thin on purpose; everything lives in the library.

fn main() -> std::process::ExitCode {
    agent::cli::main()
}
