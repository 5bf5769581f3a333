//! Bearer tokens of Dockyard's own token service, pure: scopes as clients ask for them, and
//! signing and verifying tokens.
//!
//! A token is JWT-shaped (`header.claims.signature`, base64url without padding), the shape
//! Docker's token specification describes and clients treat as opaque. Only Dockyard reads its
//! tokens back, so the signature is HMAC-SHA256 with a key kept in the database, compared in
//! constant time. The claims carry Docker's `access` list: the repositories and the actions on
//! each that the token grants.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The length of the signing key.
pub const KEY_LEN: usize = 32;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// One entry of a token's `access` claim, and of a `scope` request parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `repository` (or `registry` for `registry:catalog:*`).
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.kind == kind && self.name == name && self.actions.iter().any(|a| a == action)
    }
}

/// Parses a `scope` parameter: space-separated `type:name:action,action` entries. The name may
/// itself contain a colon (a registry host with a port), so type is cut at the first colon and
/// the actions at the last. Malformed entries are ignored, as Distribution does.
pub fn parse_scope(scope: &str) -> Vec<Access> {
    scope
        .split(' ')
        .filter_map(|entry| {
            let (kind, rest) = entry.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            if kind.is_empty() || name.is_empty() {
                return None;
            }
            Some(Access {
                kind: kind.to_string(),
                name: name.to_string(),
                actions: actions
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user name, or empty for an anonymous caller.
    pub sub: String,
    pub aud: String,
    /// Unix seconds.
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Access>,
}

impl Claims {
    pub fn subject(&self) -> Option<&str> {
        (!self.sub.is_empty()).then_some(self.sub.as_str())
    }

    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| a.grants(kind, name, action))
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued for another service")]
    Audience,
}

fn mac(key: &[u8; KEY_LEN]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

pub fn sign(key: &[u8; KEY_LEN], claims: &Claims) -> String {
    let claims = serde_json::to_vec(claims).expect("claims always serialize");
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut m = mac(key);
    m.update(signed.as_bytes());
    let sig = m.finalize().into_bytes();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Checks the signature (in constant time) before reading anything else, then the times and
/// the audience.
pub fn verify(
    key: &[u8; KEY_LEN],
    token: &str,
    service: &str,
    now: u64,
) -> Result<Claims, TokenError> {
    let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed)?;
    let mut m = mac(key);
    m.update(signed.as_bytes());
    m.verify_slice(&sig).map_err(|_| TokenError::Signature)?;
    let (header, claims) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    if header != HEADER.as_bytes() {
        return Err(TokenError::Malformed);
    }
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or(TokenError::Malformed)?;
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    if now < claims.nbf {
        return Err(TokenError::NotYetValid);
    }
    if claims.aud != service {
        return Err(TokenError::Audience);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

    fn claims() -> Claims {
        Claims {
            iss: "dockyard".into(),
            sub: "alice".into(),
            aud: "dockyard".into(),
            exp: 1_000,
            nbf: 900,
            iat: 900,
            jti: "j".into(),
            access: parse_scope("repository:alice/app:pull,push"),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let t = sign(&KEY, &claims());
        assert_eq!(t.split('.').count(), 3, "JWT-shaped");
        let c = verify(&KEY, &t, "dockyard", 950).unwrap();
        assert_eq!(c, claims());
        assert!(c.grants("repository", "alice/app", "push"));
        assert!(!c.grants("repository", "alice/app", "delete"));
        assert!(!c.grants("repository", "alice/other", "pull"));
        assert_eq!(
            verify(&KEY, &t, "dockyard", 1_000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&KEY, &t, "dockyard", 899),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(verify(&KEY, &t, "other", 950), Err(TokenError::Audience));
    }

    #[test]
    fn tampering_or_another_key_is_refused() {
        let t = sign(&KEY, &claims());
        assert_eq!(
            verify(&[8; KEY_LEN], &t, "dockyard", 950),
            Err(TokenError::Signature)
        );
        // Widen the access claim and re-encode it under the old signature.
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims();
        c.access[0].actions.push("delete".into());
        let forged_claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(
            verify(&KEY, &forged, "dockyard", 950),
            Err(TokenError::Signature)
        );
        for junk in ["", "a", "a.b", "a.b.c", "...", &t[..t.len() - 2]] {
            assert!(verify(&KEY, junk, "dockyard", 950).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn scopes_parse_like_distribution() {
        assert_eq!(
            parse_scope("repository:library/alpine:pull,push"),
            vec![Access {
                kind: "repository".into(),
                name: "library/alpine".into(),
                actions: vec!["pull".into(), "push".into()],
            }]
        );
        let two = parse_scope("repository:a:pull registry:catalog:*");
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].name, "catalog");
        assert_eq!(two[1].actions, vec!["*".to_string()]);
        assert_eq!(
            parse_scope("repository:host:5000/x:pull")[0].name,
            "host:5000/x"
        );
        assert!(parse_scope("garbage").is_empty());
        assert!(parse_scope(":x:pull").is_empty());
        assert!(parse_scope("").is_empty());
    }
}
