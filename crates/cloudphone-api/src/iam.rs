//! Huawei IAM's password-authentication token request (`POST /v3/auth/tokens`) and its answer,
//! and the projects a caller may scope to (`GET /v3/auth/projects`, KeystoneListAuthProjects).

use serde::{Deserialize, Serialize};

/// The request body: `{"auth": {"identity": ..., "scope": ...}}`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct TokenRequest {
    pub auth: Auth,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Auth {
    pub identity: Identity,
    /// What the token is for: a project (what CloudDevice operations need), or the whole
    /// domain (enough to list projects).
    #[serde(default)]
    pub scope: Option<Scope>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Identity {
    /// Must contain `"password"`.
    pub methods: Vec<String>,
    pub password: Option<PasswordIdentity>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PasswordIdentity {
    pub user: PasswordUser,
}

#[derive(Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PasswordUser {
    /// IAM user name.
    pub name: String,
    /// Never in `Debug` output.
    pub password: String,
    /// The account (tenant) the user belongs to.
    pub domain: NameOrId,
}

impl std::fmt::Debug for PasswordUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordUser")
            .field("name", &self.name)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// IAM lets a domain or project be named either way.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct NameOrId {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Exactly one of `project` and `domain`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<NameOrId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<NameOrId>,
}

/// What a token is asked for, each named by name or id as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginScope {
    /// A project of the user's domain.
    Project {
        name: Option<String>,
        id: Option<String>,
    },
    /// The user's own domain as a whole.
    Domain {
        name: Option<String>,
        id: Option<String>,
    },
}

/// What a validated request asks for. `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordLogin {
    pub domain: String,
    pub user: String,
    pub password: String,
    pub scope: LoginScope,
}

impl std::fmt::Debug for PasswordLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PasswordLogin({}/{}, {:?}, ..)",
            self.domain, self.user, self.scope
        )
    }
}

/// Why an IAM request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IamError {
    #[error("the request body is not a password authentication request: {0}")]
    BadRequest(String),
    #[error("the username or password is wrong")]
    WrongCredentials,
    /// An AK/SK (`OS-CREDENTIAL`) request body that is not acceptable.
    #[error("{0}")]
    InvalidCredentialRequest(&'static str),
    /// The `X-Auth-Token` is missing, unknown or expired.
    #[error("token missing, unknown or expired")]
    InvalidToken,
    /// The caller may not act on what it named.
    #[error("{0}")]
    Forbidden(&'static str),
    /// What the caller named does not exist (for it).
    #[error("{0}")]
    NotFound(&'static str),
    /// Too many wrong passwords for the user or from the address (or every password check is
    /// busy): API gateway's throttling answer, sent with `Retry-After` (docs/api-notes.md).
    #[error("The throttling threshold has been reached: too many login attempts")]
    TooManyRequests,
    /// Anything the caller cannot fix; details go to the log.
    #[error("internal error")]
    Internal,
}

impl IamError {
    pub fn http_status(&self) -> u16 {
        match self {
            IamError::BadRequest(_) | IamError::InvalidCredentialRequest(_) => 400,
            IamError::WrongCredentials | IamError::InvalidToken => 401,
            IamError::Forbidden(_) => 403,
            IamError::NotFound(_) => 404,
            IamError::TooManyRequests => 429,
            IamError::Internal => 500,
        }
    }

    /// Huawei IAM's error codes for these cases.
    pub fn code(&self) -> &'static str {
        match self {
            IamError::BadRequest(_) | IamError::InvalidCredentialRequest(_) => "IAM.0011",
            IamError::WrongCredentials | IamError::InvalidToken => "IAM.0002",
            IamError::Forbidden(_) => "IAM.0003",
            IamError::NotFound(_) => "IAM.0004",
            IamError::TooManyRequests => "APIGW.0308",
            IamError::Internal => "IAM.0001",
        }
    }
}

impl TokenRequest {
    /// Checks the request is a project- or domain-scoped password login and extracts it.
    pub fn into_login(self) -> Result<PasswordLogin, IamError> {
        let identity = self.auth.identity;
        if !identity.methods.iter().any(|m| m == "password") {
            return Err(IamError::BadRequest(
                "identity.methods must contain \"password\"".into(),
            ));
        }
        let user = identity
            .password
            .ok_or_else(|| IamError::BadRequest("identity.password is required".into()))?
            .user;
        let domain = user
            .domain
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| IamError::BadRequest("user.domain.name is required".into()))?;
        let named = |what: &str, n: NameOrId| {
            let name = n.name.filter(|v| !v.is_empty());
            let id = n.id.filter(|v| !v.is_empty());
            if name.is_none() && id.is_none() {
                return Err(IamError::BadRequest(format!(
                    "scope.{what} needs a name or an id"
                )));
            }
            Ok((name, id))
        };
        let scope = match self.auth.scope {
            Some(Scope {
                project: Some(project),
                domain: None,
            }) => {
                let (name, id) = named("project", project)?;
                LoginScope::Project { name, id }
            }
            Some(Scope {
                project: None,
                domain: Some(domain),
            }) => {
                let (name, id) = named("domain", domain)?;
                LoginScope::Domain { name, id }
            }
            Some(Scope {
                project: Some(_),
                domain: Some(_),
            }) => {
                return Err(IamError::BadRequest(
                    "scope names a project or a domain, not both".into(),
                ));
            }
            _ => {
                return Err(IamError::BadRequest(
                    "scope.project or scope.domain is required".into(),
                ));
            }
        };
        Ok(PasswordLogin {
            domain,
            user: user.name,
            password: user.password,
            scope,
        })
    }
}

