fn main() -> std::process::ExitCode {
    kit::main::<img_push::Args>()
}
