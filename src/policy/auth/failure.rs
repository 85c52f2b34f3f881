//! Why a credential is refused: the fixed set of reasons (the metric's label) and the refusal
//! a route answers with.

use http::HeaderValue;

use crate::error::Reject;

/// Why a credential was refused, as a small fixed set (the `reason` label of
/// `tollgate_auth_failures_total`). Never derived from client data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No credential any of the route's providers looks for.
    Missing,
    /// The credential header is given more than once.
    Duplicate,
    /// The credential is larger than [`MAX_CREDENTIAL`].
    TooLarge,
    /// Not `Bearer <token>`, not three parts, bad base64 or JSON, claims of the wrong type.
    Malformed,
    /// The token's algorithm is not one the provider accepts.
    BadAlgorithm,
    /// An API key no consumer owns.
    InvalidKey,
    Expired,
    NotYetValid,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    /// The token's `kid` is not in the JWKS.
    UnknownKid,
    /// The provider's keys come from an identity provider, and none has arrived yet.
    KeysUnavailable,
    /// Any other token refusal (no `exp`, critical header parameters...).
    InvalidToken,
    /// The route takes only a client certificate, and the connection has none.
    NoCertificate,
    /// The client certificate lacks the part (`consumer_from`) that names the caller.
    UnmappedCertificate,
    /// Authenticated, but not among the route's consumers or claims (403).
    Forbidden,
    /// The introspection endpoint says the token is not active.
    Inactive,
    /// The introspection endpoint could not answer (503).
    IntrospectionUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Reason::Missing,
        Reason::Duplicate,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::BadAlgorithm,
        Reason::InvalidKey,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::BadSignature,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::UnknownKid,
        Reason::KeysUnavailable,
        Reason::InvalidToken,
        Reason::NoCertificate,
        Reason::UnmappedCertificate,
        Reason::Forbidden,
        Reason::Inactive,
        Reason::IntrospectionUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Duplicate => "duplicate",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::BadAlgorithm => "bad_algorithm",
            Reason::InvalidKey => "invalid_key",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::BadSignature => "bad_signature",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::UnknownKid => "unknown_kid",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::InvalidToken => "invalid_token",
            Reason::NoCertificate => "no_certificate",
            Reason::UnmappedCertificate => "unmapped_certificate",
            Reason::Forbidden => "forbidden",
            Reason::Inactive => "inactive",
            Reason::IntrospectionUnavailable => "introspection_unavailable",
        }
    }

    /// Position in [`Reason::ALL`] (a metrics slot).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a request is refused: status, reason, message, `WWW-Authenticate`.
pub struct Failure {
    pub reject: Reject,
    pub reason: Reason,
    pub message: &'static str,
    pub www: Option<HeaderValue>,
}

pub(super) fn fail((reason, message): (Reason, &'static str), www: HeaderValue) -> Failure {
    Failure {
        reject: Reject::Unauthorized,
        reason,
        message,
        www: Some(www),
    }
}

pub(super) fn bearer_www(message: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "Bearer error=\"invalid_token\", error_description=\"{message}\""
    ))
    .unwrap_or(HeaderValue::from_static("Bearer"))
}
