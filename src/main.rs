//! deployhook: self-hosted deploy hooks. This file only parses the command line and turns each
//! command's result into an exit status; see DESIGN.md for the architecture.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use deployhook::{client, config, daemon, demo, logging};

/// Exit status for a configuration error (sysexits.h EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// Exit status when no daemon answers (EX_UNAVAILABLE).
const EXIT_NO_DAEMON: u8 = 69;

#[derive(Parser)]
#[command(
    name = "deployhook",
    version,
    about = "Self-hosted deploy hooks: secret URLs that queue fresh-checkout builds"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Config file [default: $DEPLOYHOOK_CONFIG, else /etc/deployhook/deployhook.toml]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (logs to stderr; RUST_LOG sets the level)
    Serve(ConfigArg),
    /// Run a ready-to-try daemon on an example project
    Demo,
    /// Validate a config file; problems go to stderr with file:line, exit status 78
    CheckConfig(ConfigArg),
    /// Create, list and revoke hooks on the running daemon
    Hooks {
        #[command(subcommand)]
        command: HooksCommand,
    },
    /// List jobs from the running daemon's status listener
    Jobs {
        /// Only this hook's jobs (hook_…)
        #[arg(long)]
        hook: Option<String>,
        #[arg(long)]
        project: Option<String>,
        /// PENDING, BUILDING, READY, ERROR or CANCELED
        #[arg(long)]
        state: Option<String>,
        /// At most this many jobs (1-500)
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a job's log
    Logs {
        job: String,
        /// Keep printing new output until the job ends
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum HooksCommand {
    /// Create a hook; prints its URL alone on stdout (shown only this once)
    Create {
        #[arg(long)]
        project: String,
        /// Free text, up to 100 characters
        #[arg(long)]
        name: String,
        #[arg(long)]
        branch: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List hooks (never their secrets)
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke a hook: its URL stops working at once
    Revoke {
        hook_id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Any failure of a command, with the exit status it maps to.
enum Failure {
    Config(config::ConfigError),
    Daemon(daemon::DaemonError),
    Client(client::ClientError),
}

impl Failure {
    fn exit(self) -> ExitCode {
        let (message, code) = match self {
            Failure::Config(e) | Failure::Daemon(daemon::DaemonError::Config(e)) => {
                (e.to_string(), EXIT_CONFIG)
            }
            Failure::Daemon(e) => (e.to_string(), 1),
            Failure::Client(e @ client::ClientError::NoDaemon { .. }) => {
                (e.to_string(), EXIT_NO_DAEMON)
            }
            Failure::Client(e) => (e.to_string(), 1),
        };
        log::error!("{message}");
        eprintln!("deployhook: {message}");
        ExitCode::from(code)
    }
}

fn load(arg: &ConfigArg) -> Result<config::Config, Failure> {
    config::load(&config::resolve_path(arg.config.as_deref())).map_err(Failure::Config)
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(arg) => {
            daemon::serve(&config::resolve_path(arg.config.as_deref())).map_err(Failure::Daemon)
        }
        Command::Demo => demo::run().map_err(Failure::Daemon),
        Command::CheckConfig(arg) => {
            let c = load(&arg)?;
            println!("{}: OK ({} projects)", c.path.display(), c.projects.len());
            Ok(())
        }
        Command::Hooks { command } => match command {
            HooksCommand::Create {
                project,
                name,
                branch,
                json,
                config,
            } => client::hooks_create(&load(&config)?.admin_socket, &project, &name, &branch, json),
            HooksCommand::List { json, config } => {
                client::hooks_list(&load(&config)?.admin_socket, json)
            }
            HooksCommand::Revoke { hook_id, config } => {
                client::hooks_revoke(&load(&config)?.admin_socket, &hook_id)
            }
        }
        .map_err(Failure::Client),
        Command::Jobs {
            hook,
            project,
            state,
            limit,
            json,
            config,
        } => {
            let base = client::status_base(&load(&config)?);
            let query = client::JobsQuery {
                hook,
                project,
                state,
                limit,
            };
            client::jobs(&base, &query, json).map_err(Failure::Client)
        }
        Command::Logs {
            job,
            follow,
            config,
        } => client::logs(&client::status_base(&load(&config)?), &job, follow)
            .map_err(Failure::Client),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_) | Command::Demo) {
        logging::init();
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

/// mimalloc instead of glibc's malloc: redb takes a 4 KiB buffer for every page a commit
/// writes, and glibc consolidates its fast bins on each such allocation (a fifth of the journal
/// writer's time under a trigger storm). Built without transparent huge pages, which would
/// hold whole 2 MiB pages per thread heap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
