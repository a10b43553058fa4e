//! `GET /projects` and the per-project metrics: what each configured project's jobs say, read
//! from the journal, so a restart changes nothing.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn projects(d: &Daemon) -> Value {
    http(d.status, "GET", "/projects", &[], b"").json()
}

#[test]
fn every_project_with_its_last_results_and_failure_streak() {
    let dir = TempDir::new("projects");
    let fail = dir.path().join("fail");
    let build = format!("[ ! -f '{}' ]", fail.display());
    let repo = Repo::new(dir.path(), "repo", &[("a", "1")]);
    let config = write_config(
        dir.path(),
        "",
        &[
            ProjectSpec::new("site", &repo.path, &build),
            ProjectSpec::new("blog", &repo.path, "true"),
        ],
    );
    let mut d = Daemon::start(&config);
    let (_, path) = d.create_hook("site", "main");
    let ok = d.trigger(&path);
    d.wait_state(&ok, "READY", T);
    std::fs::write(&fail, "").unwrap();
    let mut last = String::new();
    for _ in 0..2 {
        last = d.trigger(&path);
        d.wait_state(&last, "ERROR", T);
    }
    for round in ["running", "restarted"] {
        let v = projects(&d);
        let list = v["projects"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{round}");
        let (blog, site) = (&list[0], &list[1]);
        assert_eq!(
            keys(site),
            [
                "name",
                "live",
                "releases",
                "lastJob",
                "lastSuccessAt",
                "lastFailureAt",
                "consecutiveFailures"
            ]
        );
        assert_eq!(blog["name"], "blog");
        assert_eq!(blog["lastJob"], Value::Null);
        assert_eq!(blog["lastSuccessAt"], Value::Null);
        assert_eq!(blog["consecutiveFailures"], 0);
        assert_eq!(site["name"], "site");
        assert_eq!(site["live"], Value::Null);
        assert_eq!(site["releases"], serde_json::json!([]));
        assert_eq!(site["lastJob"]["id"], last.as_str());
        assert_eq!(site["lastJob"]["state"], "ERROR");
        assert_eq!(site["consecutiveFailures"], 2, "{round}");
        let ok_job = d.job(&ok);
        assert_eq!(site["lastSuccessAt"], ok_job["finishedAt"]);
        assert_eq!(site["lastFailureAt"], d.job(&last)["finishedAt"]);
        let metrics = http(d.status, "GET", "/metrics", &[], b"").text();
        assert!(metrics.contains("deployhook_project_consecutive_failures{project=\"site\"} 2\n"));
        assert!(metrics.contains("deployhook_project_consecutive_failures{project=\"blog\"} 0\n"));
        let success = ok_job["finishedAt"].as_u64().unwrap() as f64 / 1000.0;
        assert!(metrics.contains(&format!(
            "deployhook_project_last_success_timestamp_seconds{{project=\"site\"}} {success}\n"
        )));
        d.kill9();
        d.restart();
    }
    // A success ends the streak.
    std::fs::remove_file(&fail).unwrap();
    let fixed = d.trigger(&path);
    d.wait_state(&fixed, "READY", T);
    assert_eq!(projects(&d)["projects"][1]["consecutiveFailures"], 0);
}
