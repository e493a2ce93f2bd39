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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::app::App;
use crate::tls::{ConnInfo, Port};

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

fn unauthorized(message: String) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message).into_response();
    r.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"rstore\""),
    );
    r
}

/// Establish who sent `req`, or the answer that refuses it (a ready response is the
/// early exit, as in the peer port's handlers).
#[allow(clippy::result_large_err)]
fn authenticate(app: &App, req: &Request) -> Result<Option<Principal>, Response> {
    let conn = req.extensions().get::<ConnInfo>();
    if let Some(conn) = conn
        && conn.port == Port::Peer
    {
        // A request a member relayed: the peer port already checked that a member sent
        // it (see network::server); it carries the role established where it came in.
        let role = req
            .headers()
            .get(RELAYED_ROLE)
            .and_then(|v| v.to_str().ok())
            .and_then(Role::parse);
        return match role {
            Some(role) => Ok(Some(Principal {
                name: "relayed".into(),
                role,
            })),
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "a relayed request must carry its role",
            )
            .into_response()),
        };
    }
    if let Some(v) = req.headers().get(axum::http::header::AUTHORIZATION) {
        let token = v
            .to_str()
            .ok()
            .and_then(|s| {
                s.strip_prefix("Bearer ")
                    .or_else(|| s.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(token) = token else {
            return Err(unauthorized(
                "the Authorization header must be `Bearer <token>`".into(),
            ));
        };
        return match app.tokens.lookup(token) {
            Some((name, role)) => Ok(Some(Principal { name, role })),
            None => Err(unauthorized(
                "the bearer token is not valid for this cluster: check the token, or ask an admin for one"
                    .into(),
            )),
        };
    }
    if let Some(cert) = conn.and_then(|c| c.cert.as_ref()) {
        return match cert.role() {
            Some(role) => Ok(Some(Principal {
                name: cert.common_name.clone().unwrap_or_default(),
                role,
            })),
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "the client certificate grants no role: its organization (O) must be read, write or admin",
            )
            .into_response()),
        };
    }
    Ok(None)
}

/// The client API's authorization layer.
pub async fn authorize(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let Some(needed) = required_role(req.method(), req.uri().path(), app.settings.metrics_open)
    else {
        return next.run(req).await;
    };
    if !app.settings.authentication() {
        // Plaintext without a token file: open to anyone (warned at start-up).
        grant(
            &mut req,
            Principal {
                name: "anonymous".into(),
                role: Role::Admin,
            },
        );
        return next.run(req).await;
    }
    let principal = match authenticate(&app, &req) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return unauthorized(format!(
                "this endpoint needs the {} role: send `Authorization: Bearer <token>` or a client certificate",
                needed.name()
            ));
        }
        Err(r) => return r,
    };
    if principal.role < needed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!(
                "{} has the {} role; {} {} needs {}",
                principal.name,
                principal.role.name(),
                req.method(),
                req.uri().path(),
                needed.name()
            ),
        )
        .into_response();
    }
    grant(&mut req, principal);
    next.run(req).await
}

/// Let `req` through as `principal`. The role also goes into [`RELAYED_ROLE`], replacing
/// whatever the client sent there, so that a request relayed to the leader keeps it.
fn grant(req: &mut Request, principal: Principal) {
    req.headers_mut().insert(
        RELAYED_ROLE,
        axum::http::HeaderValue::from_static(principal.role.name()),
    );
    req.extensions_mut().insert(principal);
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
