//! The `mcprom` launcher: everything lives in the library.

fn main() -> std::process::ExitCode {
    mcprom::cli::main()
}
