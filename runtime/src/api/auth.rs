//! API keys: `Authorization: Bearer <secret>`. Keys are stored as the hex SHA-256 of the
//! secret, carry a tenant and scopes; the tenant of every request comes from its key.
//!
//! Dev mode (`server.dev` on a loopback address) lets requests without a key through as
//! tenant `default` with every scope. A request that does present a key is always checked.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;

/// The tenant used without keys in dev mode.
pub const DEV_TENANT: &str = "default";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything, including key management.
    Admin,
    /// Upload, activate and delete plugins.
    Deploy,
    /// Submit, cancel and redrive jobs.
    Invoke,
    /// Read jobs, events, plugins and usage.
    Read,
}

impl Scope {
    /// Every scope name.
    pub const NAMES: [&'static str; 4] = ["admin", "deploy", "invoke", "read"];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
            Scope::Read => "read",
        }
    }
}

/// Who is calling: the tenant and scopes of their key.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The tenant every request is scoped to.
    pub tenant: String,
    /// Granted scopes (names).
    pub scopes: Vec<String>,
}

impl Principal {
    /// Fail with 403 unless the key has `scope` (or `admin`).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self
            .scopes
            .iter()
            .any(|s| s == scope.as_str() || s == "admin")
        {
            Ok(())
        } else {
            Err(
                ApiError::forbidden(format!("this API key lacks the `{}` scope", scope.as_str()))
                    .with("required_scope", scope.as_str()),
            )
        }
    }
}

/// A scope, as a type: the parameter of [`Scoped`].
pub trait ScopeName: Send + Sync + 'static {
    /// The scope it stands for.
    const SCOPE: Scope;
}

macro_rules! scope_types {
    ($($ty:ident => $scope:ident / $alias:ident,)*) => {$(
        #[doc = concat!("The `", stringify!($scope), "` scope as a type.")]
        #[derive(Debug, Clone, Copy)]
        pub struct $ty;
        impl ScopeName for $ty {
            const SCOPE: Scope = Scope::$scope;
        }
        #[doc = concat!("A caller whose key has the `", stringify!($scope), "` scope (or `admin`).")]
        pub type $alias = Scoped<$ty>;
    )*};
}

scope_types! {
    AdminScope => Admin / Administrator,
    DeployScope => Deploy / Deployer,
    InvokeScope => Invoke / Invoker,
    ReadScope => Read / Reader,
}

/// A [`Principal`] whose key has scope `S`: taking one as a handler argument, before the body,
/// checks the key and its scope before anything of the body is read or parsed.
#[derive(Debug, Clone)]
pub struct Scoped<S>(pub Principal, std::marker::PhantomData<S>);

impl<S> std::ops::Deref for Scoped<S> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<S: ScopeName> FromRequestParts<AppState> for Scoped<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(S::SCOPE)?;
        Ok(Scoped(principal, std::marker::PhantomData))
    }
}

/// The stored form of a secret: hex SHA-256.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random secret (`sk_` + 32 random bytes in hex).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("sk_{}", hex::encode(bytes))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            if state.dev_open {
                return Ok(Principal {
                    tenant: DEV_TENANT.into(),
                    scopes: vec!["admin".into()],
                });
            }
            return Err(ApiError::unauthorized(
                "missing API key: send `Authorization: Bearer <key>` (create one with `sluice keys create`)",
            ));
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <key>`")
            })?;
        let key = state
            .node
            .store
            .api_key_by_hash(&hash_secret(secret))
            .await?
            .filter(|k| !k.revoked)
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
        Ok(Principal {
            tenant: key.tenant,
            scopes: key.scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_every_scope() {
        let p = Principal {
            tenant: "t".into(),
            scopes: vec!["admin".into()],
        };
        assert!(p.require(Scope::Deploy).is_ok());
        let p = Principal {
            tenant: "t".into(),
            scopes: vec!["read".into()],
        };
        assert!(p.require(Scope::Read).is_ok());
        assert_eq!(p.require(Scope::Invoke).unwrap_err().status, 403);
    }

    #[test]
    fn secrets_hash_stably() {
        let s = generate_secret();
        assert!(s.starts_with("sk_") && s.len() == 67);
        assert_eq!(hash_secret(&s), hash_secret(&s));
        assert_eq!(hash_secret(&s).len(), 64);
    }
}
