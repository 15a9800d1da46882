//! Huawei IAM's password-authentication token request (`POST /v3/auth/tokens`) and its answer.

use serde::{Deserialize, Serialize};

/// The request body: `{"auth": {"identity": ..., "scope": ...}}`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct TokenRequest {
    pub auth: Auth,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Auth {
    pub identity: Identity,
    /// Which project the token is for; this API needs project-scoped tokens.
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

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Scope {
    pub project: Option<NameOrId>,
}

/// What a validated request asks for. `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordLogin {
    pub domain: String,
    pub user: String,
    pub password: String,
    /// Project by name or id, as given.
    pub project_name: Option<String>,
    pub project_id: Option<String>,
}

impl std::fmt::Debug for PasswordLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let project = (&self.project_name, &self.project_id);
        write!(
            f,
            "PasswordLogin({}/{}, project {project:?}, ..)",
            self.domain, self.user
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
    /// Checks the request is a project-scoped password login and extracts it.
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
        let project = self
            .auth
            .scope
            .and_then(|s| s.project)
            .ok_or_else(|| IamError::BadRequest("scope.project is required".into()))?;
        if project.name.is_none() && project.id.is_none() {
            return Err(IamError::BadRequest(
                "scope.project needs a name or an id".into(),
            ));
        }
        Ok(PasswordLogin {
            domain,
            user: user.name,
            password: user.password,
            project_name: project.name,
            project_id: project.id,
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
    pub project: TokenProject,
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
        assert_eq!(got.project_name.as_deref(), Some("cn-north-7"));
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