/// The `201 Created` body; the token itself travels in `X-Subject-Token`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub token: TokenBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenBody {
    /// RFC 3339 UTC, e.g. `2019-02-13T06:52:13.855000Z`.
    pub expires_at: String,
    pub issued_at: String,
    pub methods: Vec<String>,
    pub user: TokenUser,
    /// The project of a project-scoped token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<TokenProject>,
    /// The domain of a domain-scoped token (IAM sends `domain` instead of `project`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<IdName>,
    /// Service catalog; cloudphone has no other services to list.
    pub catalog: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenUser {
    pub id: String,
    pub name: String,
    pub domain: IdName,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenProject {
    pub id: String,
    pub name: String,
    pub domain: IdName,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdName {
    pub id: String,
    pub name: String,
}

/// `GET /v3/auth/projects`: the projects the caller may scope a token to.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuthProjects {
    pub projects: Vec<AuthProject>,
    pub links: CollectionLinks,
}

/// One project as IAM lists it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuthProject {
    pub id: String,
    pub name: String,
    /// The account (tenant) the project belongs to.
    pub domain_id: String,
    /// IAM's projects hang directly under their account: the account id.
    pub parent_id: String,
    pub description: String,
    /// Always true: cloudphone has no disabled projects.
    pub enabled: bool,
    /// Always false (a project, not a domain).
    pub is_domain: bool,
    pub links: SelfLink,
}

/// `{"self": url}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SelfLink {
    #[serde(rename = "self")]
    pub self_: String,
}

/// A collection's links; the list is never paged, so `previous` and `next` are null.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CollectionLinks {
    #[serde(rename = "self")]
    pub self_: String,
    pub previous: Option<String>,
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(body: serde_json::Value) -> Result<PasswordLogin, IamError> {
        serde_json::from_value::<TokenRequest>(body)
            .map_err(|e| IamError::BadRequest(e.to_string()))?
            .into_login()
    }

    #[test]
    fn accepts_the_documented_request() {
        let got = login(serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "username", "password": "secret", "domain": {"name": "domainname"}}}},
            "scope": {"project": {"name": "cn-north-7"}}}}))
        .unwrap();
        assert_eq!(got.domain, "domainname");
        assert_eq!(got.user, "username");
        assert_eq!(
            got.scope,
            LoginScope::Project {
                name: Some("cn-north-7".into()),
                id: None
            }
        );
    }

    #[test]
    fn accepts_a_domain_scope_and_refuses_both_or_neither_name() {
        let user = serde_json::json!({"methods": ["password"], "password": {"user": {
            "name": "u", "password": "p", "domain": {"name": "acme"}}}});
        let scoped = |scope: serde_json::Value| {
            login(serde_json::json!({"auth": {"identity": user.clone(), "scope": scope}}))
        };
        assert_eq!(
            scoped(serde_json::json!({"domain": {"id": "t1"}}))
                .unwrap()
                .scope,
            LoginScope::Domain {
                name: None,
                id: Some("t1".into())
            }
        );
        for bad in [
            serde_json::json!({"domain": {}}),
            serde_json::json!({"domain": {"name": ""}}),
            serde_json::json!({"project": {"name": "p"}, "domain": {"name": "acme"}}),
            serde_json::json!({}),
        ] {
            assert!(
                matches!(scoped(bad.clone()), Err(IamError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_leaves_the_password_out() {
        let request: TokenRequest = serde_json::from_value(serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "alice", "password": "hunter2-pw", "domain": {"name": "acme"}}}},
            "scope": {"project": {"name": "cn-north-7"}}}}))
        .unwrap();
        let shown = format!("{request:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2-pw"),
            "{shown}"
        );
        let shown = format!("{:?}", request.into_login().unwrap());
        assert!(
            shown.contains("alice") && !shown.contains("hunter2-pw"),
            "{shown}"
        );
    }

    #[test]
    fn refuses_other_methods_and_unscoped_requests() {
        let token_method = serde_json::json!({"auth": {"identity": {"methods": ["token"]},
            "scope": {"project": {"name": "p"}}}});
        assert!(matches!(login(token_method), Err(IamError::BadRequest(_))));
        let unscoped = serde_json::json!({"auth": {"identity": {"methods": ["password"],
            "password": {"user": {"name": "u", "password": "p", "domain": {"name": "d"}}}}}});
        assert!(matches!(login(unscoped), Err(IamError::BadRequest(_))));
    }
}
