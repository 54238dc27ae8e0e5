// Drives the broker's dashboard in headless Chromium, as an operator would, and writes a
// screenshot of each page. Run by tests/dashboard.rs, which starts the broker, connects the
// client to kick and keeps publishing to dash/live.
// Usage: node dashboard_test.mjs BASE_URL USER PASSWORD SCREENSHOT_DIR NO_USERS_BASE_URL
// (the second broker has no users: the page must say how to make the first).
// Prints one line per step reached; exits non-zero on the first failure.
import fs from 'node:fs';
import path from 'node:path';

const { chromium } = await import(process.env.PLAYWRIGHT || 'playwright-core');
const [base, user, password, shots, noUsersBase] = process.argv.slice(2);
fs.mkdirSync(shots, { recursive: true });
const step = (what) => console.log('STEP ' + what);
const shot = (page, name) => page.screenshot({ path: path.join(shots, name + '.png'), fullPage: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const problems = [];
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  // 401 (before the login) and 422 (the broken rule) are answers the page shows, not faults.
  page.on('console', (m) => { if (m.type() === 'error' && !/status of (401|422)/.test(m.text())) problems.push('console: ' + m.text()); });
  page.on('dialog', (d) => d.accept());

  await page.goto(noUsersBase + '/');
  await page.waitForSelector('h1:text("No users yet")');
  if (!(await page.textContent('main')).includes('switchyard passwd')) throw new Error('no first-user help');
  await shot(page, 'no-users');
  step('a broker without users explains the first one');

  // Log in with the keyboard only: the user name field has focus, Tab, Enter.
  await page.goto(base + '/');
  await page.waitForSelector('#username:focus');
  await shot(page, 'login');
  await page.keyboard.type(user);
  await page.keyboard.press('Tab');
  await page.keyboard.type(password);
  await page.keyboard.press('Enter');
  await page.waitForSelector('h1:text("Overview")');
  // Two samples of history make a line.
  await page.waitForFunction(() => Number(document.querySelector('canvas')?.dataset.points) >= 2, null, { timeout: 30000 });
  await shot(page, 'overview');
  step('logged in, overview shown');

  await page.goto(base + '/#/clients');
  const row = page.locator('tr', { hasText: 'dash-victim' });
  await row.waitFor();
  await shot(page, 'clients');
  await page.click('a:text("dash-victim")');
  await page.waitForSelector('h2:text("Subscriptions")');
  await page.waitForSelector('td:text("dash/victim/#")');
  await shot(page, 'client');
  step('client page shows its subscription');
  await page.goto(base + '/#/clients');
  await page.locator('tr', { hasText: 'dash-victim' }).getByRole('button', { name: 'Kick dash-victim' }).click();
  await page.locator('tr', { hasText: 'dash-victim' }).waitFor({ state: 'detached' });
  step('kicked dash-victim');

  await page.goto(base + '/#/topics');
  await page.fill('#filter', 'dash/live/#');
  await page.click('button:text("Subscribe")');
  await page.waitForSelector('#messages li .t:text("dash/live/json")', { timeout: 30000 });
  const shown = await page.locator('#messages li pre').first().textContent();
  if (!shown.includes('"n":')) throw new Error('payload not shown as JSON: ' + shown);
  await shot(page, 'topics');
  step('topic explorer received dash/live/json');

  await page.goto(base + '/#/rule/');
  await page.fill('#rule-name', 'dash_rule.rhai');
  await page.fill('#rule-source', 'rule("dash")\n    .from(["dash/live/#"]\n    .to(sink("hook"));\n');
  await page.click('#rule-save');
  await page.waitForSelector('#rule-errors li');
  const errors = await page.locator('#rule-errors').textContent();
  const badLine = await page.locator('.gutter .bad').first().textContent();
  if (!/dash_rule\.rhai:3:\d+/.test(errors) || badLine !== '3') throw new Error('error line not shown: ' + errors + ' / gutter ' + badLine);
  await shot(page, 'rule-error');
  step('broken rule refused at line ' + badLine);
  await page.fill('#rule-source', 'rule("dash")\n    .from(["dash/live/#"])\n    .when(|m| m.json.n >= 0)\n    .to(sink("hook"));\n');
  await page.click('#rule-save');
  await page.waitForSelector('#rule-saved:text("Saved and loaded")');
  await page.fill('#test-topic', 'dash/live/json');
  await page.fill('#test-payload', '{"n": 7}');
  await page.click('#rule-test');
  await page.waitForSelector('#test-result :text("when → true")');
  await shot(page, 'rule-editor');
  step('fixed rule saved and tested');
  await page.goto(base + '/#/rules');
  const ruleRow = page.locator('tr', { hasText: 'dash_rule.rhai' });
  await ruleRow.getByRole('button', { name: 'Disable' }).waitFor();
  await shot(page, 'rules');
  step('rule listed as active');

  await page.goto(base + '/#/extensions');
  await page.waitForSelector('td:text("hook (webhook)")');
  await shot(page, 'extensions');
  await page.goto(base + '/#/bans');
  await page.waitForSelector('h1:text("Bans")');
  await shot(page, 'bans');
  step('sinks, plugins and bans shown');

  const phone = await context.newPage();
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(base + '/#/overview');
  await phone.waitForSelector('h1:text("Overview")');
  const wide = await phone.evaluate(() => document.documentElement.scrollWidth);
  if (wide > 400) throw new Error('overview is ' + wide + ' px wide on a 390 px phone');
  await phone.waitForFunction(() => Number(document.querySelector('canvas')?.dataset.points) >= 2);
  await shot(phone, 'overview-phone');
  step('usable on a phone');
  if (problems.length) throw new Error(problems.join('\n'));
  console.log('OK');
} catch (e) {
  failed = true;
  console.error('FAILED: ' + (e.stack || e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
