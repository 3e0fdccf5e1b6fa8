// The end user's self-service page (`/me`) in Debian's Chromium (playwright-core): the user
// signs in through the test IdP (idp.mjs) with the end-user app, sees their SIP account with
// the phone registered beforehand (its user agent, "registered"), and activates the account for
// Teams through the gateway's own sign-in (`/activate`, the IdP's consent page): first declining
// consent (the gateway's error page, the account still not activated), then accepting (back on
// `/me`, activated). Saves a screenshot per step into --screens. Talks to 127.0.0.1 only.
//
// usage: node me.mjs --gateway http://127.0.0.1:P --login L --aor sip:user@domain --screens DIR
// Prints one JSON line `{"ok":true,…}` last; exit code 0 only on success.
import fs from 'node:fs';
import path from 'node:path';
import { args, launch, localContext } from './browser.mjs';

const screens = args.screens;
fs.mkdirSync(screens, { recursive: true });
const step = (what) => console.error(`self-service test: ${what}`);

const browser = await launch();
let ok = false;
const result = {};
let page;
try {
  page = await (await localContext(browser)).newPage();
  page.setDefaultTimeout(20000);
  page.on('console', (m) => { if (m.type() === 'error') step(`browser console: ${m.text()}`); });
  const shot = (name) => page.screenshot({ path: path.join(screens, `${name}.png`), fullPage: true });

  step('open the self-service page');
  await page.goto(`${args.gateway}/me`);
  const signIn = page.getByRole('button', { name: 'Sign in with Microsoft' });
  await signIn.waitFor();
  await shot('me-01-sign-in');

  step('sign in at the IdP with the end-user app');
  await signIn.click();
  await page.getByLabel('Account').fill(args.login);
  await page.getByLabel('Password').fill('any-password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Your phones and Teams' }).waitFor();
  await page.locator('#me-upn').filter({ hasText: `Signed in as ${args.login}@contoso.test` }).waitFor();
  result.url = page.url();

  step('the registered phone is shown');
  const account = page.locator(`article[data-aor="${args.aor}"]`);
  await account.locator('.registered').filter({ hasText: 'yes, 1 device(s)' }).waitFor();
  result.device = (await account.locator('.devices li').first().textContent()).trim();
  result.activation_before = (await account.locator('.activation').textContent()).trim();
  result.accounts = await page.locator('article.account').count();
  await shot('me-02-devices');

  step('activate for Teams, declining consent at the IdP');
  await page.getByRole('button', { name: 'Activate for Teams' }).click();
  await page.getByRole('heading', { name: 'Permissions requested' }).waitFor();
  await shot('me-03-consent');
  await page.getByRole('button', { name: 'Decline' }).click();
  await page.locator('#title').filter({ hasText: 'Activation failed' }).waitFor();
  result.refused = (await page.locator('#message').textContent()).trim();
  await shot('me-04-declined');
  await page.goto(`${args.gateway}/me`);
  await account.locator('.registered').filter({ hasText: 'yes, 1 device(s)' }).waitFor();
  result.activation_after_refusal = (await account.locator('.activation').textContent()).trim();

  step('activate for Teams, accepting');
  await page.getByRole('button', { name: 'Activate for Teams' }).click();
  await page.getByRole('heading', { name: 'Permissions requested' }).waitFor();
  await page.getByRole('button', { name: 'Accept' }).click();
  await page.getByText('Activated for Teams.').waitFor();
  await account.locator('.activation').filter({ hasText: /^Activated$/ }).waitFor();
  await page.getByRole('button', { name: 'Re-activate for Teams' }).waitFor();
  result.activation_after = (await account.locator('.activation').textContent()).trim();
  await shot('me-05-activated');

  step('phone-sized screen');
  await page.setViewportSize({ width: 390, height: 844 });
  await shot('me-06-phone');
  ok = true;
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
  if (page) await page.screenshot({ path: path.join(screens, 'me-failed.png'), fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
result.ok = ok;
console.log(JSON.stringify(result));
process.exit(ok ? 0 : 1);
