//! Built-in security that needs no plugin: a password file and `[[acl]]` rules, both
//! implemented as ordinary [`crate::hooks::Hook`]s.

pub mod acl;
pub mod password;

pub use acl::AclRules;
pub use password::{hash_password, set_password, PasswordError, PasswordFile};
