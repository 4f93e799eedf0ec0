// The official Yandex Cloud Node.js SDK (@yandex-cloud/nodejs-sdk, pinned in package.json),
// unmodified, against p11kms: over TLS with the SDK's own Session, and over the plaintext dev
// endpoint with the SDK's generated clients on an insecure channel (grpc-js refuses call
// credentials on an insecure channel, so the token goes in as default metadata). Every
// signature is verified with Node's crypto against the PEM from GetPublicKey.
//
// Usage: node yandex_node_sdk.js PLAINTEXT_ENDPOINT TLS_ENDPOINT CA_PEM
// Env: P11KMS_TOKEN (the bearer token). Prints one JSON line per finding on stdout.

'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const {
  Session, serviceClients, cloudApi, waitForOperation, decodeMessage, errors,
} = require('@yandex-cloud/nodejs-sdk');
// The SDK's client factory: its middleware turns failures into errors.ApiError.
const { clientFactory } = require('@yandex-cloud/nodejs-sdk/dist/utils/client-factory');
// Both come with the SDK.
const { createChannel, Metadata } = require('nice-grpc');
const { credentials } = require('@grpc/grpc-js');

const [plainEndpoint, tlsEndpoint, caFile] = process.argv.slice(2);
const token = process.env.P11KMS_TOKEN;
if (!plainEndpoint || !tlsEndpoint || !caFile || !token) {
  console.error('usage: P11KMS_TOKEN=... node yandex_node_sdk.js PLAIN_ENDPOINT TLS_ENDPOINT CA_PEM');
  process.exit(2);
}

const { AsymmetricSignatureAlgorithm: SignatureAlgorithm } = cloudApi.kms.asymmetric_signature_key;
const P256_KEY = 'dev-ecdsa-nist-p256-sha-256';
const PSS_KEY = 'dev-rsa-2048-sign-pss-sha-256';

function report(finding) {
  console.log(JSON.stringify(finding));
}

// Verifies `signature` over `message` with Node's crypto (OpenSSL), never with p11kms.
function verify(pem, algorithm, message, signature) {
  const key = crypto.createPublicKey(pem);
  const options = { key };
  let hash;
  if (algorithm === SignatureAlgorithm.ECDSA_NIST_P256_SHA_256) {
    hash = 'sha256';
    options.dsaEncoding = 'der';
  } else if (algorithm === SignatureAlgorithm.ECDSA_NIST_P384_SHA_384) {
    hash = 'sha384';
    options.dsaEncoding = 'der';
  } else if (algorithm === SignatureAlgorithm.RSA_2048_SIGN_PSS_SHA_256) {
    hash = 'sha256';
    options.padding = crypto.constants.RSA_PKCS1_PSS_PADDING;
    options.saltLength = 32;
  } else {
    throw new Error(`no verifier for algorithm ${algorithm}`);
  }
  if (!crypto.verify(hash, message, options, signature)) {
    throw new Error(`signature does not verify (algorithm ${algorithm})`);
  }
}

async function signAndVerify(cryptoClient, keyId, algorithm, transport) {
  const message = crypto.randomBytes(64);
  const signed = await cryptoClient.sign({ keyId, message });
  const { publicKey } = await cryptoClient.getPublicKey({ keyId });
  verify(publicKey, algorithm, message, signed.signature);
  // SignHash with the digest of another message, verified as a signature over that message.
  const other = crypto.randomBytes(100);
  const hash = algorithm === SignatureAlgorithm.ECDSA_NIST_P384_SHA_384 ? 'sha384' : 'sha256';
  const digest = crypto.createHash(hash).update(other).digest();
  const signedHash = await cryptoClient.signHash({ keyId, hash: digest });
  verify(publicKey, algorithm, other, signedHash.signature);
  report({ transport, case: 'signed', keyId, verified: 2 });
}

