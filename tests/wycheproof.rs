//! Wycheproof's signature vectors through `PublicKey::verify_prehash`, the one verifier behind
//! verify-after-sign and the Verify APIs, for every key spec and scheme p11kms serves.
//!
//! The sets come from the `wycheproof` crate, pinned exactly in Cargo.toml. A group runs when
//! its key and parameters are ones p11kms serves; every other group is skipped and counted with
//! its reason. Each test prints what ran (`cargo nextest run --test wycheproof --no-capture`)
//! and compares the counts with its `EXPECTED` table, so the numbers quoted in notes are the
//! numbers that ran, and a filter that silently drops a set fails.
//!
//! "valid" vectors must verify and "invalid" ones must not. Wycheproof leaves "acceptable"
//! vectors to each implementation; [`ACCEPTABLE_REFUSED`] records our decisions, and any other
//! acceptable flag fails the run until it is decided there.
//!
//! Beyond the sets' own verdicts, valid signatures made with parameters we do not use are run
//! under ours and must all be refused ("foreign"): PSS signatures with another salt length or
//! MGF hash, PSS signatures checked as PKCS#1 v1.5, and the reverse. ECDSA verification takes
//! the digest as given, so the served curves' sets with another SHA-2 hash run too (marked
//! "not served").

use p11kms::crypto::{Curve, HashAlg, PublicKey, Scheme};
use std::collections::BTreeMap;
use std::fmt::Debug;
use wycheproof::{EllipticCurve, HashFunction, Mgf, TestResult};

/// Wycheproof's "acceptable" flags that p11kms refuses, and why.
///
/// * `MissingNull`: a PKCS#1 v1.5 DigestInfo whose AlgorithmIdentifier omits the NULL
///   parameters. RFC 8017 §9.2 defines T as the DER of DigestInfo with the NULL (note 1), and
///   verification rebuilds that encoding and compares (§8.2.2 step 4). Only the token signs
///   under our keys, and p11kms always hands it the NULL form, so nothing legitimate lacks it.
/// * `BerEncodedSignature`, `BerEncodedPadding`: BER where DER is required (an ECDSA signature,
///   a DigestInfo). The APIs carry DER, and it is parsed strictly; accepting BER variants only
///   adds malleability.
const ACCEPTABLE_REFUSED: [&str; 3] = ["MissingNull", "BerEncodedSignature", "BerEncodedPadding"];

/// The ECDSA curve and hash pairs p11kms signs with (Yandex and Alibaba alike).
const SERVED_ECDSA: [(Curve, HashAlg); 4] = [
    (Curve::P256, HashAlg::Sha256),
    (Curve::P384, HashAlg::Sha384),
    (Curve::P521, HashAlg::Sha512),
    (Curve::Secp256k1, HashAlg::Sha256),
];

/// RSA modulus sizes p11kms serves.
const SERVED_RSA_BITS: [usize; 3] = [2048, 3072, 4096];

/// Vectors of one family: (valid verified, invalid refused, acceptable refused, foreign refused).
type Counts = (usize, usize, usize, usize);

fn hash_of(h: HashFunction) -> Option<HashAlg> {
    match h {
        HashFunction::Sha2_256 => Some(HashAlg::Sha256),
        HashFunction::Sha2_384 => Some(HashAlg::Sha384),
        HashFunction::Sha2_512 => Some(HashAlg::Sha512),
        _ => None,
    }
}

fn curve_of(c: EllipticCurve) -> Option<Curve> {
    match c {
        EllipticCurve::Secp256r1 => Some(Curve::P256),
        EllipticCurve::Secp384r1 => Some(Curve::P384),
        EllipticCurve::Secp521r1 => Some(Curve::P521),
        EllipticCurve::Secp256k1 => Some(Curve::Secp256k1),
        _ => None,
    }
}

