#!/usr/bin/env node
// Drives p11kms's Alibaba OpenAPI front, served by the real daemon, with the official npm SDK
// @alicloud/kms20160120 (RPC v1 HMAC-SHA1 signer), unmodified: CreateKey (EC_P256),
// DescribeKey, GetPublicKey, AsymmetricSign and AsymmetricVerify (true and false) on it, and an
// RSA-PSS signature with the config's RSA-2048 key RSA_KEY_ID. Every signature is verified with Node's
// crypto (OpenSSL) against the PEM GetPublicKey returned. Prints one JSON line:
// {"verified": <signatures verified>, "calls": {...}}.
//
// Usage: node alibaba_openapi_sdk.js ENDPOINT RSA_KEY_ID
// P11KMS_ALIBABA_AK_ID and P11KMS_ALIBABA_AK_SECRET (environment): the AccessKey pair; the
// secret never appears on a command line and is never printed. Sockets may only connect to
// loopback addresses.
'use strict';

const assert = require('assert');
const crypto = require('crypto');
const net = require('net');

function loopbackOnly() {
  const connect = net.Socket.prototype.connect;
  net.Socket.prototype.connect = function guarded(...args) {
    const options = typeof args[0] === 'object' && args[0] !== null && !Array.isArray(args[0])
      ? args[0]
      : { host: args[1] };
    const host = options.host || 'localhost';
    const ok = host === 'localhost' || (net.isIP(host) === 4 && host.startsWith('127.')) ||
      host === '::1';
    if (!ok) {
      throw new Error(`a socket tried to connect to ${host}`);
    }
    return connect.apply(this, args);
  };
}

async function main() {
  const [endpoint, RSA_KEY] = process.argv.slice(2);
  const akId = process.env.P11KMS_ALIBABA_AK_ID || '';
  const secret = process.env.P11KMS_ALIBABA_AK_SECRET || '';
  if (!endpoint || !RSA_KEY || !akId || !secret) {
    console.error('usage: P11KMS_ALIBABA_AK_ID=… P11KMS_ALIBABA_AK_SECRET=… node alibaba_openapi_sdk.js ENDPOINT RSA_KEY_ID');
    process.exit(2);
  }
  for (const v of ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy']) {
    delete process.env[v];
  }
  loopbackOnly();
  const Kms = require('@alicloud/kms20160120');
  const { Config } = require('@alicloud/rpc-client');
  const client = new Kms.default(new Config({
    accessKeyId: akId, accessKeySecret: secret, endpoint, protocol: 'http', regionId: 'cn-hangzhou',
  }));
  const calls = {};
  const call = async (action, request) => {
    calls[action] = (calls[action] || 0) + 1;
    const method = action[0].toLowerCase() + action.slice(1);
    const r = await client[method](new Kms[`${action}Request`](request));
    assert.ok(r.requestId, `${action}: no RequestId`);
    return r;
  };
  let verified = 0;

  // The 1.2.0 reply objects are the bodies, with lower-camel-case names.
  const made = await call('CreateKey', { keySpec: 'EC_P256', keyUsage: 'SIGN/VERIFY' });
  const { keyId, primaryKeyVersion } = made.keyMetadata;
  assert.strictEqual(made.keyMetadata.keySpec, 'EC_P256');
  assert.strictEqual(made.keyMetadata.keyState, 'Enabled');
  const described = await call('DescribeKey', { keyId });
  assert.strictEqual(described.keyMetadata.primaryKeyVersion, primaryKeyVersion);

  const message = Buffer.from('the npm SDK signs');
  const digest = crypto.createHash('sha256').update(message).digest('base64');
  const pub = await call('GetPublicKey', { keyId, keyVersionId: primaryKeyVersion });
  const ecKey = crypto.createPublicKey(pub.publicKey);
  assert.strictEqual(ecKey.asymmetricKeyDetails.namedCurve, 'prime256v1');
  const signed = await call('AsymmetricSign', {
    keyId, keyVersionId: primaryKeyVersion, algorithm: 'ECDSA_SHA_256', digest,
  });
  assert.strictEqual(signed.keyId, keyId);
  assert.strictEqual(signed.keyVersionId, primaryKeyVersion);
  assert.ok(crypto.verify('sha256', message, { key: ecKey, dsaEncoding: 'der' },
    Buffer.from(signed.value, 'base64')), 'the ECDSA signature does not verify');
  verified += 1;
  const check = (d) => call('AsymmetricVerify', {
    keyId, keyVersionId: primaryKeyVersion, algorithm: 'ECDSA_SHA_256', digest: d,
    value: signed.value,
  });
  assert.strictEqual((await check(digest)).value, true);
  const other = crypto.createHash('sha256').update('another message').digest('base64');
  assert.strictEqual((await check(other)).value, false);

  // RSA-PSS (salt length = digest length) with the config's RSA-2048 key.
  const rsa = await call('DescribeKey', { keyId: RSA_KEY });
  const version = rsa.keyMetadata.primaryKeyVersion;
  const rsaPub = await call('GetPublicKey', { keyId: RSA_KEY, keyVersionId: version });
  const pss = await call('AsymmetricSign', {
    keyId: RSA_KEY, keyVersionId: version, algorithm: 'RSA_PSS_SHA_256', digest,
  });
  assert.ok(crypto.verify('sha256', message, {
    key: crypto.createPublicKey(rsaPub.publicKey),
    padding: crypto.constants.RSA_PKCS1_PSS_PADDING,
    saltLength: 32,
  }, Buffer.from(pss.value, 'base64')), 'the RSA-PSS signature does not verify');
  verified += 1;

  process.stdout.write(JSON.stringify({ verified, calls }) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
