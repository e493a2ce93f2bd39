//! The client API's authorization layer: it applies the credential model
//! ([`crate::auth`]) to each request, answering 401 (no or bad credential) and 403 (a role
//! too weak) as JSON errors before any handler runs.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::auth::{Principal, RELAYED_ROLE, Role, required_role};
use crate::tls::{ConnInfo, Port};
use crate::web::ApiError;

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
