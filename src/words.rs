//! Counts in words for messages and pages: `1 release`, `3 releases`.

/// `n thing` or `n things`.
pub fn plural(n: usize, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular_and_others_plural() {
        assert_eq!(super::plural(1, "file"), "1 file");
        assert_eq!(super::plural(0, "file"), "0 files");
        assert_eq!(super::plural(5_000, "file"), "5000 files");
    }
}
