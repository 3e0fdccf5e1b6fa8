// An OpenID provider (node `oidc-provider`) standing in for Entra ID in the console tests. It
// issues Entra-shaped v2.0 access tokens to the admin app and, with --user-client, to the
// end-user app: RS256 JWTs with `kid`, issuer `http://127.0.0.1:PORT/TENANT/v2.0` (discovery at
// `{authority}/{tenant}/v2.0/.well-known/…`, as the gateway asks), `aud` = the client id of the
// app that asked (scope `{client id}/.default`), and the claims `tid`, `oid`, `upn`,
// `preferred_username`, `name` and `groups`. Each app is a public client (PKCE, no secret) with
// the one redirect URI. The sign-in page is served here (no remote fonts), and consent is implied, as
// for a first-party app an admin consented to.
//
// The end-user app also serves the gateway's own activation sign-in, as Entra does: the
// Entra-shaped endpoints `/{tenant}/oauth2/v2.0/authorize` and `/token` lead to the provider's,
// the gateway's `…/activate/callback` is a second redirect URI, `offline_access` issues refresh
// tokens (and asks for consent, where the user may decline: `access_denied`), and the ID token
// carries `tid`, `oid`, `upn`, `name` and the `nonce`.
//
// usage: node idp.mjs --port P --tenant T --client C --redirect URI --group G [--user-client C2]
// Prints `{"ready":true,"issuer":…}` on stdout once it listens; every account signs in with any
// password; the account `outsider` is in no group.
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
for (const k of ['port', 'tenant', 'client', 'redirect', 'group']) {
  if (!args[k]) {
    console.error(`missing --${k}`);
    process.exit(2);
  }
}
const prefix = `/${args.tenant}/v2.0`;
const issuer = `http://127.0.0.1:${args.port}${prefix}`;
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'csps-test-key', use: 'sig', alg: 'RS256' };
const oidFor = (login) => crypto.createHash('sha256').update(login).digest('hex').replace(
  /^(.{8})(.{4})(.{4})(.{4})(.{12}).*$/, '$1-$2-$3-$4-$5');
const appIds = [args.client, ...(args['user-client'] ? [args['user-client']] : [])];
// The gateway's activation callback, beside the console's `/callback`.
const activateRedirect = args.redirect.replace(/\/callback$/, '/activate/callback');
const isUserApp = (id) => id === args['user-client'];
// An app's own API: the resource `api://{client id}` with the scope `{client id}/.default`.
const resourceOf = (clientId) => `api://${clientId}`;
const scopeOf = (clientId) => `${clientId}/.default`;

const provider = new Provider(issuer, {
  clients: appIds.map((id) => ({
    client_id: id,
    token_endpoint_auth_method: 'none',
    application_type: 'web',
    redirect_uris: isUserApp(id) ? [args.redirect, activateRedirect] : [args.redirect],
    grant_types: isUserApp(id) ? ['authorization_code', 'refresh_token'] : ['authorization_code'],
    response_types: ['code'],
  })),
  conformIdTokenClaims: false,
  jwks: { keys: [jwk] },
  pkce: { required: () => true },
  scopes: ['openid', 'profile', 'offline_access'],
  claims: { openid: ['sub'], profile: ['name', 'preferred_username', 'upn', 'oid', 'tid'] },
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx) => resourceOf(ctx.oidc.client.clientId),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        const id = appIds.find((c) => resourceOf(c) === resource);
        if (!id) throw new Error(`unknown resource ${resource}`);
        return {
          scope: scopeOf(id),
          audience: id,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  clientBasedCORS: (ctx, origin, client) => client.redirectUris.some((u) => u.startsWith(`${origin}/`)),
  interactions: { url: (ctx, interaction) => `${prefix}/interaction/${interaction.uid}` },
  findAccount: (ctx, sub) => ({
    accountId: sub,
    claims: () => ({
      sub, name: sub, preferred_username: `${sub}@contoso.test`, upn: `${sub}@contoso.test`,
      oid: oidFor(sub), tid: args.tenant,
    }),
  }),
  // Consent is implied (a first-party app): every sign-in gets the OIDC scopes and the app's.
  loadExistingGrant: async (ctx) => {
    // The grant the consent page just made (activation), else the implied one.
    const consented = ctx.oidc.result?.consent?.grantId;
    if (consented) return ctx.oidc.provider.Grant.find(consented);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile');
    const app = ctx.oidc.client.clientId;
    grant.addResourceScope(resourceOf(app), scopeOf(app));
    await grant.save();
    return grant;
  },
  extraTokenClaims: (ctx, token) => {
    const login = token.accountId;
    return {
      tid: args.tenant,
      oid: oidFor(login),
      upn: `${login}@contoso.test`,
      preferred_username: `${login}@contoso.test`,
      name: login,
      ver: '2.0',
      groups: login === 'outsider' ? [] : [args.group],
    };
  },
  ttl: { AccessToken: 3600, AuthorizationCode: 60, Session: 3600, Interaction: 600, Grant: 3600 },
});
provider.proxy = false;

