//! Unit tests of the config: parsing, every check's message and location, the packaged example.

use super::check::{may_collide, resolve_repo};
use super::*;

/// The packaged example config, which must stay valid.
const EXAMPLE: &str = include_str!("../../packaging/deployhook.toml");

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("/etc/dh/deployhook.toml"), text)
}

const MINIMAL: &str = "[projects.site]\nrepo = \"site.git\"\nbuild = \"make\"\n";

#[test]
fn defaults_fill_everything_but_projects() {
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.status_listen.to_string(), "127.0.0.1:8081");
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/deployhook"));
    assert_eq!(c.public_url, "http://127.0.0.1:8080");
    assert_eq!(c.workers, 2);
    assert_eq!(c.kill_grace, Duration::from_secs(10));
    assert_eq!(c.keep_jobs, 200);
    assert_eq!(c.max_log_bytes, 10 * 1024 * 1024);
    let p = &c.projects["site"];
    assert_eq!(p.repo, "/etc/dh/site.git");
    assert_eq!(p.timeout, Duration::from_secs(900));
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let c = parse_str(&format!(
        "state_dir = \"state\"\nadmin_socket = \"run/a.sock\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/etc/dh/state"));
    assert_eq!(c.admin_socket, PathBuf::from("/etc/dh/run/a.sock"));
}

#[test]
fn remote_repos_are_left_alone() {
    assert_eq!(
        resolve_repo(Path::new("/b"), "https://h/x.git"),
        "https://h/x.git"
    );
    assert_eq!(
        resolve_repo(Path::new("/b"), "git@h:me/x.git"),
        "git@h:me/x.git"
    );
    assert_eq!(resolve_repo(Path::new("/b"), "/srv/x.git"), "/srv/x.git");
    assert_eq!(resolve_repo(Path::new("/b"), "./x:y"), "/b/./x:y");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let err = parse_str(&format!("{MINIMAL}buidl = \"x\"\n")).unwrap_err();
    assert_eq!(err.line, Some(4));
    assert_eq!(err.key.as_deref(), Some("projects.site.buidl"));
    assert!(
        err.to_string()
            .starts_with("/etc/dh/deployhook.toml:4: key `projects.site.buidl`"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let err = parse_str(&format!("workers = \"two\"\n{MINIMAL}")).unwrap_err();
    assert_eq!(err.line, Some(1));
    assert_eq!(err.key.as_deref(), Some("workers"));
}

#[test]
fn missing_field_names_the_key() {
    let err = parse_str("[projects.site]\nrepo = \"x\"\n").unwrap_err();
    assert_eq!(err.key.as_deref(), Some("projects.site.build"), "{err}");
    assert!(err.line.is_some());
}

#[test]
fn semantic_errors_are_located() {
    let err = parse_str(&format!("listen = \"nowhere\"\n{MINIMAL}")).unwrap_err();
    assert_eq!((err.line, err.key.as_deref()), (Some(1), Some("listen")));
    let err =
        parse_str("[projects.site]\nrepo = \"x\"\nbuild = \"m\"\ntimeout_secs = 0\n").unwrap_err();
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(4), Some("projects.site.timeout_secs"))
    );
    let err = parse_str("[projects.\"a b\"]\nrepo = \"x\"\nbuild = \"m\"\n").unwrap_err();
    assert_eq!(err.line, Some(1));
    let err = parse_str("workers = 1\n").unwrap_err();
    assert_eq!(err.key.as_deref(), Some("projects"));
}

#[test]
fn a_misspelt_table_is_named_as_written() {
    // `[project.site]` (singular) is an unknown top-level key `project`, not
    // `project.site.project`.
    let err = parse_str("workers = 1\n\n[project.site]\nrepo = \"x\"\n").unwrap_err();
    assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("project")));
    assert!(
        err.to_string()
            .starts_with("/etc/dh/deployhook.toml:3: key `project`: unknown field `project`"),
        "{err}"
    );
}

#[test]
fn numbers_are_asked_for_as_whole_numbers() {
    for (text, key) in [
        ("workers = \"two\"\n", "workers"),
        ("keep_jobs = 1.5\n", "keep_jobs"),
        ("kill_grace_secs = -1\n", "kill_grace_secs"),
        ("max_log_bytes = true\n", "max_log_bytes"),
    ] {
        let err = parse_str(&format!("{text}{MINIMAL}")).unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(1), Some(key)));
        assert!(err.message.ends_with("expected a whole number"), "{err}");
        assert!(!err.message.contains("u64") && !err.message.contains("usize"));
    }
    let err =
        parse_str("[projects.site]\nrepo = \"x\"\nbuild = \"m\"\ntimeout_secs = -5\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/dh/deployhook.toml:4: key `projects.site.timeout_secs`: \
         invalid value: integer `-5`, expected a whole number"
    );
}

