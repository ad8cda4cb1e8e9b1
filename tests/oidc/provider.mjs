// OpenID Connect providers for keyward's integration tests (tests/integration/oidc_fixture.rs
// starts one per test process). Two issuers, each on its own loopback port:
//
//   real     oidc-provider, a certified OpenID Provider, with its development login and consent
//            forms: the login name typed in is the account id (sub and email); an id starting
//            with "unverified" has email_verified false.
//   hostile  a hand-written provider (jose) for what a certified provider never sends: the test,
//            acting as the browser, adds `scenario` (and `sub`, `email`, `email_verified`,
//            `iss_param`) to keyward's authorization URL; the authorize endpoint redirects straight
//            back with a code carrying them, and the token endpoint answers the scenario.
//
// Once both listen, one JSON line goes to stdout: {"real": ISSUER, "hostile": ISSUER, ...}.
// Everything else goes to stderr.

import { createHash, randomBytes, createSecretKey } from 'node:crypto';
import { createServer } from 'node:http';

import * as jose from 'jose';
import Provider from 'oidc-provider';

const CLIENT_ID = process.env.OIDC_CLIENT_ID || 'keyward-test';
const CLIENT_SECRET = process.env.OIDC_CLIENT_SECRET || 'keyward-test-secret-0123456789abcdef';
const REDIRECT_URI = process.env.OIDC_REDIRECT_URI || 'https://app.example.test/callback';

// Nothing but the one JSON line on stdout: the reader stops reading after it.
console.log = console.error;
console.info = console.error;

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

// ---------------------------------------------------------------------------------------------
// real: oidc-provider

async function startReal() {
  let handler = (_req, res) => {
    res.statusCode = 503;
    res.end();
  };
  const server = createServer((req, res) => handler(req, res));
  const port = await listen(server);
  const issuer = `http://127.0.0.1:${port}`;

  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const signing = { ...(await jose.exportJWK(privateKey)), kid: 'real-1', use: 'sig', alg: 'RS256' };

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        redirect_uris: [REDIRECT_URI],
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    jwks: { keys: [signing] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    scopes: ['openid', 'email', 'profile'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    // The scope's claims go into the ID token too (as Google does), not only to userinfo.
    conformIdTokenClaims: false,
    async findAccount(_ctx, id) {
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: id,
            email_verified: !id.startsWith('unverified'),
            name: `Test ${id.split('@')[0]}`,
          };
        },
      };
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('real: server_error', err));
  handler = provider.callback();
  return issuer;
}

// ---------------------------------------------------------------------------------------------
// hostile: hand-written

const b64url = (buf) => Buffer.from(buf).toString('base64url');

