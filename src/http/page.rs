//! Server-rendered HTML for sysadmins: the dashboard (a card per project above the recent jobs)
//! and a page per job with its log. Each page is complete as served, readable without
//! JavaScript; [`SCRIPT`] (served as `/app.js`, no external assets) only keeps an open page
//! fresh: it listens to `/events` and swaps in the re-rendered `<main>`, and streams a running
//! job's log. Every value that came from outside (hook names, branches, logs, errors) goes
//! through [`escape`].

use super::projects::{Summary, CHART_BUILDS};
use crate::journal::{JobRow, JobState, Notification, NotificationState};
use crate::timefmt::utc;
use std::fmt::Write as _;

/// The live pages' script, served as `/app.js`.
pub const SCRIPT: &str = include_str!("app.js");

/// Jobs on the dashboard.
pub const RECENT_JOBS: usize = 100;
/// Log lines on a job page.
pub const LOG_LINES: usize = 2000;

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Keeps printable ASCII only (for echoing a query parameter name in an error).
pub fn ascii_only(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd}\
th{background:#f4f4f4}code,pre{font-family:ui-monospace,monospace}\
pre{background:#111;color:#eee;padding:1em;overflow-x:auto;white-space:pre-wrap}\
.state{font-weight:600;padding:.1em .5em;border-radius:.3em;color:#fff}\
.PENDING{background:#777}.BUILDING{background:#1565c0}.READY{background:#2e7d32}\
.ERROR{background:#c62828}.CANCELED{background:#8d6e63}\
.cards{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}\
.card{border:1px solid #ddd;border-radius:.5em;padding:.8em 1em;min-width:16em;flex:1}\
.card h2{margin:0 0 .4em;font-size:1.1em}.card p{margin:.2em 0}.muted{color:#777}\
svg.chart rect.READY{fill:#2e7d32}svg.chart rect.ERROR{fill:#c62828}\
svg.chart rect.CANCELED{fill:#8d6e63}";

fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><meta name=\"referrer\" content=\"no-referrer\">\
<title>{}</title><style>{STYLE}</style><script src=\"/app.js\" defer></script></head><body><main>\n",
        escape(title)
    )
}

fn state_badge(state: JobState) -> String {
    let s = state.as_str();
    format!("<span class=\"state {s}\">{s}</span>")
}

fn seconds_between(from: Option<u64>, to: Option<u64>) -> String {
    match (from, to) {
        (Some(a), Some(b)) if b >= a => format!("{:.1} s", (b - a) as f64 / 1000.0),
        _ => "–".to_string(),
    }
}

fn short_commit(commit: Option<&str>) -> String {
    commit.map_or_else(
        || "–".to_string(),
        |c| escape(&c.chars().take(10).collect::<String>()),
    )
}

/// The end of every page.
const FOOT: &str = "</main></body></html>\n";

/// A project's card: what is live, how its last job went, and its recent build durations.
fn card(html: &mut String, p: &Summary) {
    let _ = write!(
        html,
        "<div class=\"card\" id=\"project-{0}\"><h2>{0}</h2>",
        escape(&p.name)
    );
    live(html, p);
    match &p.last_job {
        Some(row) => {
            let j = &row.job;
            let _ = write!(
                html,
                "<p>Last job: <a href=\"/job/{id}\"><code>{id}</code></a> {state}{when}</p>\
<p>Commit: <code>{commit}</code></p>",
                id = escape(&j.id),
                state = state_badge(j.state),
                when = j
                    .finished_at
                    .map(|t| format!(" at {}", utc(t)))
                    .unwrap_or_default(),
                commit = short_commit(j.commit.as_deref()),
            );
        }
        None => html.push_str("<p class=\"muted\">No jobs yet.</p>"),
    }
    if p.consecutive_failures > 0 {
        let _ = write!(
            html,
            "<p><strong>{} failed in a row</strong></p>",
            p.consecutive_failures
        );
    }
    chart(html, p);
    html.push_str("</div>\n");
}

/// The card's line about the live release: its job, commit and since when, and whether it was
/// rolled back.
fn live(html: &mut String, p: &Summary) {
    if !p.publishes {
        return;
    }
    let Some(l) = &p.live else {
        html.push_str("<p>Live: <span class=\"muted\">no published release</span></p>");
        return;
    };
    let _ = write!(
        html,
        "<p class=\"live\">Live: <a href=\"/job/{id}\"><code>{id}</code></a> since {since}</p>\
<p>Live commit: <code>{commit}</code></p>",
        id = escape(&l.job_id),
        since = utc(l.since),
        commit = short_commit(l.commit.as_deref()),
    );
    if let Some(n) = p.newer_than_live().filter(|n| *n > 0) {
        let _ = write!(
            html,
            "<p><strong>Rolled back:</strong> {} kept</p>",
            crate::words::plural(n, "newer release")
        );
    }
}

/// An inline SVG bar chart of the last builds' durations, oldest on the left, coloured by how
/// each ended; each bar's title gives its state and seconds.
fn chart(html: &mut String, p: &Summary) {
    if p.builds.is_empty() {
        return;
    }
    let (w, h, bar) = (CHART_BUILDS * 8, 40.0, 6);
    let longest = p.builds.iter().map(|(_, s)| *s).fold(0.001, f64::max);
    let _ = write!(
        html,
        "<svg class=\"chart\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">\
<title>Last {} build durations</title>",
        p.builds.len()
    );
    for (i, (state, secs)) in p.builds.iter().rev().enumerate() {
        let height = (secs / longest * (h - 2.0)).max(2.0);
        let _ = write!(
            html,
            "<rect class=\"{s}\" x=\"{x}\" y=\"{y:.1}\" width=\"{bar}\" height=\"{height:.1}\">\
<title>{s} {secs:.1} s</title></rect>",
            s = state.as_str(),
            x = i * 8,
            y = h - height,
        );
    }
    html.push_str("</svg>");
}

pub fn dashboard(projects: &[Summary], rows: &[JobRow], busy: u64, total: u64) -> String {
    let mut html = head("deployhook");
    let _ = write!(
        html,
        "<h1>deployhook</h1><p>Build threads busy: {busy} of {total}.</p>\n<div class=\"cards\">"
    );
    for p in projects {
        card(&mut html, p);
    }
    let _ = write!(
        html,
        "</div><h2>Recent jobs</h2><p>The {} most recent jobs, newest first.</p>\n\
<table><thead><tr><th>Job</th><th>State</th><th>Hook</th><th>Project</th><th>Branch</th>\
<th>Commit</th><th>Created (UTC)</th><th>Queued</th><th>Build</th></tr></thead><tbody>\n",
        rows.len()
    );
    for row in rows {
        let j = &row.job;
        let build_end = j.finished_at;
        let _ = writeln!(
            html,
            "<tr id=\"job-{id}\"><td><a href=\"/job/{id}\"><code>{id}</code></a></td><td>{state}</td>\
<td>{hook}</td><td>{project}</td><td>{branch}</td><td><code>{commit}</code></td><td>{created}</td>\
<td>{queued}</td><td>{build}</td></tr>",
            id = escape(&j.id),
            state = state_badge(j.state),
            hook = escape(&row.hook_name),
            project = escape(&j.project),
            branch = escape(&j.branch),
            commit = short_commit(j.commit.as_deref()),
            created = utc(j.created_at),
            queued = seconds_between(Some(j.created_at), j.started_at.or(j.finished_at)),
            build = seconds_between(j.started_at, build_end),
        );
    }
    if rows.is_empty() {
        html.push_str("<tr><td colspan=\"9\">No jobs yet.</td></tr>\n");
    }
    html.push_str(
        "</tbody></table>\n<p><a href=\"/status\">/status</a> · <a href=\"/jobs\">/jobs</a> · \
<a href=\"/projects\">/projects</a> · <a href=\"/hooks\">/hooks</a> · \
<a href=\"/metrics\">/metrics</a></p>",
    );
    html.push_str(FOOT);
    html
}

pub fn job(row: &JobRow, log: &str) -> String {
    let j = &row.job;
    let mut html = head(&format!("job {}", j.id));
    let opt = |v: Option<&str>| v.map_or_else(|| "–".to_string(), escape);
    let time = |v: Option<u64>| v.map_or_else(|| "–".to_string(), utc);
    let _ = write!(
        html,
        "<p><a href=\"/\">← all jobs</a></p><h1>Job <code>{id}</code> {state}</h1>\n<table>\
<tr><th>Hook</th><td>{hook} (<code>{hook_id}</code>)</td></tr>\
<tr><th>Project</th><td>{project}</td></tr><tr><th>Branch</th><td>{branch}</td></tr>\
<tr><th>Commit</th><td><code>{commit}</code></td></tr>\
<tr><th>Created (UTC)</th><td>{created}</td></tr><tr><th>Started</th><td>{started}</td></tr>\
<tr><th>Finished</th><td>{finished}</td></tr><tr><th>Exit code</th><td>{exit}</td></tr>\
<tr><th>Error</th><td>{error}</td></tr><tr><th>Canceled by</th><td>{canceled}</td></tr>\
<tr><th>Notification</th><td>{notification}</td></tr>\
</table>\n<h2>Log</h2><p>Last {LOG_LINES} lines; live: <code>curl -N …/jobs/{id}/log?follow=1</code>, \
raw: <a href=\"/jobs/{id}/log\">/jobs/{id}/log</a></p>\n\
<pre id=\"log\" data-job=\"{id}\" data-open=\"{open}\">{log}</pre>{FOOT}",
        id = escape(&j.id),
        state = state_badge(j.state),
        hook = escape(&row.hook_name),
        hook_id = escape(&j.hook_id),
        project = escape(&j.project),
        branch = escape(&j.branch),
        commit = opt(j.commit.as_deref()),
        created = utc(j.created_at),
        started = time(j.started_at),
        finished = time(j.finished_at),
        exit = j.exit_code.map_or_else(|| "–".to_string(), |c| c.to_string()),
        error = opt(j.error.as_deref()),
        canceled = opt(j.canceled_by.as_deref()),
        notification = escape(&notification(j.notification.as_ref())),
        log = escape(log),
        open = u8::from(!j.state.is_terminal()),
    );
    html
}

/// A job's notification in words: "–" without one.
fn notification(n: Option<&Notification>) -> String {
    let Some(n) = n else {
        return "–".to_string();
    };
    let tries = match n.attempts {
        1 => "1 attempt".to_string(),
        k => format!("{k} attempts"),
    };
    let last = n.last_error.as_deref().unwrap_or("");
    match n.state {
        NotificationState::Sent => format!("sent ({tries})"),
        NotificationState::Pending if n.attempts == 0 => "pending".to_string(),
        NotificationState::Pending => format!("pending, {tries} so far; last: {last}"),
        NotificationState::Failed => format!("failed after {tries}: {last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
