// Drives the csps web console in Debian's Chromium (playwright-core) as an admin would:
// sign in through the test IdP (idp.mjs), change a global leaf and see it on the server's entry,
// add a trusted IP, create the phone's SIP account, set a new password and activate it, find the
// changes in the audit log, watch the phone's registration appear and then a call with each leg's
// media (codec, packet counts that grow as the page refreshes), hang the call up and open its SIP
// ladder, see the phone among the user's devices, upload a policy component
// and switch it off, all without reloading. Saves a screenshot per step into --screens.
// Talks to 127.0.0.1 only: every other request is aborted.
//
// usage: node console.mjs --gateway http://127.0.0.1:P --server NAME --user U --password P --screens DIR
//        --policy ROUTING.wasm
// Prints `await-registration` when the registrations page is open (the caller then registers
// user U with password P), `await-call` when the calls page is open (the caller then starts a
// call with RTP both ways that only ends with the gateway's BYE), and last one JSON line `{"ok":true,"first_load_ms":…}`. Exit code 0
// only on success.
import fs from 'node:fs';
import path from 'node:path';
import { args, launch, localContext } from './browser.mjs';

const gateway = args.gateway;
const screens = args.screens;
fs.mkdirSync(screens, { recursive: true });
const step = (what) => console.error(`console test: ${what}`);

