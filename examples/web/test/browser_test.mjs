// Drives index.html in headless Chromium against a running broker.
// Usage: node test/browser_test.mjs URL [URL...]   (ws://... or wss://... broker URLs)
// For each URL: connect, subscribe to demo/#, expect the retained demo/retained message the test
// harness published, publish demo/from-browser and see it come back. Exits non-zero on failure.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const urls = process.argv.slice(2);
if (urls.length === 0) {
  console.error('usage: browser_test.mjs BROKER_URL...');
  process.exit(2);
}

const types = { '.html': 'text/html', '.js': 'text/javascript', '.map': 'application/json' };
const server = http.createServer((req, res) => {
  const rel = decodeURIComponent(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '') || 'index.html';
  const file = path.join(root, rel);
  if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const pagePort = server.address().port;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // The test broker's wss certificate is signed by a throwaway CA.
    '--ignore-certificate-errors'],
});
let failed = false;
try {
  for (const url of urls) {
    for (const version of ['5', '4']) {
      const page = await browser.newPage({ ignoreHTTPSErrors: true });
      page.on('console', (m) => console.log(`[page] ${m.text()}`));
      await page.goto(`http://127.0.0.1:${pagePort}/index.html?url=${encodeURIComponent(url)}`);
      await page.selectOption('#version', version);
      await page.click('#connect');
      await page.waitForSelector('#status[data-state="connected"]', { timeout: 10000 });
      await page.click('#subscribe');
      await page.waitForSelector('#subscribe[data-done="ok"]', { timeout: 10000 });
      await page.waitForSelector('#log li[data-topic="demo/retained"]', { timeout: 10000 });
      const payload = `browser says hi over ${url.split(':')[0]} v${version}`;
      await page.fill('#topic', 'demo/from-browser');
      await page.fill('#payload', payload);
      await page.click('#publish');
      await page.waitForSelector('#publish[data-done="ok"]', { timeout: 10000 });
      await page.waitForFunction(
        (p) => [...document.querySelectorAll('#log li')].some((li) => li.textContent.includes(p)),
        payload, { timeout: 10000 });
      console.log(`OK ${url} v${version}`);
      await page.close();
    }
  }
} catch (e) {
  console.error(`FAILED: ${e.message}`);
  failed = true;
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
