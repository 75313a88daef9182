//! Who is calling: the admin (the deployment's admin token as bearer), a signed-in user (a bearer
//! token one of the apps' authenticators accepts), or nobody. Handlers take [`Admin`] as their
//! first argument, so a request from anyone else is refused (401 without a credential, 403 with
//! someone else's) before its body is read, let alone parsed.

use crate::admin::{bearer_token, AdminToken};
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use futures::future::BoxFuture;
use std::sync::Arc;

/// An app's way of recognising its signed-in users from a request's credentials.
pub trait Authenticator: Send + Sync + 'static {
    /// The user id a request's bearer token stands for, when it is a valid session.
    fn user<'a>(&'a self, headers: &'a HeaderMap) -> BoxFuture<'a, Option<String>>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    User(String),
    Anonymous,
}

/// Every way a request can say who it is, as the node knows them. Put in each request's
/// extensions by the server, so extractors anywhere can ask.
#[derive(Clone)]
pub struct Callers {
    admin_token: AdminToken,
    authenticators: Arc<Vec<Arc<dyn Authenticator>>>,
}

impl Callers {
    pub fn new(admin_token: AdminToken, authenticators: Vec<Arc<dyn Authenticator>>) -> Callers {
        Callers { admin_token, authenticators: Arc::new(authenticators) }
    }

    pub async fn identify(&self, headers: &HeaderMap) -> Caller {
        match bearer_token(headers) {
            None => Caller::Anonymous,
            Some(token) if self.admin_token.matches(token) => Caller::Admin,
            Some(_) => {
                for authenticator in self.authenticators.iter() {
                    if let Some(user) = authenticator.user(headers).await {
                        return Caller::User(user);
                    }
                }
                Caller::Anonymous
            }
        }
    }
}

/// The admin, or the request is refused before anything else of it is read: 401 without a
/// credential (or an unknown one), 403 with a signed-in user's.
#[derive(Clone, Copy, Debug)]
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Admin, ApiError> {
        let callers =
            parts.extensions.get::<Callers>().cloned().ok_or_else(|| {
                ApiError::Internal("the server put no Callers in the request's extensions".to_string())
            })?;
        match callers.identify(&parts.headers).await {
            Caller::Admin => Ok(Admin),
            Caller::User(_) => Err(ApiError::Forbidden),
            Caller::Anonymous => Err(ApiError::Unauthorized),
        }
    }
}

/// Who is calling, for routes that answer differently by caller (`/api/commands/{id}`).
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Caller, ApiError> {
        match parts.extensions.get::<Callers>().cloned() {
            Some(callers) => Ok(callers.identify(&parts.headers).await),
            None => Ok(Caller::Anonymous),
        }
    }
}