#[test]
fn keys_inside_inline_tables_are_named_in_full() {
    let err =
        parse_str("[projects.site]\nrepo = \"x\"\nbuild = \"m\"\nenv = { A = 1 }\n").unwrap_err();
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(4), Some("projects.site.env.A"))
    );
    let err =
        parse_str("[projects]\nsite = { repo = \"x\", build = \"m\", bad = 1 }\n").unwrap_err();
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(2), Some("projects.site.bad"))
    );
}

#[test]
fn a_missing_required_key_points_at_its_table() {
    let err = parse_str("workers = 1\n[projects.site]\nbuild = \"m\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/dh/deployhook.toml:2: key `projects.site.repo`: missing; every project needs one"
    );
}

#[test]
fn syntax_errors_are_located() {
    let err = parse_str(&format!("{MINIMAL}[[broken\n")).unwrap_err();
    assert_eq!(err.line, Some(4));
    assert!(err.message.contains("]]"), "{err}");
    let err = parse_str("workers = \n").unwrap_err();
    assert_eq!(err.line, Some(1));
}

#[test]
fn values_with_a_problem_are_located_by_their_span() {
    let err = parse_str(&format!("\n\nworkers = 0\n{MINIMAL}")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/dh/deployhook.toml:3: key `workers`: must be 1 to 256"
    );
    let text = "# comment\n[projects.site]\nrepo = \"x\"\nbuild = \"m\"\n\
                env = { \"DEPLOYHOOK_X\" = \"1\" }\n";
    let err = parse_str(text).unwrap_err();
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(5), Some("projects.site.env"))
    );
    let err = parse_str(&format!(
        "{MINIMAL}[projects.other]\nrepo = \"x\"\nbuild = \" \"\n"
    ))
    .unwrap_err();
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(6), Some("projects.other.build"))
    );
}

