// What the console's browser scripts share: their `--name value` arguments, and Debian's Chromium
// (playwright-core) headless with a 1280×800 context that talks to 127.0.0.1 only (every other
// request is aborted).
import { chromium } from 'playwright-core';

/** The `--name value` pairs of the command line. */
export const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);

/** Starts Chromium, with `extra` command-line flags. */
export function launch(extra = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', ...extra],
  });
}

/** A 1280×800 context of `browser` that reaches localhost only. */
export async function localContext(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === '127.0.0.1' || host === 'localhost' ? route.continue() : route.abort();
  });
  return context;
}
