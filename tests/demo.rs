//! The README's quickstart: `deployhook demo` starts a daemon on an example project with a ready
//! hook and prints the curl line and where to watch; following them deploys the example site.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_demo_prints_a_working_curl_line_and_deploys() {
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut curl, mut dashboard, mut deploy_dir) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    while (curl.is_none() || dashboard.is_none() || deploy_dir.is_none())
        && Instant::now() < deadline
    {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let t = line.trim();
        if let Some(url) = t.strip_prefix("curl -X POST ") {
            curl = Some(url.to_string());
        } else if let Some(url) = t.strip_prefix("dashboard") {
            dashboard = Some(url.trim().to_string());
        } else if let Some(rest) = t.strip_prefix("Each build is published to ") {
            deploy_dir = Some(rest.split("/releases/").next().unwrap().to_string());
        }
    }
    let (curl, dashboard, deploy_dir) = (
        curl.expect("a curl line"),
        dashboard.expect("a dashboard URL"),
        deploy_dir.expect("the deploy folder"),
    );
    let url = curl.strip_prefix("http://").unwrap();
    let (addr, path) = url.split_at(url.find('/').unwrap());
    let resp = http(addr.parse().unwrap(), "POST", path, &[], b"");
    assert_eq!(resp.status, 201);
    let job = resp.json()["job"]["id"].as_str().unwrap().to_string();
    let status: std::net::SocketAddr = dashboard
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let ready = wait_until(Duration::from_secs(60), || {
        http(status, "GET", &format!("/jobs/{job}"), &[], b"").json()["job"]["state"] == "READY"
    });
    assert!(
        ready,
        "the demo job did not deploy: {}",
        http(status, "GET", &format!("/jobs/{job}/log"), &[], b"").text()
    );
    let page = std::fs::read_to_string(format!("{deploy_dir}/current/index.html")).unwrap();
    assert!(page.contains("Hello from deployhook"));
    let live = std::fs::read_link(format!("{deploy_dir}/current")).unwrap();
    assert_eq!(live, std::path::Path::new("releases").join(&job));
    let demo_dir = std::path::Path::new(&deploy_dir).parent().unwrap();
    let notes = demo_dir.join("notifications.txt");
    let noted = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&notes).is_ok_and(|t| t.contains("READY example"))
    });
    assert!(noted, "no notification in {}", notes.display());
    assert!(http(status, "GET", "/", &[], b"").text().contains(&job));

    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(0));
    assert!(!demo_dir.exists(), "the demo left {}", demo_dir.display());
}
