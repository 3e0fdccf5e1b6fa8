// The console's first load from localhost, measured in Debian's Chromium (playwright-core):
// from the navigation to `/` until the dashboard is ready (its registration count shown, so the
// wasm is loaded and started and the REST API answered). "cold": a fresh browser context each
// time (empty cache: every file fetched); "warm": a reload in the same context (the
// content-hashed files come from the cache). Signed in with the break-glass admin token, put
// into the tab's session storage before the page starts, so no identity provider is involved.
// Prints a Markdown table. Talks to 127.0.0.1 only: every other request is aborted.
//
// usage: node bench.mjs --gateway http://127.0.0.1:P --token T [--runs N]
import { args, launch, localContext } from './browser.mjs';

if (!args.gateway || !args.token) {
  console.error('usage: node bench.mjs --gateway URL --token T [--runs N]');
  process.exit(2);
}
const runs = Math.min(Math.max(Number(args.runs || 10), 1), 100);

const browser = await launch();

async function context() {
  const ctx = await localContext(browser);
  await ctx.addInitScript((token) => sessionStorage.setItem('csps.token', token), args.token);
  return ctx;
}

/// Milliseconds from the navigation's start to the dashboard ready.
async function load(page, how) {
  const t0 = Date.now();
  await (how === 'reload' ? page.reload() : page.goto(`${args.gateway}/`));
  await page.locator('#count-registrations').filter({ hasText: /^\d+$/ }).waitFor({ timeout: 20000 });
  return Date.now() - t0;
}

const cold = [];
const warm = [];
try {
  for (let i = 0; i < runs; i++) {
    const ctx = await context();
    const page = await ctx.newPage();
    cold.push(await load(page, 'goto'));
    warm.push(await load(page, 'reload'));
    await ctx.close();
  }
} finally {
  await browser.close();
}

const sorted = (l) => [...l].sort((a, b) => a - b);
const pct = (l, p) => sorted(l)[Math.min(l.length - 1, Math.floor((l.length - 1) * p))];
console.log(`| load (${runs} runs) | min ms | p50 ms | p90 ms | max ms |`);
console.log('| --- | --- | --- | --- | --- |');
for (const [name, l] of [['cold (empty cache)', cold], ['warm (reload)', warm]]) {
  console.log(`| ${name} | ${sorted(l)[0]} | ${pct(l, 0.5)} | ${pct(l, 0.9)} | ${sorted(l).at(-1)} |`);
}
