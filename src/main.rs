//! The `dockyard` binary: everything lives in the library; this only maps the result of
//! `cli::run` to an exit code.

fn main() -> std::process::ExitCode {
    dockyard::cli::main()
}
