//! The hook rows of a batch: finding a hook by its secret or id, creating one, rotating its
//! secret and revoking it. The secret index table (`HOOK_SECRETS`) holds live secrets only; a
//! replaced or revoked one moves to `REVOKED_SECRETS`, kept so the log can say why a trigger
//! was refused.

use super::Tables;
use crate::journal::error::JournalError;
use crate::journal::ops::Outcome;
use crate::journal::records::{hex, unhex, Hook, HookRow};
use crate::journal::schema::{decode_hook, encode};
use crate::secret::SecretHash;
use redb::ReadableTable;
use std::sync::Arc;

impl Tables<'_> {
    /// The hook behind a secret; found hooks are remembered for the rest of the batch, which
    /// often holds many triggers of one hook.
    pub(super) fn hook_by_secret(
        &mut self,
        secret: &SecretHash,
    ) -> Result<Option<Arc<Hook>>, JournalError> {
        if let Some(hook) = self.hook_cache.get(secret) {
            return Ok(Some(hook.clone()));
        }
        let Some(id) = self.secrets.get(&secret[..])? else {
            return Ok(None);
        };
        let Some(raw) = self.hooks.get(id.value())? else {
            return Ok(None);
        };
        let hook = Arc::new(decode_hook(id.value(), raw.value())?.hook);
        self.hook_cache.insert(*secret, hook.clone());
        Ok(Some(hook))
    }

    /// The hook with this id, if it exists.
    pub(super) fn hook_by_id(&mut self, id: &str) -> Result<Option<Arc<Hook>>, JournalError> {
        Ok(match self.hooks.get(id)? {
            Some(raw) => Some(Arc::new(decode_hook(id, raw.value())?.hook)),
            None => None,
        })
    }

    pub(super) fn create_hook(
        &mut self,
        hook: &Hook,
        secret: &SecretHash,
    ) -> Result<Outcome, JournalError> {
        let row = HookRow {
            secret_sha256: hex(secret),
            hook: hook.clone(),
        };
        let bytes = encode("a hook row", &row)?;
        self.hooks.insert(hook.id.as_str(), bytes.as_slice())?;
        self.secrets.insert(&secret[..], hook.id.as_str())?;
        Ok(Outcome::HookCreated)
    }

    pub(super) fn rotate_secret(
        &mut self,
        id: &str,
        secret: &SecretHash,
    ) -> Result<Outcome, JournalError> {
        let Some(raw) = self.hooks.get(id)? else {
            return Ok(Outcome::NotFound);
        };
        let mut row = decode_hook(id, raw.value())?;
        drop(raw);
        let old = unhex(&row.secret_sha256);
        row.secret_sha256 = hex(secret);
        let bytes = encode("a hook row", &row)?;
        self.hooks.insert(id, bytes.as_slice())?;
        if let Some(old) = old {
            self.secrets.remove(&old[..])?;
            self.revoked.insert(&old[..], id)?;
        }
        self.secrets.insert(&secret[..], id)?;
        self.hook_cache.retain(|_, hook| hook.id != id);
        Ok(Outcome::SecretRotated {
            old: old.unwrap_or_default(),
        })
    }

    pub(super) fn revoke_hook(&mut self, id: &str) -> Result<Outcome, JournalError> {
        let Some(raw) = self.hooks.remove(id)? else {
            return Ok(Outcome::NotFound);
        };
        let row = decode_hook(id, raw.value())?;
        drop(raw);
        if let Some(secret) = unhex(&row.secret_sha256) {
            self.secrets.remove(&secret[..])?;
            self.revoked.insert(&secret[..], id)?;
        }
        self.hook_cache.retain(|_, hook| hook.id != id);
        Ok(Outcome::HookRevoked)
    }
}

#[cfg(test)]
mod tests {
    use crate::journal::testing::{hook, journal, trigger};
    use crate::journal::{Op, Outcome, SecretLookup};
    use crate::secret::hash_secret;

    #[test]
    fn wrong_project_and_revoked_secret_are_not_found() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        let out = j
            .submit(Op::Trigger {
                secret: hash_secret("s1"),
                project: "other".into(),
                job_id: "J1".into(),
                now: 1,
                not_before: None,
            })
            .unwrap();
        assert_eq!(out, Outcome::NotFound);
        assert!(matches!(
            j.lookup_secret(&hash_secret("s1"), "site"),
            SecretLookup::Live(_)
        ));
        assert_eq!(
            j.submit(Op::RevokeHook {
                id: "hook_a".into()
            })
            .unwrap(),
            Outcome::HookRevoked
        );
        assert_eq!(trigger(&j, "s1", "J2"), Outcome::NotFound);
        assert!(matches!(
            j.lookup_secret(&hash_secret("s1"), "site"),
            SecretLookup::Revoked(_)
        ));
        assert_eq!(
            j.submit(Op::RevokeHook {
                id: "hook_a".into()
            })
            .unwrap(),
            Outcome::NotFound
        );
    }

    #[test]
    fn a_rotated_secret_is_refused_and_the_new_one_triggers() {
        let (_d, j) = journal();
        hook(&j, "hook_a", "s1");
        let out = j
            .submit(Op::RotateSecret {
                id: "hook_a".into(),
                secret: hash_secret("s2"),
            })
            .unwrap();
        assert_eq!(
            out,
            Outcome::SecretRotated {
                old: hash_secret("s1")
            }
        );
        assert_eq!(trigger(&j, "s1", "J1"), Outcome::NotFound);
        assert_eq!(
            j.lookup_secret(&hash_secret("s1"), "site"),
            SecretLookup::Revoked("hook_a".into())
        );
        assert!(matches!(trigger(&j, "s2", "J2"), Outcome::Triggered { .. }));
    }
}
