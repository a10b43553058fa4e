//! A project's `env_file`: `KEY=VALUE` lines of secrets for the build's environment.
//!
//! The format is the simplest one every tool writes: one `KEY=VALUE` per line, the value being
//! everything after the first `=` as written (no quotes removed, no escapes); blank lines and
//! lines starting with `#` are ignored; a trailing `\r` is dropped. Keys follow the same rules as
//! the config's `env` (no `DEPLOYHOOK_*`). The file is read when the config is loaded (to refuse
//! a broken one early) and again at each job start, so that a rotated secret needs no reload.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why an env file cannot be used.
#[derive(Debug)]
pub enum EnvFileError {
    /// The file cannot be opened or read.
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A line is not `KEY=VALUE` with a valid key.
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvFileError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            EnvFileError::Line {
                path,
                line,
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
        }
    }
}

impl std::error::Error for EnvFileError {}

/// Reads and parses the file at `path`.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| EnvFileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text).map_err(|(line, message)| EnvFileError::Line {
        path: path.to_path_buf(),
        line,
        message,
    })
}

/// Whether `name` may be set in a build's environment by the user (config `env` or env file).
pub fn is_user_variable(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err(format!("`{name}` is not a valid variable name"));
    }
    if name.starts_with("DEPLOYHOOK_") {
        return Err(format!(
            "`{name}`: DEPLOYHOOK_* variables are set by deployhook"
        ));
    }
    Ok(())
}

/// The variables of an env file's text, in file order; an error names its 1-based line.
fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err((i + 1, "expected KEY=VALUE".into()));
        };
        is_user_variable(key).map_err(|m| (i + 1, m))?;
        if value.contains('\0') {
            return Err((i + 1, "values must not contain NUL".into()));
        }
        vars.push((key.to_string(), value.to_string()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_blanks() {
        let vars =
            parse("# deploy secrets\n\nAPI_TOKEN=abc=def\r\n  NAME=\"quoted\"\nEMPTY=\n").unwrap();
        assert_eq!(
            vars,
            [
                ("API_TOKEN".to_string(), "abc=def".to_string()),
                ("NAME".to_string(), "\"quoted\"".to_string()),
                ("EMPTY".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn bad_lines_are_located() {
        assert_eq!(parse("A=1\njunk\n").unwrap_err().0, 2);
        assert_eq!(parse("1A=x\n").unwrap_err().0, 1);
        assert!(parse("DEPLOYHOOK_JOB_ID=x\n")
            .unwrap_err()
            .1
            .contains("DEPLOYHOOK_"));
        assert_eq!(parse("=x\n").unwrap_err().0, 1);
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = read(Path::new("/nonexistent/site.env")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot read /nonexistent/site.env: "));
    }
}
