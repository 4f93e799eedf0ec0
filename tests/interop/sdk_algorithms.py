"""What the interop scripts share about the 13 Yandex signature algorithms: the table
of key kinds, sizes or curves and hashes, and the independent checks (with the
`cryptography` package) of a GetPublicKey answer and of a signature."""

import base64

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

# The 13 AsymmetricSignatureAlgorithm names: key kind, size or curve, hash.
ALGORITHMS = {
    "RSA_2048_SIGN_PSS_SHA_256": ("rsa", 2048, "sha256"),
    "RSA_2048_SIGN_PSS_SHA_384": ("rsa", 2048, "sha384"),
    "RSA_2048_SIGN_PSS_SHA_512": ("rsa", 2048, "sha512"),
    "RSA_3072_SIGN_PSS_SHA_256": ("rsa", 3072, "sha256"),
    "RSA_3072_SIGN_PSS_SHA_384": ("rsa", 3072, "sha384"),
    "RSA_3072_SIGN_PSS_SHA_512": ("rsa", 3072, "sha512"),
    "RSA_4096_SIGN_PSS_SHA_256": ("rsa", 4096, "sha256"),
    "RSA_4096_SIGN_PSS_SHA_384": ("rsa", 4096, "sha384"),
    "RSA_4096_SIGN_PSS_SHA_512": ("rsa", 4096, "sha512"),
    "ECDSA_NIST_P256_SHA_256": ("ec", "secp256r1", "sha256"),
    "ECDSA_NIST_P384_SHA_384": ("ec", "secp384r1", "sha384"),
    "ECDSA_NIST_P521_SHA_512": ("ec", "secp521r1", "sha512"),
    "ECDSA_SECP256_K1_SHA_256": ("ec", "secp256k1", "sha256"),
}

HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}

SECP256K1_ORDER = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141", 16
)


def check_public_key(pem, algorithm):
    kind, size, _ = ALGORITHMS[algorithm]
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    if kind == "rsa":
        if not isinstance(key, rsa.RSAPublicKey):
            raise AssertionError(f"public key is {type(key).__name__}, expected RSA")
        if key.key_size != size:
            raise AssertionError(f"RSA modulus is {key.key_size} bits, expected {size}")
    else:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise AssertionError(f"public key is {type(key).__name__}, expected EC")
        if key.curve.name != size:
            raise AssertionError(f"curve is {key.curve.name}, expected {size}")
    # GetPublicKey must be SPKI with rsaEncryption / id-ecPublicKey + named curve,
    # uncompressed point: re-encoding what we parsed must give the same bytes.
    der = serialization.load_pem_public_key(pem.encode("ascii")).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = "".join(line for line in pem.strip().splitlines() if "-----" not in line)
    if base64.b64decode(body) != der:
        raise AssertionError("public key PEM is not canonical SPKI DER")
    return key


def verify(key, algorithm, signature, data, prehashed=False):
    kind, size, hash_name = ALGORITHMS[algorithm]
    h = HASHES[hash_name]()
    chosen = utils.Prehashed(h) if prehashed else h
    if kind == "rsa":
        if len(signature) != size // 8:
            raise AssertionError(f"RSA signature is {len(signature)} bytes, expected {size // 8}")
        key.verify(
            signature,
            data,
            padding.PSS(mgf=padding.MGF1(HASHES[hash_name]()), salt_length=h.digest_size),
            chosen,
        )
    else:
        r, s = utils.decode_dss_signature(signature)
        if utils.encode_dss_signature(r, s) != signature:
            raise AssertionError("ECDSA signature is not canonical DER")
        if size == "secp256k1" and s > SECP256K1_ORDER // 2:
            raise AssertionError("secp256k1 signature is not low-S")
        key.verify(signature, data, ec.ECDSA(chosen))
