//! The command line: parses it (clap), runs the command, and turns its result into an exit
//! status (2 for bad arguments, 69 when no daemon answers, 77 when the admin socket refuses the
//! user, 78 for a bad config). `main.rs` only calls [`main`].

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{args, client, config, daemon, demo, logging, supervise};

/// Exit status for a configuration error (sysexits.h EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// Exit status when no daemon answers (EX_UNAVAILABLE).
const EXIT_NO_DAEMON: u8 = 69;
/// Exit status for bad arguments: 2, as clap exits for those it finds itself.
const EXIT_USAGE: u8 = 2;
/// Exit status when the user may not open the admin socket (EX_NOPERM).
const EXIT_NO_PERMISSION: u8 = 77;

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
    /// Create, list, trigger, rotate and revoke hooks on the running daemon
    Hooks {
        #[command(subcommand)]
        command: HooksCommand,
    },
    /// List jobs from the running daemon's status listener; `jobs cancel` cancels one
    #[command(args_conflicts_with_subcommands = true)]
    Jobs {
        #[command(subcommand)]
        command: Option<JobsCommand>,
        /// Only this hook's jobs (hook_…)
        #[arg(long, value_parser = args::hook_id)]
        hook: Option<String>,
        #[arg(long, value_parser = args::project)]
        project: Option<String>,
        /// PENDING, BUILDING, READY, ERROR or CANCELED
        #[arg(long, value_parser = args::state)]
        state: Option<String>,
        /// At most this many jobs (1-500)
        #[arg(long, value_parser = args::limit)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Point a project's live release (publish.to/current) back at an older one, at once
    Rollback {
        #[arg(value_parser = args::project)]
        project: String,
        /// The job whose release goes live [default: the newest kept release older than the
        /// live one, so repeated rollbacks step back one release each]
        #[arg(value_parser = args::job_id)]
        job: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a job's log
    Logs {
        #[arg(value_parser = args::job_id)]
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
        #[arg(long, value_parser = args::project)]
        project: String,
        /// Free text, up to 100 characters
        #[arg(long, value_parser = args::hook_name)]
        name: String,
        #[arg(long, value_parser = args::branch)]
        branch: String,
        /// Skip checking that the branch exists in the repository (git ls-remote)
        #[arg(long)]
        no_verify: bool,
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
        #[arg(value_parser = args::hook_id)]
        hook_id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Trigger a hook as if its URL were called; prints the new job's id (JSON: the 201 body)
    Trigger(OneHook),
    /// Give a hook a new secret; prints the new URL once; the old URL is refused at once
    Rotate(OneHook),
}

/// The arguments of a command on one hook that prints what it did.
#[derive(clap::Args)]
struct OneHook {
    #[arg(value_parser = args::hook_id)]
    hook_id: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Cancel a PENDING or BUILDING job (a build is stopped as a newer trigger would stop it)
    Cancel {
        #[arg(value_parser = args::job_id)]
        job_id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Any failure of a command, with the exit status it maps to.
enum Failure {
    Config(config::ConfigError),
    Daemon(daemon::DaemonError),
    Demo(demo::DemoError),
    Client(client::ClientError),
}

impl Failure {
    /// Reports the failure once: as a log line when the command logs (`serve`, `demo`: under
    /// systemd that line carries the error priority), else as `deployhook: …` on stderr.
    fn exit(self, logs: bool) -> ExitCode {
        // The demo's daemon fails as `serve`'s does.
        let this = match self {
            Failure::Demo(demo::DemoError::Daemon(e)) => Failure::Daemon(e),
            other => other,
        };
        let code = match &this {
            Failure::Config(_) | Failure::Daemon(daemon::DaemonError::Config(_)) => EXIT_CONFIG,
            Failure::Daemon(daemon::DaemonError::ThreadDied { .. }) => supervise::EXIT_SOFTWARE,
            Failure::Daemon(_) | Failure::Demo(_) => 1,
            Failure::Client(client::ClientError::NoDaemon { .. }) => EXIT_NO_DAEMON,
            Failure::Client(client::ClientError::Forbidden(_)) => EXIT_NO_PERMISSION,
            Failure::Client(client::ClientError::BadArgument(_)) => EXIT_USAGE,
            Failure::Client(_) => 1,
        };
        let message = match this {
            Failure::Config(e) => e.to_string(),
            Failure::Daemon(e) => e.to_string(),
            Failure::Demo(e) => e.to_string(),
            Failure::Client(e) => e.to_string(),
        };
        if logs && log::log_enabled!(log::Level::Error) {
            log::error!("{message}");
        } else {
            eprintln!("deployhook: {message}");
        }
        ExitCode::from(code)
    }
}

/// The config as the client commands need it: addresses and paths, not the projects' secrets.
fn load(arg: &ConfigArg) -> Result<config::Config, Failure> {
    config::load_for_client(&config::resolve_path(arg.config.as_deref())).map_err(Failure::Config)
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(arg) => {
            daemon::serve(&config::resolve_path(arg.config.as_deref())).map_err(Failure::Daemon)
        }
        Command::Demo => demo::run().map_err(Failure::Demo),
        Command::CheckConfig(arg) => {
            let path = config::resolve_path(arg.config.as_deref());
            let c = config::load(&path).map_err(Failure::Config)?;
            for warning in c.projects.values().flat_map(config::Project::warnings) {
                eprintln!("{}: warning: {warning}", c.path.display());
            }
            let projects = crate::words::plural(c.projects.len(), "project");
            println!("{}: OK ({projects})", c.path.display());
            Ok(())
        }
        Command::Hooks { command } => match command {
            HooksCommand::Create {
                project,
                name,
                branch,
                no_verify,
                json,
                config,
            } => {
                let new = client::NewHook {
                    project: &project,
                    name: &name,
                    branch: &branch,
                    verify: !no_verify,
                };
                client::hooks_create(&load(&config)?, &new, json)
            }
            HooksCommand::Trigger(h) => {
                client::hooks_trigger(&load(&h.config)?, &h.hook_id, h.json)
            }
            HooksCommand::Rotate(h) => client::hooks_rotate(&load(&h.config)?, &h.hook_id, h.json),
            HooksCommand::List { json, config } => client::hooks_list(&load(&config)?, json),
            HooksCommand::Revoke { hook_id, config } => {
                client::hooks_revoke(&load(&config)?, &hook_id)
            }
        }
        .map_err(Failure::Client),
        Command::Jobs {
            command:
                Some(JobsCommand::Cancel {
                    job_id,
                    json,
                    config,
                }),
            ..
        } => client::jobs_cancel(&load(&config)?, &job_id, json).map_err(Failure::Client),
        Command::Jobs {
            command: None,
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
        Command::Rollback {
            project,
            job,
            json,
            config,
        } => client::rollback(&load(&config)?, &project, job.as_deref(), json)
            .map_err(Failure::Client),
        Command::Logs {
            job,
            follow,
            config,
        } => client::logs(&client::status_base(&load(&config)?), &job, follow)
            .map_err(Failure::Client),
    }
}

/// Parses the command line, runs the command, and turns its result into an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = matches!(cli.command, Command::Serve(_) | Command::Demo);
    if logs {
        logging::init();
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(logs),
    }
}
