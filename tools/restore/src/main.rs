fn main() -> std::process::ExitCode {
    kit::main::<restore::Args>()
}
