//! `convers8-campaign`: the command line. Parses the arguments, runs one
//! command on top of the `convers8_campaign` library, and maps the outcome to
//! a documented exit code; everything it does lives in [`cli`].

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
