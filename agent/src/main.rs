use gmon_agent::{cli::Cli, run, telemetry};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from_env();
    telemetry::init(cli.level);
    match run::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gmon-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
