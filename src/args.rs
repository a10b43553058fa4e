//! The values the command line takes, checked by clap's parser (`value_parser = args::…`), so
//! that a bad one exits with status 2 and a usage message before anything is asked of the
//! daemon. The daemon and the status listener check the same things again for other clients.

use crate::journal::MAX_LIST_LIMIT;

/// `hook_` and 12 base62 characters.
pub fn hook_id(s: &str) -> Result<String, String> {
    if crate::secret::is_hook_id(s) {
        Ok(s.to_string())
    } else {
        Err("not a hook id (hook_ and 12 letters or digits)".into())
    }
}

/// 20 base62 characters.
pub fn job_id(s: &str) -> Result<String, String> {
    if crate::secret::is_job_id(s) {
        Ok(s.to_string())
    } else {
        Err("not a job id (20 letters or digits)".into())
    }
}

/// A name a `[projects.NAME]` table may have.
pub fn project(s: &str) -> Result<String, String> {
    if crate::config::is_project_name(s) {
        Ok(s.to_string())
    } else {
        Err("not a project name (letters, digits, `.`, `_` and `-`)".into())
    }
}

/// Trimmed, 1 to 100 characters, no control characters.
pub fn hook_name(s: &str) -> Result<String, String> {
    crate::admin::check_hook_name(s).map_err(|e| e.to_string())
}

/// A branch name git accepts; when git cannot be run here, the daemon decides.
pub fn branch(s: &str) -> Result<String, String> {
    match crate::admin::check_branch(s) {
        Err(e @ crate::admin::AdminError::BadBranch(_)) => Err(e.to_string()),
        _ => Ok(s.to_string()),
    }
}

/// A job state, in any case.
pub fn state(s: &str) -> Result<String, String> {
    crate::journal::JobState::parse(&s.to_ascii_uppercase())
        .map(|state| state.as_str().to_string())
        .ok_or_else(|| "must be PENDING, BUILDING, READY, ERROR or CANCELED".into())
}

/// 1 to the status listener's page limit.
pub fn limit(s: &str) -> Result<usize, String> {
    s.parse()
        .ok()
        .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
        .ok_or_else(|| format!("must be a whole number from 1 to {MAX_LIST_LIMIT}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_checks() {
        assert_eq!(state("ready").unwrap(), "READY");
        assert!(state("bogus").is_err());
        assert_eq!(limit("500").unwrap(), 500);
        for bad in ["0", "501", "-1", "x"] {
            assert!(limit(bad).is_err(), "{bad}");
        }
        assert_eq!(hook_name("  site ").unwrap(), "site");
        assert!(branch("a..b").is_err());
        assert!(branch("release/2.0").is_ok());
    }
}
