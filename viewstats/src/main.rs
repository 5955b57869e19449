//! viewstats: prints the live counters of a running shmsrv, read-only. See the library docs.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = viewstats::Args::parse();
    let code = match viewstats::run(&args, &mut std::io::stdout().lock()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("viewstats: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
