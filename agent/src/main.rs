use gmon_agent::{agent, cli::Cli, config::Config, telemetry};

// jemalloc, so that `-pprof` can serve heap profiles. Sampling is compiled
// in but stays inactive unless -pprof is given.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// Freed pages go back to the kernel after a second (one background thread
// purges them): by default jemalloc kept what start-up freed (ELF and BTF
// parsing, the /proc scan) resident, 13 MiB of an idle agent's 27.
//
// Profiling not in static builds (the container image): jemalloc's
// profiler warms up libgcc's unwinder when glibc's static start-up makes
// its first allocation, before the unwinder can run, and aborts. Heap
// profiles are then unavailable (-pprof says so); CPU profiles work.
#[cfg(not(target_feature = "crt-static"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0,prof:true,prof_active:false,lg_prof_sample:19\0";

#[cfg(target_feature = "crt-static")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "malloc_conf")]
pub static malloc_conf: &[u8] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    // A panic on any thread (the event loop, the HTTP server) ends the
    // agent with the message rather than leaving it running deaf; the
    // kernel detaches every probe when the process exits.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(70);
    }));
    // `gmon-agent top`: a client of a running agent, nothing to attach.
    if std::env::args_os().nth(1).is_some_and(|a| a == "top") {
        use clap::Parser;
        let cli = gmon_agent::top::TopCli::parse_from(std::env::args_os().skip(1));
        return match gmon_agent::top::main(cli) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gmon-agent top: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse_from_env();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gmon-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let logs = match agent::log_export(&cli, &config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gmon-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let traces = match agent::trace_export(&cli, &config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gmon-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let _trace = match telemetry::init(cli.level, cli.trace.as_deref(), logs, traces) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("gmon-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match agent::run(cli, config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gmon-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
