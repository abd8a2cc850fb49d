use clap::Parser;

fn main() {
    let cli = sluice::cli::Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    // The `[telemetry]` section, if the configuration loads; if it does not, the command
    // itself reports why (and the standard `OTEL_*` variables still apply).
    let telemetry = sluice::config::Config::load(cli.config.as_deref())
        .map(|c| c.telemetry)
        .unwrap_or_default();
    let guard = match sluice::telemetry::init(&telemetry, runtime.handle().clone()) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("error: telemetry: {e}");
            std::process::exit(sluice::cli::exit::FAILED);
        }
    };
    let code = match runtime.block_on(sluice::cli::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            sluice::cli::exit::FAILED
        }
    };
    // Flush spans while the runtime that sends them is still there.
    drop(guard);
    drop(runtime);
    std::process::exit(code);
}
