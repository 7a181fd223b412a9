//! The `drain` binary: everything is in the library; see `drain --help`.

fn main() -> std::process::ExitCode {
    drain::cli::main()
}
