fn main() -> std::process::ExitCode {
    kit::main::<healthwait::Args>()
}
