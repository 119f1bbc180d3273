//! The `chatferry` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    chatferry::cli::main()
}