async function startHostile() {
  const server = createServer((req, res) => {
    hostile(req, res).catch((err) => {
      console.error('hostile: error', err);
      if (!res.headersSent) {
        res.statusCode = 500;
        res.end();
      }
    });
  });
  const port = await listen(server);
  const issuer = `http://127.0.0.1:${port}`;

  const main = await jose.generateKeyPair('RS256', { extractable: true });
  const mainKid = 'hostile-1';
  // Signs `other_key` tokens under the published kid, but is itself never published.
  const other = await jose.generateKeyPair('RS256', { extractable: true });
  const published = [{ ...(await jose.exportJWK(main.publicKey)), kid: mainKid, use: 'sig', alg: 'RS256' }];
  const publicPem = await jose.exportSPKI(main.publicKey);
  const usedCodes = new Set();
  let rotations = 0;

  const json = (res, status, body) => {
    res.statusCode = status;
    res.setHeader('content-type', 'application/json');
    res.setHeader('cache-control', 'no-store');
    res.end(JSON.stringify(body));
  };

  async function readForm(req) {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
  }

  function sign(header, claims, key) {
    return new jose.SignJWT(claims).setProtectedHeader(header).sign(key);
  }

  async function idToken(grant) {
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: issuer,
      sub: grant.sub,
      aud: grant.client_id,
      iat: now,
      exp: now + 300,
      auth_time: now,
      name: `Hostile ${grant.sub}`,
    };
    if (grant.nonce) claims.nonce = grant.nonce;
    if (grant.scenario !== 'no_email' && grant.email) {
      claims.email = grant.email;
      claims.email_verified = grant.email_verified;
    }
    const header = { alg: 'RS256', kid: mainKid, typ: 'JWT' };
    switch (grant.scenario) {
      case 'good':
      case 'slow':
      case 'no_email':
        return sign(header, claims, main.privateKey);
      case 'wrong_nonce':
        return sign(header, { ...claims, nonce: b64url(randomBytes(16)) }, main.privateKey);
      case 'expired':
        return sign(header, { ...claims, iat: now - 3600, auth_time: now - 3600, exp: now - 1800 }, main.privateKey);
      case 'future_iat':
        return sign(header, { ...claims, iat: now + 3600, exp: now + 7200 }, main.privateKey);
      case 'other_key':
        return sign(header, claims, other.privateKey);
      case 'wrong_aud':
        return sign(header, { ...claims, aud: 'someone-else' }, main.privateKey);
      case 'wrong_iss':
        return sign(header, { ...claims, iss: `${issuer}/elsewhere` }, main.privateKey);
      case 'azp_mismatch':
        return sign(header, { ...claims, aud: [grant.client_id, 'someone-else'], azp: 'someone-else' }, main.privateKey);
      case 'alg_none': {
        const h = b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }));
        return `${h}.${b64url(JSON.stringify(claims))}.`;
      }
      case 'hs256_public_key': {
        // The classic confusion: HMAC keyed with the RSA public key the JWKS publishes.
        const secret = createSecretKey(Buffer.from(publicPem));
        return sign({ alg: 'HS256', kid: mainKid, typ: 'JWT' }, claims, secret);
      }
      case 'rotated_key': {
        // A new key, published at the moment of its first use: keyward has cached the JWKS
        // without it and must fetch it again for this unknown kid.
        rotations += 1;
        const fresh = await jose.generateKeyPair('RS256', { extractable: true });
        const kid = `hostile-rotated-${rotations}`;
        published.push({ ...(await jose.exportJWK(fresh.publicKey)), kid, use: 'sig', alg: 'RS256' });
        return sign({ alg: 'RS256', kid, typ: 'JWT' }, claims, fresh.privateKey);
      }
      default:
        throw new Error(`unknown scenario ${grant.scenario}`);
    }
  }

  async function hostile(req, res) {
    const url = new URL(req.url, issuer);
    switch (url.pathname) {
      case '/.well-known/openid-configuration':
        return json(res, 200, {
          issuer,
          authorization_endpoint: `${issuer}/authorize`,
          token_endpoint: `${issuer}/token`,
          jwks_uri: `${issuer}/jwks`,
          response_types_supported: ['code'],
          subject_types_supported: ['public'],
          id_token_signing_alg_values_supported: ['RS256'],
          token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
          code_challenge_methods_supported: ['S256'],
          grant_types_supported: ['authorization_code'],
          scopes_supported: ['openid', 'email', 'profile'],
          claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'nonce', 'email', 'email_verified', 'name'],
        });
      case '/jwks':
        return json(res, 200, { keys: published });
      case '/authorize':
        return authorize(url, res);
      case '/token':
        if (req.method !== 'POST') return json(res, 405, { error: 'invalid_request' });
        return token(req, res);
      default:
        return json(res, 404, { error: 'not_found' });
    }
  }

  function authorize(url, res) {
    const q = url.searchParams;
    const redirectUri = q.get('redirect_uri');
    if (q.get('client_id') !== CLIENT_ID || redirectUri !== REDIRECT_URI) {
      return json(res, 400, { error: 'invalid_request', error_description: 'client_id or redirect_uri' });
    }
    const back = new URL(redirectUri);
    if (q.get('state') !== null) back.searchParams.set('state', q.get('state'));
    const scenario = q.get('scenario') || 'good';
    if (scenario === 'access_denied' || scenario === 'server_error') {
      back.searchParams.set('error', scenario);
      back.searchParams.set('error_description', `hostile ${scenario}`);
    } else {
      const grant = {
        scenario,
        nonce: q.get('nonce'),
        client_id: q.get('client_id'),
        redirect_uri: redirectUri,
        code_challenge: q.get('code_challenge'),
        code_challenge_method: q.get('code_challenge_method'),
        sub: q.get('sub') || 'hostile-subject',
        // A browser follows keyward's URL as it is: OIDC_DEFAULT_EMAIL stands in for `email`.
        email: q.get('email') ?? process.env.OIDC_DEFAULT_EMAIL ?? null,
        email_verified: q.get('email_verified') !== 'false',
        salt: b64url(randomBytes(8)),
      };
      back.searchParams.set('code', b64url(JSON.stringify(grant)));
    }
    const issParam = q.get('iss_param');
    if (issParam === 'right') back.searchParams.set('iss', issuer);
    if (issParam === 'wrong') back.searchParams.set('iss', `${issuer}/elsewhere`);
    res.statusCode = 302;
    res.setHeader('location', back.toString());
    res.end();
  }

  async function token(req, res) {
    const form = await readForm(req);
    let clientId = form.get('client_id');
    let clientSecret = form.get('client_secret');
    const auth = req.headers.authorization || '';
    if (auth.startsWith('Basic ')) {
      const decoded = Buffer.from(auth.slice(6), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      clientId = decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, ' '));
      clientSecret = decodeURIComponent(decoded.slice(colon + 1).replace(/\+/g, ' '));
    }
    if (clientId !== CLIENT_ID || clientSecret !== CLIENT_SECRET) {
      return json(res, 401, { error: 'invalid_client' });
    }
    if (form.get('grant_type') !== 'authorization_code') {
      return json(res, 400, { error: 'unsupported_grant_type' });
    }
    const code = form.get('code') || '';
    let grant;
    try {
      grant = JSON.parse(Buffer.from(code, 'base64url').toString('utf8'));
    } catch {
      return json(res, 400, { error: 'invalid_grant', error_description: 'unreadable code' });
    }
    if (usedCodes.has(code)) {
      return json(res, 400, { error: 'invalid_grant', error_description: 'code already used' });
    }
    usedCodes.add(code);
    if (grant.client_id !== clientId || grant.redirect_uri !== form.get('redirect_uri')) {
      return json(res, 400, { error: 'invalid_grant', error_description: 'client or redirect_uri' });
    }
    const verifier = form.get('code_verifier') || '';
    const challenge = createHash('sha256').update(verifier).digest('base64url');
    if (grant.code_challenge_method !== 'S256' || !verifier || challenge !== grant.code_challenge) {
      return json(res, 400, { error: 'invalid_grant', error_description: 'PKCE verification failed' });
    }
    if (grant.scenario === 'invalid_grant') {
      return json(res, 400, { error: 'invalid_grant' });
    }
    if (grant.scenario === 'slow') {
      await new Promise((resolve) => setTimeout(resolve, 5000));
    }
    return json(res, 200, {
      access_token: b64url(randomBytes(24)),
      token_type: 'Bearer',
      expires_in: 300,
      scope: 'openid email profile',
      id_token: await idToken(grant),
    });
  }

  return issuer;
}

const [real, hostileIssuer] = await Promise.all([startReal(), startHostile()]);
process.stdout.write(`${JSON.stringify({
  real,
  hostile: hostileIssuer,
  client_id: CLIENT_ID,
  client_secret: CLIENT_SECRET,
  redirect_uri: REDIRECT_URI,
})}\n`);