const browser = await launch();
let ok = false;
const result = {};
let page;
try {
  const context = await localContext(browser);
  page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on('console', (m) => { if (m.type() === 'error') step(`browser console: ${m.text()}`); });
  const shot = (name) => page.screenshot({ path: path.join(screens, `${name}.png`), fullPage: true });

  step('first load');
  const t0 = Date.now();
  await page.goto(`${gateway}/`);
  const signIn = page.getByRole('button', { name: 'Sign in with Microsoft' });
  await signIn.waitFor();
  result.first_load_ms = Date.now() - t0;
  await shot('01-sign-in');

  step('sign in at the IdP');
  await signIn.click();
  await page.getByLabel('Account').fill('admin');
  await page.getByLabel('Password').fill('any-password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
  await page.locator('#count-registrations').filter({ hasText: /^\d+$/ }).waitFor();
  await page.getByText('● live').waitFor();
  await shot('02-dashboard');

  step('change a global leaf');
  await page.getByRole('link', { name: 'Configuration' }).click();
  await page.getByRole('heading', { name: 'Configuration' }).waitFor();
  const maxExpires = page.locator('#leaf-Data-SipConfig-MaxExpires');
  await maxExpires.fill('1700');
  await page.locator('form[data-path="Data.SipConfig.MaxExpires"]').getByRole('button', { name: 'Save' }).click();
  await page.locator('tr', { has: maxExpires }).getByText('Saved.').waitFor();
  step('a bad value shows the API\'s message');
  const minExpires = page.locator('#leaf-Data-SipConfig-MinExpires');
  await minExpires.fill('5000');
  await page.locator('form[data-path="Data.SipConfig.MinExpires"]').getByRole('button', { name: 'Save' }).click();
  await page.locator('tr', { has: minExpires }).getByRole('alert').waitFor();
  result.validation_message = await page.locator('tr', { has: minExpires }).getByRole('alert').textContent();
  await shot('03-config-global');
  step('the server entry has the global value');
  await page.locator('#server').selectOption(args.server);
  await page.locator('#reach').filter({ hasText: `server ${args.server} only` }).waitFor();
  await page.waitForFunction(
    () => document.querySelector('#leaf-Data-SipConfig-MaxExpires')?.value === '1700',
  );
  await shot('04-config-server');

  step('add a trusted IP');
  await page.getByRole('link', { name: 'Trusted IPs' }).click();
  await page.getByLabel('Address or range (CIDR)').fill('10.20.0.0/16');
  await page.getByRole('button', { name: 'Add' }).click();
  await page.locator('#trusted-list').getByText('10.20.0.0/16').waitFor();
  await shot('05-trusted-ips');

  step('create the SIP account, then give it a new password');
  await page.getByRole('link', { name: 'Users' }).click();
  await page.getByLabel('Username').fill(args.user);
  await page.getByLabel('Password', { exact: true }).fill('first-password-1');
  await page.getByLabel('Display name').fill('Console Bob');
  await page.getByLabel('UPN (Microsoft sign-in)').fill(`${args.user}@contoso.test`);
  await page.getByRole('button', { name: 'Create' }).click();
  await page.getByText(`Created ${args.user}.`).waitFor();
  const row = page.locator(`#users tr[data-user="${args.user}"]`);
  await row.getByText('Console Bob').waitFor();
  await row.getByLabel(`New password for ${args.user}`).fill(args.password);
  await row.getByRole('button', { name: 'Set' }).click();
  await row.getByText('Password set.').waitFor();
  step('activate the account for Teams');
  await row.getByRole('button', { name: `Activate ${args.user} for Teams` }).click();
  await row.getByRole('button', { name: `Deactivate ${args.user} for Teams` }).waitFor();
  await shot('06-users');

  step('the audit log names the signed-in admin');
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.locator('#audit tr').filter({ hasText: 'admin@contoso.test' })
    .filter({ hasText: 'Data.SipConfig.MaxExpires' }).first().waitFor();
  await shot('07-audit');

  step('watch a registration appear');
  await page.getByRole('link', { name: 'Registrations' }).click();
  await page.locator('#registration-count').waitFor();
  // A document load means a reload (the console's own links only change the history).
  const loads = [];
  page.on('load', () => loads.push(page.url()));
  console.log('await-registration');
  // The address-of-record cell (the contact cell reads `<sip:user@host:port…>`).
  await page.locator('#registrations td').filter({ hasText: new RegExp(`^sip:${args.user}@`) })
    .waitFor({ timeout: 30000 });
  // The history API changes no document: a reload would show up as a navigation here.
  result.reloads = loads.length;
  if (loads.length !== 0) throw new Error(`the page was reloaded: ${loads}`);
  await shot('08-registrations');

  step('watch a call appear, then hang it up');
  await page.getByRole('link', { name: 'Calls' }).click();
  await page.locator('#no-calls').waitFor();
  console.log('await-call');
  const call = page.locator('#calls tr').filter({ hasText: 'answered' });
  await call.waitFor({ timeout: 30000 });
  step("the call's media: both legs' codec, packets that grow between two refreshes");
  const media = page.locator(`#media-${await call.getAttribute('data-call')}`);
  const leg = (i) => media.locator(`tbody tr[data-leg="${i}"]`);
  const cell = async (i, name) => (await leg(i).locator(`td.${name}`).textContent()).trim();
  for (const i of [0, 1]) {
    await leg(i).locator('td.codec').filter({ hasText: 'PCMU/8000' }).waitFor();
    await leg(i).locator('td.packets').filter({ hasText: /^[1-9]\d*$/ }).waitFor({ timeout: 20000 });
  }
  const first = Number(await cell(0, 'packets'));
  // Nothing but the page's own refresh changes the count (no reload: see `loads` below).
  await page.waitForFunction(
    ([sel, n]) => Number(document.querySelector(sel)?.textContent.trim()) > n,
    [`#${await media.getAttribute('id')} tbody tr[data-leg="0"] td.packets`, first],
    { timeout: 15000 },
  );
  result.media = {
    legs: await media.locator('tbody tr').count(),
    caption: (await media.locator('caption').textContent()).trim(),
    packets_first: first,
    packets_then: Number(await cell(0, 'packets')),
    rows: [],
  };
  for (const i of [0, 1]) {
    const row = {};
    for (const name of ['kind', 'codec', 'srtp', 'moh', 'packets', 'lost', 'jitter']) row[name] = await cell(i, name);
    row.party = (await leg(i).locator('th').textContent()).trim();
    row.dropped = (await leg(i).locator('td.dropped summary').textContent()).trim();
    row.dropped_title = await leg(i).locator('td.dropped summary').getAttribute('title');
    result.media.rows.push(row);
  }
  await shot('09-calls');
  step('the calls page on a phone-sized screen: wide tables scroll, the page does not');
  const wide = page.viewportSize();
  await page.setViewportSize({ width: 390, height: 844 });
  await shot('09-calls-phone');
  result.media.page_overflows = await page.evaluate(
    () => document.documentElement.scrollWidth > window.innerWidth,
  );
  await page.setViewportSize(wide);
  await call.getByRole('button', { name: /^Hang up call / }).click();
  await page.locator('#no-calls').waitFor();
  step("open the ended call's SIP ladder");
  const ended = page.locator('#history tr').filter({ hasText: 'admin_hang_up' }).first();
  result.history_media = await ended.locator('td.record-media').innerText();
  await ended.getByRole('button', { name: /^SIP ladder of call / }).click();
  const ladder = page.locator('#ladder');
  // The caller's INVITE in, the callee's leg set up, and the BYE the gateway sent each phone.
  await ladder.locator('tr[data-leg="a"]').filter({ hasText: 'INVITE →' }).first().waitFor();
  await ladder.locator('tr[data-leg="b"]').filter({ hasText: 'INVITE →' }).first().waitFor();
  await ladder.locator('tr[data-leg="a"]').filter({ hasText: '← BYE' }).first().waitFor();
  await ladder.locator('tr[data-leg="b"]').filter({ hasText: 'BYE →' }).first().waitFor();
  result.ladder_rows = await ladder.locator('tbody tr').count();
  await shot('10-ladder');
  result.reloads = loads.length;
  if (loads.length !== 0) throw new Error(`the page was reloaded: ${loads}`);

  step("the user's devices on the users page");
  await page.getByRole('link', { name: 'Users' }).click();
  const device = page.locator(`#users tr[data-user="${args.user}"] td.devices li`);
  await device.filter({ hasText: 'baresip' }).waitFor();
  result.device = (await device.first().textContent()).trim();
  await shot('11-user-devices');

  step('upload a policy component, then switch it off');
  await page.getByRole('link', { name: 'Policies' }).click();
  const routing = page.locator('#policies tr[data-kind="routing"]');
  await routing.locator('td').filter({ hasText: /^builtin$/ }).waitFor();
  const upload = page.locator('#policy-upload');
  await upload.getByLabel('Kind').selectOption('routing');
  await upload.getByLabel('Component (.wasm)').setInputFiles(args.policy);
  await upload.getByRole('button', { name: 'Upload' }).click();
  await page.getByText('The routing policy version 1 is in use.').waitFor();
  await routing.locator('td.version').filter({ hasText: /^1$/ }).waitFor();
  result.policy_hash = await routing.locator('td.hash code').getAttribute('title');
  result.policy_hash_shown = (await routing.locator('td.hash code').textContent()).trim();
  await shot('12-policy-uploaded');
  await routing.getByRole('button', { name: 'Switch off the routing policy' }).click();
  await routing.locator('td.disabled').filter({ hasText: /switched off by admin@contoso\.test/ }).waitFor();
  result.policy_disabled = (await routing.locator('td.disabled').textContent()).trim();
  await shot('13-policy-switched-off');
  result.reloads = loads.length;
  if (loads.length !== 0) throw new Error(`the page was reloaded: ${loads}`);

  step('phone-sized screen');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole('link', { name: 'Configuration' }).click();
  await page.locator('#leaf-Data-SipConfig-MaxExpires').waitFor();
  await shot('14-phone-config');
  ok = true;
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
  // What the page showed when it failed.
  if (page) await page.screenshot({ path: path.join(screens, 'failed.png'), fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
result.ok = ok;
console.log(JSON.stringify(result));
process.exit(ok ? 0 : 1);
