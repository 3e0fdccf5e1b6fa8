// The web phone on the self-service page (`/me`) in Debian's Chromium (playwright-core), its
// microphone a fake device playing a tone file: the user signs in through the test IdP
// (idp.mjs), starts the web phone, (a) calls --callee, which answers by itself, and (b) after
// printing `await-incoming` (the test then makes the callee's phone call back) answers the
// incoming call. In each call the page's remote audio goes through an AnalyserNode and the
// loudest frequency over 2 s is reported (`outgoing`, `incoming`: peak_hz, bin_hz, share). Then
// it hangs up, and at the end stops the web phone. Saves a screenshot per step into --screens.
// Talks to 127.0.0.1 only.
//
// usage: node webphone.mjs --gateway http://127.0.0.1:P --login L --callee NAME --tone WAV --screens DIR
// Prints `await-incoming` when ready for the call back, and one JSON line `{"ok":true,…}` last;
// exit code 0 only on success.
import fs from 'node:fs';
import path from 'node:path';
import { args, launch, localContext } from './browser.mjs';

const screens = args.screens;
fs.mkdirSync(screens, { recursive: true });
const step = (what) => console.error(`web phone test: ${what}`);

const browser = await launch([
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  `--use-file-for-fake-audio-capture=${args.tone}`,
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
]);
let ok = false;
const result = {};
let page;

/** The loudest frequency of the remote audio over `ms` (AnalyserNode, summed power spectra). */
async function remotePeak(ms) {
  return page.evaluate(async (ms) => {
    const stream = document.getElementById('webphone-remote').srcObject;
    if (!stream) return { error: 'no remote stream' };
    const ctx = new AudioContext();
    await ctx.resume();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 8192;
    analyser.smoothingTimeConstant = 0;
    ctx.createMediaStreamSource(stream).connect(analyser);
    const db = new Float32Array(analyser.frequencyBinCount);
    const power = new Float64Array(analyser.frequencyBinCount);
    const frames = Math.max(1, Math.round(ms / 100));
    for (let i = 0; i < frames; i++) {
      await new Promise((r) => setTimeout(r, 100));
      analyser.getFloatFrequencyData(db);
      for (let j = 0; j < db.length; j++) power[j] += Number.isFinite(db[j]) ? 10 ** (db[j] / 10) : 0;
    }
    // Above 50 Hz: no DC or hum.
    const binHz = ctx.sampleRate / analyser.fftSize;
    let peak = Math.ceil(50 / binHz);
    for (let j = peak; j < power.length; j++) if (power[j] > power[peak]) peak = j;
    const total = power.reduce((a, b) => a + b, 0);
    // The share of the power within two bins of the peak (a window spreads a tone over a few).
    let near = 0;
    for (let j = Math.max(0, peak - 2); j <= Math.min(power.length - 1, peak + 2); j++) near += power[j];
    await ctx.close();
    return {
      peak_hz: peak * binHz,
      bin_hz: binHz,
      share: total > 0 ? near / total : 0,
      peak_db: 10 * Math.log10(power[peak] / frames || 1e-30),
    };
  }, ms);
}

try {
  const context = await localContext(browser);
  await context.grantPermissions(['microphone'], { origin: args.gateway });
  page = await context.newPage();
  page.setDefaultTimeout(30000);
  page.on('console', (m) => { if (m.type() === 'error') step(`browser console: ${m.text()}`); });
  const shot = (name) => page.screenshot({ path: path.join(screens, `${name}.png`), fullPage: true });
  const state = page.locator('#webphone-state');
  const inState = (s) => page.locator(`#webphone-state[data-state="${s}"]`).waitFor();

  step('sign in on the self-service page');
  await page.goto(`${args.gateway}/me`);
  await page.getByRole('button', { name: 'Sign in with Microsoft' }).click();
  await page.getByLabel('Account').fill(args.login);
  await page.getByLabel('Password').fill('any-password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Web phone' }).waitFor();
  await inState('off');
  await shot('webphone-01-off');

  step('start the web phone');
  await page.getByRole('button', { name: 'Start web phone' }).click();
  await inState('idle');
  result.ready = (await state.textContent()).trim();
  await shot('webphone-02-ready');

  step(`(a) call ${args.callee}`);
  await page.getByLabel('Number or SIP address').fill(args.callee);
  await page.getByRole('button', { name: 'Call', exact: true }).click();
  await inState('in-call');
  result.outgoing_state = (await state.textContent()).trim();
  await page.waitForTimeout(1000);
  result.outgoing = await remotePeak(2000);
  await shot('webphone-03-in-call');
  step('hold and resume');
  await page.getByRole('button', { name: 'Hold', exact: true }).click();
  await inState('held');
  result.held_state = (await state.textContent()).trim();
  await shot('webphone-03b-held');
  await page.getByRole('button', { name: 'Resume' }).click();
  await inState('in-call');
  await page.waitForTimeout(1000);
  result.resumed = await remotePeak(2000);
  await page.getByRole('button', { name: 'Hang up' }).click();
  await inState('idle');
  result.outgoing_ended = (await state.textContent()).trim();
  await shot('webphone-04-hung-up');

  step('(b) wait for the call back');
  console.log('await-incoming');
  await page.locator('#webphone-state[data-state="incoming"]').waitFor({ timeout: 60000 });
  result.incoming_state = (await state.textContent()).trim();
  await shot('webphone-05-incoming');
  await page.getByRole('button', { name: 'Answer' }).click();
  await inState('in-call');
  await page.waitForTimeout(1000);
  result.incoming = await remotePeak(2000);
  await shot('webphone-06-answered');
  await page.getByRole('button', { name: 'Hang up' }).click();
  await inState('idle');
  result.incoming_ended = (await state.textContent()).trim();

  step('phone-sized screen');
  await page.setViewportSize({ width: 390, height: 844 });
  await shot('webphone-07-phone');

  step('stop the web phone');
  await page.getByRole('button', { name: 'Stop web phone' }).click();
  await inState('off');
  await page.getByRole('button', { name: 'Start web phone' }).waitFor();
  ok = true;
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
  if (page) await page.screenshot({ path: path.join(screens, 'webphone-failed.png'), fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
result.ok = ok;
console.log(JSON.stringify(result));
process.exit(ok ? 0 : 1);
