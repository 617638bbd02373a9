//! HS256 tokens: minting and verification.
//!
//! Only HS256 is accepted (so `alg: none` and key-confusion tricks fail),
//! `exp` is required with a small leeway, and `iss`/`aud` are checked when
//! configured. Without `PULSE_JWT_SECRET`, a random development secret is
//! kept in a file so that `pulse serve` and `pulse token` agree on one
//! machine.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::Role;
use crate::config::JwtConfig;

/// Where the development secret lives, relative to the working directory.
pub const DEV_SECRET_FILE: &str = ".pulse-dev-secret";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id or email.
    pub sub: String,
    /// Tenant slug.
    pub tenant: String,
    pub role: Role,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// A dashboard share link's token: read-only access to one dashboard of one
/// tenant, until `exp` or until the link is revoked (checked against the
/// database on every use). Signed with a key of its own, so neither kind
/// of token can pass for the other.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShareClaims {
    /// `share:<link id>`.
    pub sub: String,
    pub tenant: String,
    pub dashboard: String,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// The keys and rules for tokens, built once at start-up.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    share_encoding: EncodingKey,
    share_decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtKeys {
    pub fn new(secret: &[u8], config: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.as_secs();
        // A configured issuer or audience must also be present: a token
        // without the claim is not one of ours.
        let mut required = vec!["exp", "sub"];
        match &config.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let share_secret = [secret, b"|pulse-share-links"].concat();
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            share_encoding: EncodingKey::from_secret(&share_secret),
            share_decoding: DecodingKey::from_secret(&share_secret),
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        }
    }

    pub fn mint(
        &self,
        sub: &str,
        tenant: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = now_secs();
        let claims = Claims {
            sub: sub.to_owned(),
            tenant: tenant.to_owned(),
            role,
            exp: now + ttl.as_secs(),
            iat: Some(now),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

impl JwtKeys {
    pub fn mint_share(&self, claims: &ShareClaims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.share_encoding)
    }

    pub fn verify_share(&self, token: &str) -> Result<ShareClaims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<ShareClaims>(token, &self.share_decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The configured secret, or the development secret from [`DEV_SECRET_FILE`]
/// (created with 32 random bytes when missing). Returns whether the
/// development secret was used, so `serve` can warn.
pub fn resolve_secret(config: &JwtConfig) -> std::io::Result<(Vec<u8>, bool)> {
    if let Some(secret) = &config.secret {
        return Ok((secret.as_bytes().to_vec(), false));
    }
    Ok((dev_secret(Path::new(DEV_SECRET_FILE))?, true))
}

fn dev_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(existing) if existing.trim().len() >= 32 => {
            return Ok(existing.trim().as_bytes().into());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    write_private(path, &secret)?;
    Ok(secret.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JwtConfig {
        JwtConfig {
            secret: Some("test-secret-test-secret-test-secret".into()),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let keys = JwtKeys::new(b"test-secret", &config());
        let token = keys
            .mint("a@b.c", "acme", Role::Editor, Duration::from_secs(60))
            .expect("mint");
        let claims = keys.verify(&token).expect("verify");
        assert_eq!(
            (claims.sub.as_str(), claims.tenant.as_str(), claims.role),
            ("a@b.c", "acme", Role::Editor)
        );
    }

    #[test]
    fn another_secret_or_a_configured_issuer_rejects_the_token() {
        let keys = JwtKeys::new(b"one", &config());
        let token = keys
            .mint("u", "acme", Role::Viewer, Duration::from_secs(60))
            .expect("mint");
        assert!(JwtKeys::new(b"two", &config()).verify(&token).is_err());
        let strict = JwtConfig {
            issuer: Some("pulse".into()),
            ..config()
        };
        assert!(JwtKeys::new(b"one", &strict).verify(&token).is_err());
    }

    #[test]
    fn the_dev_secret_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        let first = dev_secret(&path).expect("create");
        let second = dev_secret(&path).expect("reuse");
        assert_eq!(first, second);
        assert!(first.len() >= 32);
    }
}
