fn main() -> std::process::ExitCode {
    convers8_campaign::cli::main()
}