const page = (uid) => `<!doctype html><html lang="en"><meta charset="utf-8"><title>Sign in (test IdP)</title>
<h1>Sign in</h1><form method="post" action="${prefix}/interaction/${uid}/login">
<label>Account <input name="login" autocomplete="username" required></label>
<label>Password <input name="password" type="password" required></label>
<button type="submit">Sign in</button></form></html>`;

const consentPage = (uid, client) => `<!doctype html><html lang="en"><meta charset="utf-8"><title>Permissions requested (test IdP)</title>
<h1>Permissions requested</h1><p>${client} wants to sign you in and keep access (offline_access).</p>
<form method="post" action="${prefix}/interaction/${uid}/consent">
<button type="submit" name="answer" value="accept">Accept</button>
<button type="submit" name="answer" value="decline">Decline</button></form></html>`;

const body = (req) => new Promise((resolve) => {
  let data = '';
  req.on('data', (c) => { data += c; });
  req.on('end', () => resolve(new URLSearchParams(data)));
});

const callback = provider.callback();
http.createServer(async (req, res) => {
  try {
    // Entra's endpoint paths (the gateway builds them from the authority and tenant) lead to the
    // provider's; a sign-in that asks for offline_access asks for consent, as Entra does.
    const entra = req.url.match(new RegExp(`^/${args.tenant}/oauth2/v2\\.0/(authorize|token)(\\?.*)?$`));
    if (entra) {
      const query = new URLSearchParams((entra[2] || '').slice(1));
      if (entra[1] === 'authorize' && (query.get('scope') || '').split(' ').includes('offline_access')) {
        query.set('prompt', 'consent');
      }
      const q = query.toString();
      req.url = `${prefix}/${entra[1] === 'authorize' ? 'auth' : 'token'}${q ? `?${q}` : ''}`;
    }
    if (!req.url.startsWith(`${prefix}/`)) {
      res.writeHead(404).end();
      return;
    }
    const rest = req.url.slice(prefix.length);
    const m = rest.match(/^\/interaction\/([^/?]+)(\/login|\/consent)?$/);
    if (m) {
      const details = await provider.interactionDetails(req, res);
      if (m[2] === '/consent' && req.method === 'POST') {
        const form = await body(req);
        if (form.get('answer') !== 'accept') {
          await provider.interactionFinished(req, res, {
            error: 'access_denied', error_description: 'AADSTS65004: User declined to consent to access the app.',
          }, { mergeWithLastSubmission: false });
          return;
        }
        const grant = new provider.Grant({ clientId: details.params.client_id, accountId: details.session.accountId });
        grant.addOIDCScope('openid profile offline_access');
        grant.addResourceScope(resourceOf(details.params.client_id), scopeOf(details.params.client_id));
        const grantId = await grant.save();
        await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
        return;
      }
      if (details.prompt.name === 'consent' && !m[2]) {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(consentPage(details.uid, details.params.client_id));
        return;
      }
      if (m[2] === '/login' && req.method === 'POST') {
        const form = await body(req);
        await provider.interactionFinished(req, res, { login: { accountId: form.get('login') } },
          { mergeWithLastSubmission: false });
        return;
      }
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page(details.uid));
      return;
    }
    req.originalUrl = req.url;
    req.url = rest;
    callback(req, res);
  } catch (e) {
    console.error(e);
    if (!res.headersSent) res.writeHead(500).end(String(e));
  }
}).listen(Number(args.port), '127.0.0.1', () => {
  console.log(JSON.stringify({ ready: true, issuer }));
});
