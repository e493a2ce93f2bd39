//! Who may do what on the client port: roles, bearer tokens, client certificates.
//!
//! A request is authenticated by a bearer token (`Authorization: Bearer <token>`, looked up
//! by its SHA-256 in the token file) or by a client certificate the cluster CA signed (its
//! organization names the role). Roles are ordered: `read` (get, list, watch, node info) <
//! `write` (plus put, delete, txn) < `admin` (plus `/v1/cluster/*`). No credential answers
//! 401, a credential whose role is too weak 403, both as JSON errors.
//!
//! Requests a member relays from another member (over the peer port, which only members
//! reach) carry the role the first member established.
//!
//! This module is the credential model only, low in the stack so that TLS (a certificate's
//! role) and the configuration can use it; the HTTP layer that applies it to requests is
//! [`crate::api::authorize`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// What a credential allows; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The header a member uses to pass on the role of a request it relays to the leader.
pub const RELAYED_ROLE: &str = "x-rstore-role";

/// The hex SHA-256 of a token, as the token file stores it.
pub use rstore_api::pki::token_hash;

/// The token file: one `NAME ROLE sha256:HEX` per line; `#` starts a comment. Tokens
/// themselves are never stored. Re-read when it changes.
#[derive(Debug, Default)]
pub struct Tokens {
    path: Option<PathBuf>,
    by_hash: RwLock<Arc<HashMap<String, (String, Role)>>>,
    seen: RwLock<Option<Vec<u8>>>,
}

impl Tokens {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let t = Self {
            path: path.map(Path::to_path_buf),
            ..Default::default()
        };
        t.reload()?;
        Ok(t)
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    fn parse(text: &str) -> anyhow::Result<HashMap<String, (String, Role)>> {
        let mut out = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                anyhow::bail!("line {}: expected `NAME ROLE sha256:HEX`", n + 1);
            };
            let role = Role::parse(role).ok_or_else(|| {
                anyhow::anyhow!(
                    "line {}: unknown role {role:?} (read, write or admin)",
                    n + 1
                )
            })?;
            let hex = hash
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    anyhow::anyhow!("line {}: the hash must be sha256:<64 hex digits>", n + 1)
                })?;
            out.insert(hex.to_ascii_lowercase(), (name.to_string(), role));
        }
        Ok(out)
    }

    /// Re-read the file if its contents changed; true when they did. A file that does not
    /// parse leaves the tokens as they were.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
        if self.seen.read().expect("tokens lock").as_deref() == Some(&bytes[..]) {
            return Ok(false);
        }
        let parsed = Self::parse(&String::from_utf8_lossy(&bytes))
            .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))?;
        *self.by_hash.write().expect("tokens lock") = Arc::new(parsed);
        *self.seen.write().expect("tokens lock") = Some(bytes);
        Ok(true)
    }

    /// The name and role of `token`, if the file holds its hash.
    pub fn lookup(&self, token: &str) -> Option<(String, Role)> {
        let map = self.by_hash.read().expect("tokens lock").clone();
        map.get(&token_hash(token)).cloned()
    }
}

/// Who sent a request, once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// The role a route needs; `None` for routes open to anyone.
pub fn required_role(method: &axum::http::Method, path: &str, metrics_open: bool) -> Option<Role> {
    use axum::http::Method;
    match path {
        "/healthz" | "/readyz" => None,
        "/metrics" if metrics_open => None,
        "/metrics" => Some(Role::Read),
        p if p.starts_with("/v1/cluster") => Some(Role::Admin),
        "/v1/txn" => Some(Role::Write),
        p if p.starts_with("/v1/kv") => match *method {
            Method::GET | Method::HEAD => Some(Role::Read),
            _ => Some(Role::Write),
        },
        // Node info, watches, and anything unknown (answered 404 once authenticated).
        _ => Some(Role::Read),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn roles_by_route() {
        let r = |m: Method, p: &str| required_role(&m, p, false);
        assert_eq!(r(Method::GET, "/healthz"), None);
        assert_eq!(r(Method::GET, "/readyz"), None);
        assert_eq!(r(Method::GET, "/metrics"), Some(Role::Read));
        assert_eq!(required_role(&Method::GET, "/metrics", true), None);
        assert_eq!(r(Method::GET, "/v1/kv/a"), Some(Role::Read));
        assert_eq!(r(Method::GET, "/v1/kv"), Some(Role::Read));
        assert_eq!(r(Method::PUT, "/v1/kv/a"), Some(Role::Write));
        assert_eq!(r(Method::DELETE, "/v1/kv/a"), Some(Role::Write));
        assert_eq!(r(Method::POST, "/v1/txn"), Some(Role::Write));
        assert_eq!(r(Method::GET, "/v1/watch"), Some(Role::Read));
        assert_eq!(r(Method::GET, "/v1/cluster"), Some(Role::Admin));
        assert_eq!(r(Method::PUT, "/v1/cluster/config"), Some(Role::Admin));
        assert_eq!(r(Method::GET, "/v1/node"), Some(Role::Read));
        assert_eq!(r(Method::GET, "/nope"), Some(Role::Read));
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
    }

    #[test]
    fn token_files_store_hashes_and_refuse_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let tok = crate::pki::new_token();
        std::fs::write(
            &path,
            format!(
                "# comment\n{}",
                crate::pki::token_line("ops", "admin", &tok)
            ),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&tok), "the token itself is not stored");
        let t = Tokens::load(Some(&path)).unwrap();
        assert_eq!(t.lookup(&tok), Some(("ops".into(), Role::Admin)));
        assert_eq!(t.lookup("nope"), None);
        // A broken file is refused and the old tokens stay.
        std::fs::write(&path, "ops superuser sha256:00\n").unwrap();
        let err = t.reload().unwrap_err().to_string();
        assert!(err.contains("unknown role"), "{err}");
        assert_eq!(t.lookup(&tok), Some(("ops".into(), Role::Admin)));
        // A changed file replaces them.
        let tok2 = crate::pki::new_token();
        std::fs::write(&path, crate::pki::token_line("app", "read", &tok2)).unwrap();
        assert!(t.reload().unwrap());
        assert_eq!(t.lookup(&tok), None);
        assert_eq!(t.lookup(&tok2), Some(("app".into(), Role::Read)));
    }
}
