//! Password hashing with argon2id.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) that carry
//! their own parameters, so [`verify`] accepts hashes made with any [`Cost`]:
//! tests may hash cheaply and servers still verify their users.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::{Error, Result};

/// The work argon2id does per hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Cost {
    /// For servers: OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane),
    /// tens of milliseconds on one core, which bounds the CPU an attacker
    /// can make a login cost while keeping offline guessing expensive.
    pub const DEFAULT: Cost = Cost {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// For tests only: as cheap as argon2 allows. Never use for real users.
    pub const TEST: Cost = Cost {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };

    fn argon2(self) -> Result<Argon2<'static>> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| Error::Internal {
                op: "password.hash",
                message: format!("bad argon2 parameters {self:?}: {e}"),
            })?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for Cost {
    fn default() -> Cost {
        Cost::DEFAULT
    }
}

/// Hashes `password` with [`Cost::DEFAULT`] and a fresh random salt.
pub fn hash(password: &str) -> Result<String> {
    hash_with(password, Cost::DEFAULT)
}

/// Hashes `password` with `cost` and a fresh random salt.
pub fn hash_with(password: &str, cost: Cost) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    cost.argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal {
            op: "password.hash",
            message: e.to_string(),
        })
}

/// Whether `password` matches the stored `phc` hash. A malformed stored
/// hash is an error, not a mismatch: it means the row is corrupt.
pub fn verify(password: &str, phc: &str) -> Result<bool> {
    let parsed = PasswordHash::new(phc).map_err(|e| Error::Internal {
        op: "password.verify",
        message: format!("stored password hash is malformed: {e}"),
    })?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// Burns the time of one default-cost verification. Call it when the user
/// does not exist, so a login for an unknown name takes as long as one with
/// a wrong password and does not reveal which names exist.
pub fn verify_nothing(password: &str) {
    // Hashing does the same argon2 work as verifying; the result is ignored.
    let _ = hash_with(password, Cost::DEFAULT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_same_password() {
        let h = hash_with("correct horse", Cost::TEST).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse", &h).unwrap());
        assert!(!verify("wrong horse", &h).unwrap());
    }

    #[test]
    fn same_password_gets_different_salts() {
        let a = hash_with("pw-pw-pw-pw", Cost::TEST).unwrap();
        let b = hash_with("pw-pw-pw-pw", Cost::TEST).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn default_cost_hash_verifies() {
        let h = hash("😀 emoji password").unwrap();
        assert!(h.contains("m=19456,t=2,p=1"));
        assert!(verify("😀 emoji password", &h).unwrap());
    }

    #[test]
    fn malformed_stored_hash_is_an_error() {
        assert!(verify("x", "not a hash").is_err());
    }
}