// The error of a call that must fail: an ApiError with the request id where the SDK looks.
async function failure(transport, call) {
  try {
    await call();
  } catch (e) {
    if (!(e instanceof errors.ApiError)) {
      throw new Error(`${transport}: a failed call gave ${e && e.name}, not ApiError: ${e}`);
    }
    report({
      transport,
      case: 'api_error',
      requestId: e.requestId,
      serverTraceId: e.serverTraceId,
      message: e.message,
    });
    return;
  }
  throw new Error(`${transport}: the call was expected to fail`);
}

async function overTls() {
  const session = new Session({
    iamToken: token,
    ssl: { rootCerts: fs.readFileSync(caFile) },
    pollInterval: 100,
  });
  const cryptoClient = session.client(serviceClients.AsymmetricSignatureCryptoServiceClient, tlsEndpoint);
  const keys = session.client(serviceClients.AsymmetricSignatureKeyServiceClient, tlsEndpoint);

  // A config key: a name and a creation time, as every Yandex key has.
  const configKey = await keys.get({ keyId: P256_KEY });
  report({
    transport: 'tls', case: 'config_key', keyId: configKey.id, name: configKey.name,
    createdAt: configKey.createdAt.toISOString(),
  });
  await signAndVerify(cryptoClient, P256_KEY, SignatureAlgorithm.ECDSA_NIST_P256_SHA_256, 'tls');
  await signAndVerify(cryptoClient, PSS_KEY, SignatureAlgorithm.RSA_2048_SIGN_PSS_SHA_256, 'tls');

  // A key created through the key service, its operation awaited with the SDK's waiter.
  // Generated request types fill the fields a call leaves out (fromPartial), as in the SDK's
  // own examples.
  const { CreateAsymmetricSignatureKeyRequest } = cloudApi.kms.asymmetric_signature_key_service;
  const op = await keys.create(CreateAsymmetricSignatureKeyRequest.fromPartial({
    folderId: 'node-sdk',
    name: 'node-sdk-key',
    signatureAlgorithm: SignatureAlgorithm.ECDSA_NIST_P384_SHA_384,
  }));
  const done = await waitForOperation(op, session, 60000, tlsEndpoint);
  const created = decodeMessage(done.response);
  report({
    transport: 'tls', case: 'created', keyId: created.id,
    createdAt: created.createdAt.toISOString(),
  });
  await signAndVerify(cryptoClient, created.id, SignatureAlgorithm.ECDSA_NIST_P384_SHA_384, 'tls');

  await failure('tls', () => cryptoClient.sign({ keyId: 'no-such-key-tls', message: Buffer.from('x') }));
}

async function overPlaintext() {
  const channel = createChannel(plainEndpoint, credentials.createInsecure());
  const defaults = { '*': { metadata: Metadata({ authorization: `Bearer ${token}` }) } };
  const cryptoClient = clientFactory.create(
    serviceClients.AsymmetricSignatureCryptoServiceClient.service, channel, defaults,
  );
  const keys = clientFactory.create(
    serviceClients.AsymmetricSignatureKeyServiceClient.service, channel, defaults,
  );
  const configKey = await keys.get({ keyId: PSS_KEY });
  report({
    transport: 'plaintext', case: 'config_key', keyId: configKey.id, name: configKey.name,
    createdAt: configKey.createdAt.toISOString(),
  });
  await signAndVerify(cryptoClient, P256_KEY, SignatureAlgorithm.ECDSA_NIST_P256_SHA_256, 'plaintext');
  await signAndVerify(cryptoClient, PSS_KEY, SignatureAlgorithm.RSA_2048_SIGN_PSS_SHA_256, 'plaintext');
  await failure('plaintext', () => cryptoClient.sign({ keyId: 'no-such-key-plain', message: Buffer.from('x') }));
  channel.close();
}

(async () => {
  report({ case: 'sdk', version: require('@yandex-cloud/nodejs-sdk/package.json').version, node: process.version });
  await overTls();
  await overPlaintext();
  report({ case: 'done' });
  // The TLS session's channels stay open otherwise.
  process.exit(0);
})().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
