fn main() -> std::process::ExitCode {
    kit::main::<snapshot::Args>()
}