/// What a run did, and every vector that went the wrong way.
#[derive(Default)]
struct Report {
    ran: BTreeMap<String, Counts>,
    skipped: BTreeMap<String, usize>,
    /// Vectors in the sets; each is run under its own set's verdict, run only as foreign, or
    /// skipped.
    total: usize,
    /// Vectors run under their own set's verdict or only as foreign.
    accounted: usize,
    failures: Vec<String>,
}

/// One vector: where it came from, what Wycheproof says of it, and its data.
struct Vector<'a, F> {
    set: &'a str,
    tc_id: usize,
    comment: &'a str,
    result: TestResult,
    flags: &'a [F],
    msg: &'a [u8],
    sig: &'a [u8],
}

/// Builds a [`Vector`] from any of the crate's `Test` types (they share field names).
macro_rules! vector {
    ($set:expr, $t:expr) => {
        Vector {
            set: $set,
            tc_id: $t.tc_id,
            comment: &$t.comment,
            result: $t.result,
            flags: &$t.flags,
            msg: &$t.msg,
            sig: &$t.sig,
        }
    };
}

impl Report {
    fn skip(&mut self, reason: impl Into<String>, vectors: usize) {
        *self.skipped.entry(reason.into()).or_default() += vectors;
    }

    /// Runs `v` under `scheme` and checks the answer against Wycheproof's verdict.
    fn check<F: Debug>(
        &mut self,
        family: &str,
        key: &PublicKey,
        scheme: Scheme,
        v: &Vector<'_, F>,
    ) {
        self.accounted += 1;
        let verified = verify(key, scheme, v.msg, v.sig);
        let counts = self.ran.entry(family.to_string()).or_default();
        let flags: Vec<String> = v.flags.iter().map(|f| format!("{f:?}")).collect();
        let (expect, slot) = match v.result {
            TestResult::Valid => (true, &mut counts.0),
            TestResult::Invalid => (false, &mut counts.1),
            TestResult::Acceptable => {
                let decided = |f: &String| ACCEPTABLE_REFUSED.contains(&f.as_str());
                if flags.is_empty() || !flags.iter().all(decided) {
                    self.failures.push(format!(
                        "{} tc {}: acceptable vector with flags {flags:?} has no policy; decide it in ACCEPTABLE_REFUSED",
                        v.set, v.tc_id
                    ));
                    return;
                }
                (false, &mut counts.2)
            }
        };
        *slot += 1;
        if verified != expect {
            self.failures.push(format!(
                "{} tc {} ({family}, {:?}, {flags:?}, {:?}): {}",
                v.set,
                v.tc_id,
                v.result,
                v.comment,
                if verified { "verified" } else { "refused" }
            ));
        }
    }

    /// Runs a vector made for other parameters under `scheme`: it must be refused. `rerun`:
    /// the vector also ran under its own verdict.
    fn foreign<F>(
        &mut self,
        family: &str,
        key: &PublicKey,
        scheme: Scheme,
        v: &Vector<'_, F>,
        rerun: bool,
    ) {
        if !rerun {
            self.accounted += 1;
        }
        self.ran.entry(family.to_string()).or_default().3 += 1;
        if verify(key, scheme, v.msg, v.sig) {
            self.failures.push(format!(
                "{} tc {}: verified as {family} although made for other parameters",
                v.set, v.tc_id
            ));
        }
    }

