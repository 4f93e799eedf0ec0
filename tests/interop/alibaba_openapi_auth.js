#!/usr/bin/env node
// Authenticates to p11kms's Alibaba OpenAPI front with the official npm SDK
// @alicloud/kms20160120 (RPC v1 HMAC-SHA1 signer), unmodified, and prints what it surfaced,
// one JSON object per line: the same cases as alibaba_openapi_auth.py (client "node").
//
// Usage: node alibaba_openapi_auth.js ENDPOINT PUBLIC_KEY_PEM
// P11KMS_ALIBABA_AK_ID and P11KMS_ALIBABA_AK_SECRET (environment): the AccessKey pair; the
// secret never appears on a command line and is never printed. Signatures returned are
// verified with Node's crypto (OpenSSL). Sockets may only connect to loopback addresses.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const net = require('net');

const KEY_ID = 'key-hzz65f1d8f8w9q6atnc1a';
const VERSION_ID = '7d6a3b2f-1c4e-4b7a-9f0e-0123456789ab';

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
  const [endpoint, pemPath] = process.argv.slice(2);
  const akId = process.env.P11KMS_ALIBABA_AK_ID || '';
  const secret = process.env.P11KMS_ALIBABA_AK_SECRET || '';
  if (!endpoint || !pemPath || !akId || !secret) {
    console.error('usage: P11KMS_ALIBABA_AK_ID=… P11KMS_ALIBABA_AK_SECRET=… node alibaba_openapi_auth.js ENDPOINT PUBLIC_KEY_PEM');
    process.exit(2);
  }
  for (const v of ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy']) {
    delete process.env[v];
  }
  loopbackOnly();
  const publicKey = crypto.createPublicKey(fs.readFileSync(pemPath));
  const Kms = require('@alicloud/kms20160120');
  const { Config } = require('@alicloud/rpc-client');
  const teaUtil = require('@alicloud/tea-util').default;

  const make = (id, sec, sts) => new Kms.default(new Config({
    accessKeyId: id, accessKeySecret: sec, securityToken: sts,
    endpoint, protocol: 'http', regionId: 'cn-hangzhou',
  }));

  async function attempt(kase, client, extra = {}) {
    const message = Buffer.from('hello alibaba');
    const digest = crypto.createHash('sha256').update(message).digest();
    try {
      const r = await client.asymmetricSign(new Kms.AsymmetricSignRequest({
        keyId: KEY_ID, keyVersionId: VERSION_ID, algorithm: 'ECDSA_SHA_256',
        digest: digest.toString('base64'),
      }));
      if (r.keyId !== KEY_ID || r.keyVersionId !== VERSION_ID) {
        throw new Error(`unexpected reply ${JSON.stringify(r)}`);
      }
      // The 1.2.0 reply object is the body with lower-camel-case names. The value is DER
      // ECDSA over SHA-256(message).
      const verified = crypto.verify('sha256', message, { key: publicKey, dsaEncoding: 'der' },
        Buffer.from(r.value, 'base64'));
      if (!verified) {
        throw new Error('the signature returned does not verify');
      }
      return { client: 'node', case: kase, ok: true, verified, request_id: r.requestId, ...extra };
    } catch (e) {
      if (e.message && e.message.includes('does not verify')) throw e;
      return {
        client: 'node', case: kase, ok: false, type: e.name, code: e.code,
        status: e.data && e.data.statusCode, message: e.message,
        request_id: e.data && e.data.RequestId, ...extra,
      };
    }
  }

  const out = (r) => process.stdout.write(JSON.stringify(r) + '\n');
  out(await attempt('ok', make(akId, secret)));
  out(await attempt('wrong_secret', make(akId, secret + 'x')));
  out(await attempt('unknown_id', make('LTAI-unknown-id', secret)));
  out(await attempt('sts', make(akId, secret, 'sts-token-value')));
  // The replay: the SDK's own nonce generator returns one value twice.
  const getNonce = teaUtil.getNonce;
  const pinned = `replay-node-${crypto.randomUUID()}`;
  teaUtil.getNonce = () => pinned;
  try {
    const client = make(akId, secret);
    const first = await attempt('replay_first', client);
    out(await attempt('replay', client, { first_ok: first.ok }));
  } finally {
    teaUtil.getNonce = getNonce;
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
