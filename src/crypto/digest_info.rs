//! The DER `DigestInfo` of RSASSA-PKCS1-v1_5 (RFC 8017 §9.2): what the gateway hands the token
//! to sign with `CKM_RSA_PKCS`, and what the verifier expects to recover.

use super::algorithm::HashAlg;
use std::sync::LazyLock;

/// The `DigestInfo` prefixes (AlgorithmIdentifier and the OCTET STRING header) of each hash,
/// as the `rsa` crate derives them from the hashes' OIDs.
static PREFIXES: LazyLock<[Box<[u8]>; 3]> = LazyLock::new(|| {
    [
        rsa::Pkcs1v15Sign::new::<sha2::Sha256>().prefix,
        rsa::Pkcs1v15Sign::new::<sha2::Sha384>().prefix,
        rsa::Pkcs1v15Sign::new::<sha2::Sha512>().prefix,
    ]
});

/// `DigestInfo ::= SEQUENCE { digestAlgorithm AlgorithmIdentifier, digest OCTET STRING }` of
/// `digest`, which the caller has checked is `hash`'s length.
pub fn digest_info(hash: HashAlg, digest: &[u8]) -> Vec<u8> {
    let prefix = match hash {
        HashAlg::Sha256 => &PREFIXES[0],
        HashAlg::Sha384 => &PREFIXES[1],
        HashAlg::Sha512 => &PREFIXES[2],
    };
    [&prefix[..], digest].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_8017_notes() {
        // RFC 8017 §9.2, note 1: the DER of DigestInfo for SHA-256 starts with this.
        let sha256 = hex::decode("3031300d060960864801650304020105000420").unwrap();
        let d = [0xab; 32];
        assert_eq!(digest_info(HashAlg::Sha256, &d), [&sha256[..], &d].concat());
        let sha384 = hex::decode("3041300d060960864801650304020205000430").unwrap();
        assert_eq!(digest_info(HashAlg::Sha384, &[1; 48])[..19], sha384[..]);
        let sha512 = hex::decode("3051300d060960864801650304020305000440").unwrap();
        assert_eq!(digest_info(HashAlg::Sha512, &[1; 64])[..19], sha512[..]);
    }
}