#[test]
fn two_listeners_on_one_address_are_refused() {
    let err = parse_str(&format!(
        "listen = \"127.0.0.1:9000\"\nstatus_listen = \"127.0.0.1:9000\"\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/dh/deployhook.toml:2: key `status_listen`: `127.0.0.1:9000` is also the \
         address of `listen`; each listener needs its own address (port 0 picks a free one)"
    );
    // Against a default, the error is placed at the key that is written.
    let err = parse_str(&format!("\nlisten = \"127.0.0.1:8081\"\n{MINIMAL}")).unwrap_err();
    assert_eq!((err.line, err.key.as_deref()), (Some(2), Some("listen")));
    let err = parse_str(&format!(
        "listen = \"0.0.0.0:9000\"\nstatus_listen = \"127.0.0.1:9000\"\n{MINIMAL}"
    ))
    .unwrap_err();
    assert!(err.message.contains("share the port"), "{err}");
    for (listen, status) in [
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("127.0.0.1:9000", "127.0.0.2:9000"),
        ("127.0.0.1:9000", "127.0.0.1:9001"),
        ("0.0.0.0:9000", "[::1]:9000"),
    ] {
        let text = format!("listen = \"{listen}\"\nstatus_listen = \"{status}\"\n{MINIMAL}");
        assert!(parse_str(&text).is_ok(), "{listen} {status}");
    }
}

#[test]
fn listeners_that_share_a_port_are_found() {
    let collide = |a: &str, b: &str| may_collide(a.parse().unwrap(), b.parse().unwrap());
    assert!(collide("127.0.0.1:80", "127.0.0.1:80"));
    assert!(collide("0.0.0.0:80", "10.0.0.1:80"));
    assert!(collide("[::]:80", "127.0.0.1:80"));
    assert!(collide("[::]:80", "0.0.0.0:80"));
    assert!(collide("[::ffff:127.0.0.1]:80", "127.0.0.1:80"));
    assert!(!collide("0.0.0.0:80", "[::1]:80"));
    assert!(!collide("0.0.0.0:0", "0.0.0.0:0"));
    assert!(!collide("[::1]:80", "[::2]:80"));
}

#[test]
fn an_admin_group_must_exist() {
    let c = parse_str(&format!("admin_group = \"root\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.admin_group.as_deref(), Some("root"));
    let err = parse_str(&format!("admin_group = \"dh-no-such-group\"\n{MINIMAL}")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/dh/deployhook.toml:1: key `admin_group`: there is no group `dh-no-such-group` \
         on this system; create it (groupadd dh-no-such-group) or remove the setting"
    );
}

#[test]
fn secret_files_must_be_readable_and_are_named_with_their_key() {
    let dir = std::env::temp_dir().join(format!("dh-config-secrets-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(dir.join("keys/site"), "key").unwrap();
    std::fs::write(dir.join("site.env"), "TOKEN=abcd\n").unwrap();
    let path = dir.join("deployhook.toml");
    let text = "[projects.site]\nrepo = \"git@h:s.git\"\nbuild = \"m\"\n\
                ssh_key = \"keys/site\"\nenv_file = \"site.env\"\n";
    let c = parse(&path, text).unwrap();
    let p = &c.projects["site"];
    assert_eq!(p.ssh_key.as_deref(), Some(dir.join("keys/site").as_path()));
    assert_eq!(p.env_file.as_deref(), Some(dir.join("site.env").as_path()));
    for (line, key) in [
        ("git_credentials = \"secrets/gone\"", "git_credentials"),
        ("known_hosts = \"keys\"", "known_hosts"),
    ] {
        let err = parse(&path, &format!("{text}{line}\n")).unwrap_err();
        assert_eq!(err.line, Some(6), "{err}");
        assert_eq!(err.key.as_deref(), Some(&*format!("projects.site.{key}")));
        assert!(err.message.starts_with("cannot read /"), "{err}");
    }
    std::fs::write(dir.join("site.env"), "not a variable\n").unwrap();
    let err = parse(&path, text).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("projects.site.env_file"));
    assert!(
        err.message.ends_with("site.env:1: expected KEY=VALUE"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_password_in_the_repo_url_is_warned_about_and_hidden() {
    let c =
        parse_str("[projects.site]\nrepo = \"https://u:TOK3N@h/s.git\"\nbuild = \"m\"\n").unwrap();
    let warnings = c.projects["site"].warnings();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("https://u:***@h/s.git"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("git_credentials") && !warnings[0].contains("TOK3N"));
    assert!(parse_str(MINIMAL).unwrap().projects["site"]
        .warnings()
        .is_empty());
}

#[test]
fn a_reload_takes_projects_and_keeps_what_needs_a_restart() {
    let mut running = parse_str(&format!("listen = \"127.0.0.1:0\"\n{MINIMAL}")).unwrap();
    // As at start with port 0: the bound address and the URL that follows it.
    running.listen = "127.0.0.1:4242".parse().unwrap();
    running.public_url = "http://127.0.0.1:4242".into();
    let text =
        "listen = \"127.0.0.1:0\"\nworkers = 7\nstate_dir = \"/elsewhere\"\nkill_grace_secs = 3\n\
         [projects.blog]\nrepo = \"blog.git\"\nbuild = \"make\"\n";
    let new = parse_str(text).unwrap();
    assert_eq!(
        running.restart_needed(&new),
        ["listen", "state_dir", "workers"]
    );
    let merged = Config::reloaded(&running, new.clone());
    assert_eq!(merged.listen, running.listen);
    assert_eq!(merged.public_url, "http://127.0.0.1:4242");
    assert_eq!(merged.workers, running.workers);
    assert_eq!(merged.state_dir, running.state_dir);
    assert_eq!(merged.kill_grace, Duration::from_secs(3));
    assert_eq!(merged.projects, new.projects);
    assert!(merged.restart_needed(&running).is_empty());

    let explicit = parse_str(&format!(
        "public_url = \"https://deploy.example\"\n{MINIMAL}"
    ));
    let merged = Config::reloaded(&running, explicit.unwrap());
    assert_eq!(merged.public_url, "https://deploy.example");
}

#[test]
fn the_shipped_example_is_valid() {
    let c = parse_str(EXAMPLE).unwrap();
    assert!(!c.projects.is_empty());
}

#[test]
fn notify_runs_on_error_unless_told_and_its_states_are_checked() {
    let c = parse_str(&format!("{MINIMAL}notify = \"mail-me\"\n")).unwrap();
    let p = &c.projects["site"];
    assert_eq!(p.notify.as_deref(), Some("mail-me"));
    assert!(p.notify_on.error && !p.notify_on.ready && !p.notify_on.recovered);
    assert_eq!(c.notify_policy(), [("site".to_string(), p.notify_on)]);

    let c = parse_str(&format!(
        "{MINIMAL}notify = \"x\"\nnotify_on = [\"READY\", \"RECOVERED\"]\n"
    ))
    .unwrap();
    let on = c.projects["site"].notify_on;
    assert!(on.ready && on.recovered && !on.error && !on.canceled);
    assert!(parse_str(MINIMAL).unwrap().notify_policy().is_empty());

    let err = parse_str(&format!(
        "{MINIMAL}notify = \"x\"\nnotify_on = [\"ERROR\", \"FAILED\"]\n"
    ))
    .unwrap_err();
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(5), Some("projects.site.notify_on"))
    );
    assert!(err.message.contains("`FAILED`"), "{err}");
    assert!(
        err.message.contains("READY, ERROR, CANCELED, RECOVERED"),
        "{err}"
    );

    let err = parse_str(&format!("{MINIMAL}notify_on = [\"ERROR\"]\n")).unwrap_err();
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(4), Some("projects.site.notify_on"))
    );
    assert!(err.message.contains("needs `notify`"), "{err}");
    assert!(!err.message.contains("  "), "{err}");
    let err = parse_str(&format!("{MINIMAL}notify = \" \"\n")).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("projects.site.notify"));
    let err = parse_str(&format!("{MINIMAL}notify = \"x\"\nnotify_on = []\n")).unwrap_err();
    assert!(err.message.contains("at least one"), "{err}");
}

#[test]
fn publish_resolves_its_target_and_defaults_keep() {
    let c = parse_str(&format!(
        "{MINIMAL}publish = {{ dir = \"public\", to = \"www\" }}\n"
    ))
    .unwrap();
    let p = c.projects["site"].publish.clone().unwrap();
    assert_eq!(p.dir, PathBuf::from("public"));
    assert_eq!(p.to, PathBuf::from("/etc/dh/www"));
    assert_eq!(p.keep, 5);
    assert!(parse_str(MINIMAL).unwrap().projects["site"]
        .publish
        .is_none());
}

#[test]
fn publish_errors_name_line_and_key() {
    let cases = [
        (
            "publish = { to = \"/srv/w\" }",
            "projects.site.publish.dir",
            "missing",
        ),
        (
            "publish = { dir = \"p\" }",
            "projects.site.publish.to",
            "missing",
        ),
        (
            "publish = { dir = \"../x\", to = \"/srv/w\" }",
            "projects.site.publish.dir",
            "without `..`",
        ),
        (
            "publish = { dir = \"/abs\", to = \"/srv/w\" }",
            "projects.site.publish.dir",
            "relative",
        ),
        (
            "publish = { dir = \"p\", to = \"/\" }",
            "projects.site.publish.to",
            "root",
        ),
        (
            "publish = { dir = \"p\", to = \"/srv/w\", keep = 0 }",
            "projects.site.publish.keep",
            "at least 1",
        ),
        (
            "publish = { dir = \"p\", to = \"/srv/w\", kept = 3 }",
            "projects.site.publish.kept",
            "unknown field",
        ),
    ];
    for (line, key, says) in cases {
        let err = parse_str(&format!("{MINIMAL}{line}\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some(key), "{line}: {err}");
        assert_eq!(err.line, Some(4), "{line}: {err}");
        assert!(err.message.contains(says), "{line}: {err}");
    }
}

#[test]
fn two_projects_may_not_publish_to_one_folder() {
    let text = format!(
        "{MINIMAL}publish = {{ dir = \"p\", to = \"/srv/w\" }}\n\
         [projects.blog]\nrepo = \"b.git\"\nbuild = \"make\"\n\
         publish = {{ dir = \"p\", to = \"/srv/w/blog\" }}\n"
    );
    let err = parse_str(&text).unwrap_err();
    // Tables are checked in name order: blog first, then site overlaps it.
    assert_eq!(
        err.key.as_deref(),
        Some("projects.site.publish.to"),
        "{err}"
    );
    assert!(err.message.contains("projects.blog.publish.to"), "{err}");
}

#[test]
fn a_publish_folder_must_be_apart_from_the_state_folder() {
    for to in ["/var/lib/deployhook/www", "/var/lib", "/var/lib/deployhook"] {
        let text = format!("{MINIMAL}publish = {{ dir = \"p\", to = \"{to}\" }}\n");
        let err = parse_str(&text).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("projects.site.publish.to")),
            "{to}: {err}"
        );
        assert!(err.message.contains("overlaps state_dir"), "{err}");
    }
    let ok = format!("{MINIMAL}publish = {{ dir = \"p\", to = \"/srv/www/site\" }}\n");
    assert!(parse_str(&ok).is_ok());
}
