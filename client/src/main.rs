//! `client`: the dsf command-line tool. Everything lives in
//! [`dsf_client::cli`]; see `client --help`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    dsf_client::cli::main()
}
