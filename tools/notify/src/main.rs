fn main() -> std::process::ExitCode {
    kit::main::<notify::Args>()
}
