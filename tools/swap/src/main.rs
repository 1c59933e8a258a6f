fn main() -> std::process::ExitCode {
    kit::main::<swap::Args>()
}
