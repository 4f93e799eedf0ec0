//! `x-kms-apiname`: the APIs of the instance protocol, and the ones p11kms serves.

use super::error::{Code, InstanceError};

/// APIs the SDKs can call that p11kms does not serve (symmetric keys, secrets, hashing):
/// `UnsupportedOperation`, not `InvalidApiName`.
const OTHER_APIS: &[&str] = &[
    "Encrypt",
    "Decrypt",
    "GenerateDataKey",
    "GetSecretValue",
    "AdvanceEncrypt",
    "AdvanceDecrypt",
    "AdvanceGenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "AdvanceGenerateDataKeyPair",
    "AdvanceGenerateDataKeyPairWithoutPlaintext",
    "Hash",
    "Hmac",
];

/// Longest piece of a client's header value quoted back in a message.
const MAX_QUOTED: usize = 64;

/// An API of the instance protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiName {
    /// `Sign`.
    Sign,
    /// `Verify`.
    Verify,
    /// `GetPublicKey`.
    GetPublicKey,
    /// `GenerateRandom`.
    GenerateRandom,
    /// An API of the protocol that p11kms does not serve.
    Other(&'static str),
}

impl ApiName {
    /// The APIs p11kms serves.
    pub const SERVED: [ApiName; 4] = [
        ApiName::Sign,
        ApiName::Verify,
        ApiName::GetPublicKey,
        ApiName::GenerateRandom,
    ];

    /// The API a header value names.
    ///
    /// # Errors
    /// `InvalidApiName` for a name that is no API of the protocol.
    pub fn parse(value: &str) -> Result<Self, InstanceError> {
        Ok(match value {
            "Sign" => ApiName::Sign,
            "Verify" => ApiName::Verify,
            "GetPublicKey" => ApiName::GetPublicKey,
            "GenerateRandom" => ApiName::GenerateRandom,
            other => match OTHER_APIS.iter().find(|n| **n == other) {
                Some(name) => ApiName::Other(name),
                None => {
                    return Err(InstanceError::new(
                        Code::InvalidApiName,
                        format!("The ApiName \"{}\" is invalid.", quoted(other)),
                    ))
                }
            },
        })
    }

    /// The name as sent.
    pub fn name(self) -> &'static str {
        match self {
            ApiName::Sign => "Sign",
            ApiName::Verify => "Verify",
            ApiName::GetPublicKey => "GetPublicKey",
            ApiName::GenerateRandom => "GenerateRandom",
            ApiName::Other(name) => name,
        }
    }

    /// This API, if p11kms serves it.
    ///
    /// # Errors
    /// `UnsupportedOperation` for the others.
    pub fn served(self) -> Result<Self, InstanceError> {
        match self {
            ApiName::Other(name) => Err(InstanceError::new(
                Code::UnsupportedOperation,
                format!(
                    "Rejected.UnsupportedOperation: p11kms serves Sign, Verify, GetPublicKey and \
                     GenerateRandom, not {name}"
                ),
            )),
            served => Ok(served),
        }
    }
}

/// At most [`MAX_QUOTED`] characters of a client's value, to quote it back safely.
pub(super) fn quoted(value: &str) -> String {
    let mut out: String = value.chars().take(MAX_QUOTED).collect();
    if value.chars().count() > MAX_QUOTED {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_served_unsupported_or_invalid() {
        for api in [
            ApiName::Sign,
            ApiName::Verify,
            ApiName::GetPublicKey,
            ApiName::GenerateRandom,
        ] {
            assert_eq!(ApiName::parse(api.name()).unwrap().served().unwrap(), api);
        }
        let e = ApiName::parse("Encrypt").unwrap().served().unwrap_err();
        assert_eq!(e.code(), Code::UnsupportedOperation);
        assert!(e.message().contains("not Encrypt"), "{}", e.message());
        let e = ApiName::parse("sign").unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidApiName, "The ApiName \"sign\" is invalid.")
        );
        let e = ApiName::parse(&"x".repeat(500)).unwrap_err();
        assert!(e.message().len() < 100, "{}", e.message());
    }
}