    /// Prints the summary, then fails on any wrong answer or a count that differs from
    /// `expected`.
    fn finish(self, title: &str, expected: &[(&str, Counts)]) {
        println!("Wycheproof {title} (wycheproof crate, through PublicKey::verify_prehash)");
        println!(
            "  {:<52} {:>6} {:>8} {:>11} {:>8}",
            "ran", "valid", "invalid", "acceptable", "foreign"
        );
        let mut sum = (0, 0, 0, 0);
        for (family, c) in &self.ran {
            println!(
                "  {family:<52} {:>6} {:>8} {:>11} {:>8}",
                c.0, c.1, c.2, c.3
            );
            sum = (sum.0 + c.0, sum.1 + c.1, sum.2 + c.2, sum.3 + c.3);
        }
        println!(
            "  {:<52} {:>6} {:>8} {:>11} {:>8}",
            "total", sum.0, sum.1, sum.2, sum.3
        );
        let skipped: usize = self.skipped.values().sum();
        println!("  skipped: {skipped} vectors");
        for (reason, n) in &self.skipped {
            println!("    {n:>6}  {reason}");
        }
        assert!(
            self.failures.is_empty(),
            "{} vectors went the wrong way:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
        assert_eq!(
            self.accounted + skipped,
            self.total,
            "every vector is run or skipped"
        );
        let expected: BTreeMap<String, Counts> = expected
            .iter()
            .map(|(f, c)| ((*f).to_string(), *c))
            .collect();
        assert_eq!(self.ran, expected, "vector counts per family");
    }
}

fn verify(key: &PublicKey, scheme: Scheme, msg: &[u8], sig: &[u8]) -> bool {
    let hash = scheme.hash().expect("no SM2 here");
    key.verify_prehash(scheme, &hash.digest(msg), sig).is_ok()
}

#[test]
fn ecdsa_sets_of_the_served_curves() {
    const EXPECTED: [(&str, Counts); 8] = [
        ("ECDSA P-256 with SHA-256", (174, 310, 0, 0)),
        ("ECDSA P-256 with SHA-512 (not served)", (243, 311, 0, 0)),
        ("ECDSA P-384 with SHA-256 (not served)", (162, 310, 0, 0)),
        ("ECDSA P-384 with SHA-384", (194, 310, 0, 0)),
        ("ECDSA P-384 with SHA-512 (not served)", (231, 311, 0, 0)),
        ("ECDSA P-521 with SHA-512", (232, 310, 0, 0)),
        ("ECDSA secp256k1 with SHA-256", (168, 308, 0, 0)),
        (
            "ECDSA secp256k1 with SHA-512 (not served)",
            (237, 309, 0, 0),
        ),
    ];
    use wycheproof::ecdsa::{TestGroupTypeId, TestName, TestSet};
    let mut report = Report::default();
    let mut high_s = 0;
    for name in TestName::all() {
        let set = TestSet::load(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        let set_name = format!("{name:?}");
        for group in &set.test_groups {
            let n = group.tests.len();
            report.total += n;
            let Some(curve) = curve_of(group.key.curve) else {
                report.skip(
                    format!("ECDSA on {:?}: curve not served", group.key.curve),
                    n,
                );
                continue;
            };
            match group.test_type {
                TestGroupTypeId::Ecdsa => {}
                TestGroupTypeId::EcdsaP1363 => {
                    report.skip("ECDSA in IEEE P1363 (r||s) encoding: the APIs carry DER", n);
                    continue;
                }
                TestGroupTypeId::EcdsaBitcoin => {
                    report.skip(
                        "ECDSA under Bitcoin's low-S rule: p11kms follows X9.62, which accepts high-S",
                        n,
                    );
                    continue;
                }
            }
            let Some(hash) = hash_of(group.hash) else {
                report.skip(format!("ECDSA with {:?}: hash not served", group.hash), n);
                continue;
            };
            let family = format!(
                "ECDSA {} with {}{}",
                curve.name(),
                hash.name(),
                if SERVED_ECDSA.contains(&(curve, hash)) {
                    ""
                } else {
                    " (not served)"
                }
            );
            let key = PublicKey::from_ec_point(curve, &group.key.key)
                .unwrap_or_else(|e| panic!("{set_name}: the group's public key: {e}"));
            for t in &group.tests {
                let v = vector!(&set_name, t);
                report.check(&family, &key, Scheme::Ecdsa(hash), &v);
                if (curve, hash) == (Curve::Secp256k1, HashAlg::Sha256)
                    && t.result == TestResult::Valid
                    && is_high_s(&t.sig)
                {
                    high_s += 1;
                }
            }
        }
    }
    println!("valid high-S secp256k1/SHA-256 signatures among those verified: {high_s}");
    // The count: k256's own verifier refused these 72 of the 168 valid vectors.
    assert_eq!(high_s, 72, "high-S secp256k1 vectors");
    report.finish("ECDSA (DER)", &EXPECTED);
}

/// Whether a DER secp256k1 signature has s > n/2 (which Bitcoin's rule, and `k256`'s own
/// verifier, refuse).
fn is_high_s(der: &[u8]) -> bool {
    k256::ecdsa::Signature::from_der(der).is_ok_and(|s| s.normalize_s().is_some())
}

/// The group's key, for sizes we serve.
fn rsa_key(set: &str, bits: usize, n: &[u8], e: &[u8]) -> PublicKey {
    PublicKey::from_rsa(n, e, bits)
        .unwrap_or_else(|err| panic!("{set}: the group's public key: {err}"))
}

#[test]
fn rsa_pss_sets_with_our_parameters() {
    const EXPECTED: [(&str, Counts); 18] = [
        ("RSA-2048 PSS SHA-256", (128, 90, 0, 0)),
        ("RSA-2048 PSS SHA-256 as PKCS#1 v1.5", (0, 0, 0, 128)),
        ("RSA-2048 PSS SHA-256, other MGF or salt", (0, 0, 0, 243)),
        ("RSA-2048 PSS SHA-384", (97, 46, 0, 0)),
        ("RSA-2048 PSS SHA-384 as PKCS#1 v1.5", (0, 0, 0, 97)),
        ("RSA-2048 PSS SHA-384, other MGF or salt", (0, 0, 0, 58)),
        ("RSA-2048 PSS SHA-512", (2, 0, 0, 0)),
        ("RSA-2048 PSS SHA-512 as PKCS#1 v1.5", (0, 0, 0, 2)),
        ("RSA-2048 PSS SHA-512, other MGF or salt", (0, 0, 0, 190)),
        ("RSA-3072 PSS SHA-256", (126, 90, 0, 0)),
        ("RSA-3072 PSS SHA-256 as PKCS#1 v1.5", (0, 0, 0, 126)),
        ("RSA-4096 PSS SHA-256", (63, 45, 0, 0)),
        ("RSA-4096 PSS SHA-256 as PKCS#1 v1.5", (0, 0, 0, 63)),
        ("RSA-4096 PSS SHA-384", (95, 46, 0, 0)),
        ("RSA-4096 PSS SHA-384 as PKCS#1 v1.5", (0, 0, 0, 95)),
        ("RSA-4096 PSS SHA-512", (264, 94, 0, 0)),
        ("RSA-4096 PSS SHA-512 as PKCS#1 v1.5", (0, 0, 0, 264)),
        ("RSA-4096 PSS SHA-512, other MGF or salt", (0, 0, 0, 264)),
    ];
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let mut report = Report::default();
    for name in TestName::all() {
        let set = TestSet::load(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        let set_name = format!("{name:?}");
        for group in &set.test_groups {
            let n = group.tests.len();
            report.total += n;
            let bits = group.key_size;
            if !SERVED_RSA_BITS.contains(&bits) {
                report.skip(format!("RSA-PSS, {bits}-bit modulus: size not served"), n);
                continue;
            }
            let Some(hash) = hash_of(group.hash) else {
                report.skip(format!("RSA-PSS with {:?}: hash not served", group.hash), n);
                continue;
            };
            let key = rsa_key(&set_name, bits, &group.key.n, &group.key.e);
            let family = format!("RSA-{bits} PSS {}", hash.name());
            let ours = group.mgf == Mgf::Mgf1
                && group.mgf_hash == Some(group.hash)
                && group.salt_size == hash.digest_len();
            for t in &group.tests {
                let v = vector!(&set_name, t);
                if !ours {
                    // An invalid vector of another salt length can be a valid one of ours (the
                    // salt-length-0 set's "s_len changed to 32"): only validity carries over.
                    if t.result == TestResult::Valid {
                        let family = format!("{family}, other MGF or salt");
                        report.foreign(&family, &key, Scheme::RsaPss(hash), &v, false);
                    } else {
                        report.skip(
                            "RSA-PSS, invalid vectors for another MGF or salt: no verdict under ours",
                            1,
                        );
                    }
                    continue;
                }
                report.check(&family, &key, Scheme::RsaPss(hash), &v);
                if t.result == TestResult::Valid {
                    let family = format!("{family} as PKCS#1 v1.5");
                    report.foreign(&family, &key, Scheme::RsaPkcs1(hash), &v, true);
                }
            }
        }
    }
    report.finish(
        "RSASSA-PSS (MGF1 with the message hash, salt = hash length)",
        &EXPECTED,
    );
}

#[test]
fn rsa_pkcs1_v1_5_sets_of_the_served_sizes() {
    const EXPECTED: [(&str, Counts); 18] = [
        ("RSA-2048 PKCS#1 v1.5 SHA-256", (9, 249, 1, 0)),
        ("RSA-2048 PKCS#1 v1.5 SHA-256 as PSS", (0, 0, 0, 9)),
        ("RSA-2048 PKCS#1 v1.5 SHA-384", (7, 250, 1, 0)),
        ("RSA-2048 PKCS#1 v1.5 SHA-384 as PSS", (0, 0, 0, 7)),
        ("RSA-2048 PKCS#1 v1.5 SHA-512", (8, 250, 1, 0)),
        ("RSA-2048 PKCS#1 v1.5 SHA-512 as PSS", (0, 0, 0, 8)),
        ("RSA-3072 PKCS#1 v1.5 SHA-256", (8, 250, 1, 0)),
        ("RSA-3072 PKCS#1 v1.5 SHA-256 as PSS", (0, 0, 0, 8)),
        ("RSA-3072 PKCS#1 v1.5 SHA-384", (7, 251, 1, 0)),
        ("RSA-3072 PKCS#1 v1.5 SHA-384 as PSS", (0, 0, 0, 7)),
        ("RSA-3072 PKCS#1 v1.5 SHA-512", (8, 251, 1, 0)),
        ("RSA-3072 PKCS#1 v1.5 SHA-512 as PSS", (0, 0, 0, 8)),
        ("RSA-4096 PKCS#1 v1.5 SHA-256", (7, 250, 1, 0)),
        ("RSA-4096 PKCS#1 v1.5 SHA-256 as PSS", (0, 0, 0, 7)),
        ("RSA-4096 PKCS#1 v1.5 SHA-384", (7, 251, 1, 0)),
        ("RSA-4096 PKCS#1 v1.5 SHA-384 as PSS", (0, 0, 0, 7)),
        ("RSA-4096 PKCS#1 v1.5 SHA-512", (7, 251, 1, 0)),
        ("RSA-4096 PKCS#1 v1.5 SHA-512 as PSS", (0, 0, 0, 7)),
    ];
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let mut report = Report::default();
    for name in TestName::all() {
        let set = TestSet::load(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        let set_name = format!("{name:?}");
        for group in &set.test_groups {
            let n = group.tests.len();
            report.total += n;
            let bits = group.key_size;
            if !SERVED_RSA_BITS.contains(&bits) {
                report.skip(
                    format!("RSA PKCS#1 v1.5, {bits}-bit modulus: size not served"),
                    n,
                );
                continue;
            }
            let Some(hash) = hash_of(group.hash) else {
                report.skip(
                    format!("RSA PKCS#1 v1.5 with {:?}: hash not served", group.hash),
                    n,
                );
                continue;
            };
            let key = rsa_key(&set_name, bits, &group.key.n, &group.key.e);
            let family = format!("RSA-{bits} PKCS#1 v1.5 {}", hash.name());
            for t in &group.tests {
                let v = vector!(&set_name, t);
                report.check(&family, &key, Scheme::RsaPkcs1(hash), &v);
                if t.result == TestResult::Valid {
                    let family = format!("{family} as PSS");
                    report.foreign(&family, &key, Scheme::RsaPss(hash), &v, true);
                }
            }
        }
    }
    report.finish("RSASSA-PKCS1-v1_5", &EXPECTED);
}
