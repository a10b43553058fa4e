//! Random identifiers, hook secrets, and the one-way hash under which secrets are stored.
//!
//! Ids and secrets are drawn from the operating system's random source (`getrandom`) and mapped
//! onto the 62 characters `[0-9A-Za-z]` without bias: bytes at or above 248 (the largest
//! multiple of 62 that fits in a byte) are thrown away rather than folded, so each character is
//! uniform. A secret has 32 such characters, about 190 bits.
//!
//! A job id is the one exception to "all random": its first [`JOB_ID_TIME_LEN`] characters are
//! its creation time in milliseconds, in base 62 with the alphabet in ASCII order, so ids sort
//! by creation time; the other [`JOB_ID_RANDOM_LEN`] are random (77 bits). The journal keys jobs
//! by id, and time-ordered keys make every new job land at the right edge of its B-tree, next to
//! the job it supersedes, instead of on a random page: a batch of triggers then rewrites a few
//! pages rather than one per trigger, which doubles the durable trigger rate. The time is the
//! job's `createdAt`, already public in the same answer, so the prefix tells nothing new.
//!
//! Secrets never leave this module except once, in the URL handed out at creation; everywhere
//! else a hook is found by the SHA-256 of its secret.

use sha2::{Digest, Sha256};
use std::fmt;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Bytes below this value map uniformly onto the alphabet (248 = 4 * 62).
const UNBIASED_LIMIT: u8 = 248;

pub const JOB_ID_LEN: usize = 20;
/// Leading characters of a job id that encode its creation time (62^7 ms: until the year 2081,
/// after which the time wraps around; ids stay unique, only their order is lost).
pub const JOB_ID_TIME_LEN: usize = 7;
pub const JOB_ID_RANDOM_LEN: usize = JOB_ID_LEN - JOB_ID_TIME_LEN;
pub const HOOK_ID_PREFIX: &str = "hook_";
pub const HOOK_ID_RANDOM_LEN: usize = 12;
pub const SECRET_LEN: usize = 32;

/// The operating system could not supply random bytes.
#[derive(Debug)]
pub struct RandomError(getrandom::Error);

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no random bytes from the operating system: {}", self.0)
    }
}

impl std::error::Error for RandomError {}

/// `len` characters of `[0-9A-Za-z]`, uniformly distributed.
pub fn random_base62(len: usize) -> Result<String, RandomError> {
    let mut out = String::with_capacity(len);
    let mut pool = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut pool).map_err(RandomError)?;
        for &byte in pool.iter().filter(|&&b| b < UNBIASED_LIMIT) {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[usize::from(byte % 62)] as char);
        }
    }
    Ok(out)
}

/// A job id for a job created at `created_ms` (Unix milliseconds).
pub fn new_job_id(created_ms: u64) -> Result<String, RandomError> {
    let mut id = String::with_capacity(JOB_ID_LEN);
    let mut time = [0u8; JOB_ID_TIME_LEN];
    let mut rest = created_ms;
    for digit in time.iter_mut().rev() {
        *digit = ALPHABET[(rest % 62) as usize];
        rest /= 62;
    }
    id.extend(time.iter().map(|&b| b as char));
    id.push_str(&random_base62(JOB_ID_RANDOM_LEN)?);
    Ok(id)
}

pub fn new_hook_id() -> Result<String, RandomError> {
    Ok(format!(
        "{HOOK_ID_PREFIX}{}",
        random_base62(HOOK_ID_RANDOM_LEN)?
    ))
}

pub fn new_secret() -> Result<String, RandomError> {
    random_base62(SECRET_LEN)
}

/// The stored form of a secret.
pub type SecretHash = [u8; 32];

pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether `s` has the shape of a secret; anything else cannot match a hook.
pub fn is_secret_shaped(s: &str) -> bool {
    s.len() == SECRET_LEN && is_base62(s)
}

pub fn is_job_id(s: &str) -> bool {
    s.len() == JOB_ID_LEN && is_base62(s)
}

pub fn is_hook_id(s: &str) -> bool {
    s.strip_prefix(HOOK_ID_PREFIX)
        .is_some_and(|rest| rest.len() == HOOK_ID_RANDOM_LEN && is_base62(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_documented_shapes() {
        let job = new_job_id(1_564_399_503_217).unwrap();
        assert!(is_job_id(&job), "{job}");
        let hook = new_hook_id().unwrap();
        assert!(is_hook_id(&hook), "{hook}");
        let secret = new_secret().unwrap();
        assert!(is_secret_shaped(&secret));
        assert!(!is_secret_shaped(&secret[1..]));
        assert!(!is_hook_id("hook_short"));
        assert!(!is_job_id("A7OcAEEgNRh61p1VZXE!"));
    }

    #[test]
    fn characters_are_spread_over_the_whole_alphabet() {
        let sample = random_base62(62 * 200).unwrap();
        let mut counts = [0usize; 128];
        for b in sample.bytes() {
            counts[usize::from(b)] += 1;
        }
        for &c in ALPHABET.iter() {
            let n = counts[usize::from(c)];
            // Expected 200 each; a biased mapping would starve the tail of the alphabet.
            assert!((100..=320).contains(&n), "{} appeared {n} times", c as char);
        }
    }

    #[test]
    fn job_ids_sort_by_creation_time_and_differ_within_one_millisecond() {
        let times = [
            0,
            1,
            61,
            62,
            3843,
            1_564_399_503_217,
            1_800_000_000_000,
            62u64.pow(7) - 1,
        ];
        let ids: Vec<String> = times.iter().map(|&t| new_job_id(t).unwrap()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        assert!(ids[0].starts_with("0000000"), "{}", ids[0]);
        assert!(ids[2].starts_with("000000z"), "{}", ids[2]);
        assert!(ids[3].starts_with("0000010"), "{}", ids[3]);
        let same: std::collections::HashSet<String> =
            (0..1000).map(|_| new_job_id(42).unwrap()).collect();
        assert_eq!(same.len(), 1000);
    }

    #[test]
    fn hash_is_sha256() {
        let h = hash_secret("abc");
        assert_eq!(h[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
